import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import express, { type Request, type Response, type Router } from "express";
import { newEventKeys, type EventKeys } from "./event-key.ts";
import type { InboundAnswer } from "./inbound.ts";
import { groupHeading, sendgridAccount } from "./labels.ts";
import { sandboxPage } from "./page.ts";
import { createPhones, type PhoneText } from "./phones.ts";
import { E164, sendgridError, sendgridSignature, twilioError, twilioMessageJson, twilioSignature } from "./wire.ts";

/**
 * The provider sandbox: a local stand-in for Twilio's Messages API and
 * SendGrid's v3 mail/send, spoken to by the real `twilio` and `@sendgrid/mail`
 * SDKs (src/providers/), so development and tests run offline with nothing
 * mocked below the SDK. It checks credentials like the real services, answers
 * with their JSON shapes and error codes, and keeps the recent messages for
 * the `/sandbox` page and for tests.
 *
 * Like the real services, it calls back: Twilio status callbacks to a
 * message's StatusCallback (queued → sent → delivered, or failed/undelivered,
 * see `outcomeFor`), signed with X-Twilio-Signature under the account's auth
 * token; SendGrid events (processed, delivered or bounce) to `sendgridEventUrl`,
 * signed with ECDSA under the sandbox's key pair (`sendgridPublicKey`), each
 * event carrying the message's custom args as SendGrid's do. And it texts in:
 * `textIn` (or the page's form) is a phone writing to one of Herald's numbers,
 * posted to Herald's inbound webhook signed as Twilio signs it; the TwiML
 * answer's replies are kept as messages. Tests can inject faults: errors, 429
 * bursts, latency, accept-then-timeout.
 *
 * Routes (relative to where the router is mounted):
 *   POST /twilio/2010-04-01/Accounts/:sid/Messages.json   form-encoded, HTTP Basic (sid:token)
 *   GET  /twilio/2010-04-01/Accounts/:sid/Messages.json   recent messages (To/From filters)
 *   GET  /twilio/2010-04-01/Accounts/:sid/Messages/:messageSid.json   one message and its status
 *   POST /sendgrid/v3/mail/send                           JSON, Bearer API key
 *   POST /sendgrid/v3/whitelabel/domains[/:id/validate]   domain authentication
 *   GET  /                                                 HTML list of recent messages (unless page: false)
 *   POST /twilio/inbound                                   the page's "text in" form (from, to, body)
 */

export type SandboxChannel = "sms" | "whatsapp" | "email";

export interface SandboxMessage {
  id: string;
  provider: "twilio" | "sendgrid";
  /** Twilio account SID, or the last 4 characters of the SendGrid key (the sandbox's system key whole: src/sandbox/labels.ts). */
  account: string;
  channel: SandboxChannel;
  from: string;
  to: string;
  subject?: string;
  body: string;
  createdAt: Date;
}

export interface SandboxFaults {
  /** Share of requests (0–1) answered with a 500, nothing stored. */
  errorRate?: number;
  /** The next N requests get a 429 (Twilio 20429 / SendGrid's), nothing stored. */
  rateLimitBurst?: number;
  /** Added before every answer. */
  latencyMs?: number;
  /** Store the message, then never answer: the connection is dropped after this many ms. */
  acceptThenTimeoutMs?: number;
  /** Store the message (its callbacks start), then answer only after this many ms: callbacks outrun the answer. */
  slowAnswerMs?: number;
}

export interface Sandbox {
  router: Router;
  /** Newest last; at most `keep` of them. */
  messages: SandboxMessage[];
  /** SendGrid mail/send requests accepted so far (each may carry up to 1,000 recipients). */
  readonly mailSendRequests: number;
  /** The most Twilio send requests open at once since the last call (and resets it). */
  takePeakInFlight(): number;
  addTwilioAccount(accountSid: string, authToken: string): void;
  addSendGridKey(apiKey: string): void;
  setFaults(faults: SandboxFaults): void;
  /** Base64 DER (SPKI) of the key that signs SendGrid events: SENDGRID_WEBHOOK_PUBLIC_KEY for the sandbox. */
  sendgridPublicKey: string;
  /** Resolves when every callback already scheduled has been posted. */
  settled(): Promise<void>;
  /** The sandbox's signature over timestamp + body, as on its own SendGrid events (tests post events of their own with it). */
  signSendGridEvents(timestamp: string, body: string): string;
  /** Where SendGrid events go from now on (none: no events). */
  setSendGridEventUrl(url: string | undefined): void;
  /**
   * A phone texts one of Herald's numbers: posted to `url` (default: the
   * sandbox's `inboundUrl`) signed with the account's token, as Twilio would.
   */
  textIn(text: PhoneText): Promise<InboundAnswer>;
}

