import type { Task } from "graphile-worker";
import { checkOverdueStatuses } from "../src/messages/status-check.ts";
import { providerClients, statusCheckPolicy } from "../src/worker/tenant-context.ts";

/**
 * `sent` deliveries whose final status is overdue, looked up at the provider
 * (src/messages/status-check.ts). Queued by every worker process at its
 * interval under one job key and in one named queue, so one run waits and one
 * runs at a time across all of them; a full batch queues the next run at once.
 */

declare global {
  namespace GraphileWorker {
    interface Tasks {
      deliveries__check_status: Record<string, never>;
    }
  }
}

/** One pending run (the job key) and one run at a time (the queue), across all processes. */
export const STATUS_CHECK_JOB = { jobKey: "deliveries__check_status", queueName: "herald_status_check" } as const;

const task: Task<"deliveries__check_status"> = async (_payload, helpers) => {
  const result = await checkOverdueStatuses({
    afterMs: statusCheckPolicy().afterMs,
    clients: providerClients(),
    logger: helpers.logger,
  });
  if (result.overdue > 0)
    helpers.logger.info(`status check: ${result.overdue} overdue deliveries looked at, ${result.settled} settled`);
  if (result.full) {
    await helpers.addJob("deliveries__check_status", {}, { ...STATUS_CHECK_JOB, runAt: new Date(Date.now() + 1_000) });
  }
};

export default task;
