import type pg from "pg";
import { PERMANENT_CODES } from "../providers/errors.ts";
import { recordAccountNotes } from "../providers/routing.ts";
import { CARRIER_OPT_OUT, recordCarrierOptOut } from "./carrier-opt-out.ts";
import type { ClaimResult } from "./claim.ts";
import type { Dispatched, SendOutcome } from "./dispatch.ts";
import { holdMany, uncountMany, type Hold } from "./settle.ts";

/**
 * The third step of a run, in one transaction in the tenant: the providers'
 * answers written in sets — accepted (`sent`, with the provider's id; a final
 * status a callback set first stays), refused for good (`failed`), refused
 * for now (queued again, with backoff), in doubt (`unknown`, looked up
 * soon), found or not found by a lookup. Each statement touches only rows
 * still held by this run's claim (its time and this process): an answer
 * that comes after another run took a delivery over changes nothing.
 */

export const MAX_SEND_ATTEMPTS = 8;
/** How soon an uncertain send is looked up at the provider. */
const RECONCILE_DELAY_MS = 5_000;
/** How soon a lookup that got no answer is tried again. */
const LOOKUP_RETRY_MS = 15_000;

export interface Recorded {
  later: Hold[];
  failed: { id: string; reason: string }[];
  /** Provider errors that will be retried or looked up: logged once each, one line, by the task. */
  retried: { id: string; code: string | null; reason: string }[];
}

export async function recordOutcomes(
  client: pg.ClientBase,
  claim: ClaimResult,
  dispatched: Dispatched,
  processId: string,
): Promise<Recorded> {
  const mine = { stamp: claim.stamp, processId };
  const rows = new Map([
    ...claim.sends.map((s) => [s.delivery.id, { d: s.delivery, to: s.to }] as const),
    ...claim.reconciles.map((r) => [r.delivery.id, { d: r.delivery, to: r.to }] as const),
  ]);
  const sent: Extract<SendOutcome, { kind: "sent" }>[] = [];
  const holds: Hold[] = [];
  const uncount: string[] = [];
  const unattempt: string[] = [];
  const statuses: { id: string; status: "failed" | "unknown"; reason: string; code: string | null; final: boolean }[] =
    [];
  const optOuts: { to: string; channel: string }[] = [];
  const later: Hold[] = [];
  const failed: Recorded["failed"] = [];
  const retried: Recorded["retried"] = [];

  for (const outcome of dispatched.outcomes) {
    const row = rows.get(outcome.id)!;
    switch (outcome.kind) {
      case "sent":
        sent.push(outcome);
        break;
      case "deferred":
        // Not an attempt: nothing reached a provider.
        uncount.push(outcome.id);
        unattempt.push(outcome.id);
        holds.push({ id: outcome.id, until: outcome.until, hold: null, reason: null });
        break;
      case "absent":
        // Certainly not sent: its place under the cap is given back, and it is claimed afresh.
        uncount.push(outcome.id);
        holds.push({
          id: outcome.id,
          until: new Date(),
          hold: "retry",
          reason: "reconciled: not accepted, sending again",
        });
        break;
      case "email_unknown":
        statuses.push({
          id: outcome.id,
          status: "unknown",
          reason:
            "the provider may have accepted it; it cannot be looked up (email, WhatsApp through Meta), so it is not sent again",
          code: null,
          final: true,
        });
        break;
      case "lookup_failed":
        later.push({
          id: outcome.id,
          until: new Date(Date.now() + LOOKUP_RETRY_MS),
          hold: null,
          reason: `lookup failed: ${outcome.message}`,
        });
        retried.push({ id: outcome.id, code: null, reason: `lookup failed: ${outcome.message}` });
        break;
      case "error": {
        const error = outcome.error;
        const code = error.code === undefined ? null : String(error.code);
        if (error.uncertain) {
          statuses.push({
            id: outcome.id,
            status: "unknown",
            reason: `the provider may have accepted it: ${error.message}`,
            code,
            final: false,
          });
          later.push({
            id: outcome.id,
            until: new Date(Date.now() + RECONCILE_DELAY_MS),
            hold: null,
            reason: "reconcile",
          });
          retried.push({ id: outcome.id, code, reason: `uncertain, to be looked up: ${error.message}` });
          break;
        }
        uncount.push(outcome.id);
        const retryable =
          !PERMANENT_CODES.has(code ?? "") &&
          (error.status === 429 || code === "20429" || (error.status !== undefined && error.status !== 400));
        if (retryable && row.d.attempts + 1 < MAX_SEND_ATTEMPTS) {
          holds.push({
            id: outcome.id,
            until: new Date(Date.now() + backoffMs(row.d.attempts + 1)),
            hold: "retry",
            reason: `retrying: ${error.message}`.slice(0, 500),
          });
          retried.push({ id: outcome.id, code, reason: `retrying: ${error.message}` });
          break;
        }
        const reason = (retryable ? `gave up after ${row.d.attempts + 1} attempts: ` : "") + error.message;
        statuses.push({ id: outcome.id, status: "failed", reason, code, final: true });
        failed.push({ id: outcome.id, reason: error.message });
        if (code === CARRIER_OPT_OUT) optOuts.push({ to: row.to, channel: row.d.channel });
        break;
      }
    }
  }

  await recordSent(client, sent, mine);
  await setStatuses(client, statuses, mine);
  await uncountMany(client, uncount, mine);
  if (unattempt.length > 0) {
    await client.query(
      `update herald_public.deliveries set attempts = attempts - 1
        where tenant_id = herald_public.current_tenant_id() and id = any ($1::uuid[]) and claimed_at = $2::timestamptz and claimed_by = $3`,
      [unattempt, mine.stamp, mine.processId],
    );
  }
  later.push(...(await holdMany(client, holds, mine)));
  // A refused send gave its place under the cap back: what the cap held in this run may go now.
  if (uncount.length > 0 && claim.capped.length > 0) {
    later.push(
      ...(await holdMany(
        client,
        claim.capped.map((id) => ({ id, until: new Date(), hold: "monthly_cap" as const, reason: "monthly_cap" })),
      )),
    );
  }
  for (const o of optOuts) await recordCarrierOptOut(client, o.to, o.channel);
  await recordAccountNotes(client, dispatched.accountNotes);
  return { later, failed, retried };
}

