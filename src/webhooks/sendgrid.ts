import { createPublicKey, verify, type KeyObject } from "node:crypto";
import express, { type Request, type Response, type Router } from "express";
import type pg from "pg";
import { z } from "zod";
import type { Logger } from "../logger.ts";
import { refuse } from "../api/responses.ts";
import { accountCredential, inTenant, inTenantWithoutKeys, TtlCache, verifiedWith, type WebhookContext } from "./tenant.ts";

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
    status: z.string().max(40).optional(),
    // Herald's custom args, set on every email it sends.
    herald_tenant_id: z.string().optional(),
    herald_delivery_id: z.string().optional(),
  })
  .loose();
type SendGridEvent = z.infer<typeof eventSchema>;

/** Events applied per transaction: a large batch does not hold one connection (and its row locks) for long. */
const EVENTS_PER_TRANSACTION = 250;

const uuid = z.uuid();
const asUuid = (value: unknown) => (uuid.safeParse(value).success ? (value as string) : null);

export interface EventTally {
  received: number;
  applied: number;
  recorded: number;
  duplicates: number;
  /** Naming no delivery Herald knows, or no tenant (system URL), or another tenant than the URL's. */
  ignored: number;
}

function publicKeyObject(base64Der: string): KeyObject {
  return createPublicKey({ key: Buffer.from(base64Der, "base64"), format: "der", type: "spki" });
}

function signatureValid(key: KeyObject, timestamp: string, body: Buffer, signature: string): boolean {
  try {
    return verify("sha256", Buffer.concat([Buffer.from(timestamp, "utf8"), body]), key, Buffer.from(signature, "base64"));
  } catch {
    return false; // a malformed signature is a wrong one
  }
}

/** One event, applied inside its tenant's transaction. */
async function applyEvent(client: pg.PoolClient, event: SendGridEvent, tally: EventTally) {
  const messageId = event.sg_message_id?.split(".")[0] || null;
  const dedupeKey = `sendgrid:${event.sg_event_id ?? `${event.sg_message_id}:${event.event}:${event.timestamp}`}`.slice(0, 200);
  const { rows } = await client.query<{ outcome: string }>(
    "select outcome from herald_hidden.apply_delivery_event($1, $2, 'sendgrid', $3, $4, $5, $6, $7)",
    [
      asUuid(event.herald_delivery_id),
      messageId,
      event.event,
      statusOf(event),
      dedupeKey,
      event.status ?? null,
      typeof event.timestamp === "number" ? new Date(event.timestamp * 1000) : null,
    ],
  );
  const outcome = rows[0]!.outcome;
  if (outcome === "duplicate") {
    tally.duplicates++;
    return;
  }
  if (outcome === "applied") tally.applied++;
  else if (outcome === "not_found") tally.ignored++;
  else tally.recorded++;
  // What the address's owner said (or the receiving server, for good): later sends must honour it.
  const email = event.email?.trim().toLowerCase();
  if (!email) return;
  if (event.event === "bounce" && event.type !== "blocked") {
    await client.query("select herald_public.add_suppression('email', $1, 'bounce', 'sendgrid: bounce')", [email]);
  } else if (["spamreport", "unsubscribe", "group_unsubscribe"].includes(event.event)) {
    await client.query("select herald_hidden.record_opt_out('email', $1, 'email', 'email_provider', $2)", [email, event.event]);
  }
}

export function sendgridWebhooks(options: SendGridWebhookOptions): Router {
  const { logger } = options;
  const keys = new TtlCache<KeyObject | undefined>(options.keyring.cacheTtlMs);
  // One tenant's events are applied one request at a time: a tenant posting many
  // large signed batches at once queues behind itself, not in front of everyone.
  const tenantQueues = new Map<string, Promise<unknown>>();
  const oneAtATime = <T>(tenantId: string, work: () => Promise<T>): Promise<T> => {
    const run = (tenantQueues.get(tenantId) ?? Promise.resolve()).catch(() => undefined).then(work);
    tenantQueues.set(tenantId, run);
    void run.finally(() => tenantQueues.get(tenantId) === run && tenantQueues.delete(tenantId)).catch(() => undefined);
    return run;
  };
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
      logger.warn({ tenant: tenantId, account: accountId }, "the account's webhookPublicKey is not a base64 DER public key");
      return undefined;
    }
  };

  const receive = (scope: "system" | "tenant") => async (req: Request, res: Response) => {
    const signature = req.get(SIGNATURE_HEADER);
    const timestamp = req.get(TIMESTAMP_HEADER);
    if (!signature || !timestamp) return refuse(res, 403, "MISSING_SIGNATURE", `${SIGNATURE_HEADER} and ${TIMESTAMP_HEADER} are required.`);
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
      verdict = await verifiedWith(keys, `${tenantId}/${accountId}`, () => tenantKey(tenantId!, accountId!), (key) =>
        signatureValid(key, timestamp, body, signature),
      );
    } else {
      verdict = systemKey ? (signatureValid(systemKey, timestamp, body, signature) ? "verified" : "forged") : "no_credential";
    }
    if (verdict !== "verified") {
      logger.warn({ tenant: urlTenant, verdict }, "refused SendGrid events: signature not verified");
      return refuse(
        res,
        403,
        "INVALID_SIGNATURE",
        verdict === "no_credential" ? "No event webhook verification key is configured for this account." : "The events are not signed by this account's key.",
      );
    }

    let events: SendGridEvent[];
    try {
      events = z.array(eventSchema).max(10_000).parse(JSON.parse(body.toString("utf8")));
    } catch {
      return refuse(res, 400, "BAD_REQUEST", "The body must be a JSON array of SendGrid events.");
    }

    // Each event to its tenant: the URL's (whose key verified), or on the system
    // URL the one Herald named when sending. An event naming another tenant than
    // the URL's is not that account's to report.
    const tally: EventTally = { received: events.length, applied: 0, recorded: 0, duplicates: 0, ignored: 0 };
    const byTenant = new Map<string, SendGridEvent[]>();
    for (const event of events) {
      const named = asUuid(event.herald_tenant_id);
      const tenant = urlTenant ?? named;
      if (!tenant || (urlTenant && named && named !== urlTenant)) {
        tally.ignored++;
        continue;
      }
      const list = byTenant.get(tenant);
      if (list) list.push(event);
      else byTenant.set(tenant, [event]);
    }
    for (const [tenantId, list] of byTenant) {
      // Events of this tenant in transactions already committed.
      let committed = 0;
      try {
        await oneAtATime(tenantId, async () => {
          for (let start = 0; start < list.length; start += EVENTS_PER_TRANSACTION) {
            const chunk = list.slice(start, start + EVENTS_PER_TRANSACTION);
            await inTenant(options, tenantId, async (client) => {
              for (const event of chunk) await applyEvent(client, event, tally);
            }, "sendgrid");
            committed += chunk.length;
          }
        });
      } catch (error) {
        // A tenant named in custom args that no longer exists: the rest of its events have nowhere to go.
        if ((error as Error).name === "KeyError") {
          tally.ignored += list.length - committed;
          continue;
        }
        throw error; // 500: SendGrid retries, and the dedupe keeps retries harmless
      }
    }
    logger.info({ tenant: urlTenant, ...tally }, "SendGrid events");
    res.json(tally);
  };

  router.post("/events", raw, receive("system"));
  router.post("/events/:tenantId/:accountId", raw, receive("tenant"));
  return router;
}
