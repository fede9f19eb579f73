import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { beforeAll } from "vitest";
import type { ApiServer } from "../../src/api/server.ts";
import { findFreePort } from "../../src/db/ports.ts";
import { SANDBOX_SYSTEM_TWILIO } from "../../src/sandbox/sandbox.ts";
import { inboundParams } from "../../src/sandbox/inbound.ts";
import { sendgridSignature, twilioSignature } from "../../src/sandbox/wire.ts";
import { useApiServer } from "./api.ts";
import type { TestDb } from "./db.ts";
import type { TenantFixture } from "./fixtures.ts";
import { asWorker } from "./messaging.ts";

/**
 * Calling Herald's webhooks the way Twilio and SendGrid do, and counting what
 * they wrote. Herald is reached at its local address, but providers sign the
 * public URL (HERALD_PUBLIC_URL) they were given: a TLS-terminating proxy sits
 * between them, as in production.
 */

export const PUBLIC_URL = "https://herald.example.test";
export const SYSTEM_TWILIO = SANDBOX_SYSTEM_TWILIO;

/** A SendGrid event-webhook key pair: the public half is what Herald is configured with. */
export function sendgridKeyPair(): { publicKey: string; privateKey: KeyObject } {
  const pair = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
  return {
    publicKey: pair.publicKey.export({ type: "spki", format: "der" }).toString("base64"),
    privateKey: pair.privateKey,
  };
}

/** The API server's environment for webhook tests: the system accounts' credentials, and the public URL. */
export const webhookEnv = (options: { publicUrl?: string; sendgridPublicKey?: string; port?: number } = {}) => ({
  HERALD_PUBLIC_URL: options.publicUrl ?? PUBLIC_URL,
  TWILIO_ACCOUNT_SID: SYSTEM_TWILIO.accountSid,
  TWILIO_AUTH_TOKEN: SYSTEM_TWILIO.authToken,
  SENDGRID_WEBHOOK_PUBLIC_KEY: options.sendgridPublicKey,
  ...(options.port ? { PORT: String(options.port) } : {}),
});

/**
 * The API server where providers can really call it back: on a port chosen
 * first, with that address as its public URL (what the sandbox posts to and
 * signs). Register it after any hook whose values `env` reads.
 */
export function useCallableApiServer(
  db: { current: TestDb },
  env: () => Record<string, string | undefined> = () => ({}),
) {
  const endpoint = { port: 0, publicUrl: "" };
  // Hooks run in the order registered: the port is chosen before the server starts on it.
  beforeAll(async () => {
    endpoint.port = await findFreePort();
    endpoint.publicUrl = `http://127.0.0.1:${endpoint.port}`;
  });
  const api = useApiServer(db, { env: () => ({ ...webhookEnv(endpoint), ...env() }) });
  return { api, endpoint };
}

export interface PostResult {
  status: number;
  body: string;
}

/**
 * A form POST to `path` as Twilio makes it, signed with `token` for
 * `signedFor` (default: the public URL of the path). `signature: null` sends none.
 */
export async function postTwilio(
  api: Pick<ApiServer, "url">,
  path: string,
  params: Record<string, string>,
  options: { token: string; signedFor?: string; signature?: string | null },
): Promise<PostResult> {
  const signature =
    options.signature === undefined
      ? twilioSignature(options.token, options.signedFor ?? `${PUBLIC_URL}${path}`, params)
      : options.signature;
  const response = await fetch(`${api.url}${path}`, {
    method: "POST",
    headers: {
      "content-type": "application/x-www-form-urlencoded",
      ...(signature === null ? {} : { "x-twilio-signature": signature }),
    },
    body: new URLSearchParams(params).toString(),
  });
  return { status: response.status, body: await response.text() };
}

/** Where Twilio posts a tenant's incoming texts. */
export const SMS = "/webhooks/twilio/sms";

/**
 * A text from `from` that reaches tenant `t` as Twilio posts it: to the
 * tenant's own number, signed with its account's token, unless told another
 * number (`to`) and the token of the account that owns it. `signedFor` as in
 * postTwilio (a server on a public URL of its own signs for that).
 */
export const textIn = (
  api: Pick<ApiServer, "url">,
  t: TenantFixture,
  text: {
    from: string;
    body: string;
    to?: string;
    token?: string;
    sid?: string;
    channel?: "sms" | "whatsapp";
    signedFor?: string;
  },
): Promise<PostResult> =>
  postTwilio(
    api,
    SMS,
    inboundText({
      from: text.from,
      to: text.to ?? t.senderNumber,
      body: text.body,
      sid: text.sid,
      channel: text.channel,
    }),
    {
      token: text.token ?? t.providerSecret,
      signedFor: text.signedFor,
    },
  );

let sid = 0;
/** A new Twilio MessageSid. */
export const messageSid = () => `SM${String(++sid).padStart(8, "0")}${"f".repeat(24)}`;

