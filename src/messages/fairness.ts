import type { JobHelpers } from "graphile-worker";

/**
 * Fairness between tenants. graphile-worker runs due jobs by priority, then
 * by run_at: a broadcast planned faster than the workers can send builds a
 * backlog of overdue jobs, and a job queued later — another tenant's one-time
 * code — would wait behind all of it. So when a run of a broadcast starts
 * more than LAG_MS late, its tenant's other overdue runs (jobs of several
 * deliveries, at the default priority) are moved to a lower priority, in
 * one statement: everything on time (single sends, other tenants' runs, the
 * tenant's own later runs) goes first, and the lagging broadcast takes the
 * room that is left. Its jobs keep their order among themselves, and nothing
 * is dropped. Runs of one delivery are never demoted.
 */

/** How late a run may start before its tenant's backlog yields. */
export const LAG_MS = 1_000;
/** graphile-worker's default priority (lower runs first), and the one lagging runs get. */
export const ON_TIME_PRIORITY = 0;
export const LAGGING_PRIORITY = 10;

export async function demoteLaggingRuns(helpers: JobHelpers, tenantId: string, runSize: number): Promise<number> {
  const job = helpers.job;
  if (runSize < 2 || job.priority !== ON_TIME_PRIORITY || Date.now() - new Date(job.run_at).getTime() < LAG_MS)
    return 0;
  const { rows } = await helpers.withPgClient((queue) =>
    queue.query<{ n: number }>(
      `select count(*)::int as n from graphile_worker.reschedule_jobs(array(
         select j.id from graphile_worker._private_jobs j
           join graphile_worker._private_tasks t on t.id = j.task_id
          where t.identifier = 'delivery__send' and j.priority = $2 and j.locked_at is null and j.run_at <= now()
            and j.payload ->> 'tenant_id' = $1 and json_array_length(coalesce(j.payload -> 'ids', '[]')) > 1),
         priority := $3)`,
      [tenantId, ON_TIME_PRIORITY, LAGGING_PRIORITY],
    ),
  );
  const demoted = rows[0]?.n ?? 0;
  if (demoted > 0) helpers.logger.info(`tenant ${tenantId}: ${demoted} overdue runs yield to work on time`);
  return demoted;
}
