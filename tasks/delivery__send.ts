import type { Task } from "graphile-worker";
import { z } from "zod";
import { runDeliveries } from "../src/messages/deliver.ts";
import { demoteLaggingRuns } from "../src/messages/fairness.ts";
import { processSendLimiter } from "../src/messages/limiter.ts";
import type { Hold } from "../src/messages/settle.ts";
import { pacingPool, providerClients, withTenantContext, workerProcessId } from "../src/worker/tenant-context.ts";

/**
 * A run of deliveries (src/messages/deliver.ts): the fan-out queues one job
 * per run of deliveries planned close together (`ids`, up to 1,000: email
 * goes out in SendGrid batches of that size); what must wait (quiet hours,
 * the monthly cap, pacing, a retry, a lookup) gets a job for that time, one
 * per group due together, and the wait costs no worker.
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
  await demoteLaggingRuns(helpers, payload.tenant_id, ids.length);
  const result = await runDeliveries(ids, {
    tenantId: payload.tenant_id,
    clients: providerClients(),
    pacingPool: pacingPool(),
    processId: workerProcessId(),
    limiter: processSendLimiter(),
    session: (work) => withTenantContext(payload.tenant_id, work),
  });
  for (const f of result.failed) helpers.logger.info(`delivery ${f.id} failed: ${f.reason}`);
  // One line per provider error, with no stack: a provider having a bad minute must not flood the log.
  for (const r of result.retried)
    helpers.logger.warn(`delivery ${r.id}: provider error${r.code ? ` ${r.code}` : ""}, ${r.reason.slice(0, 200)}`);
  // One job per group due at the same moment (those paced out of this run come back together).
  const byTime = new Map<number, Hold[]>();
  for (const hold of result.later) {
    const group = byTime.get(hold.until.getTime());
    if (group) group.push(hold);
    else byTime.set(hold.until.getTime(), [hold]);
  }
  for (const [at, holds] of byTime) {
    const later = holds.map((h) => h.id);
    for (let i = 0; i < later.length; i += 1000) {
      const chunk = later.slice(i, i + 1000);
      await helpers.addJob(
        "delivery__send",
        chunk.length === 1
          ? { tenant_id: payload.tenant_id, id: chunk[0]! }
          : { tenant_id: payload.tenant_id, ids: chunk },
        { runAt: new Date(at), maxAttempts: 25, priority: helpers.job.priority },
      );
    }
  }
};

export default task;
