import type pg from "pg";
import type { ProviderClients, TenantAccount } from "./clients.ts";

/**
 * Who an email is from, looked up in a worker job's tenant context (docs/email.md):
 *
 * - A tenant with an active SendGrid account sends through it, and only from
 *   its own verified sender: the message's `metadata.from`, else the
 *   account's first email sender whose domain is verified (email_domains
 *   status `verified`). With none, or with `metadata.from` naming the system
 *   sender, the system's account and sender take over only when the tenant
 *   opted into `fallback_to_system`; otherwise the email is skipped with a
 *   reason. The tenant's account never sends from the system address.
 * - A tenant without one sends through the system's account, from
 *   `metadata.from` or the system sender (HERALD_EMAIL_FROM).
 *
 * The from name and reply-to: the message's `metadata.fromName` /
 * `metadata.replyTo` (checked when the message was written:
 * herald_hidden.email_identity_refusal), else the sender's own (email_senders
 * `from_name`, `reply_to`). The sender itself is then checked like every
 * sender (herald_hidden.sender_refusal: on one of the tenant's verified
 * domains, or the system's).
 */

export interface EmailIdentity {
  /** null: the system's account sends (no tenant account, or the fallback). */
  account: TenantAccount | null;
  from: string | undefined;
  fromName?: string;
  replyTo?: string;
}

export interface IdentityMetadata {
  from?: string;
  fromName?: string;
  replyTo?: string;
}

/** Why a tenant's email cannot go (the delivery is skipped with it). */
export const NO_VERIFIED_SENDER =
  "no_verified_sender: the tenant's SendGrid account sends only from an email sender on a verified domain (add one, or turn on fallbackToSystem)";

interface SenderRow {
  from_email: string;
  from_name: string | null;
  reply_to: string | null;
}

/** The tenant's email sender with this address (any account), for its name and reply-to. */
async function senderByAddress(client: pg.ClientBase, address: string): Promise<SenderRow | undefined> {
  const { rows } = await client.query<SenderRow>(
    `select from_email::text, from_name, reply_to from herald_public.email_senders
      where tenant_id = herald_public.current_tenant_id() and lower(from_email::text) = lower($1)
      order by created_at limit 1`,
    [address],
  );
  return rows[0];
}

/** The account's first sender on one of the tenant's verified domains. */
async function verifiedSender(client: pg.ClientBase, accountId: string): Promise<SenderRow | undefined> {
  const { rows } = await client.query<SenderRow>(
    `select e.from_email::text, e.from_name, e.reply_to from herald_public.email_senders e
      where e.tenant_id = herald_public.current_tenant_id() and e.provider_account_id = $1
        and exists (select 1 from herald_public.email_domains d
                     where d.tenant_id = e.tenant_id and d.status = 'verified'
                       and d.domain = lower(split_part(e.from_email::text, '@', 2))::public.citext)
      order by e.created_at limit 1`,
    [accountId],
  );
  return rows[0];
}

export async function emailIdentity(
  client: pg.ClientBase,
  clients: ProviderClients,
  metadata: IdentityMetadata,
  account: TenantAccount | null,
  fallbackToSystem: boolean,
): Promise<EmailIdentity | { refusal: string }> {
  const system = clients.system.sendgrid.emailFrom;
  const isSystem = (address: string | undefined) =>
    Boolean(address && system && address.toLowerCase() === system.toLowerCase());
  const named = (from: string | undefined, via: TenantAccount | null, sender: SenderRow | undefined) => ({
    account: via,
    from,
    fromName: metadata.fromName ?? sender?.from_name ?? undefined,
    replyTo: metadata.replyTo ?? sender?.reply_to ?? undefined,
  });

  if (!account) {
    const from = metadata.from ?? system;
    return named(from, null, from && !isSystem(from) ? await senderByAddress(client, from) : undefined);
  }
  if (metadata.from && !isSystem(metadata.from)) {
    // Checked to be on a verified domain of the tenant with every sender (sender_refusal).
    return named(metadata.from, account, await senderByAddress(client, metadata.from));
  }
  const own = metadata.from ? undefined : await verifiedSender(client, account.id);
  if (own) return named(own.from_email, account, own);
  if (fallbackToSystem) return named(system, null, undefined);
  return { refusal: NO_VERIFIED_SENDER };
}
