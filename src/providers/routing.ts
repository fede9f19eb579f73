import type pg from "pg";
import type { ProviderClients, TenantAccount } from "./clients.ts";
import { SendError } from "./errors.ts";

/**
 * Which account and which sender a tenant's send goes through, looked up in
 * a worker job's tenant context (the pg client is that transaction: RLS, the
 * tenant's keys): the tenant's active account of the right kind, else the
 * system's; the sender by the documented order, and only one the tenant owns
 * (herald_hidden.sender_refusal, the rule the API applies too). And what
 * sends taught about a tenant's account, recorded on it (last_error).
 */

/** A tenant account with its decrypted credential and default senders (for the channel), as the worker sees it. */
const accountSelect = (condition: string) => `
  select a.id, a.kind, a.twilio_account_sid, a.twilio_api_key_sid, a.updated_at, s.secret, a.meta_phone_number_id,
         (select n.phone_number from herald_public.sender_numbers n
           where n.tenant_id = a.tenant_id and n.provider_account_id = a.id and n.channel = $2 and n.status = 'verified'
           order by n.created_at limit 1) as default_number,
         (select e.from_email::text from herald_public.email_senders e
           where e.tenant_id = a.tenant_id and e.provider_account_id = a.id order by e.created_at limit 1) as default_email
    from herald_public.provider_accounts a, herald_hidden.provider_account_secret(a.id) s
   where a.tenant_id = herald_public.current_tenant_id() and ${condition}`;

export async function activeAccount(
  client: pg.ClientBase,
  kind: "twilio" | "sendgrid",
  channel = "sms",
): Promise<TenantAccount | undefined> {
  // WhatsApp goes through the tenant's active Meta account when it has one (src/providers/meta.ts).
  if (kind === "twilio" && channel === "whatsapp") {
    const meta = await client.query<TenantAccount>(accountSelect("a.kind = $1 and a.status = 'active'"), [
      "meta",
      channel,
    ]);
    if (meta.rows[0]) return meta.rows[0];
  }
  const { rows } = await client.query<TenantAccount>(accountSelect("a.kind = $1 and a.status = 'active'"), [
    kind,
    channel,
  ]);
  return rows[0];
}

/** One account of the session's tenant (none for another tenant's id). */
export async function accountById(
  client: pg.ClientBase,
  accountId: string,
  channel = "sms",
): Promise<TenantAccount | undefined> {
  const { rows } = await client.query<TenantAccount>(accountSelect("a.id = $1"), [accountId, channel]);
  return rows[0];
}

export async function tenantSettings(
  client: pg.ClientBase,
): Promise<{ fallback_to_system: boolean; sms_from: string | null }> {
  const { rows } = await client.query(
    "select fallback_to_system, sms_from from herald_public.tenant_settings where tenant_id = herald_public.current_tenant_id()",
  );
  return rows[0] ?? { fallback_to_system: false, sms_from: null };
}

/** Records the provider's answer on the tenant's account (null: it worked). */
export async function recordAccountResult(
  client: pg.ClientBase,
  accountId: string,
  error: string | null,
  tested = false,
) {
  await client.query(
    `update herald_public.provider_accounts set last_error = $2 ${tested ? ", last_tested_at = now()" : ""}
      where tenant_id = herald_public.current_tenant_id() and id = $1`,
    [accountId, error?.slice(0, 2000) ?? null],
  );
}

export type TenantSettings = Awaited<ReturnType<typeof tenantSettings>>;

/**
 * A tenant sends only from its own senders or the system's: a `from` that is
 * neither (another tenant's number, say) is refused before any provider is
 * called. The rule is herald_hidden.sender_refusal, the one send_message
 * applies to `metadata.from` (there it raises NOSND, NOT_OWN_SENDER in the
 * API): same rule, same words. Only this process knows the system's sender,
 * so it passes it along.
 */
export async function assertOwnSender(
  client: pg.ClientBase,
  clients: ProviderClients,
  kind: "sms" | "whatsapp" | "email",
  from: string,
): Promise<void> {
  const system = kind === "email" ? clients.system.sendgrid.emailFrom : clients.system.twilio.smsFrom;
  const { rows } = await client.query<{ refusal: string | null }>(
    "select herald_hidden.sender_refusal($1, $2, $3) as refusal",
    [kind, from, system ?? null],
  );
  const refusal = rows[0]?.refusal;
  if (refusal) throw new SendError(refusal, "tenant", "NOT_OWN_SENDER");
}

/** After a send that worked: an old error no longer describes the account. */
async function clearAccountError(client: pg.ClientBase, accountId: string) {
  await client.query(
    "update herald_public.provider_accounts set last_error = null where tenant_id = herald_public.current_tenant_id() and id = $1 and last_error is not null",
    [accountId],
  );
}

/** An error recorded on its account; null clears an old one (a send through it worked). */
export async function recordAccountNotes(client: pg.ClientBase, notes: Map<string, string | null>): Promise<void> {
  for (const [accountId, error] of notes) {
    if (error === null) await clearAccountError(client, accountId);
    else await recordAccountResult(client, accountId, error);
  }
}

/**
 * The number an SMS/WhatsApp goes out from, unless the tenant's account fails
 * and the system's takes over. The documented order: the message's own, the
 * tenant's sms_from (SMS only), then the sending account's default (the
 * system's HERALD_SMS_FROM, or the tenant account's first sender number).
 */
export function intendedSmsSender(
  clients: ProviderClients,
  message: { from?: string; channel?: "sms" | "whatsapp" },
  account: TenantAccount | undefined,
  settings: TenantSettings,
): string | undefined {
  return (
    message.from ??
    (message.channel === "whatsapp" ? undefined : (settings.sms_from ?? undefined)) ??
    (account ? (account.default_number ?? clients.system.twilio.smsFrom) : clients.system.twilio.smsFrom)
  );
}

/** The address an email goes out from, unless the system's account takes over. */
export function intendedEmailSender(
  clients: ProviderClients,
  message: { from?: string },
  account: TenantAccount | undefined,
): string | undefined {
  return (
    message.from ??
    (account ? (account.default_email ?? clients.system.sendgrid.emailFrom) : clients.system.sendgrid.emailFrom)
  );
}
