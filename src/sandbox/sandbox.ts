import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import express, { type Request, type Response, type Router } from "express";

/**
 * The provider sandbox: a local stand-in for Twilio's Messages API and
 * SendGrid's v3 mail/send, spoken to by the real `twilio` and `@sendgrid/mail`
 * SDKs (src/providers/), so development and tests run offline with nothing
 * mocked below the SDK. It checks credentials like the real services, answers
 * with their JSON shapes and error codes, and keeps the recent messages for
 * the `/sandbox` page and for tests.
 *
 * Routes (relative to where the router is mounted):
 *   POST /twilio/2010-04-01/Accounts/:sid/Messages.json   form-encoded, HTTP Basic (sid:token)
 *   POST /sendgrid/v3/mail/send                           JSON, Bearer API key
 *   GET  /                                                 HTML list of recent messages (unless page: false)
 */

export type SandboxChannel = "sms" | "whatsapp" | "email";

export interface SandboxMessage {
  id: string;
  provider: "twilio" | "sendgrid";
  /** Twilio account SID, or the last 4 characters of the SendGrid key. */
  account: string;
  channel: SandboxChannel;
  from: string;
  to: string;
  subject?: string;
  body: string;
  createdAt: Date;
}

export interface Sandbox {
  router: Router;
  /** Newest last; at most `keep` of them. */
  messages: SandboxMessage[];
  addTwilioAccount(accountSid: string, authToken: string): void;
  addSendGridKey(apiKey: string): void;
}

const E164 = /^\+[1-9]\d{6,14}$/;

/**
 * Credentials the sandbox accepts without being told: a Twilio account's auth
 * token is `sandbox:<AccountSid>`, and any SendGrid key starting `SG.sandbox.`
 * is valid. Tenants use these in development; anything else is refused
 * exactly as the real services refuse a wrong credential.
 */
export const sandboxTwilioToken = (accountSid: string) => `sandbox:${accountSid}`;
export const SANDBOX_SENDGRID_KEY_PREFIX = "SG.sandbox.";
/** The system account in sandbox mode (no TWILIO_* / SENDGRID_API_KEY configured). */
export const SANDBOX_SYSTEM_TWILIO = { accountSid: `AC${"0".repeat(32)}`, authToken: sandboxTwilioToken(`AC${"0".repeat(32)}`) };
export const SANDBOX_SYSTEM_SENDGRID_KEY = `${SANDBOX_SENDGRID_KEY_PREFIX}system`;
const EMAIL = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;
const sha256 = (text: string) => createHash("sha256").update(text).digest();
const sameSecret = (a: string, b: string) => timingSafeEqual(sha256(a), sha256(b));

function twilioError(res: Response, status: number, code: number, message: string) {
  res.status(status).json({ code, message, more_info: `https://www.twilio.com/docs/errors/${code}`, status });
}

function sendgridError(res: Response, status: number, message: string, field: string | null = null) {
  res.status(status).json({ errors: [{ message, field, help: null }] });
}

const escapeHtml = (text: string) =>
  text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);