/**
 * What happens to a message after acceptance, by the recipient's last digits
 * (documented for developers): …0001 fails (30003), …0002 is undelivered
 * (30005), bounce@… bounces; everything else is delivered. (…0003 is refused
 * outright with 21610, an unsubscribed recipient.)
 */
export function outcomeFor(to: string): {
  status: "delivered" | "failed" | "undelivered" | "bounce";
  errorCode?: number;
} {
  if (/0001$/.test(to)) return { status: "failed", errorCode: 30003 };
  if (/0002$/.test(to)) return { status: "undelivered", errorCode: 30005 };
  if (/^bounce@/i.test(to)) return { status: "bounce" };
  return { status: "delivered" };
}

/**
 * Credentials the sandbox accepts without being told: a Twilio account's auth
 * token is `sandbox:<AccountSid>`, and any SendGrid key starting `SG.sandbox.`
 * is valid. Tenants use these in development; anything else is refused
 * exactly as the real services refuse a wrong credential.
 */
export const sandboxTwilioToken = (accountSid: string) => `sandbox:${accountSid}`;
export const SANDBOX_SENDGRID_KEY_PREFIX = "SG.sandbox.";
/** The system account in sandbox mode (no TWILIO_* / SENDGRID_API_KEY configured). */
export const SANDBOX_SYSTEM_TWILIO = {
  accountSid: `AC${"0".repeat(32)}`,
  authToken: sandboxTwilioToken(`AC${"0".repeat(32)}`),
};
export const SANDBOX_SYSTEM_SENDGRID_KEY = `${SANDBOX_SENDGRID_KEY_PREFIX}system`;
const EMAIL = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;
const sha256 = (text: string) => createHash("sha256").update(text).digest();
const sameSecret = (a: string, b: string) => timingSafeEqual(sha256(a), sha256(b));

