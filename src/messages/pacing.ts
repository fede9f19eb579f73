import type pg from "pg";
import { SendDeferred, type ProviderClients } from "../providers/send.ts";

/**
 * The send-time gate: before each provider call, a slot is reserved in
 * Postgres (herald_private.reserve_send_slot) so that the tenant sends at most
 * one message per `interval / rate_batch_size` and each sender number at most
 * its `messages_per_second`, however many worker processes run. A slot within
 * the horizon is waited for; a later one is not taken, and the delivery is
 * handed back with the time to come back (`SendDeferred`).
 *
 * Reservations run on their own connection, in their own one-statement
 * transaction, so a slow provider never holds the pacing rows.
 */

/** How long a job may wait in-process for its slot before it gives the slot back and is rescheduled. */
export const PACE_HORIZON_MS = 10_000;

export function gate(options: {
  /** A pool that can run herald_private functions (the worker's owner connection). */
  pacingPool: pg.Pool;
  /** The job's tenant session: sender numbers' rates are read there, under RLS. */
  client: pg.ClientBase;
  clients: ProviderClients;
  tenantId: string;
  tenantStepMs: number;
}): (from: string, channel: "sms" | "whatsapp" | "email") => Promise<number> {
  // Resolves with the milliseconds waited.
  return async (from, channel) => {
    const senderStepMs = channel === "email" ? null : 1000 / (await messagesPerSecond(options.client, options.clients, from, channel));
    const { rows } = await options.pacingPool.query<{ wait_ms: number; slot: Date }>(
      `select s.slot, greatest(0, extract(epoch from s.slot - clock_timestamp()) * 1000)::float8 as wait_ms
         from (select herald_private.reserve_send_slot($1, make_interval(secs => $2 / 1000.0), $3,
                                                       make_interval(secs => coalesce($4, 0) / 1000.0),
                                                       make_interval(secs => $5 / 1000.0)) as slot) s`,
      // A sender's scope is its channel and number (sender_numbers is unique on both).
      [options.tenantId, options.tenantStepMs, senderStepMs === null ? null : `${channel}:${from}`, senderStepMs, PACE_HORIZON_MS],
    );
    const { wait_ms: waitMs, slot } = rows[0]!;
    if (waitMs > PACE_HORIZON_MS) throw new SendDeferred(slot);
    if (waitMs > 0) await new Promise((resolve) => setTimeout(resolve, Math.ceil(waitMs)));
    return waitMs;
  };
}

/** A tenant number's configured rate; the system number's from HERALD_SMS_FROM_MPS; 1 (a long code) otherwise. */
async function messagesPerSecond(client: pg.ClientBase, clients: ProviderClients, from: string, channel: string): Promise<number> {
  if (from === clients.system.twilio.smsFrom) return clients.system.twilio.messagesPerSecond ?? 1;
  const { rows } = await client.query<{ mps: string }>(
    `select messages_per_second as mps from herald_public.sender_numbers
      where tenant_id = herald_public.current_tenant_id() and phone_number = $1 and channel = $2`,
    [from, channel],
  );
  return rows[0] ? Number(rows[0].mps) : 1;
}
