import type { ProviderClients, TenantAccount } from "../providers/clients.ts";
import { accountById } from "../providers/routing.ts";
import { asAdminSession, withTenantContext } from "../worker/tenant-context.ts";
import { CARRIER_OPT_OUT, recordCarrierOptOut } from "./carrier-opt-out.ts";

/**
 * Status reconciliation. A delivery becomes `delivered`, `undelivered` or
 * `failed` when the provider's status callback arrives; providers do not retry
 * a callback that fails, so one lost while Herald (or its database) was down
 * would leave the delivery `sent` for ever. Here, a `sent` delivery with no
 * final status some time after it was sent is looked up at the provider:
 *
 * - SMS and WhatsApp: Twilio's Message fetch (`GET …/Messages/{Sid}.json`),
 *   through the account that sent it; a final status is applied exactly as
 *   its callback would have been (same event, same dedupe key: the callback,
 *   if it comes after all, is a duplicate). A message still on its way is
 *   looked up again after the same wait.
 * - Email: SendGrid has no per-message lookup (without the paid Email
 *   Activity add-on), so the delivery stays `sent`, with a reason that says
 *   so, and is not looked at again.
 *
 * In batches, oldest first, with a bound on requests in flight and per second
 * for each provider account (Twilio limits concurrent requests per account);
 * a 429 stops that account's lookups until the next run.
 */

/** Deliveries looked up per run; a full batch queues the next run at once. */
export const STATUS_CHECK_BATCH = 500;
/** Per provider account: requests in flight, and started per second. */
const PER_ACCOUNT_CONCURRENCY = 4;
const PER_ACCOUNT_PER_SECOND = 20;
/** Older than this, a delivery's status will not change any more: it is left alone. */
const LOOK_BACK = "3 days";

/** Twilio's final statuses, as the status callback maps them (src/provider-callbacks/twilio.ts). */
const FINAL_TWILIO_STATUS: Record<string, "delivered" | "undelivered" | "failed"> = {
  delivered: "delivered",
  read: "delivered",
  undelivered: "undelivered",
  failed: "failed",
};

const EMAIL_REASON = "no final report from the provider; email cannot be looked up at SendGrid";

interface Overdue {
  tenant_id: string;
  id: string;
  channel: "sms" | "whatsapp" | "email";
  provider: "tenant" | "system" | null;
  provider_account_id: string | null;
  provider_message_id: string | null;
}

interface Lookup {
  delivery: Overdue;
  route: TenantAccount | "system";
  /** The Twilio answer: a status, or nothing (not found, or an error already logged). */
  result?: { status: string; errorCode: string | null; to: string };
}

/** graphile-worker's job logger (or anything shaped like it). */
interface JobLogger {
  warn(message: string, meta?: Record<string, unknown>): void;
}

export interface StatusCheckResult {
  /** Overdue deliveries found in this run. */
  overdue: number;
  /** Deliveries whose final status the provider gave (applied, unless a report got there first). */
  settled: number;
  /** The batch was full: more are waiting. */
  full: boolean;
}

