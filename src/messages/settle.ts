import type pg from "pg";
import type { HoldReason } from "./decide.ts";

/**
 * Writing deliveries' fates in sets: one statement for every delivery of a
 * run that ends (skipped, canceled, failed before any provider call), one for
 * every delivery held back (with why and until when).
 */

export interface Hold {
  id: string;
  until: Date;
  /** The kind of hold, written to hold_reason (null: merely paced, or not held in the database at all). */
  hold: HoldReason | null;
  /** Why it waits, for people (null: merely paced). */
  reason: string | null;
}

/** Ends deliveries that will never be attempted (or are canceled, or refused before a call). */
export async function finishMany(
  client: pg.ClientBase,
  finishes: { id: string; status: "skipped" | "canceled" | "failed"; reason: string; code?: string }[],
): Promise<void> {
  if (finishes.length === 0) return;
  await client.query(
    `update herald_public.deliveries d
        set status = x.status, reason = x.reason, hold_reason = null, error_code = x.code, completed_at = now(),
            attempts = d.attempts + case when x.status = 'failed' then 1 else 0 end
       from unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) as x(id, status, reason, code)
      where d.tenant_id = herald_public.current_tenant_id() and d.id = x.id`,
    [
      finishes.map((f) => f.id),
      finishes.map((f) => f.status),
      finishes.map((f) => f.reason.slice(0, 500)),
      finishes.map((f) => f.code ?? null),
    ],
  );
}

/**
 * Keeps deliveries queued, saying why and until when — unless a provider's
 * report has meanwhile shown one accepted (a status callback for an `unknown`
 * one, say): that one is not sent again. Returns the holds that took.
 */
export async function holdMany(
  client: pg.ClientBase,
  holds: Hold[],
  onlyClaim?: { stamp: string; processId: string },
): Promise<Hold[]> {
  if (holds.length === 0) return [];
  const { rows } = await client.query<{ id: string }>(
    `update herald_public.deliveries d set status = 'queued', reason = x.reason, hold_reason = x.hold, run_at = x.until
       from unnest($1::uuid[], $2::timestamptz[], $3::text[], $6::text[]) as x(id, until, reason, hold)
      where d.tenant_id = herald_public.current_tenant_id() and d.id = x.id and d.status in ('queued', 'sending', 'unknown')
        and ($4::timestamptz is null or (d.claimed_at = $4::timestamptz and d.claimed_by = $5))
     returning d.id`,
    [
      holds.map((h) => h.id),
      holds.map((h) => h.until),
      holds.map((h) => h.reason),
      onlyClaim?.stamp ?? null,
      onlyClaim?.processId ?? null,
      holds.map((h) => h.hold),
    ],
  );
  const held = new Set(rows.map((r) => r.id));
  return holds.filter((h) => held.has(h.id));
}

/** One delivery held back (tests, and anything deciding on a single delivery): `later` if it took, else `done` with the status a report left. */
export async function holdBack(
  client: pg.ClientBase,
  deliveryId: string,
  until: Date,
  reason: string | null,
  hold: HoldReason | null = null,
): Promise<{ kind: "done"; status: string } | { kind: "later"; until: Date; reason: string }> {
  const held = await holdMany(client, [{ id: deliveryId, until, hold, reason }]);
  if (held.length > 0) return { kind: "later", until, reason: reason ?? "paced" };
  const { rows } = await client.query<{ status: string }>(
    "select status from herald_public.deliveries where tenant_id = herald_public.current_tenant_id() and id = $1",
    [deliveryId],
  );
  return { kind: "done", status: rows[0]?.status ?? "gone" };
}

/** Claims that certainly reached no provider give their places under the monthly cap back. */
export async function uncountMany(
  client: pg.ClientBase,
  ids: string[],
  claim?: { stamp: string; processId: string },
): Promise<void> {
  if (ids.length === 0) return;
  await client.query(
    `with given as (
       update herald_public.deliveries d set counted_month = null
         from herald_public.deliveries prior
        where d.tenant_id = herald_public.current_tenant_id() and d.id = any ($1::uuid[])
          and prior.tenant_id = d.tenant_id and prior.id = d.id and prior.counted_month is not null
          and ($2::timestamptz is null or (d.claimed_at = $2::timestamptz and d.claimed_by = $3))
       returning prior.counted_month as month)
     select herald_hidden.uncount_toward_cap_many(month, count(*)::integer) from given group by month`,
    [ids, claim?.stamp ?? null, claim?.processId ?? null],
  );
}

/**
 * When a delivery held by the cap looks again: at the month's turn, unless
 * sends of its message are in flight (counted, not yet accepted or refused),
 * whose refusal would give a place back: then shortly. (Its own message only:
 * that is what the index on (tenant_id, message_id) answers cheaply.)
 */
export async function capReopens(client: pg.ClientBase, messageId: string, claimedBy: string): Promise<Date> {
  // Not those this run claims: their answers come back to this run, which looks again if one is refused.
  const { rows } = await client.query(
    `select exists (select 1 from herald_public.deliveries x
                     where x.tenant_id = herald_public.current_tenant_id() and x.message_id = $1
                       and x.status = 'sending' and x.counted_month is not null
                       and not (x.claimed_at = now() and x.claimed_by = $2)) as in_flight`,
    [messageId, claimedBy],
  );
  const now = new Date();
  return rows[0]?.in_flight
    ? new Date(now.getTime() + 30_000)
    : new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1));
}
