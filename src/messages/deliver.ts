import type pg from "pg";
import { sendEmail, SendDeferred, SendError, sendSms, statusCallbackUrl, type ProviderClients, type Sent } from "../providers/send.ts";
import { CARRIER_OPT_OUT, recordCarrierOptOut } from "./carrier-opt-out.ts";
import { decide, holdBack, sha256, type Decision, type DeliveryRow } from "./claim.ts";
import { gate } from "./pacing.ts";
import { findAcceptedSms } from "./reconcile.ts";
import type { Content } from "./render.ts";
import type { TenantTransaction } from "../worker/tenant-context.ts";

/**
 * One delivery, start to finish, as a state machine:
 *
 *   queued ──pace, claim──▶ sending ──accepted──▶ sent ──(callbacks)──▶ delivered | failed | undelivered
 *     │                 │ └─refused, permanent──▶ failed
 *     │                 │ └─429, refused for now──▶ queued (retry later, with backoff)
 *     │                 └─timeout, 5xx, crash──▶ unknown ──reconcile──▶ sent | queued (certainly not accepted)
 *     └─ skipped (unsubscribed, suppressed, no address, …) | canceled | held back (quiet hours, pacing, monthly cap)
 *
 * Each step is its own transaction; the job holds a session advisory lock on
 * the delivery for its whole run, so two jobs for one delivery (a retry and a
 * release, say) never work on it at once, and a `sending` delivery found
 * unlocked belongs to a worker that died or lost its connection (claim.ts
 * tells which, and waits out the second).
 */

/** A provider refusing the recipient, not the request: retrying cannot help. */
const PERMANENT_CODES = new Set(["21211", "21408", CARRIER_OPT_OUT, "21612", "21614", "30004", "63007", "NOT_OWN_SENDER", "NO_SENDER"]);
export const MAX_SEND_ATTEMPTS = 8;
/** How soon an uncertain send is looked up at the provider. */
const RECONCILE_DELAY_MS = 5_000;

export type Outcome = Decision | { kind: "sent"; sent: Sent } | { kind: "failed"; reason: string };

export async function runDelivery(options: {
  deliveryId: string;
  tenantId: string;
  transaction: TenantTransaction;
  lockClient: pg.ClientBase;
  clients: ProviderClients;
  pacingPool: pg.Pool;
  processId: string;
}): Promise<Outcome> {
  const { deliveryId, transaction } = options;
  const { rows } = await options.lockClient.query<{ locked: boolean }>(
    "select pg_try_advisory_lock(hashtext('herald.delivery'), hashtext($1)) as locked",
    [deliveryId],
  );
  if (!rows[0]!.locked) return { kind: "later", until: new Date(Date.now() + 5_000), reason: "busy in another job" };
  try {
    const decision = await transaction((client) => decide(client, deliveryId, options));
    if (decision.kind === "send") return await transaction((client) => send(client, options, decision));
    if (decision.kind === "reconcile") return await reconcile(options, decision.delivery, decision.to, decision.content);
    return decision;
  } finally {
    await options.lockClient.query("select pg_advisory_unlock(hashtext('herald.delivery'), hashtext($1))", [deliveryId]);
  }
}

async function send(
  client: pg.PoolClient,
  options: { tenantId: string; clients: ProviderClients; pacingPool: pg.Pool },
  claimed: Extract<Decision, { kind: "send" }>,
): Promise<Outcome> {
  const { delivery: d, to, content, route } = claimed;
  // Paced before the claim (claim.ts); only a fallback to the system's sender still needs a slot.
  const paceOthers = gate({ pacingPool: options.pacingPool, client, clients: options.clients, tenantId: options.tenantId, tenantStepMs: d.tenant_step_ms });
  const pace = async (from: string, channel: "sms" | "whatsapp" | "email") => {
    if (from !== route.from) await paceOthers(from, channel);
  };
  const known = { pace, account: route.account, settings: route.settings };
  try {
    // What the provider reports later finds this delivery by these: the status
    // callback's URL, SendGrid's custom args (src/webhooks/).
    const sent =
      d.channel === "email"
        ? await sendEmail(
            client,
            options.clients,
            {
              to,
              subject: content.subject ?? "",
              text: content.body,
              html: content.html_body ?? undefined,
              from: d.metadata.from,
              customArgs: { herald_tenant_id: options.tenantId, herald_delivery_id: d.id },
            },
            known,
          )
        : await sendSms(
            client,
            options.clients,
            { to, body: content.body, from: d.metadata.from, channel: d.channel, statusCallback: statusCallbackUrl(options.clients.system, options.tenantId, d.id) },
            known,
          );
    await recordSent(client, d, sent, content, null);
    return { kind: "sent", sent };
  } catch (error) {
    if (error instanceof SendDeferred) {
      // Not an attempt: nothing reached a provider.
      await uncount(client, d);
      await client.query("update herald_public.deliveries set attempts = attempts - 1 where tenant_id = herald_public.current_tenant_id() and id = $1", [d.id]);
      return holdBack(client, d.id, error.until, null);
    }
    if (!(error instanceof SendError)) throw error; // the transaction rolls back; the delivery stays `sending`
    const code = error.code === undefined ? null : String(error.code);
    if (error.uncertain) {
      await setStatus(client, d.id, "unknown", `the provider may have accepted it: ${error.message}`, code);
      return { kind: "later", until: new Date(Date.now() + RECONCILE_DELAY_MS), reason: "reconcile" };
    }
    await uncount(client, d);
    const retryable = !PERMANENT_CODES.has(code ?? "") && (error.status === 429 || code === "20429" || (error.status !== undefined && error.status !== 400));
    if (retryable && d.attempts + 1 < MAX_SEND_ATTEMPTS) {
      return holdBack(client, d.id, new Date(Date.now() + backoffMs(d.attempts + 1)), `retrying: ${error.message}`.slice(0, 500));
    }
    await setStatus(client, d.id, "failed", (retryable ? `gave up after ${d.attempts + 1} attempts: ` : "") + error.message, code);
    if (code === CARRIER_OPT_OUT) await recordCarrierOptOut(client, to, d.channel);
    return { kind: "failed", reason: error.message };
  }
}

