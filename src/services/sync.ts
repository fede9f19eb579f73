import type pg from "pg";
import { providerMessage, withoutAddresses } from "../providers/errors.ts";
import type { ProviderClients } from "../providers/clients.ts";
import { accountById } from "../providers/routing.ts";

/**
 * A Messaging Service's pool, imported from Twilio (docs/messaging-services.md):
 * the service's PhoneNumbers, listed through the tenant's own account (so a
 * service on another account is "not found", and a number listed there is
 * the tenant's by construction), written by herald_hidden.sync_pool_numbers
 * as verified sender numbers of the pool. Inbound texts to any of them then
 * route to the tenant like texts to any of its numbers.
 */

/** Twilio allows at most 400 numbers in a service: more is not read. */
export const MAX_POOL_NUMBERS = 400;
const E164 = /^\+[1-9]\d{6,14}$/;

export interface SyncOutcome {
  added: number;
  joined: number;
  removed: number;
  refused: number;
}

/** Syncs one service of the session's tenant (a worker job's transaction); its status and error record the outcome. */
export async function syncMessagingService(
  client: pg.ClientBase,
  clients: ProviderClients,
  serviceId: string,
): Promise<SyncOutcome | undefined> {
  const { rows } = await client.query<{ service_sid: string; provider_account_id: string }>(
    `select service_sid, provider_account_id from herald_public.messaging_services
      where tenant_id = herald_public.current_tenant_id() and id = $1`,
    [serviceId],
  );
  const service = rows[0];
  if (!service) return undefined; // removed since the job was queued
  const record = (status: "synced" | "failed", error: string | null) =>
    client.query(
      `update herald_public.messaging_services set status = $2, last_error = $3, last_synced_at = case when $2 = 'synced' then now() else last_synced_at end
        where tenant_id = herald_public.current_tenant_id() and id = $1`,
      [serviceId, status, error?.slice(0, 2000) ?? null],
    );
  const account = await accountById(client, service.provider_account_id);
  if (!account || account.kind !== "twilio") {
    await record("failed", "the service's provider account is not a Twilio account");
    return undefined;
  }
  let numbers: string[];
  try {
    const listed = await clients
      .twilioFor(account)
      .messaging.v1.services(service.service_sid)
      .phoneNumbers.list({ limit: MAX_POOL_NUMBERS, pageSize: 100 });
    numbers = [...new Set(listed.map((n) => n.phoneNumber).filter((n) => E164.test(n ?? "")))];
  } catch (error) {
    await record("failed", withoutAddresses(providerMessage(error)));
    return undefined;
  }
  const {
    rows: [outcome],
  } = await client.query<SyncOutcome>(
    "select added, joined, removed, refused from herald_hidden.sync_pool_numbers($1, $2)",
    [serviceId, numbers],
  );
  await record(
    "synced",
    outcome!.refused > 0 ? `${outcome!.refused} of the service's numbers belong to another Herald tenant` : null,
  );
  return outcome;
}