export function createSandbox(
  options: {
    keep?: number;
    page?: boolean;
    /** Where SendGrid events go (Herald's event webhook); none: no events. */
    sendgridEventUrl?: string;
    /** The key pair that signs SendGrid events (`npm start`: kept in .data/); default: a new one. */
    eventKeys?: EventKeys;
    /** Pause between a message's callbacks. */
    callbackDelayMs?: number;
    /** Names the tenant behind an account (SID, or …last4 of a SendGrid key) for the page. */
    describeAccount?: (provider: "twilio" | "sendgrid", account: string) => Promise<string | undefined>;
    /** Herald's inbound webhook, for `textIn` and the page's form. */
    inboundUrl?: string;
    /** The account SID a number is on (what Twilio knows), for the page's form. */
    resolveNumber?: (number: string, channel: "sms" | "whatsapp") => Promise<string | undefined>;
  } = {},
): Sandbox {
  const keep = options.keep ?? 500;
  const callbackDelayMs = options.callbackDelayMs ?? 50;
  const eventKeys = options.eventKeys ?? newEventKeys();
  let faults: SandboxFaults = {};
  const pending = new Set<Promise<void>>();
  /** Posts callbacks in order, in the background; failures are the receiver's business, as with the real services. */
  const schedule = (posts: (() => Promise<unknown>)[]) => {
    const run = (async () => {
      for (const post of posts) {
        await new Promise((resolve) => setTimeout(resolve, callbackDelayMs));
        await post().catch(() => undefined);
      }
    })();
    pending.add(run);
    void run.finally(() => pending.delete(run));
  };
  /** Applies the injected faults; true when the request was answered (or dropped) already. */
  const faulted = async (res: Response, kind: "twilio" | "sendgrid"): Promise<boolean> => {
    if (faults.latencyMs) await new Promise((resolve) => setTimeout(resolve, faults.latencyMs));
    if (faults.rateLimitBurst && faults.rateLimitBurst > 0) {
      faults.rateLimitBurst--;
      if (kind === "twilio") twilioError(res, 429, 20429, "Too Many Requests");
      else sendgridError(res, 429, "too many requests");
      return true;
    }
    if (faults.errorRate && Math.random() < faults.errorRate) {
      if (kind === "twilio") twilioError(res, 500, 20500, "Internal Server Error");
      else sendgridError(res, 500, "internal error");
      return true;
    }
    return false;
  };
  /** Accept-then-timeout: the message counts as sent, but the client never hears so. */
  const dropAfterAccepting = (res: Response): boolean => {
    if (!faults.acceptThenTimeoutMs) return false;
    setTimeout(() => res.socket?.destroy(), faults.acceptThenTimeoutMs);
    return true;
  };
  const twilioAccounts = new Map<string, string>();
  let sendgridEventUrl = options.sendgridEventUrl;
  const sendgridKeys = new Set<string>();
  const messages: SandboxMessage[] = [];
  let [mailSendRequests, requestsInFlight, peakInFlight] = [0, 0, 0];
  const remember = (message: SandboxMessage) => {
    messages.push(message);
    if (messages.length > keep) messages.splice(0, messages.length - keep);
  };

  /** As the account itself (SID + auth token) or one of its API keys (SK… + secret). */
  const twilioAuthorized = (req: Request, sid: string): boolean => {
    const [scheme, encoded] = (req.headers.authorization ?? "").split(" ");
    const [principal = "", ...rest] = Buffer.from(encoded ?? "", "base64")
      .toString("utf8")
      .split(":");
    const token = twilioAccounts.get(principal) ?? sandboxTwilioToken(principal);
    return scheme === "Basic" && (principal === sid || principal.startsWith("SK")) && sameSecret(rest.join(":"), token);
  };

  const router = express.Router();

  router.post(
    "/twilio/2010-04-01/Accounts/:sid/Messages.json",
    express.urlencoded({ extended: false, limit: "64kb" }),
    async (req: Request, res: Response) => {
      peakInFlight = Math.max(peakInFlight, ++requestsInFlight); // how many sends overlap (tests of concurrency read the peak)
      res.once("close", () => requestsInFlight--);
      if (await faulted(res, "twilio")) return;
      const sid = String(req.params.sid);
      if (!twilioAuthorized(req, sid)) return twilioError(res, 401, 20003, "Authenticate");
      const {
        To: to = "",
        From: from = "",
        Body: body = "",
        StatusCallback: statusCallback,
      } = req.body as Record<string, string>;
      const whatsapp = to.startsWith("whatsapp:");
      const toNumber = whatsapp ? to.slice("whatsapp:".length) : to;
      if (!E164.test(toNumber))
        return twilioError(res, 400, 21211, `The 'To' number ${to} is not a valid phone number.`);
      // Documented sandbox rule: recipients ending 0003 have replied STOP.
      if (/0003$/.test(toNumber)) return twilioError(res, 400, 21610, "Attempt to send to unsubscribed recipient");
      if (!from) return twilioError(res, 400, 21603, "A 'From' phone number is required.");
      if (whatsapp !== from.startsWith("whatsapp:")) {
        return twilioError(res, 400, 63007, "Twilio could not find a Channel with the specified From address");
      }
      if (!body.trim()) return twilioError(res, 400, 21602, "Message body is required.");
      if (body.length > 1600)
        return twilioError(res, 400, 21617, "The concatenated message body exceeds the 1600 character limit.");

      const messageSid = `SM${randomBytes(16).toString("hex")}`;
      const stored: SandboxMessage = {
        id: messageSid,
        provider: "twilio",
        account: sid,
        channel: whatsapp ? "whatsapp" : "sms",
        from,
        to,
        body,
        createdAt: new Date(),
      };
      remember(stored);
      if (statusCallback) {
        const outcome = outcomeFor(toNumber);
        const statuses = outcome.status === "delivered" ? ["sent", "delivered"] : ["sent", outcome.status];
        const authToken = twilioAccounts.get(sid) ?? sandboxTwilioToken(sid);
        schedule(
          statuses.map((status) => () => {
            const params: Record<string, string> = {
              AccountSid: sid,
              From: from,
              MessageSid: messageSid,
              MessageStatus: status,
              SmsSid: messageSid,
              SmsStatus: status,
              To: to,
              ApiVersion: "2010-04-01",
            };
            if (status === "failed" || status === "undelivered") params.ErrorCode = String(outcome.errorCode);
            return fetch(statusCallback, {
              method: "POST",
              headers: {
                "content-type": "application/x-www-form-urlencoded",
                "x-twilio-signature": twilioSignature(authToken, statusCallback, params),
              },
              body: new URLSearchParams(params).toString(),
            });
          }),
        );
      }
      if (dropAfterAccepting(res)) return;
      if (faults.slowAnswerMs) await new Promise((resolve) => setTimeout(resolve, faults.slowAnswerMs));
      res.status(201).json(twilioMessageJson(stored));
    },
  );

  // The account's recent messages, newest first (Twilio's Messages list, filtered by To/From).
  router.get("/twilio/2010-04-01/Accounts/:sid/Messages.json", async (req: Request, res: Response) => {
    if (await faulted(res, "twilio")) return;
    const sid = String(req.params.sid);
    if (!twilioAuthorized(req, sid)) return twilioError(res, 401, 20003, "Authenticate");
    const { To: to, From: from } = req.query as Record<string, string | undefined>;
    const pageSize = Math.min(Number(req.query.PageSize ?? 50) || 50, 1000);
    const found = messages
      .filter((m) => m.provider === "twilio" && m.account === sid && (!to || m.to === to) && (!from || m.from === from))
      .reverse()
      .slice(0, pageSize);
    const uri = `/2010-04-01/Accounts/${sid}/Messages.json?PageSize=${pageSize}&Page=0`;
    res.json({
      messages: found.map(twilioMessageJson),
      first_page_uri: uri,
      next_page_uri: null,
      previous_page_uri: null,
      page: 0,
      page_size: pageSize,
      start: 0,
      end: found.length,
      uri,
    });
  });

  // One message, as Twilio's Message fetch answers: its outcome (see `outcomeFor`) is known at once here.
  router.get("/twilio/2010-04-01/Accounts/:sid/Messages/:messageSid.json", async (req: Request, res: Response) => {
    if (await faulted(res, "twilio")) return;
    const sid = String(req.params.sid);
    if (!twilioAuthorized(req, sid)) return twilioError(res, 401, 20003, "Authenticate");
    const found = messages.find((m) => m.provider === "twilio" && m.account === sid && m.id === req.params.messageSid);
    if (!found)
      return twilioError(
        res,
        404,
        20404,
        `The requested resource /2010-04-01/Accounts/${sid}/Messages/${String(req.params.messageSid)}.json was not found`,
      );
    const outcome = outcomeFor(found.to.replace(/^whatsapp:/, ""));
    res.json({
      ...twilioMessageJson(found),
      status: outcome.status,
      error_code: outcome.errorCode ?? null,
      date_sent: found.createdAt.toUTCString(),
    });
  });

  router.post("/sendgrid/v3/mail/send", express.json({ limit: "30mb" }), async (req: Request, res: Response) => {
    if (await faulted(res, "sendgrid")) return;
    const [scheme, key] = (req.headers.authorization ?? "").split(" ");
    if (
      scheme !== "Bearer" ||
      !key ||
      !(key.startsWith(SANDBOX_SENDGRID_KEY_PREFIX) || [...sendgridKeys].some((k) => sameSecret(k, key)))
    ) {
      return sendgridError(res, 401, "The provided authorization grant is invalid, expired, or revoked");
    }
    const mail = req.body as {
      personalizations?: {
        to?: { email?: string }[];
        custom_args?: Record<string, string>;
        substitutions?: Record<string, string>;
        subject?: string;
      }[];
      from?: { email?: string };
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
      remember({
        id: messageId,
        provider: "sendgrid",
        account: sendgridAccount(key),
        channel: "email",
        from: mail.from!.email!,
        to: r.email!,
        subject,
        body: text,
        createdAt: new Date(),
      });
    }
    const eventUrl = sendgridEventUrl;
    if (eventUrl) {
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
      schedule(
        batches.map((events) => () => {
          // The signature covers the exact bytes sent: the receiver must verify the raw body.
          const payload = JSON.stringify(events);
          const timestamp = String(Math.floor(Date.now() / 1000));
          return fetch(eventUrl, {
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
    if (dropAfterAccepting(res)) return;
    res.setHeader("X-Message-Id", messageId);
    res.status(202).end();
  });

  // SendGrid domain authentication: the DNS records to publish, then validation.
  // Sandbox rule: a domain containing "unverified" never validates (its records are "missing").
  const domains = new Map<number, { domain: string; subdomain: string; user: number; key: string }>();
  const sendgridKeyOf = (req: Request): string | undefined => {
    const [scheme, key] = (req.headers.authorization ?? "").split(" ");
    return scheme === "Bearer" &&
      key &&
      (key.startsWith(SANDBOX_SENDGRID_KEY_PREFIX) || [...sendgridKeys].some((k) => sameSecret(k, key)))
      ? key
      : undefined;
  };
  const domainRecords = (d: { domain: string; subdomain: string; user: number }, valid: boolean) => ({
    mail_cname: { valid, type: "cname", host: `${d.subdomain}.${d.domain}`, data: `u${d.user}.wl.sendgrid.net` },
    dkim1: { valid, type: "cname", host: `s1._domainkey.${d.domain}`, data: `s1.domainkey.u${d.user}.wl.sendgrid.net` },
    dkim2: { valid, type: "cname", host: `s2._domainkey.${d.domain}`, data: `s2.domainkey.u${d.user}.wl.sendgrid.net` },
  });
  router.post("/sendgrid/v3/whitelabel/domains", express.json({ limit: "16kb" }), (req: Request, res: Response) => {
    const key = sendgridKeyOf(req);
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
    const key = sendgridKeyOf(req);
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

  const phones = createPhones({
    inboundUrl: options.inboundUrl,
    tokenOf: (accountSid) => twilioAccounts.get(accountSid) ?? sandboxTwilioToken(accountSid),
    resolveNumber: options.resolveNumber,
    remember,
  });
  // The page shows recipients and bodies without authentication: development only.
  if (options.page !== false)
    router.post("/twilio/inbound", express.urlencoded({ extended: false, limit: "16kb" }), phones.handleForm);

  if (options.page !== false)
    router.get("/", async (req: Request, res: Response) => {
      // Grouped by the account that sent them: the system's, or a tenant's own (src/sandbox/labels.ts).
      const labels = new Map<string, string>();
      for (const m of messages) {
        const key = `${m.provider}/${m.account}`;
        if (!labels.has(key)) labels.set(key, await groupHeading(m, options.describeAccount));
      }
      const textInForm = options.inboundUrl
        ? { action: `${req.baseUrl}/twilio/inbound`, exchanges: phones.exchanges }
        : undefined;
      res.type("html").send(sandboxPage(messages, (m) => labels.get(`${m.provider}/${m.account}`)!, keep, textInForm));
    });

  return {
    router,
    messages,
    get mailSendRequests() { return mailSendRequests; }, // prettier-ignore
    takePeakInFlight: () => [peakInFlight, (peakInFlight = requestsInFlight)][0]!,
    addTwilioAccount: (accountSid, authToken) => void twilioAccounts.set(accountSid, authToken),
    addSendGridKey: (apiKey) => void sendgridKeys.add(apiKey),
    setFaults: (next) => void (faults = { ...next }),
    sendgridPublicKey: eventKeys.publicKey.export({ type: "spki", format: "der" }).toString("base64"),
    signSendGridEvents: (timestamp, body) => sendgridSignature(eventKeys.privateKey, timestamp, body),
    setSendGridEventUrl: (url) => void (sendgridEventUrl = url),
    textIn: phones.textIn,
    settled: async () => {
      while (pending.size > 0) await Promise.all(pending);
    },
  };
}