/**
 * An `unknown` delivery: the provider may have it. SMS and WhatsApp are looked
 * up in the account's recent messages to the recipient: found, it is `sent`;
 * certainly absent, it goes back to the queue. Email cannot be looked up
 * (SendGrid has no per-message search without an add-on), so it stays
 * `unknown`, and is never resent.
 */
async function reconcile(
  options: { deliveryId: string; transaction: TenantTransaction; clients: ProviderClients },
  d: DeliveryRow,
  to: string,
  content: Content,
): Promise<Outcome> {
  const { transaction, clients, deliveryId } = options;
  if (d.channel === "email" || !to) {
    await transaction((client) =>
      setStatus(client, deliveryId, "unknown", "the provider may have accepted it; email cannot be looked up, so it is not sent again", null, true),
    );
    return { kind: "done", status: "unknown" };
  }
  const since = new Date((d.claimed_at ?? new Date()).getTime() - 60_000);
  // In its own transaction: the lookup needs the account's credential, decrypted in the tenant's session.
  const bodySha256 = d.content_sha256 ?? sha256(content.body);
  const found = await transaction((client) => findAcceptedSms(client, clients, { to, bodySha256, channel: d.channel as "sms" | "whatsapp", since }));
  return transaction(async (client) => {
    if (found) {
      await recordSent(client, d, found, content, "reconciled: the provider had accepted it");
      return { kind: "sent", sent: found } as Outcome;
    }
    // Certainly not sent: its place under the cap is given back, and it is claimed afresh.
    await uncount(client, d);
    return holdBack(client, deliveryId, new Date(), "reconciled: not accepted, sending again");
  });
}

/**
 * The provider accepted it. A status callback may have got here first (they
 * can outrun the SDK's answer): a final status it set stays.
 */
async function recordSent(client: pg.ClientBase, d: DeliveryRow, sent: Sent, content: Content, reason: string | null) {
  await client.query(
    `update herald_public.deliveries
        set status = case when herald_hidden.delivery_status_rank(status) = 3 then status else 'sent' end,
            reason = case when herald_hidden.delivery_status_rank(status) = 3 then reason else $6 end,
            error_code = case when herald_hidden.delivery_status_rank(status) = 3 then error_code end,
            sent_at = coalesce(sent_at, now()), provider = $2, provider_account_id = $3,
            provider_message_id = $4, from_address = $5,
            segments = case when channel = 'email' then null else herald_hidden.sms_segments($7) end
      where tenant_id = herald_public.current_tenant_id() and id = $1`,
    [d.id, sent.provider, sent.accountId ?? null, sent.providerMessageId, sent.from, reason, content.body],
  );
}

/**
 * `final`: nothing more will be tried (failed, or an email that cannot be
 * looked up). Only from `sending` or `unknown`: a provider's report that
 * arrived meanwhile (sent, delivered) knows better than a lost answer.
 */
async function setStatus(client: pg.ClientBase, deliveryId: string, status: "failed" | "unknown", reason: string, code: string | null, final = status === "failed") {
  await client.query(
    `update herald_public.deliveries
        set status = $2, reason = $3, error_code = $4, completed_at = case when $5 then now() end
      where tenant_id = herald_public.current_tenant_id() and id = $1 and status in ('sending', 'unknown')`,
    [deliveryId, status, reason.slice(0, 500), code, final],
  );
}

/** A claim that certainly reached no provider gives its place under the monthly cap back. */
async function uncount(client: pg.ClientBase, d: { id: string }) {
  await client.query(
    `select herald_hidden.uncount_toward_cap(counted_month) from herald_public.deliveries
      where tenant_id = herald_public.current_tenant_id() and id = $1 and counted_month is not null`,
    [d.id],
  );
  await client.query("update herald_public.deliveries set counted_month = null where tenant_id = herald_public.current_tenant_id() and id = $1", [d.id]);
}

/** 2, 4, 8 … seconds, at most five minutes, with jitter so retries do not move in step. */
function backoffMs(attempt: number): number {
  return Math.min(2 ** attempt, 300) * 1000 * (0.75 + Math.random() * 0.5);
}
