import type pg from "pg";
import { SendError } from "../providers/errors.ts";
import { accountById, type TenantSettings } from "../providers/routing.ts";
import type { Route } from "../providers/transmit.ts";

/**
 * Sending through a Twilio Messaging Service (docs/messaging-services.md): an
 * SMS goes through one when its message names it (`metadata.messaging_service`,
 * checked when the message was written) or, with neither that nor a `from`,
 * through the tenant's default service. The route's account is the service's
 * own (the one Twilio knows it on), its sender the service's SID: Twilio picks
 * the pool number, and the SID is the pacing scope, so the whole pool goes at
 * the service's `messages_per_second`, however many numbers it has.
 */

export interface ServiceRoute {
  route: Route;
  messagesPerSecond: number;
}

/**
 * The service route of a delivery (undefined: not through a service), or the
 * refusal when the service it names is gone or its account is not active.
 */
export async function serviceRoute(
  client: pg.ClientBase,
  delivery: { channel: string; metadata: { from?: string; messaging_service?: string } },
  settings: TenantSettings,
): Promise<ServiceRoute | SendError | undefined> {
  if (delivery.channel !== "sms" || delivery.metadata.from) return undefined;
  const named = delivery.metadata.messaging_service ?? null;
  const { rows } = await client.query<{
    service_sid: string;
    messages_per_second: string;
    provider_account_id: string;
    active: boolean;
  }>(
    `select s.service_sid, s.messages_per_second, s.provider_account_id, a.status = 'active' as active
       from herald_public.messaging_services s
       join herald_public.provider_accounts a on a.tenant_id = s.tenant_id and a.id = s.provider_account_id
      where s.tenant_id = herald_public.current_tenant_id()
        and case when $1::text is null then s.is_default else s.service_sid = $1 end
      limit 1`,
    [named],
  );
  const service = rows[0];
  if (!service) {
    return named === null
      ? undefined
      : new SendError(`${named} is not one of this tenant's messaging services`, "tenant", "NOT_OWN_SENDER");
  }
  const account = service.active ? await accountById(client, service.provider_account_id) : undefined;
  if (!account)
    return new SendError(
      `the Twilio account of messaging service ${service.service_sid} is not active`,
      "tenant",
      "NO_SENDER",
    );
  return {
    route: { account, settings, from: service.service_sid, messagingServiceSid: service.service_sid },
    messagesPerSecond: Number(service.messages_per_second),
  };
}
