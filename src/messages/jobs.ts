import type pg from "pg";

/**
 * One delivery__send job per delivery, all in one add_jobs call, on
 * graphile-worker's own connection (where the queue lives): for deliveries
 * made due again outside the fan-out (the cap raised, the sweep).
 */
export async function queueDeliveryJobs(
  queue: pg.ClientBase,
  deliveries: { tenant_id: string; id: string }[],
): Promise<void> {
  if (deliveries.length === 0) return;
  await queue.query(
    `select graphile_worker.add_jobs(array(
       select json_populate_record(null::graphile_worker.job_spec,
                json_build_object('identifier', 'delivery__send', 'payload', json_build_object('tenant_id', tenant_id, 'id', id), 'max_attempts', 25))
         from unnest($1::uuid[], $2::uuid[]) as d(tenant_id, id)))`,
    [deliveries.map((d) => d.tenant_id), deliveries.map((d) => d.id)],
  );
}
