import type pg from "pg";
import { SendDeferred } from "../providers/errors.ts";

/**
 * The send-time gate: slots are reserved in Postgres
 * (herald_private.reserve_send_slots) so that the tenant sends at most one
 * message per `interval / rate_batch_size` and each sender number at most its
 * `messages_per_second`, however many worker processes run. A run of
 * deliveries reserves its slots in one call, as many as open within the
 * horizon; the rest are not taken, and come back when the next one is free.
 * Each claimed send then starts at its slot (src/messages/dispatch.ts).
 *
 * Reservations run on their own (owner) connection, in their own
 * one-statement transaction, so nothing holds the pacing rows for longer.
 */

/**
 * How far ahead slots are reserved and deliveries claimed. Short, because a
 * claimed delivery is no longer re-checked: an opt-out that arrives later
 * than this before its slot no longer stops it.
 */
export const PACE_HORIZON_MS = 1_000;

export interface Slots {
  /** When each reserved slot opens (ms since the epoch, the database's clock). */
  times: number[];
  /** When the next slot after these is free. */
  nextFree: Date;
}

export async function reserveSlots(
  pacingPool: pg.Pool,
  request: {
    tenantId: string;
    tenantStepMs: number;
    sender: string | null;
    senderStepMs: number | null;
    wanted: number;
    horizonMs?: number;
  },
): Promise<Slots> {
  const { rows } = await pacingPool.query<{ first_at_ms: number; step_ms: number; granted: number }>(
    `select extract(epoch from r.first_at)::float8 * 1000 as first_at_ms,
            extract(epoch from r.step)::float8 * 1000 as step_ms, r.granted
       from herald_private.reserve_send_slots($1, make_interval(secs => $2::float8 / 1000.0), $3,
                                              make_interval(secs => coalesce($4::float8, 0) / 1000.0),
                                              make_interval(secs => $5::float8 / 1000.0), $6) r`,
    // A sender's scope is its channel and number (sender_numbers is unique on both).
    [
      request.tenantId,
      request.tenantStepMs,
      request.sender,
      request.senderStepMs,
      request.horizonMs ?? PACE_HORIZON_MS,
      request.wanted,
    ],
  );
  // On the database's clock, which the worker's is taken to follow (NTP): a time relative to the
  // answer would shift each run's slots by how long its answer took to arrive, and runs whose
  // answers took different times would send closer together than the pace allows.
  const { first_at_ms: first, step_ms: step, granted } = rows[0]!;
  const times = Array.from({ length: granted }, (_, i) => first + i * step);
  return { times, nextFree: new Date(first + granted * step) };
}

/** One slot for one send (a fallback to the system's number): waited for, or SendDeferred when beyond the horizon. */
export async function waitForSlot(
  pacingPool: pg.Pool,
  request: { tenantId: string; tenantStepMs: number; sender: string | null; senderStepMs: number | null },
): Promise<void> {
  const slots = await reserveSlots(pacingPool, { ...request, wanted: 1, horizonMs: 10_000 });
  if (slots.times.length === 0) throw new SendDeferred(slots.nextFree);
  await sleepUntil(slots.times[0]!);
}

export async function sleepUntil(at: number): Promise<void> {
  const wait = at - Date.now();
  if (wait > 0) await new Promise((resolve) => setTimeout(resolve, Math.ceil(wait)));
}
