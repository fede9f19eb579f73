import type pg from "pg";
import type { ProviderClients } from "../providers/clients.ts";
import { emailIdentity } from "../providers/email-identity.ts";
import { SendError } from "../providers/errors.ts";
import { activeAccount, assertOwnSender, intendedSmsSender } from "../providers/routing.ts";
import type { Route } from "../providers/transmit.ts";
import type { DeliveryRow } from "./claim.ts";

/**
 * How a group of claimed deliveries (one channel, one requested sender) goes
 * out, decided before any provider is called: the account and sender
 * (routeFor), whether that sender may send for the tenant (senderRefusal),
 * and at what pace (messagesPerSecond).
 */

/** How a group of deliveries (one channel, one requested sender) will go out: the tenant's account (null: none), settings, sender. */
export async function routeFor(
  client: pg.ClientBase,
  clients: ProviderClients,
  d: DeliveryRow,
  settings: Route["settings"],
): Promise<Route | { refusal: string }> {
  const email = d.channel === "email";
  let account = (await activeAccount(client, email ? "sendgrid" : "twilio", d.channel)) ?? null;
  if (email) {
    const identity = await emailIdentity(client, clients, d.metadata, account, settings.fallback_to_system);
    return "refusal" in identity ? identity : { ...identity, settings };
  }
  const from = intendedSmsSender(
    clients,
    { from: d.metadata.from, channel: d.channel as "sms" | "whatsapp" },
    account ?? undefined,
    settings,
  );
  // A number an operator assigned the tenant is on the system account, and
  // only that account can send from it (a reply goes from the number the
  // contact wrote to, which may be one of those).
  if (from && account && (await onSystemAccount(client, from, d.channel))) account = null;
  return { account, settings, from };
}

async function onSystemAccount(client: pg.ClientBase, number: string, channel: string): Promise<boolean> {
  const { rows } = await client.query<{ system: boolean }>(
    `select provider_account_id is null as system from herald_public.sender_numbers
      where tenant_id = herald_public.current_tenant_id() and phone_number = $1 and channel = $2`,
    [number, channel],
  );
  return rows[0]?.system ?? false;
}

/** No sender, or one that is not the tenant's (nor the system's): a refusal before any provider is called. */
export async function senderRefusal(
  client: pg.ClientBase,
  clients: ProviderClients,
  channel: DeliveryRow["channel"],
  from: string | undefined,
): Promise<SendError | undefined> {
  if (!from) {
    return new SendError(
      channel === "email"
        ? "no sender address: give one or set HERALD_EMAIL_FROM"
        : "no sender number: set tenant_settings.sms_from or HERALD_SMS_FROM",
      "system",
      "NO_SENDER",
    );
  }
  try {
    await assertOwnSender(client, clients, channel, from);
    return undefined;
  } catch (error) {
    if (error instanceof SendError) return error;
    throw error;
  }
}

/** A tenant number's configured rate; the system number's from HERALD_SMS_FROM_MPS; 1 (a long code) otherwise. */
export async function messagesPerSecond(
  client: pg.ClientBase,
  clients: ProviderClients,
  from: string,
  channel: string,
): Promise<number> {
  if (from === clients.system.twilio.smsFrom) return clients.system.twilio.messagesPerSecond ?? 1;
  const { rows } = await client.query<{ mps: string }>(
    `select messages_per_second as mps from herald_public.sender_numbers
      where tenant_id = herald_public.current_tenant_id() and phone_number = $1 and channel = $2`,
    [from, channel],
  );
  return rows[0] ? Number(rows[0].mps) : 1;
}
