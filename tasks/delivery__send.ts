import type { Task } from "graphile-worker";
import { runDelivery } from "../src/messages/deliver.ts";
import { rowPayload, type RowPayload } from "../src/worker/row-task.ts";
import { pacingPool, providerClients, withTenantConnection } from "../src/worker/tenant-context.ts";

/**
 * One recipient of one message (src/messages/deliver.ts). When the delivery is
 * held back (quiet hours, the monthly cap, pacing, a retry), the job queues its
 * own successor for that time and ends: the wait costs no worker.
 */

declare global {
  namespace GraphileWorker {
    interface Tasks {
      delivery__send: RowPayload;
    }
  }
}

const task: Task<"delivery__send"> = async (rawPayload, helpers) => {
  const payload = rowPayload.parse(rawPayload);
  const outcome = await withTenantConnection(payload.tenant_id, (transaction, lockClient) =>
    runDelivery({
      deliveryId: payload.id,
      tenantId: payload.tenant_id,
      transaction,
      lockClient,
      clients: providerClients(),
      pacingPool: pacingPool(),
    }),
  );
  if (outcome.kind === "later") {
    await helpers.addJob("delivery__send", payload, { runAt: outcome.until, maxAttempts: 25 });
  }
  if (outcome.kind === "failed") helpers.logger.info(`delivery ${payload.id} failed: ${outcome.reason}`);
};
export default task;
