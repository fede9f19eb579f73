import { randomBytes } from "node:crypto";
import express, { type Request, type Response, type Router } from "express";
import { outcomeFor, sameSecret, type SandboxCore } from "./core.ts";
import type { EventKeys } from "./event-key.ts";
import { sendgridError, sendgridSignature } from "./wire.ts";
import { engagementEvents, type EngageRequest, type EngageResult } from "./engagement.ts";

/**
 * The sandbox's SendGrid: v3 mail/send with SendGrid's limits and error
 * shapes, domain authentication, and events (processed, then delivered or
 * bounce: see `outcomeFor`) posted to the event URL, signed with ECDSA under
 * the sandbox's key pair, each event carrying the message's custom args as
 * SendGrid's do.
 *
 * Routes (relative to where the sandbox is mounted):
 *   POST /sendgrid/v3/mail/send                           JSON, Bearer API key
 *   POST /sendgrid/v3/whitelabel/domains[/:id/validate]   domain authentication
 */

/**
 * Any SendGrid key starting `SG.sandbox.` is valid without being told.
 * Tenants use these in development; anything else is refused exactly as
 * SendGrid refuses a wrong key.
 */
export const SANDBOX_SENDGRID_KEY_PREFIX = "SG.sandbox.";
/** The system account's key in sandbox mode (no SENDGRID_API_KEY configured). */
export const SANDBOX_SYSTEM_SENDGRID_KEY = `${SANDBOX_SENDGRID_KEY_PREFIX}system`;

/**
 * The account column of a SendGrid message: the system key by name (it is
 * fixed and documented), any other by its last four characters.
 */
const sendgridAccount = (apiKey: string) => (apiKey === SANDBOX_SYSTEM_SENDGRID_KEY ? apiKey : `…${apiKey.slice(-4)}`);
const EMAIL = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;

export interface SandboxSendGrid {
  addKey(apiKey: string): void;
  /** mail/send requests accepted so far (each may carry up to 1,000 recipients). */
  readonly mailSendRequests: number;
  /** Base64 DER (SPKI) of the key that signs events. */
  publicKey: string;
  /** The signature over timestamp + body, as on the sandbox's own events. */
  signEvents(timestamp: string, body: string): string;
  /** Where events go from now on (none: no events). */
  setEventUrl(url: string | undefined): void;
  /** The recipient of a sent mail opens it or clicks a link: a signed event posted now (src/sandbox/engagement.ts). */
  engage(request: EngageRequest): Promise<EngageResult>;
}

