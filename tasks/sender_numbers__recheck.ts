import type { Task } from "graphile-worker";
import { queueStaleRechecks } from "../src/numbers/verify.ts";
import { asAdminSession } from "../src/worker/tenant-context.ts";

/**
 * Hourly (cron, one process at a time): verified numbers not confirmed by the
 * provider for a day are checked again, each in its own tenant's job — a
 * number released or moved at Twilio outside Herald stops routing to the
 * tenant that no longer holds it.
 */

declare global {
  namespace GraphileWorker {
    interface Tasks {
      sender_numbers__recheck: Record<string, never>;
    }
  }
}

const task: Task<"sender_numbers__recheck"> = async (_payload, helpers) => {
  const queued = await asAdminSession((client) => queueStaleRechecks(client));
  if (queued > 0) helpers.logger.info(`queued ${queued} sender number re-checks`);
};

export default task;
