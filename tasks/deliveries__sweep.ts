import type { Task } from "graphile-worker";
import { queueDeliveryJobs } from "../src/messages/jobs.ts";
import { asAdminSession } from "../src/worker/tenant-context.ts";

/**
 * Every five minutes (cron, one process at a time): deliveries still open long
 * after they should have moved on, and with no job that will ever run them —
 * a job that used up its attempts, one lost to an operator's cleanup — get a
 * job again. Nothing waits forever. Found as herald_admin (across tenants,
 * read only); the queue is checked and written on graphile-worker's connection.
 */

declare global {
  namespace GraphileWorker {
    interface Tasks {
      deliveries__sweep: Record<string, never>;
    }
  }
}

/** Open for this long past its time, a delivery is looked at. */
const STALE = "10 minutes";
const LIMIT = 10_000;

const task: Task<"deliveries__sweep"> = async (_payload, helpers) => {
  // Oldest first, so that a backlog larger than LIMIT still moves through.
  // (No index serves this scan: one on status would cost every delivery's
  // updates their HOT path. Fine at a few million rows every five minutes.)
  const stale = await asAdminSession(async (client) => {
    await client.query("set local statement_timeout = '60s'");
    const { rows } = await client.query<{ tenant_id: string; id: string }>(
      `select tenant_id, id from herald_public.deliveries
        where completed_at is null
          and ((status = 'queued' and run_at < now() - $1::interval)
               or (status in ('sending', 'unknown') and updated_at < now() - $1::interval))
        order by run_at
        limit $2`,
      [STALE, LIMIT],
    );
    return rows;
  });
  if (stale.length === 0) return;
  const { rows: orphans } = await helpers.withPgClient((queue) =>
    queue.query<{ tenant_id: string; id: string }>(
      `with pending as materialized (
         select (case jsonb_typeof(j.payload::jsonb -> 'ids')
                   when 'array' then j.payload::jsonb -> 'ids'
                   else jsonb_build_array(j.payload::jsonb -> 'id') end) as ids
           from graphile_worker._private_jobs j
           join graphile_worker._private_tasks t on t.id = j.task_id
          where t.identifier = 'delivery__send' and j.attempts < j.max_attempts
       ),
       pending_ids as materialized (
         select x as id from pending, jsonb_array_elements_text(pending.ids) x where x is not null
       )
       select s.tenant_id, s.id from unnest($1::uuid[], $2::uuid[]) as s(tenant_id, id)
        where not exists (select 1 from pending_ids p where p.id = s.id::text)`,
      [stale.map((d) => d.tenant_id), stale.map((d) => d.id)],
    ),
  );
  if (orphans.length === 0) return;
  await helpers.withPgClient((queue) => queueDeliveryJobs(queue, orphans));
  helpers.logger.warn(`${orphans.length} open deliveries had no job; queued them again`);
};
export default task;
