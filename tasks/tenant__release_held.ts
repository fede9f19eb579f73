import { rowTask, type RowPayload } from "../src/worker/row-task.ts";

/**
 * The tenant's monthly cap was raised: the deliveries it held back are queued
 * to send now, in one add_jobs call. Their jobs at the month's turn stay and
 * find them sent. The ids are read in the tenant's session (RLS); the jobs are
 * written on graphile-worker's own connection, where the queue lives.
 */

declare global {
  namespace GraphileWorker {
    interface Tasks {
      tenant__release_held: RowPayload;
    }
  }
}

export default rowTask(async (client, tenantId, helpers) => {
  // Due now (a delivery's job does not send it before its run_at).
  const { rows } = await client.query<{ id: string }>(
    `update herald_public.deliveries set run_at = now()
      where tenant_id = herald_public.current_tenant_id() and status = 'queued' and reason = 'monthly_cap'
      returning id`,
  );
  if (rows.length === 0) return;
  await helpers.withPgClient((queue) =>
    queue.query(
      `select graphile_worker.add_jobs(array(
         select json_populate_record(null::graphile_worker.job_spec,
                  json_build_object('identifier', 'delivery__send', 'payload', json_build_object('tenant_id', $1::uuid, 'id', id), 'max_attempts', 25))
           from unnest($2::uuid[]) as id))`,
      [tenantId, rows.map((r) => r.id)],
    ),
  );
  helpers.logger.info(`tenant ${tenantId}: ${rows.length} deliveries held by the monthly cap released`);
});
