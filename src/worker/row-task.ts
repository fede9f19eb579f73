import type { JobHelpers, Task } from "graphile-worker";
import type pg from "pg";
import { z } from "zod";
import { withTenantContext } from "./tenant-context.ts";

/**
 * Jobs queued by herald_private.tg__add_job carry the row's (tenant_id, id).
 * A row task checks that shape (old jobs may not match new code) and runs its
 * work inside that tenant's context.
 */
export const rowPayload = z.object({ tenant_id: z.uuid(), id: z.uuid() });
export type RowPayload = z.infer<typeof rowPayload>;

export function rowTask(work: (client: pg.PoolClient, rowId: string, helpers: JobHelpers) => Promise<void>): Task {
  return async (rawPayload, helpers) => {
    const payload = rowPayload.parse(rawPayload);
    await withTenantContext(payload.tenant_id, (client) => work(client, payload.id, helpers));
  };
}
