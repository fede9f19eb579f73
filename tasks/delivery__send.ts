import type { Task } from "graphile-worker";
import { z } from "zod";
import { runDelivery, type Outcome } from "../src/messages/deliver.ts";
import { pacingPool, providerClients, withTenantConnection, workerProcessId } from "../src/worker/tenant-context.ts";

/**
 * Deliveries, one after the other on one connection (src/messages/deliver.ts):
 * the fan-out queues one job per run of deliveries planned close together
 * (`ids`); a delivery that must wait (quiet hours, the monthly cap, pacing, a
 * retry) gets a job of its own (`id`) for that time, and the wait costs no
 * worker. One delivery's unexpected error does not hold up the others: it is
 * retried in its own job.
 */

const payloadSchema = z.union([
  z.object({ tenant_id: z.uuid(), id: z.uuid() }),
  z.object({ tenant_id: z.uuid(), ids: z.array(z.uuid()).min(1).max(1000) }),
]);
type Payload = z.infer<typeof payloadSchema>;

declare global {
  namespace GraphileWorker {
    interface Tasks {
      delivery__send: Payload;
    }
  }
}

const task: Task<"delivery__send"> = async (rawPayload, helpers) => {
  const payload = payloadSchema.parse(rawPayload);
  const ids = "ids" in payload ? payload.ids : [payload.id];
  const own = (id: string, runAt?: Date) => helpers.addJob("delivery__send", { tenant_id: payload.tenant_id, id }, { runAt, maxAttempts: 25 });
  await withTenantConnection(payload.tenant_id, async (transaction, lockClient) => {
    for (const deliveryId of ids) {
      let outcome: Outcome;
      try {
        outcome = await runDelivery({ deliveryId, tenantId: payload.tenant_id, transaction, lockClient, clients: providerClients(), pacingPool: pacingPool(), processId: workerProcessId() });
      } catch (error) {
        if (ids.length === 1) throw error; // graphile-worker retries it, with backoff
        helpers.logger.error(`delivery ${deliveryId}: ${(error as Error).message}; retrying it in a job of its own`);
        await own(deliveryId);
        continue;
      }
      if (outcome.kind === "failed") helpers.logger.info(`delivery ${deliveryId} failed: ${outcome.reason}`);
      if (outcome.kind === "later") await own(deliveryId, outcome.until);
    }
  });
};

export default task;
