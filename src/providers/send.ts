import type pg from "pg";
import type { Config } from "../config.ts";
import { SANDBOX_SYSTEM_SENDGRID_KEY, SANDBOX_SYSTEM_TWILIO } from "../sandbox/sandbox.ts";
import { createSendGridClient, createSendGridMailer, type SendGridClient, type SendGridMailer } from "./sendgrid.ts";
import { createTwilioClient, type TwilioClient } from "./twilio.ts";
import { transmitEmailBatch, transmitSms } from "./transmit.ts";

/**
 * Sending one SMS/WhatsApp message or email for a tenant, inside a worker job's
 * tenant context (the pg client is that transaction: RLS, the tenant's keys):
 * the tenant's active account of the right kind, else the system's; when the
 * tenant's account fails and `tenant_settings.fallback_to_system` is on, the
 * system's is tried too. The result says which provider actually sent.
 * A failure of the tenant's account is written on the account (last_error) in
 * the caller's transaction: a caller that catches the SendError and commits
 * (after marking its delivery failed) keeps that record.
 */

export interface SystemProviders {
  twilio: { accountSid: string; authToken: string; smsFrom?: string; messagesPerSecond?: number };
  sendgrid: { apiKey: string; emailFrom?: string };
  /** Where each SDK is pointed instead of the real service: set only for a provider with no credentials configured. */
  twilioSandboxUrl?: string;
  sendgridSandboxUrl?: string;
  /**
   * HERALD_PUBLIC_URL, where Twilio's status callbacks for each send go
   * (src/webhooks/twilio.ts); unset: sends ask for none.
   */
  callbackBaseUrl?: string;
}

/** The status callback of one delivery: the tenant and delivery ride in the URL, which Twilio signs. */
export function statusCallbackUrl(system: SystemProviders, tenantId: string, deliveryId: string): string | undefined {
  if (!system.callbackBaseUrl) return undefined;
  return `${system.callbackBaseUrl}/webhooks/twilio/status?${new URLSearchParams({ tenant: tenantId, delivery: deliveryId })}`;
}

/**
 * The system accounts from the environment; for a provider without credentials,
 * the sandbox's (when a sandbox URL is given, i.e. in development). Each
 * provider is decided on its own: real Twilio credentials never go to the sandbox.
 */
export function systemProviders(config: Config, sandboxUrl?: string, callbackBaseUrl?: string): SystemProviders {
  return {
    callbackBaseUrl,
    // Sandbox: Twilio's documented test sender number, and a local address.
    twilio: {
      ...(config.twilio ?? { ...SANDBOX_SYSTEM_TWILIO, smsFrom: config.smsFrom ?? "+15005550006" }),
      messagesPerSecond: config.smsFromMps,
    },
    sendgrid: config.sendgrid ?? {
      apiKey: SANDBOX_SYSTEM_SENDGRID_KEY,
      emailFrom: config.emailFrom ?? "herald@sandbox.test",
    },
    twilioSandboxUrl: config.twilio ? undefined : sandboxUrl,
    sendgridSandboxUrl: config.sendgrid ? undefined : sandboxUrl,
  };
}

import { SendError } from "./errors.ts";
export { SendDeferred, SendError, withoutAddresses } from "./errors.ts";

export interface TenantAccount {
  id: string;
  kind: "twilio" | "sendgrid";
  twilio_account_sid: string | null;
  twilio_api_key_sid: string | null;
  updated_at: Date;
  secret: string;
  /** The account's first sender number of the channel / email sender, if any. */
  default_number?: string | null;
  default_email?: string | null;
}

/**
 * SDK clients, one per account, rebuilt when the account's credentials change
 * (its updated_at moves). System clients live as long as the process.
 */
export class ProviderClients {
  readonly #twilio = new Map<string, { version: number; client: TwilioClient }>();
  readonly #sendgrid = new Map<string, { version: number; client: SendGridMailer }>();
  readonly #sendgridApi = new Map<string, { version: number; client: SendGridClient }>();
  readonly system: SystemProviders;
  constructor(system: SystemProviders) {
    this.system = system;
  }

  twilioFor(account: TenantAccount | "system"): TwilioClient {
    if (account === "system")
      return this.#cached(this.#twilio, "system", 0, () =>
        createTwilioClient(this.system.twilio, this.system.twilioSandboxUrl),
      );
    return this.#cached(this.#twilio, account.id, account.updated_at.getTime(), () =>
      createTwilioClient(
        {
          accountSid: account.twilio_account_sid!,
          authToken: account.secret,
          apiKeySid: account.twilio_api_key_sid ?? undefined,
        },
        this.system.twilioSandboxUrl,
      ),
    );
  }

  sendgridFor(account: TenantAccount | "system"): SendGridMailer {
    if (account === "system")
      return this.#cached(this.#sendgrid, "system", 0, () =>
        createSendGridMailer(this.system.sendgrid.apiKey, this.system.sendgridSandboxUrl),
      );
    return this.#cached(this.#sendgrid, account.id, account.updated_at.getTime(), () =>
      createSendGridMailer(account.secret, this.system.sendgridSandboxUrl),
    );
  }

  /** The v3 API client of a tenant's SendGrid account (domain authentication). */
  sendgridApiFor(account: TenantAccount): SendGridClient {
    return this.#cached(this.#sendgridApi, account.id, account.updated_at.getTime(), () =>
      createSendGridClient(account.secret, this.system.sendgridSandboxUrl),
    );
  }

  #cached<T>(cache: Map<string, { version: number; client: T }>, key: string, version: number, make: () => T): T {
    const hit = cache.get(key);
    if (hit && hit.version === version) return hit.client;
    const client = make();
    cache.set(key, { version, client });
    return client;
  }
}