/** An inbound text from `from` to `to`, as Twilio posts it to /webhooks/twilio/sms. */
export const inboundText = (text: {
  from: string;
  to: string;
  body: string;
  accountSid?: string;
  channel?: "sms" | "whatsapp";
  sid?: string;
}) =>
  inboundParams(
    {
      url: "",
      authToken: "",
      accountSid: text.accountSid ?? SYSTEM_TWILIO.accountSid,
      from: text.from,
      to: text.to,
      body: text.body,
      channel: text.channel,
    },
    text.sid ?? messageSid(),
  );

/** SendGrid's POST of an event batch: `body` exactly as given (a string is sent byte for byte), signed over timestamp + body. */
export async function postSendGrid(
  api: Pick<ApiServer, "url">,
  path: string,
  body: string | unknown[],
  options: {
    /** The signing key, or a signer (the sandbox's). */
    key: KeyObject | ((timestamp: string, body: string) => string);
    timestamp?: number;
    /** Sign these bytes instead of the body sent. */
    signedBody?: string;
    signature?: string | null;
  },
): Promise<PostResult & { json?: Record<string, number> }> {
  const raw = typeof body === "string" ? body : JSON.stringify(body);
  const timestamp = String(options.timestamp ?? Math.floor(Date.now() / 1000));
  const sign =
    typeof options.key === "function"
      ? options.key
      : (ts: string, text: string) => sendgridSignature(options.key as KeyObject, ts, text);
  const signature = options.signature === undefined ? sign(timestamp, options.signedBody ?? raw) : options.signature;
  const response = await fetch(`${api.url}${path}`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      "x-twilio-email-event-webhook-timestamp": timestamp,
      ...(signature === null ? {} : { "x-twilio-email-event-webhook-signature": signature }),
    },
    body: raw,
  });
  const text = await response.text();
  let json: Record<string, number> | undefined;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: response.status, body: text, json };
}

/** Every row a webhook may write, per table, for every tenant: compared before and after an attack. */
export async function writtenRows(db: TestDb): Promise<Record<string, number | string>> {
  const tables = [
    "herald_public.inbound_messages",
    "herald_public.consent_events",
    "herald_public.delivery_events",
    "herald_public.contacts",
    "herald_public.suppressions",
    "herald_private.tenant_data_keys",
    "herald_public.audit_log",
    "herald_public.webhook_deliveries",
  ];
  // Reports acknowledged before the call (a worker's sends being called back) are applied first, so that
  // they do not count as written by what comes next; every report ever journaled moves the journal's sequence.
  await reportsApplied(db);
  const { rows } = await db.root.query(
    `select ${tables.map((t, i) => `(select count(*)::int from ${t}) as t${i}`).join(", ")},
            (select string_agg(id::text || status || coalesce(provider_message_id, ''), ',' order by id) from herald_public.deliveries) as deliveries,
            (select string_agg(id::text || sms_subscribed || whatsapp_subscribed || email_subscribed, ',' order by id) from herald_public.contacts) as flags,
            (select last_value::text || is_called from herald_hidden.provider_reports_id_seq) as journaled`,
  );
  const counts: Record<string, number | string> = {};
  tables.forEach((t, i) => (counts[t] = rows[0][`t${i}`]));
  return { ...counts, deliveries: rows[0].deliveries, flags: rows[0].flags, journaled: rows[0].journaled };
}

/** writtenRows without the journal: for reports that are the caller's own to make, verified, but must change nothing once applied. */
export async function appliedRows(db: TestDb): Promise<Record<string, number | string>> {
  const { journaled: _journaled, ...rest } = await writtenRows(db);
  return rest;
}

/** A delivery's status and provider id, and the provider's reports on it (applied or only recorded) in the order received. */
export async function deliveryState(db: TestDb, deliveryId: string) {
  const { rows } = await db.root.query(
    `select d.status, d.error_code, d.provider_message_id, d.completed_at is not null as completed,
            coalesce((select json_agg(json_build_object('event', e.event, 'applied', e.applied) order by e.received_at)
                        from herald_public.delivery_events e where e.delivery_id = d.id), '[]') as events
       from herald_public.deliveries d where d.id = $1`,
    [deliveryId],
  );
  return rows[0];
}

/** A contact of tenant `t` with this phone (and email), subscribed everywhere; its id. */
export async function contactWith(
  db: TestDb,
  t: TenantFixture,
  phone: string | null,
  options: { email?: string; firstName?: string } = {},
): Promise<string> {
  return asWorker(db, t, async (c) => {
    const { rows } = await c.query("select contact_id from herald_hidden.upsert_contacts($1)", [
      JSON.stringify([
        {
          phone,
          email: options.email ?? null,
          first_name: options.firstName ?? "Known",
          sms_subscribed: true,
          whatsapp_subscribed: true,
        },
      ]),
    ]);
    return rows[0].contact_id as string;
  });
}

/**
 * Resolves once every provider report acknowledged so far has been applied
 * (the journal is empty): status callbacks and SendGrid events are answered
 * when stored, and applied to deliveries right after.
 */
export async function reportsApplied(db: TestDb, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { rows } = await db.root.query("select count(*)::int as n from herald_hidden.provider_reports");
    if (rows[0].n === 0) return;
    if (Date.now() > deadline) throw new Error(`${rows[0].n} provider reports still waiting after ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