/** Installs SendGrid's routes on the sandbox's router. */
export function addSendGridRoutes(
  router: Router,
  core: SandboxCore,
  options: { eventUrl: string | undefined; eventKeys: EventKeys },
): SandboxSendGrid {
  const { eventKeys } = options;
  let eventUrl = options.eventUrl;
  const keys = new Set<string>();
  let mailSendRequests = 0;
  const engagement = engagementEvents(core.keep);

  /** The request's API key when it is one the sandbox accepts. */
  const keyOf = (req: Request): string | undefined => {
    const [scheme, key] = (req.headers.authorization ?? "").split(" ");
    return scheme === "Bearer" &&
      key &&
      (key.startsWith(SANDBOX_SENDGRID_KEY_PREFIX) || [...keys].some((k) => sameSecret(k, key)))
      ? key
      : undefined;
  };

  router.post("/sendgrid/v3/mail/send", express.json({ limit: "30mb" }), async (req: Request, res: Response) => {
    if (await core.faulted(res, "sendgrid")) return;
    const key = keyOf(req);
    if (!key) return sendgridError(res, 401, "The provided authorization grant is invalid, expired, or revoked");
    const mail = req.body as {
      personalizations?: {
        to?: { email?: string }[];
        custom_args?: Record<string, string>;
        substitutions?: Record<string, string>;
        subject?: string;
        headers?: Record<string, string>;
      }[];
      from?: { email?: string; name?: string };
      reply_to?: { email?: string };
      headers?: Record<string, string>;
      subject?: string;
      content?: { type?: string; value?: string }[];
      custom_args?: Record<string, string>;
    };
    const personalizations = mail.personalizations ?? [];
    // SendGrid's limits: 1,000 personalizations, 1,000 recipients in all.
    if (personalizations.length > 1000)
      return sendgridError(res, 400, "The personalizations field must have at most 1000 items.", "personalizations");
    const recipients = personalizations.flatMap((p, i) =>
      (p.to ?? []).map((to) => ({ email: to.email, personalization: i })),
    );
    if (recipients.length === 0)
      return sendgridError(
        res,
        400,
        "The personalizations field is required and must have at least one personalization.",
        "personalizations",
      );
    if (recipients.length > 1000)
      return sendgridError(res, 400, "The total number of recipients must be at most 1000.", "personalizations");
    const badRecipient = recipients.findIndex((r) => !EMAIL.test(r.email ?? ""));
    if (badRecipient >= 0)
      return sendgridError(
        res,
        400,
        "Does not contain a valid address.",
        `personalizations.${recipients[badRecipient]!.personalization}.to.0.email`,
      );
    if (new Set(recipients.map((r) => r.email!.toLowerCase())).size < recipients.length) {
      return sendgridError(
        res,
        400,
        "Each email address in the personalization block should be unique between to, cc, and bcc.",
        "personalizations",
      );
    }
    if (!EMAIL.test(mail.from?.email ?? ""))
      return sendgridError(res, 400, "The from object must be provided for every email send.", "from");
    if (!mail.subject && personalizations.some((p) => !p.subject))
      return sendgridError(res, 400, "The subject is required.", "subject");
    const body = (mail.content ?? []).find((c) => c.type === "text/plain")?.value ?? mail.content?.[0]?.value ?? "";
    const html = (mail.content ?? []).find((c) => c.type === "text/html")?.value;
    if (!body)
      return sendgridError(
        res,
        400,
        "The content value must be a string at least one character in length.",
        "content.0.value",
      );
    mailSendRequests++;

    const messageId = randomBytes(16).toString("base64url");
    // Each personalization's substitutions replace their keys in the subject and content, as SendGrid's do.
    const substitute = (text: string, substitutions: Record<string, string> = {}) =>
      Object.entries(substitutions).reduce((out, [key, value]) => out.split(key).join(String(value)), text);
    for (const r of recipients) {
      const p = personalizations[r.personalization]!;
      const [subject, text] = [
        substitute(p.subject ?? mail.subject ?? "", p.substitutions),
        substitute(body, p.substitutions),
      ];
      const htmlText = html === undefined ? undefined : substitute(html, p.substitutions);
      // What an open or click of this copy reports: the custom args, as on the events below.
      engagement.remember(messageId, r.email!, r.personalization, {
        ...(mail.custom_args ?? {}),
        ...(p.custom_args ?? {}),
      });
      core.remember({
        id: messageId,
        provider: "sendgrid",
        account: sendgridAccount(key),
        channel: "email",
        from: mail.from!.email!,
        to: r.email!,
        subject,
        body: text,
        ...(htmlText === undefined ? {} : { html: htmlText }),
        ...(mail.from!.name ? { fromName: mail.from!.name } : {}),
        ...(mail.reply_to?.email ? { replyTo: mail.reply_to.email } : {}),
        ...(mail.headers || p.headers ? { headers: { ...mail.headers, ...p.headers } } : {}),
        createdAt: new Date(),
      });
    }
    const url = eventUrl;
    if (url) {
      // SendGrid echoes custom args as top-level fields of every event: the
      // message's, overridden by the recipient's personalization's.
      const event = (r: (typeof recipients)[number], kind: string) => ({
        email: r.email,
        event: kind,
        timestamp: Math.floor(Date.now() / 1000),
        sg_event_id: randomBytes(16).toString("base64url"),
        sg_message_id: `${messageId}.filter0001.${Date.now()}.${r.personalization}`,
        ...(mail.custom_args ?? {}),
        ...(personalizations[r.personalization]!.custom_args ?? {}),
        ...(kind === "bounce"
          ? {
              reason: "550 5.1.1 The email account that you tried to reach does not exist.",
              type: "bounce",
              status: "5.1.1",
            }
          : {}),
      });
      const batches = [
        recipients.map((r) => event(r, "processed")),
        recipients.map((r) => event(r, outcomeFor(r.email!).status === "bounce" ? "bounce" : "delivered")),
      ];
      core.schedule(
        batches.map((events) => () => {
          // The signature covers the exact bytes sent: the receiver must verify the raw body.
          const payload = JSON.stringify(events);
          const timestamp = String(Math.floor(Date.now() / 1000));
          return fetch(url, {
            method: "POST",
            headers: {
              "content-type": "application/json",
              "x-twilio-email-event-webhook-signature": sendgridSignature(eventKeys.privateKey, timestamp, payload),
              "x-twilio-email-event-webhook-timestamp": timestamp,
            },
            body: payload,
          });
        }),
      );
    }
    if (core.dropAfterAccepting(res)) return;
    res.setHeader("X-Message-Id", messageId);
    res.status(202).end();
  });

  // Opens and clicks, on demand (tests, the page's buttons): src/sandbox/engagement.ts.
  const engageBody = [express.urlencoded({ extended: false, limit: "16kb" }), express.json({ limit: "16kb" })];
  router.post("/sendgrid/engage", ...engageBody, async (req: Request, res: Response) => {
    const result = await engagement.post((req.body ?? {}) as Record<string, unknown>, eventUrl, eventKeys.privateKey);
    if (!result.ok) return sendgridError(res, result.status, result.error);
    // The page's form comes back to the page; a script gets the events.
    if (req.accepts(["json", "html"]) === "html") return res.redirect(303, req.baseUrl || "/");
    res.json({ events: result.events });
  });

  // Domain authentication: the DNS records to publish, then validation.
  // Sandbox rule: a domain containing "unverified" never validates (its records are "missing").
  const domains = new Map<number, { domain: string; subdomain: string; user: number; key: string }>();
  const domainRecords = (d: { domain: string; subdomain: string; user: number }, valid: boolean) => ({
    mail_cname: { valid, type: "cname", host: `${d.subdomain}.${d.domain}`, data: `u${d.user}.wl.sendgrid.net` },
    dkim1: { valid, type: "cname", host: `s1._domainkey.${d.domain}`, data: `s1.domainkey.u${d.user}.wl.sendgrid.net` },
    dkim2: { valid, type: "cname", host: `s2._domainkey.${d.domain}`, data: `s2.domainkey.u${d.user}.wl.sendgrid.net` },
  });
  router.post("/sendgrid/v3/whitelabel/domains", express.json({ limit: "16kb" }), (req: Request, res: Response) => {
    const key = keyOf(req);
    if (!key) return sendgridError(res, 401, "The provided authorization grant is invalid, expired, or revoked");
    const domain = String((req.body as { domain?: unknown }).domain ?? "").toLowerCase();
    if (!/^[a-z0-9-]+(\.[a-z0-9-]+)+$/.test(domain)) return sendgridError(res, 400, "invalid domain", "domain");
    const id = domains.size + 1;
    const record = { domain, subdomain: `em${1000 + id}`, user: 4242, key };
    domains.set(id, record);
    res.status(201).json({
      id,
      user_id: record.user,
      subdomain: record.subdomain,
      domain,
      username: "sandbox",
      ips: [],
      custom_spf: false,
      default: false,
      legacy: false,
      automatic_security: true,
      valid: false,
      dns: domainRecords(record, false),
    });
  });
  router.post("/sendgrid/v3/whitelabel/domains/:id/validate", (req: Request, res: Response) => {
    const key = keyOf(req);
    if (!key) return sendgridError(res, 401, "The provided authorization grant is invalid, expired, or revoked");
    const id = Number(req.params.id);
    const record = domains.get(id);
    if (!record || !sameSecret(record.key, key)) return sendgridError(res, 404, "authenticated domain not found");
    const valid = !record.domain.includes("unverified");
    const reason = valid
      ? null
      : `Expected CNAME for "${record.subdomain}.${record.domain}" to match "u${record.user}.wl.sendgrid.net".`;
    res.json({
      id,
      valid,
      validation_results: {
        mail_cname: { valid, reason },
        dkim1: { valid, reason: valid ? null : reason },
        dkim2: { valid, reason: valid ? null : reason },
      },
    });
  });

  return {
    addKey: (apiKey) => void keys.add(apiKey),
    get mailSendRequests() { return mailSendRequests; }, // prettier-ignore
    publicKey: eventKeys.publicKey.export({ type: "spki", format: "der" }).toString("base64"),
    signEvents: (timestamp, body) => sendgridSignature(eventKeys.privateKey, timestamp, body),
    setEventUrl: (url) => void (eventUrl = url),
    engage: (request) => engagement.post({ ...request }, eventUrl, eventKeys.privateKey),
  };
}
