import type pg from "pg";

/**
 * While an operator has a tenant suspended, nothing leaves for its URLs: its
 * events are kept (pending, hold_reason `tenant_suspended`, this text in
 * last_error for people) and posted once it is resumed; tenant__release_held
 * finds them by their hold_reason.
 */
export const HELD_WHILE_SUSPENDED = "held: the tenant is suspended";

/** Until a resumption re-queues it, a held event is looked at again after this long. */
export const HELD_RECHECK_MS = 3_600_000;

/**
 * Queues the tenant's held events to be posted now, in its own webhook queue.
 * `client`: the tenant's session (RLS); `queue`: graphile-worker's connection.
 */
export async function releaseHeldWebhooks(
  client: pg.ClientBase,
  queue: pg.ClientBase,
  tenantId: string,
): Promise<number> {
  const { rows } = await client.query<{ id: string }>(
    `select id from herald_public.webhook_deliveries
      where tenant_id = herald_public.current_tenant_id() and status = 'pending' and hold_reason = 'tenant_suspended'`,
  );
  if (rows.length === 0) return 0;
  await queue.query("select herald_private.queue_webhook_delivery($1, id) from unnest($2::uuid[]) id", [
    tenantId,
    rows.map((r) => r.id),
  ]);
  return rows.length;
}