export function createSandbox(options: { keep?: number; page?: boolean } = {}): Sandbox {
  const keep = options.keep ?? 500;
  const twilioAccounts = new Map<string, string>();
  const sendgridKeys = new Set<string>();
  const messages: SandboxMessage[] = [];
  const remember = (message: SandboxMessage) => {
    messages.push(message);
    if (messages.length > keep) messages.splice(0, messages.length - keep);
  };

  const router = express.Router();

  router.post("/twilio/2010-04-01/Accounts/:sid/Messages.json", express.urlencoded({ extended: false, limit: "64kb" }), (req: Request, res: Response) => {
    const sid = String(req.params.sid);
    const [scheme, encoded] = (req.headers.authorization ?? "").split(" ");
    const [user, ...rest] = Buffer.from(encoded ?? "", "base64").toString("utf8").split(":");
    const token = twilioAccounts.get(sid) ?? sandboxTwilioToken(sid);
    if (scheme !== "Basic" || user !== sid || token === undefined || !sameSecret(rest.join(":"), token)) {
      return twilioError(res, 401, 20003, "Authenticate");
    }
    const { To: to = "", From: from = "", Body: body = "" } = req.body as Record<string, string>;
    const whatsapp = to.startsWith("whatsapp:");
    const toNumber = whatsapp ? to.slice("whatsapp:".length) : to;
    if (!E164.test(toNumber)) return twilioError(res, 400, 21211, `The 'To' number ${to} is not a valid phone number.`);
    if (!from) return twilioError(res, 400, 21603, "A 'From' phone number is required.");
    if (whatsapp !== from.startsWith("whatsapp:")) {
      return twilioError(res, 400, 63007, "Twilio could not find a Channel with the specified From address");
    }
    if (!body.trim()) return twilioError(res, 400, 21602, "Message body is required.");
    if (body.length > 1600) return twilioError(res, 400, 21617, "The concatenated message body exceeds the 1600 character limit.");

    const messageSid = `SM${randomBytes(16).toString("hex")}`;
    const now = new Date();
    remember({ id: messageSid, provider: "twilio", account: sid, channel: whatsapp ? "whatsapp" : "sms", from, to, body, createdAt: now });
    const uri = `/2010-04-01/Accounts/${sid}/Messages/${messageSid}.json`;
    res.status(201).json({
      account_sid: sid,
      api_version: "2010-04-01",
      body,
      date_created: now.toUTCString(),
      date_sent: null,
      date_updated: now.toUTCString(),
      direction: "outbound-api",
      error_code: null,
      error_message: null,
      from,
      messaging_service_sid: null,
      num_media: "0",
      num_segments: String(Math.max(1, Math.ceil(body.length / 153))),
      price: null,
      price_unit: "USD",
      sid: messageSid,
      status: "queued",
      subresource_uris: { media: uri.replace(".json", "/Media.json") },
      to,
      uri,
    });
  });

  router.post("/sendgrid/v3/mail/send", express.json({ limit: "1mb" }), (req: Request, res: Response) => {
    const [scheme, key] = (req.headers.authorization ?? "").split(" ");
    if (scheme !== "Bearer" || !key || !(key.startsWith(SANDBOX_SENDGRID_KEY_PREFIX) || [...sendgridKeys].some((k) => sameSecret(k, key)))) {
      return sendgridError(res, 401, "The provided authorization grant is invalid, expired, or revoked");
    }
    const mail = req.body as {
      personalizations?: { to?: { email?: string }[] }[];
      from?: { email?: string };
      subject?: string;
      content?: { type?: string; value?: string }[];
    };
    const recipients = (mail.personalizations ?? []).flatMap((p) => p.to ?? []);
    if (recipients.length === 0) return sendgridError(res, 400, "The personalizations field is required and must have at least one personalization.", "personalizations");
    const badRecipient = recipients.findIndex((r) => !EMAIL.test(r.email ?? ""));
    if (badRecipient >= 0) return sendgridError(res, 400, "Does not contain a valid address.", `personalizations.0.to.${badRecipient}.email`);
    if (!EMAIL.test(mail.from?.email ?? "")) return sendgridError(res, 400, "The from object must be provided for every email send.", "from");
    if (!mail.subject) return sendgridError(res, 400, "The subject is required.", "subject");
    const body = (mail.content ?? []).find((c) => c.type === "text/plain")?.value ?? mail.content?.[0]?.value ?? "";
    if (!body) return sendgridError(res, 400, "The content value must be a string at least one character in length.", "content.0.value");

    const messageId = randomBytes(16).toString("base64url");
    for (const r of recipients) {
      remember({ id: messageId, provider: "sendgrid", account: `…${key.slice(-4)}`, channel: "email", from: mail.from!.email!, to: r.email!, subject: mail.subject, body, createdAt: new Date() });
    }
    res.setHeader("X-Message-Id", messageId);
    res.status(202).end();
  });

  // The page shows recipients and bodies without authentication: development only.
  if (options.page !== false) router.get("/", (_req: Request, res: Response) => {
    const rows = [...messages]
      .reverse()
      .map(
        (m) =>
          `<tr><td>${m.createdAt.toISOString()}</td><td>${escapeHtml(m.provider)}</td><td>${escapeHtml(m.account)}</td><td>${m.channel}</td>` +
          `<td>${escapeHtml(m.from)}</td><td>${escapeHtml(m.to)}</td><td>${escapeHtml(m.subject ?? "")}</td><td>${escapeHtml(m.body)}</td></tr>`,
      )
      .join("\n");
    res.type("html").send(`<!doctype html><html><head><meta charset="utf-8"><title>Herald sandbox</title>
<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}</style></head>
<body><h1>Herald sandbox</h1><p>What would have reached a phone or an inbox (newest first, last ${keep} kept in memory).</p>
<table><tr><th>when</th><th>provider</th><th>account</th><th>channel</th><th>from</th><th>to</th><th>subject</th><th>body</th></tr>
${rows || '<tr><td colspan="8">Nothing sent yet.</td></tr>'}</table></body></html>`);
  });

  return {
    router,
    messages,
    addTwilioAccount: (accountSid, authToken) => void twilioAccounts.set(accountSid, authToken),
    addSendGridKey: (apiKey) => void sendgridKeys.add(apiKey),
  };
}
