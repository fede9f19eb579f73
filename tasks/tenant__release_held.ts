import { queueDeliveryJobs } from "../src/messages/jobs.ts";
import { releaseHeldWebhooks } from "../src/tenant-webhooks/held.ts";
import { rowTask, type RowPayload } from "../src/worker/row-task.ts";

/**
 * The tenant's monthly cap was raised, its send window or time zone changed,
 * or an operator resumed the suspended tenant: the deliveries held back for
 * any of those (hold_reason) are made due now and queued, in one add_jobs
 * call; each is decided again when its job runs — sent, or held until the
 * window's new opening. So are the events held for the tenant's webhook
 * endpoints. Their earlier jobs (the window's old opening, the month's turn)
 * stay, and find them sent or not yet due. The ids are read in the tenant's
 * session (RLS); the jobs are written on graphile-worker's own connection,
 * where the queue lives.
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
      where tenant_id = herald_public.current_tenant_id() and status = 'queued'
        and hold_reason in ('quiet_hours', 'monthly_cap', 'tenant_suspended')
      returning id`,
  );
  const events = await helpers.withPgClient(async (queue) => {
    if (rows.length > 0)
      await queueDeliveryJobs(
        queue,
        rows.map((r) => ({ tenant_id: tenantId, id: r.id })),
      );
    return releaseHeldWebhooks(client, queue, tenantId);
  });
  if (rows.length > 0) helpers.logger.info(`tenant ${tenantId}: ${rows.length} held deliveries released`);
  if (events > 0) helpers.logger.info(`tenant ${tenantId}: ${events} held webhook events released`);
});
