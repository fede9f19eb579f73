import type { Task } from "graphile-worker";
import type pg from "pg";
import { HELD_RECHECK_MS, HELD_WHILE_SUSPENDED } from "../src/tenant-webhooks/held.ts";
import { postJson, type PostResult } from "../src/tenant-webhooks/post.ts";
import { SIGNATURE_HEADER, signatureHeader } from "../src/tenant-webhooks/signature.ts";
import { rowPayload, type RowPayload } from "../src/worker/row-task.ts";
import { webhookPolicy, withTenantContext } from "../src/worker/tenant-context.ts";

/**
 * One event to one of a tenant's endpoints (a webhook_deliveries row, queued
 * by its insert). Read in the tenant's session (the endpoint's secret, and
 * for an inbound message its sender and text, decrypted then and never
 * stored with the event), posted outside any transaction, signed
 * (`Herald-Signature`, src/tenant-webhooks/signature.ts), and recorded. A failure
 * is tried again after a doubling wait, up to the policy's attempts; failures
 * in a row across events disable the endpoint.
 */

declare global {
  namespace GraphileWorker {
    interface Tasks {
      webhook_deliveries__send: RowPayload;
    }
  }
}

interface Pending {
  id: string;
  event_id: string;
  event_type: string;
  payload: Record<string, unknown>;
  status: string;
  attempts: number;
  created_at: Date;
  url: string;
  endpoint_id: string;
  endpoint_status: string;
  secret: string;
  tenant_suspended: boolean;
  private_fields: Record<string, unknown> | null;
}

const load = (client: pg.ClientBase, id: string) =>
  client.query<Pending>(
    `select w.id, w.event_id, w.event_type, w.payload, w.status, w.attempts, w.created_at, e.url, e.id as endpoint_id,
            e.status as endpoint_status, herald_hidden.webhook_endpoint_secret(e.id) as secret,
            (select t.status = 'suspended' from herald_public.tenants t where t.id = w.tenant_id) as tenant_suspended,
            case when w.event_type = 'inbound.received' then (
              select json_build_object('from', herald_public.inbound_messages_from(i), 'body', herald_public.inbound_messages_body(i))
                from herald_public.inbound_messages i
               where i.tenant_id = w.tenant_id and i.id = (w.payload ->> 'inbound_message_id')::uuid) end as private_fields
       from herald_public.webhook_deliveries w
       join herald_public.webhook_endpoints e on e.tenant_id = w.tenant_id and e.id = w.endpoint_id
      where w.tenant_id = herald_public.current_tenant_id() and w.id = $1`,
    [id],
  );

const task: Task<"webhook_deliveries__send"> = async (rawPayload, helpers) => {
  const { tenant_id: tenantId, id } = rowPayload.parse(rawPayload);
  const pending = (await withTenantContext(tenantId, (client) => load(client, id))).rows[0];
  if (!pending || pending.status !== "pending") return; // gone with its endpoint, or done already
  if (pending.endpoint_status !== "active") {
    await withTenantContext(tenantId, (client) => finish(client, pending, "failed", null, "the endpoint is disabled"));
    return;
  }
  if (pending.tenant_suspended) {
    // Kept, not counted as an attempt: posted when an operator resumes the tenant (tenant__release_held).
    await withTenantContext(tenantId, (client) =>
      client.query(
        `update herald_public.webhook_deliveries set hold_reason = 'tenant_suspended', last_error = $2
          where tenant_id = herald_public.current_tenant_id() and id = $1`,
        [id, HELD_WHILE_SUSPENDED],
      ),
    );
    await helpers.withPgClient((queue) =>
      queue.query("select herald_private.queue_webhook_delivery($1, $2, $3)", [
        tenantId,
        id,
        new Date(Date.now() + HELD_RECHECK_MS),
      ]),
    );
    return;
  }
  // Only a post needs the policy (a worker without one fails the job here, for one that has it).
  const policy = webhookPolicy();

  const body = JSON.stringify({
    id: pending.event_id,
    type: pending.event_type,
    created_at: pending.created_at,
    tenant_id: tenantId,
    data: { ...pending.payload, ...(pending.private_fields ?? {}) },
  });
  const result: PostResult = await postJson(
    pending.url,
    body,
    {
      [SIGNATURE_HEADER]: signatureHeader(pending.secret, Math.floor(Date.now() / 1000), body),
      "herald-event": pending.event_type,
      "herald-event-id": pending.event_id,
      "herald-delivery": pending.id,
    },
    policy,
  );

  if (result.kind === "answered" && result.status >= 200 && result.status < 300) {
    await withTenantContext(tenantId, async (client) => {
      await finish(client, pending, "succeeded", result.status, null);
      await client.query(
        "update herald_public.webhook_endpoints set consecutive_failures = 0 where tenant_id = herald_public.current_tenant_id() and id = $1 and consecutive_failures > 0",
        [pending.endpoint_id],
      );
    });
    return;
  }
  const error = result.kind === "answered" ? `the endpoint answered ${result.status}` : result.error;
  const status = result.kind === "answered" ? result.status : null;
  const retryAt = await withTenantContext(tenantId, async (client) => {
    const { rows } = await client.query<{ disabled: boolean }>(
      // One more failure in a row; at the limit, the endpoint is disabled in the same statement (its status trigger stamps when).
      `update herald_public.webhook_endpoints
          set consecutive_failures = consecutive_failures + 1,
              status = case when consecutive_failures + 1 >= $2 then 'disabled' else status end,
              disabled_reason = case when consecutive_failures + 1 >= $2
                                     then left('disabled after ' || (consecutive_failures + 1) || ' failed attempts in a row; the last: ' || $3, 500)
                                     else disabled_reason end
        where tenant_id = herald_public.current_tenant_id() and id = $1
        returning status = 'disabled' as disabled`,
      [pending.endpoint_id, policy.disableAfter, error],
    );
    if (rows[0]?.disabled) {
      await finish(client, pending, "failed", status, error);
      return null;
    }
    if (result.kind === "refused" || pending.attempts + 1 >= policy.maxAttempts) {
      await finish(client, pending, "failed", status, error);
      return null;
    }
    await finish(client, pending, "pending", status, error);
    return new Date(Date.now() + Math.min(policy.retryBaseMs * 2 ** pending.attempts, 3_600_000));
  });
  // In the tenant's own queue, as the first try was (one post at a time per tenant).
  if (retryAt)
    await helpers.withPgClient((queue) =>
      queue.query("select herald_private.queue_webhook_delivery($1, $2, $3)", [tenantId, id, retryAt]),
    );
};

/** Records one attempt: the delivery's state after it, the endpoint's answer (if any) and the error. */
async function finish(
  client: pg.ClientBase,
  pending: Pending,
  status: "pending" | "succeeded" | "failed",
  responseStatus: number | null,
  error: string | null,
) {
  await client.query(
    `update herald_public.webhook_deliveries
        set status = $2, hold_reason = null, attempts = attempts + 1, response_status = $3, last_error = $4, last_attempt_at = now(),
            delivered_at = case when $2 = 'succeeded' then now() end
      where tenant_id = herald_public.current_tenant_id() and id = $1`,
    [pending.id, status, responseStatus, error?.slice(0, 500) ?? null],
  );
}

export default task;
