import { MetaGraphError, metaDisplayNumber } from "../providers/meta.ts";
import type pg from "pg";
import type { ProviderClients, TenantAccount } from "../providers/clients.ts";
import type { TwilioClient } from "../providers/twilio.ts";
import { accountById } from "../providers/routing.ts";

/**
 * Ownership proof for a sender number, inside a worker job's tenant context:
 * ask the provider, under the credentials of the account the number names
 * (the system's when none), whether that account holds the number — Twilio's
 * IncomingPhoneNumbers for SMS, the account's WhatsApp senders (Messaging v2
 * Channels/Senders) for `whatsapp`. The answer is recorded as a row of
 * herald_hidden.sender_number_checks (only the worker writes them), whose
 * trigger alone moves `status` and decides, across tenants, which verified
 * claim routes the number.
 */

/** What the provider tells about one number the account holds. */
export interface HeldNumber {
  sid: string;
  phoneNumber: string;
  friendlyName: string;
  smsUrl: string | null;
  statusCallback: string | null;
  capabilities: Record<string, boolean>;
}

/** Herald's webhooks for a number: inbound texts and status callbacks (null: HERALD_PUBLIC_URL unknown to this process). */
export function heraldWebhooks(clients: ProviderClients): { smsUrl: string; statusCallback: string } | null {
  const base = clients.system.callbackBaseUrl;
  return base ? { smsUrl: `${base}/webhooks/twilio/sms`, statusCallback: `${base}/webhooks/twilio/status` } : null;
}

/** Whether a number's webhooks point anywhere but Herald (null: not known). */
export function webhooksElsewhere(clients: ProviderClients, held: Pick<HeldNumber, "smsUrl" | "statusCallback">) {
  const ours = heraldWebhooks(clients);
  if (!ours) return null;
  return held.smsUrl !== ours.smsUrl || held.statusCallback !== ours.statusCallback;
}

type IncomingNumber = Awaited<ReturnType<TwilioClient["incomingPhoneNumbers"]["list"]>>[number];

export const heldNumber = (n: IncomingNumber): HeldNumber => ({
  sid: n.sid,
  phoneNumber: n.phoneNumber,
  friendlyName: n.friendlyName,
  smsUrl: n.smsUrl || null,
  statusCallback: n.statusCallback || null,
  capabilities: { ...(n.capabilities as unknown as Record<string, boolean>) },
});

/** The account's SMS number, if it holds it. */
/** The check row of a number the provider listed on or sold to the account (verified by construction). */
export function detailsOf(clients: ProviderClients, held: HeldNumber) {
  return {
    sid: held.sid,
    friendly_name: held.friendlyName,
    sms_url: held.smsUrl,
    status_callback_url: held.statusCallback,
    webhooks_elsewhere: webhooksElsewhere(clients, held),
  };
}

/** Adds (or re-confirms) a number the provider itself listed on the account; returns its id and status. */
export async function addProviderNumber(
  client: pg.ClientBase,
  clients: ProviderClients,
  accountId: string,
  held: HeldNumber,
): Promise<{ id: string; status: string }> {
  const { rows } = await client.query<{ id: string; status: string }>(
    `insert into herald_hidden.sender_number_checks (action, phone_number, channel, provider_account_id, details)
     values ('add', $1, 'sms', $2, $3) returning sender_number_id as id, outcome as status`,
    [held.phoneNumber, accountId, JSON.stringify(detailsOf(clients, held))],
  );
  return rows[0]!;
}

export async function findIncomingNumber(twilio: TwilioClient, phoneNumber: string): Promise<HeldNumber | undefined> {
  const found = await twilio.incomingPhoneNumbers.list({ phoneNumber, limit: 20 });
  const match = found.find((n) => n.phoneNumber === phoneNumber);
  return match && heldNumber(match);
}

/** The account's WhatsApp sender for the number, if it has one online. */
async function findWhatsAppSender(twilio: TwilioClient, phoneNumber: string): Promise<HeldNumber | undefined> {
  const senders = await twilio.messaging.v2.channelsSenders.list({ channel: "whatsapp", limit: 1000 });
  const match = senders.find((s) => s.senderId === `whatsapp:${phoneNumber}` && /^ONLINE/.test(String(s.status)));
  return (
    match && {
      sid: match.sid,
      phoneNumber,
      friendlyName: match.profile?.name ?? phoneNumber,
      smsUrl: match.webhook?.callbackUrl ?? null,
      statusCallback: match.webhook?.statusCallbackUrl ?? null,
      capabilities: { whatsapp: true },
    }
  );
}

/** A provider answer that retrying will not change (bad credentials, an unknown account). */
export function isRefusal(error: unknown): boolean {
  const status = (error as { status?: number }).status;
  return typeof status === "number" && status >= 400 && status < 500 && status !== 429;
}

