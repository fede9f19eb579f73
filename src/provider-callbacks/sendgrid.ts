import { createPublicKey, verify, type KeyObject } from "node:crypto";
import express, { type Request, type Response, type Router } from "express";
import { z } from "zod";
import type { Logger } from "../logger.ts";
import { refuse } from "../api/responses.ts";
import type { ProviderReport, ProviderReports } from "./reports.ts";
import { retriable } from "./unavailable.ts";
import { accountCredential, inTenantWithoutKeys, TtlCache, verifiedWith, type WebhookContext } from "./tenant.ts";

/**
 * SendGrid's event webhook: `POST /webhooks/sendgrid/events` for the system
 * account, `POST /webhooks/sendgrid/events/<tenant id>/<account id>` for a
 * tenant's own SendGrid account (the URL its owner sets in SendGrid).
 *
 * SendGrid signs the timestamp header followed by the raw body with ECDSA
 * (P-256, SHA-256); the key to check it with is the tenant account's
 * `webhookPublicKey` or SENDGRID_WEBHOOK_PUBLIC_KEY. The raw bytes are
 * verified, never a re-serialisation (which would differ), and a timestamp
 * more than five minutes away is refused, so a captured request cannot be
 * replayed later. Then each event is applied inside its tenant: on a tenant's
 * URL, that tenant (its key proved it); on the system URL, the tenant Herald
 * named in the message's custom args when it sent it. SendGrid repeats
 * events: each is applied once, by `sg_event_id`.
 */

export interface SendGridWebhookOptions extends WebhookContext {
  /** SENDGRID_WEBHOOK_PUBLIC_KEY, or the sandbox's in development; absent: the system URL refuses everything. */
  systemPublicKey?: string;
  logger: Logger;
  /** The journal events are acknowledged into. */
  reports: ProviderReports;
}

export const SIGNATURE_HEADER = "x-twilio-email-event-webhook-signature";
export const TIMESTAMP_HEADER = "x-twilio-email-event-webhook-timestamp";
/** How far a signed timestamp may be from now. */
const MAX_SKEW_SECONDS = 300;

/** What an event makes of the delivery (null: nothing; recorded only). */
function statusOf(event: SendGridEvent): string | null {
  switch (event.event) {
    case "processed":
      return "sent";
    case "delivered":
    case "open":
    case "click":
      // Opened or clicked means delivered, whatever else arrived first.
      return "delivered";
    case "bounce":
      // `blocked` is the receiving server refusing this message for now, not the address.
      return event.type === "blocked" ? "undelivered" : "failed";
    case "dropped":
      return "failed";
    default:
      return null;
  }
}

const eventSchema = z
  .object({
    event: z.string().min(1).max(40),
    email: z.string().max(320).optional(),
    timestamp: z.number().optional(),
    sg_event_id: z.string().max(150).optional(),
    sg_message_id: z.string().max(300).optional(),
    type: z.string().max(40).optional(),
    // A click's link (any length here: one too long for the record is dropped, not the batch).
    url: z.string().optional(),
    status: z.string().max(40).optional(),
    // Herald's custom args, set on every email it sends.
    herald_tenant_id: z.string().optional(),
    herald_delivery_id: z.string().optional(),
  })
  .loose();
type SendGridEvent = z.infer<typeof eventSchema>;

const uuid = z.uuid();
const asUuid = (value: unknown) => (uuid.safeParse(value).success ? (value as string) : null);

/** The answer: events received, acknowledged (journaled for their tenants), and ignored (naming no tenant, or another than the URL's). */
export interface EventTally {
  received: number;
  accepted: number;
  ignored: number;
}

function publicKeyObject(base64Der: string): KeyObject {
  return createPublicKey({ key: Buffer.from(base64Der, "base64"), format: "der", type: "spki" });
}

function signatureValid(key: KeyObject, timestamp: string, body: Buffer, signature: string): boolean {
  try {
    return verify(
      "sha256",
      Buffer.concat([Buffer.from(timestamp, "utf8"), body]),
      key,
      Buffer.from(signature, "base64"),
    );
  } catch {
    return false; // a malformed signature is a wrong one
  }
}

/** A click's link as recorded: an http(s) URL of at most 2,048 characters, else none. */
const clickedUrl = (url: string | undefined) =>
  url !== undefined && url.length <= 2048 && /^https?:\/\/[^\s]+$/i.test(url) ? url : null;

/** What SendGrid reported about a delivery, as the journal keeps it. */
function reportOf(event: SendGridEvent): ProviderReport {
  const email = event.email?.trim().toLowerCase() || null;
  // What the address's owner said (or the receiving server, for good): later sends must honour it.
  const optOut =
    email === null
      ? null
      : event.event === "bounce" && event.type !== "blocked"
        ? "bounce"
        : ["spamreport", "unsubscribe", "group_unsubscribe"].includes(event.event)
          ? "email_opt_out"
          : null;
  return {
    provider: "sendgrid",
    delivery_id: asUuid(event.herald_delivery_id),
    provider_message_id: event.sg_message_id?.split(".")[0] || null,
    event: event.event,
    status: statusOf(event),
    dedupe_key: `sendgrid:${event.sg_event_id ?? `${event.sg_message_id}:${event.event}:${event.timestamp}`}`.slice(
      0,
      200,
    ),
    error_code: event.status?.slice(0, 50) ?? null,
    occurred_at:
      typeof event.timestamp === "number" && Number.isFinite(event.timestamp)
        ? new Date(event.timestamp * 1000).toISOString()
        : null,
    opt_out: optOut,
    channel: optOut ? "email" : null,
    address: optOut ? email : null,
    url: event.event === "click" ? clickedUrl(event.url) : null,
  };
}