/** A tenant account with its decrypted credential and default senders (for the channel), as the worker sees it. */
const accountSelect = (condition: string) => `
  select a.id, a.kind, a.twilio_account_sid, a.twilio_api_key_sid, a.updated_at, s.secret,
         (select n.phone_number from herald_public.sender_numbers n
           where n.tenant_id = a.tenant_id and n.provider_account_id = a.id and n.channel = $2
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

/**
 * A tenant sends only from its own senders or the system's: a `from` that is
 * neither (another tenant's number, say) is refused before any provider is called.
 * A number must be registered to the tenant (only on its own account, or by an
 * operator); an address must be on one of the tenant's verified email domains.
 */
export async function assertOwnSender(
  client: pg.ClientBase,
  clients: ProviderClients,
  kind: "sms" | "whatsapp" | "email",
  from: string,
) {
  const system = kind === "email" ? clients.system.sendgrid.emailFrom : clients.system.twilio.smsFrom;
  if (from.toLowerCase() === system?.toLowerCase()) return;
  const { rowCount } =
    kind === "email"
      ? await client.query(
          `select 1 from herald_public.email_domains
            where tenant_id = herald_public.current_tenant_id() and status = 'verified'
              and domain = lower(split_part($1, '@', 2))::public.citext`,
          [from],
        )
      : await client.query(
          "select 1 from herald_public.sender_numbers where tenant_id = herald_public.current_tenant_id() and phone_number = $1 and channel = $2",
          [from, kind],
        );
  if (!rowCount)
    throw new SendError(`${from} is not one of this tenant's senders (nor the system's)`, "tenant", "NOT_OWN_SENDER");
}

export interface Sent {
  provider: "tenant" | "system";
  accountId?: string;
  providerMessageId: string;
  from: string;
}

/** After a send that worked: an old error no longer describes the account. */
async function clearAccountError(client: pg.ClientBase, accountId: string) {
  await client.query(
    "update herald_public.provider_accounts set last_error = null where tenant_id = herald_public.current_tenant_id() and id = $1 and last_error is not null",
    [accountId],
  );
}

/**
 * Waits until a send from `from` may start (src/messages/pacing.ts); called
 * once the sender is settled and checked, right before the provider is.
 */
export type Pace = (from: string, channel: "sms" | "whatsapp" | "email") => Promise<void>;

export type TenantSettings = Awaited<ReturnType<typeof tenantSettings>>;

/**
 * Already looked up by the caller (src/messages/claim.ts, which paces before
 * claiming): the tenant's active account of the kind (null: none) and settings.
 */
export interface SendOptions {
  pace?: Pace;
  account?: TenantAccount | null;
  settings?: TenantSettings;
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

/**
 * One message for a job that holds a tenant transaction (the test-send task,
 * tests): the route is looked up and the sender checked on `client`, the
 * call made (transmit.ts), and what it taught about the tenant's account
 * recorded in the same transaction — also when it failed, for a caller that
 * catches the SendError and commits. The delivery engine does these steps
 * apart, with no transaction open during the call (src/messages/).
 */
export async function sendSms(
  client: pg.ClientBase,
  clients: ProviderClients,
  message: { to: string; body: string; from?: string; channel?: "sms" | "whatsapp"; statusCallback?: string },
  options: SendOptions = {},
): Promise<Sent> {
  const channel = message.channel === "whatsapp" ? "whatsapp" : "sms";
  const account =
    options.account !== undefined ? options.account : ((await activeAccount(client, "twilio", channel)) ?? null);
  const settings = options.settings ?? (await tenantSettings(client));
  const from = intendedSmsSender(clients, message, account ?? undefined, settings);
  if (from) await assertOwnSender(client, clients, channel, from);
  return withAccountNotes(client, (noteAccount) =>
    transmitSms(clients, { account, settings, from }, message, { pace: options.pace, noteAccount }),
  );
}

export async function sendEmail(
  client: pg.ClientBase,
  clients: ProviderClients,
  message: {
    to: string;
    subject: string;
    text: string;
    html?: string;
    from?: string;
    customArgs?: Record<string, string>;
  },
  options: SendOptions = {},
): Promise<Sent> {
  const account = options.account !== undefined ? options.account : ((await activeAccount(client, "sendgrid")) ?? null);
  const settings = options.settings ?? (await tenantSettings(client));
  const from = intendedEmailSender(clients, message, account ?? undefined);
  if (from) await assertOwnSender(client, clients, "email", from);
  const item = {
    to: message.to,
    subject: message.subject,
    text: message.text,
    html: message.html,
    customArgs: message.customArgs,
  };
  return withAccountNotes(client, (noteAccount) =>
    transmitEmailBatch(clients, { account, settings, from }, [item], { pace: options.pace, noteAccount }),
  );
}

/** Runs a call, then records on each tenant account what it taught (the last word per account), whether it worked or not. */
async function withAccountNotes<T>(
  client: pg.ClientBase,
  run: (note: (accountId: string, error: string | null) => void) => Promise<T>,
): Promise<T> {
  const notes = new Map<string, string | null>();
  try {
    return await run((accountId, error) => void notes.set(accountId, error));
  } finally {
    await recordAccountNotes(client, notes);
  }
}

/** An error recorded on its account; null clears an old one (a send through it worked). */
export async function recordAccountNotes(client: pg.ClientBase, notes: Map<string, string | null>): Promise<void> {
  for (const [accountId, error] of notes) {
    if (error === null) await clearAccountError(client, accountId);
    else await recordAccountResult(client, accountId, error);
  }
}