export const providerMessage = (error: unknown) =>
  String((error as { message?: string }).message ?? error).slice(0, 500);

interface NumberRow {
  phone_number: string;
  channel: "sms" | "whatsapp";
  provider_account_id: string | null;
}

/**
 * Checks one of the session tenant's numbers at the provider and records the
 * answer (a herald_hidden.sender_number_checks row, which applies it);
 * returns the resulting status (or `contested`, see the SQL). A
 * refused credential leaves the status as it is (with the reason): only the
 * provider saying "not on this account" fails a number. Anything else
 * (429, 5xx, network) throws, so the job retries.
 */
export async function verifySenderNumber(
  client: pg.ClientBase,
  clients: ProviderClients,
  numberId: string,
): Promise<string | undefined> {
  const { rows } = await client.query<NumberRow>(
    `select phone_number, channel, provider_account_id from herald_public.sender_numbers
      where tenant_id = herald_public.current_tenant_id() and id = $1`,
    [numberId],
  );
  const row = rows[0];
  if (!row) return undefined;
  const record = async (owned: boolean | null, reason: string | null, held?: HeldNumber) => {
    const details = held ? detailsOf(clients, held) : {};
    const result = await client.query<{ status: string }>(
      `insert into herald_hidden.sender_number_checks (action, sender_number_id, owned, reason, details)
       values ('check', $1, $2, $3, $4) returning outcome as status`,
      [numberId, owned, reason, JSON.stringify(details)],
    );
    return result.rows[0]!.status;
  };

  let account: TenantAccount | "system" = "system";
  if (row.provider_account_id) {
    const found = await accountById(client, row.provider_account_id, row.channel);
    if (found?.kind === "meta") return verifyMetaNumber(clients, found, row, record);
    if (!found || found.kind !== "twilio") return record(false, "the number's account is not a Twilio account");
    account = found;
  }
  const twilio = clients.twilioFor(account);
  let held: HeldNumber | undefined;
  try {
    held =
      row.channel === "sms"
        ? await findIncomingNumber(twilio, row.phone_number)
        : await findWhatsAppSender(twilio, row.phone_number);
  } catch (error) {
    if (isRefusal(error)) return record(null, `the provider refused the check: ${providerMessage(error)}`);
    throw error;
  }
  if (!held) {
    return record(
      false,
      row.channel === "sms"
        ? "the provider does not list this number among the account's phone numbers"
        : "the account has no online WhatsApp sender for this number",
    );
  }
  return record(true, null, held);
}

/** Verified numbers not checked for this long are re-checked (a number can leave an account without Herald hearing of it). */
export const RECHECK_AFTER_HOURS = 24;
/** At most this many re-checks are queued per run (hourly). */
export const RECHECK_BATCH = 500;

/**
 * As an operator session (herald_admin, across tenants): asks for a re-check
 * of the verified numbers checked longest ago, each through its own tenant's
 * sender_numbers__verify job (queued by the update trigger). Returns how many.
 */
export async function queueStaleRechecks(
  client: pg.ClientBase,
  olderThanHours = RECHECK_AFTER_HOURS,
  limit = RECHECK_BATCH,
): Promise<number> {
  const { rowCount } = await client.query(
    `update herald_public.sender_numbers n set verify_requested_at = clock_timestamp()
      where (n.tenant_id, n.id) in (
        select s.tenant_id, s.id from herald_public.sender_numbers s
         where s.status = 'verified' and coalesce(s.last_checked_at, s.verified_at) < now() - make_interval(hours => $1)
         order by coalesce(s.last_checked_at, s.verified_at) limit $2)`,
    [olderThanHours, limit],
  );
  return rowCount ?? 0;
}

/**
 * A WhatsApp number on a Meta (Cloud API) account: the account's phone number
 * id must send from it, as the Graph API says under the account's token.
 */
async function verifyMetaNumber(
  clients: ProviderClients,
  account: TenantAccount,
  row: NumberRow,
  record: (owned: boolean | null, reason: string | null) => Promise<string>,
): Promise<string> {
  if (row.channel !== "whatsapp" || !account.meta_phone_number_id)
    return record(false, "a Meta account holds only its WhatsApp number");
  let display: string | undefined;
  try {
    display = await metaDisplayNumber(clients.system.metaGraph, {
      phoneNumberId: account.meta_phone_number_id,
      accessToken: account.secret,
    });
  } catch (error) {
    if (error instanceof MetaGraphError && error.status === 401)
      return record(null, `the provider refused the check: ${error.message}`);
    throw error;
  }
  return display === row.phone_number
    ? record(true, null)
    : record(false, "the Meta account's phone number id does not send from this number");
}
