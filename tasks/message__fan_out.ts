import type { Task } from "graphile-worker";
import { fanOut } from "../src/messages/fan-out.ts";
import { rowPayload, type RowPayload } from "../src/worker/row-task.ts";
import { providerClients, withTenantConnection } from "../src/worker/tenant-context.ts";

/** A message's recipients become deliveries, in batches (src/messages/fan-out.ts). */

declare global {
  namespace GraphileWorker {
    interface Tasks {
      message__fan_out: RowPayload;
    }
  }
}

const task: Task<"message__fan_out"> = async (rawPayload, helpers) => {
  const { tenant_id: tenantId, id: messageId } = rowPayload.parse(rawPayload);
  const totals = await withTenantConnection(tenantId, (transaction) =>
    fanOut(transaction, messageId, providerClients().system.twilio),
  );
  helpers.logger.info(
    `message ${messageId}: ${totals.contacts} recipients, ${totals.queued} queued, ${totals.skipped} skipped`,
  );
};
export default task;
