import type { Task } from "graphile-worker";
import { applyWaitingReports } from "../src/provider-callbacks/reports.ts";
import { asAdminSession, withTenantContext } from "../src/worker/tenant-context.ts";

/**
 * Every minute (cron, one process at a time): provider reports acknowledged
 * to Twilio or SendGrid but still waiting in the journal — the process that
 * took them died before applying them, or the database refused the apply —
 * are applied now, tenant by tenant, inside each tenant. The webhook's own
 * applier normally gets to them within milliseconds; a report is only looked
 * at here once it has waited `STALE`, so the two rarely meet (and when they
 * do, each skips what the other holds).
 */

declare global {
  namespace GraphileWorker {
    interface Tasks {
      provider_reports__sweep: { olderThanSeconds?: number };
    }
  }
}

const STALE_SECONDS = 30;

const task: Task<"provider_reports__sweep"> = async (payload, helpers) => {
  const olderThan =
    typeof payload?.olderThanSeconds === "number" && payload.olderThanSeconds >= 0
      ? payload.olderThanSeconds
      : STALE_SECONDS;
  const tenants = await asAdminSession(async (client) => {
    const { rows } = await client.query<{ tenant_id: string; waiting: string }>(
      "select tenant_id, waiting from herald_hidden.provider_reports_waiting(make_interval(secs => $1))",
      [olderThan],
    );
    return rows;
  });
  let failed: unknown;
  for (const { tenant_id: tenantId, waiting } of tenants) {
    try {
      const tally = await applyWaitingReports((work) => withTenantContext(tenantId, work));
      helpers.logger.warn(
        `applied ${tally.taken} provider reports of tenant ${tenantId} left waiting (${waiting} had waited over ${olderThan} s)`,
      );
    } catch (error) {
      // The other tenants still get theirs; the job fails (and is retried) at the end.
      failed ??= error;
      helpers.logger.error(
        `could not apply the waiting provider reports of tenant ${tenantId}: ${(error as Error).message}`,
      );
    }
  }
  if (failed) throw failed;
};
export default task;
