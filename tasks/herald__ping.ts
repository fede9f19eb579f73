import { hostname } from "node:os";
import type { Task } from "graphile-worker";
import { z } from "zod";
import { withTenantContext } from "../src/worker/tenant-context.ts";

/** Queued by the insert trigger on herald_hidden.pings; answers the ping as herald_worker. */

const payloadSchema = z.object({ tenant_id: z.uuid(), id: z.uuid() });

declare global {
  namespace GraphileWorker {
    interface Tasks {
      herald__ping: z.infer<typeof payloadSchema>;
    }
  }
}

const task: Task<"herald__ping"> = async (rawPayload, helpers) => {
  // Old jobs may predate this code: check the shape instead of trusting it.
  const payload = payloadSchema.parse(rawPayload);
  const answered = await withTenantContext(payload.tenant_id, async (client) => {
    const { rowCount } = await client.query(
      `update herald_hidden.pings
          set answered_at = now(), answered_by = $2
        where tenant_id = herald_public.current_tenant_id() and id = $1 and answered_at is null`,
      [payload.id, `${hostname()}:${process.pid}`],
    );
    return rowCount ?? 0;
  });
  helpers.logger.debug(`ping ${payload.id} ${answered ? "answered" : "already answered or gone"}`);
};

export default task;
