import type { Task } from "graphile-worker";
import { rowPayload, type RowPayload } from "../src/worker/row-task.ts";
import { providerClients, withTenantConnection } from "../src/worker/tenant-context.ts";

/**
 * A message's recipients become deliveries, FAN_OUT_BATCH at a time, each
 * batch its own transaction (herald_hidden.fan_out_batch: set-based, its jobs
 * queued by one add_jobs call). The message's cursor moves with each batch, so
 * a job that dies resumes where the last commit left it, and a cancellation
 * stops it between batches.
 */

declare global {
  namespace GraphileWorker {
    interface Tasks {
      message__fan_out: RowPayload;
    }
  }
}

export const FAN_OUT_BATCH = 2000;

const task: Task<"message__fan_out"> = async (rawPayload, helpers) => {
  const { tenant_id: tenantId, id: messageId } = rowPayload.parse(rawPayload);
  // Planned at the pace of the system number when that is what will send.
  const system = providerClients().system.twilio;
  const totals = { contacts: 0, queued: 0, skipped: 0 };
  await withTenantConnection(tenantId, async (transaction) => {
    for (;;) {
      const batch = await transaction(async (client) => {
        const { rows } = await client.query<{ contacts: number; queued: number; skipped: number; done: boolean }>(
          "select * from herald_hidden.fan_out_batch($1, $2, $3, $4)",
          [messageId, FAN_OUT_BATCH, system.smsFrom ?? null, system.messagesPerSecond ?? 1],
        );
        return rows[0]!;
      });
      totals.contacts += batch.contacts;
      totals.queued += batch.queued;
      totals.skipped += batch.skipped;
      if (batch.done) break;
    }
  });
  helpers.logger.info(`message ${messageId}: ${totals.contacts} recipients, ${totals.queued} queued, ${totals.skipped} skipped`);
};
export default task;