export function sendgridWebhooks(options: SendGridWebhookOptions): Router {
  const { logger, reports } = options;
  const keys = new TtlCache<KeyObject | undefined>(options.keyring.cacheTtlMs);
  const systemKey = options.systemPublicKey ? publicKeyObject(options.systemPublicKey) : undefined;
  const router = express.Router();
  // The raw bytes, whatever the content type says: they are what was signed.
  // SendGrid's batches stay under 768 kB.
  const raw = express.raw({ type: () => true, limit: "2mb" });

  /** A tenant's SendGrid account's verification key, if it is one of the tenant's SendGrid accounts and has one. */
  const tenantKey = async (tenantId: string, accountId: string): Promise<KeyObject | undefined> => {
    const credential = await accountCredential(options, tenantId, accountId);
    if (!credential || credential.kind !== "sendgrid" || !credential.webhookPublicKey) return undefined;
    try {
      return publicKeyObject(credential.webhookPublicKey);
    } catch {
      logger.warn(
        { tenant: tenantId, account: accountId },
        "the account's webhookPublicKey is not a base64 DER public key",
      );
      return undefined;
    }
  };

  const receive = (scope: "system" | "tenant") => async (req: Request, res: Response) => {
    const signature = req.get(SIGNATURE_HEADER);
    const timestamp = req.get(TIMESTAMP_HEADER);
    if (!signature || !timestamp)
      return refuse(res, 403, "MISSING_SIGNATURE", `${SIGNATURE_HEADER} and ${TIMESTAMP_HEADER} are required.`);
    if (!/^\d{1,12}$/.test(timestamp) || Math.abs(Date.now() / 1000 - Number(timestamp)) > MAX_SKEW_SECONDS) {
      return refuse(res, 403, "STALE_TIMESTAMP", "The signed timestamp is more than five minutes away from now.");
    }
    const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);

    let urlTenant: string | undefined;
    let verdict: Awaited<ReturnType<typeof verifiedWith>>;
    if (scope === "tenant") {
      const tenantId = asUuid(req.params.tenantId);
      const accountId = asUuid(req.params.accountId);
      // Looked up without the tenant's keys: nothing may be written before verification.
      const exists =
        tenantId && accountId
          ? (
              await inTenantWithoutKeys(options, tenantId, (client) =>
                client.query(
                  "select 1 from herald_public.provider_accounts where tenant_id = herald_public.current_tenant_id() and id = $1 and kind = 'sendgrid'",
                  [accountId],
                ),
              )
            ).rowCount
          : 0;
      if (!exists) return refuse(res, 404, "UNKNOWN_ACCOUNT", "No such SendGrid account.");
      urlTenant = tenantId!;
      verdict = await verifiedWith(
        keys,
        `${tenantId}/${accountId}`,
        () => tenantKey(tenantId!, accountId!),
        (key) => signatureValid(key, timestamp, body, signature),
      );
    } else {
      verdict = systemKey
        ? signatureValid(systemKey, timestamp, body, signature)
          ? "verified"
          : "forged"
        : "no_credential";
    }
    if (verdict !== "verified") {
      logger.warn({ tenant: urlTenant, verdict }, "refused SendGrid events: signature not verified");
      return refuse(
        res,
        403,
        "INVALID_SIGNATURE",
        verdict === "no_credential"
          ? "No event webhook verification key is configured for this account."
          : "The events are not signed by this account's key.",
      );
    }

    let events: SendGridEvent[];
    try {
      events = z
        .array(eventSchema)
        .max(10_000)
        .parse(JSON.parse(body.toString("utf8")));
    } catch {
      return refuse(res, 400, "BAD_REQUEST", "The body must be a JSON array of SendGrid events.");
    }

    // Each event to its tenant: the URL's (whose key verified), or on the system
    // URL the one Herald named when sending. An event naming another tenant than
    // the URL's is not that account's to report.
    const tally: EventTally = { received: events.length, accepted: 0, ignored: 0 };
    const byTenant = new Map<string, ProviderReport[]>();
    for (const event of events) {
      const named = asUuid(event.herald_tenant_id);
      const tenant = urlTenant ?? named;
      if (!tenant || (urlTenant && named && named !== urlTenant)) {
        tally.ignored++;
        continue;
      }
      const list = byTenant.get(tenant);
      if (list) list.push(reportOf(event));
      else byTenant.set(tenant, [reportOf(event)]);
    }
    // Acknowledged once journaled for every tenant named; applied right after (src/provider-callbacks/reports.ts).
    await Promise.all(
      [...byTenant].map(async ([tenantId, list]) => {
        try {
          await reports.acknowledge(tenantId, list);
          tally.accepted += list.length;
        } catch (error) {
          // A tenant named in custom args that no longer exists: its events have nowhere to go.
          if ((error as Error).name === "KeyError" || (error as { code?: string }).code === "23503")
            tally.ignored += list.length;
          else throw error; // 500 (503 while the database is down): SendGrid retries, and the dedupe keeps retries harmless
        }
      }),
    );
    logger.debug({ tenant: urlTenant, ...tally }, "SendGrid events");
    res.json(tally);
  };

  router.post("/events", raw, retriable(receive("system"), logger));
  router.post("/events/:tenantId/:accountId", raw, retriable(receive("tenant"), logger));
  return router;
}