/**
 * The provider accepted them. A status callback may have got here first (they
 * can outrun the SDK's answer): a final status it set stays.
 */
async function recordSent(
  client: pg.ClientBase,
  sent: Extract<SendOutcome, { kind: "sent" }>[],
  mine: { stamp: string; processId: string },
) {
  if (sent.length === 0) return;
  await client.query(
    `update herald_public.deliveries d
        set status = case when herald_hidden.delivery_is_final(d.status) then d.status else 'sent' end,
            reason = case when herald_hidden.delivery_is_final(d.status) then d.reason else x.reason end,
            error_code = case when herald_hidden.delivery_is_final(d.status) then d.error_code end,
            sent_at = coalesce(d.sent_at, now()), provider = x.provider, provider_account_id = x.account_id,
            provider_message_id = x.message_id, from_address = x.from_address,
            segments = case when d.channel = 'email' then null else herald_hidden.sms_segments(x.body) end
       from unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[])
              as x(id, provider, account_id, message_id, from_address, reason, body)
      where d.tenant_id = herald_public.current_tenant_id() and d.id = x.id and d.claimed_at = $8::timestamptz and d.claimed_by = $9`,
    [
      sent.map((s) => s.id),
      sent.map((s) => s.sent.provider),
      sent.map((s) => s.sent.accountId ?? null),
      sent.map((s) => s.sent.providerMessageId),
      sent.map((s) => s.sent.from),
      sent.map((s) => s.reason),
      // Segments are counted for SMS and WhatsApp only.
      sent.map((s) => (s.sent.from.includes("@") ? null : s.body)),
      mine.stamp,
      mine.processId,
    ],
  );
}

/**
 * `final`: nothing more will be tried (failed, or an email that cannot be
 * looked up). Only from `sending` or `unknown`: a provider's report that
 * arrived meanwhile (sent, delivered) knows better than a lost answer.
 */
async function setStatuses(
  client: pg.ClientBase,
  statuses: { id: string; status: "failed" | "unknown"; reason: string; code: string | null; final: boolean }[],
  mine: { stamp: string; processId: string },
) {
  if (statuses.length === 0) return;
  await client.query(
    `update herald_public.deliveries d
        set status = x.status, reason = x.reason, error_code = x.code, completed_at = case when x.final then now() end
       from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::boolean[]) as x(id, status, reason, code, final)
      where d.tenant_id = herald_public.current_tenant_id() and d.id = x.id and d.status in ('sending', 'unknown')
        and d.claimed_at = $6::timestamptz and d.claimed_by = $7`,
    [
      statuses.map((s) => s.id),
      statuses.map((s) => s.status),
      statuses.map((s) => s.reason.slice(0, 500)),
      statuses.map((s) => s.code),
      statuses.map((s) => s.final),
      mine.stamp,
      mine.processId,
    ],
  );
}

/** 2, 4, 8 … seconds, at most five minutes, with jitter so retries do not move in step. */
function backoffMs(attempt: number): number {
  return Math.min(2 ** attempt, 300) * 1000 * (0.75 + Math.random() * 0.5);
}
