import type { TenantTransaction } from "../worker/tenant-context.ts";

/**
 * A message's recipients become deliveries, `batchSize` at a time, each batch
 * its own transaction (herald_hidden.fan_out_batch: set-based, its jobs queued
 * by one add_jobs call). The message's cursor moves with each batch, so a run
 * that dies resumes where the last commit left it, and a cancellation stops it
 * between batches.
 */

export const FAN_OUT_BATCH = 2000;

export interface FanOutTotals {
  contacts: number;
  queued: number;
  skipped: number;
  batches: number;
}

export async function fanOut(
  transaction: TenantTransaction,
  messageId: string,
  /** The system number and its rate, for planning the deliveries that will go out through it. */
  system: { smsFrom?: string; messagesPerSecond?: number },
  batchSize = FAN_OUT_BATCH,
): Promise<FanOutTotals> {
  const totals: FanOutTotals = { contacts: 0, queued: 0, skipped: 0, batches: 0 };
  // Segments are evaluated once, as fan-out starts: their members are kept for the batches to read.
  await transaction(async (client) => {
    await client.query("set local statement_timeout = '120s'");
    await client.query("select herald_hidden.snapshot_segment_audience($1)", [messageId]);
  });
  for (;;) {
    const batch = await transaction(async (client) => {
      // Transactional messages are planned (and their jobs prioritised) ahead of
      // marketing on the same sender: migration 000012.
      await client.query(
        `select set_config('herald.fan_out_purpose', coalesce((select m.purpose from herald_public.messages m
            where m.tenant_id = herald_public.current_tenant_id() and m.id = $1), 'marketing'), true)`,
        [messageId],
      );
      const { rows } = await client.query<{ contacts: number; queued: number; skipped: number; done: boolean }>(
        "select * from herald_hidden.fan_out_batch($1, $2, $3, $4)",
        [messageId, batchSize, system.smsFrom ?? null, system.messagesPerSecond ?? 1],
      );
      return rows[0]!;
    });
    totals.contacts += batch.contacts;
    totals.queued += batch.queued;
    totals.skipped += batch.skipped;
    totals.batches++;
    if (batch.done) {
      await transaction((client) => client.query("select herald_hidden.forget_segment_audience($1)", [messageId]));
      return totals;
    }
  }
}