export async function checkOverdueStatuses(options: {
  afterMs: number;
  clients: ProviderClients;
  logger: JobLogger;
  batchSize?: number;
}): Promise<StatusCheckResult> {
  const batchSize = options.batchSize ?? STATUS_CHECK_BATCH;
  // Across tenants, read only (no index serves this: one on status would cost
  // every delivery update its HOT path; the scan runs once a minute).
  const overdue = await asAdminSession(async (client) => {
    await client.query("set local statement_timeout = '60s'");
    const { rows } = await client.query<Overdue>(
      `select tenant_id, id, channel, provider, provider_account_id, provider_message_id
         from herald_public.deliveries
        where status = 'sent' and completed_at is null
          and sent_at < now() - $1 * interval '1 millisecond' and sent_at > now() - $3::interval
          and (status_checked_at is null or status_checked_at < now() - $1 * interval '1 millisecond')
        order by coalesce(status_checked_at, sent_at)
        limit $2`,
      [options.afterMs, batchSize, LOOK_BACK],
    );
    return rows;
  });
  if (overdue.length === 0) return { overdue: 0, settled: 0, full: false };

  const byTenant = Map.groupBy(overdue, (d) => d.tenant_id);
  const lookups: Lookup[] = [];
  for (const [tenantId, deliveries] of byTenant) {
    const emails = deliveries.filter((d) => d.channel === "email" || !d.provider_message_id).map((d) => d.id);
    const texts = deliveries.filter((d) => d.channel !== "email" && d.provider_message_id);
    // The accounts that sent them, with their credentials (decrypted in the tenant's session only).
    const routes = await withTenantContext(tenantId, async (client) => {
      if (emails.length > 0) {
        await client.query(
          `update herald_public.deliveries set status_checked_at = now(), reason = $2
            where tenant_id = herald_public.current_tenant_id() and id = any($1::uuid[]) and status = 'sent'`,
          [emails, EMAIL_REASON],
        );
      }
      const accounts = new Map<string, TenantAccount | undefined>();
      for (const id of new Set(
        texts.filter((d) => d.provider === "tenant" && d.provider_account_id).map((d) => d.provider_account_id!),
      )) {
        accounts.set(id, await accountById(client, id));
      }
      return accounts;
    });
    for (const delivery of texts) {
      const route = delivery.provider === "tenant" ? routes.get(delivery.provider_account_id ?? "") : "system";
      // An account deleted since: nothing can look its messages up; the delivery is looked at again later, in vain.
      // Nor can a Meta account's (the Cloud API has no message lookup; its credential never goes to Twilio).
      if (route && (route === "system" || route.kind !== "meta")) lookups.push({ delivery, route });
    }
  }

  // Each account at its own pace, all accounts at once.
  const byRoute = Map.groupBy(lookups, (l) => (l.route === "system" ? "system" : l.route.id));
  await Promise.all([...byRoute.values()].map((group) => lookUp(group, options.clients, options.logger)));

  let settled = 0;
  for (const [tenantId, group] of Map.groupBy(lookups, (l) => l.delivery.tenant_id)) {
    settled += await withTenantContext(tenantId, async (client) => {
      let applied = 0;
      for (const { delivery, result } of group) {
        const final = result ? FINAL_TWILIO_STATUS[result.status] : undefined;
        if (result && final) {
          const sid = delivery.provider_message_id!;
          const { rows } = await client.query<{ outcome: string }>(
            "select outcome from herald_hidden.apply_delivery_event($1, $2, 'twilio', $3, $4, $5, $6, null)",
            [delivery.id, sid, result.status, final, `twilio:${sid}:${result.status}`.slice(0, 200), result.errorCode],
          );
          applied++;
          if (result.errorCode === CARRIER_OPT_OUT && rows[0]?.outcome !== "duplicate") {
            await recordCarrierOptOut(client, result.to.replace(/^whatsapp:/, ""), delivery.channel);
          }
        }
      }
      // Looked up (or tried): the next look waits its turn.
      await client.query(
        "update herald_public.deliveries set status_checked_at = now() where tenant_id = herald_public.current_tenant_id() and id = any($1::uuid[])",
        [group.map((l) => l.delivery.id)],
      );
      return applied;
    });
  }
  return { overdue: overdue.length, settled, full: overdue.length === batchSize };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** One account's lookups: at most PER_ACCOUNT_CONCURRENCY in flight, PER_ACCOUNT_PER_SECOND started a second; a 429 ends them. */
async function lookUp(group: Lookup[], clients: ProviderClients, logger: JobLogger): Promise<void> {
  const twilio = clients.twilioFor(group[0]!.route);
  let next = 0;
  let nextStart = Date.now();
  let halted = false;
  const lane = async () => {
    while (!halted && next < group.length) {
      const lookup = group[next++]!;
      const wait = nextStart - Date.now();
      nextStart = Math.max(nextStart, Date.now()) + 1000 / PER_ACCOUNT_PER_SECOND;
      if (wait > 0) await sleep(wait);
      try {
        const message = await twilio.messages(lookup.delivery.provider_message_id!).fetch();
        lookup.result = {
          status: message.status,
          errorCode: message.errorCode ? String(message.errorCode) : null,
          to: message.to,
        };
      } catch (error) {
        const { status, code } = error as { status?: number; code?: number };
        // One line per failure, no stack: the delivery and what the provider said.
        logger.warn(
          `status lookup for delivery ${lookup.delivery.id} failed: HTTP ${status ?? "-"}, code ${code ?? "-"}`,
          { delivery: lookup.delivery.id, status, code },
        );
        if (status === 429 || code === 20429) halted = true;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(PER_ACCOUNT_CONCURRENCY, group.length) }, lane));
}
