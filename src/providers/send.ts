import type pg from "pg";
import type { Config } from "../config.ts";
import { SANDBOX_SYSTEM_SENDGRID_KEY, SANDBOX_SYSTEM_TWILIO } from "../sandbox/sandbox.ts";
import { createSendGridClient, createSendGridMailer, type SendGridClient, type SendGridMailer } from "./sendgrid.ts";
import { createTwilioClient, type TwilioClient } from "./twilio.ts";

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
    twilio: { ...(config.twilio ?? { ...SANDBOX_SYSTEM_TWILIO, smsFrom: config.smsFrom ?? "+15005550006" }), messagesPerSecond: config.smsFromMps },
    sendgrid: config.sendgrid ?? { apiKey: SANDBOX_SYSTEM_SENDGRID_KEY, emailFrom: config.emailFrom ?? "herald@sandbox.test" },
    twilioSandboxUrl: config.twilio ? undefined : sandboxUrl,
    sendgridSandboxUrl: config.sendgrid ? undefined : sandboxUrl,
  };
}

export class SendError extends Error {
  override name = "SendError";
  readonly provider: "tenant" | "system";
  readonly code?: number | string;
  /** The provider's HTTP status, when it answered. */
  readonly status?: number;
  /**
   * True when the provider may have accepted the message despite the error (a
   * timeout, a dropped connection, a 5xx): sending again could deliver twice.
   */
  readonly uncertain: boolean;
  constructor(message: string, provider: "tenant" | "system", code?: number | string, details: { status?: number; uncertain?: boolean } = {}) {
    super(message);
    this.provider = provider;
    this.code = code;
    this.status = details.status;
    this.uncertain = details.uncertain ?? false;
  }
}

/** Thrown by a `Pace` callback: not now; this send may start at `until` (nothing was sent). */
export class SendDeferred extends Error {
  override name = "SendDeferred";
  readonly until: Date;
  constructor(until: Date) {
    super(`paced: the next free slot is at ${until.toISOString()}`);
    this.until = until;
  }
}

/**
 * A provider's error text without the addresses it may quote ("The 'To'
 * number +1… is not a valid phone number"): it is stored on deliveries and
 * accounts and logged, where plaintext phone numbers and emails never go.
 */
export function withoutAddresses(text: string): string {
  return text.replace(/[^\s@'"<>()]+@[^\s@'"<>()]+\.[^\s@'"<>()]+/g, "[email]").replace(/\+?\d[\d\s().-]{5,}\d/g, "[number]");
}

const providerMessage = (error: unknown) => withoutAddresses((error as Error).message ?? String(error));

/** A provider's error as a SendError: its code, HTTP status, and whether acceptance is in doubt. */
function providerError(message: string, provider: "tenant" | "system", error: unknown): SendError {
  const e = error as { code?: number | string; status?: number };
  return new SendError(message, provider, e.code, { status: httpStatus(error), uncertain: !certainlyNotAccepted(error) });
}

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
    if (account === "system") return this.#cached(this.#twilio, "system", 0, () => createTwilioClient(this.system.twilio, this.system.twilioSandboxUrl));
    return this.#cached(this.#twilio, account.id, account.updated_at.getTime(), () =>
      createTwilioClient(
        { accountSid: account.twilio_account_sid!, authToken: account.secret, apiKeySid: account.twilio_api_key_sid ?? undefined },
        this.system.twilioSandboxUrl,
      ),
    );
  }

  sendgridFor(account: TenantAccount | "system"): SendGridMailer {
    if (account === "system") return this.#cached(this.#sendgrid, "system", 0, () => createSendGridMailer(this.system.sendgrid.apiKey, this.system.sendgridSandboxUrl));
    return this.#cached(this.#sendgrid, account.id, account.updated_at.getTime(), () => createSendGridMailer(account.secret, this.system.sendgridSandboxUrl));
  }

  /** The v3 API client of a tenant's SendGrid account (domain authentication). */
  sendgridApiFor(account: TenantAccount): SendGridClient {
    return this.#cached(this.#sendgridApi, account.id, account.updated_at.getTime(), () => createSendGridClient(account.secret, this.system.sendgridSandboxUrl));
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

export async function activeAccount(client: pg.ClientBase, kind: "twilio" | "sendgrid", channel = "sms"): Promise<TenantAccount | undefined> {
  const { rows } = await client.query<TenantAccount>(accountSelect("a.kind = $1 and a.status = 'active'"), [kind, channel]);
  return rows[0];
}

/** One account of the session's tenant (none for another tenant's id). */
export async function accountById(client: pg.ClientBase, accountId: string, channel = "sms"): Promise<TenantAccount | undefined> {
  const { rows } = await client.query<TenantAccount>(accountSelect("a.id = $1"), [accountId, channel]);
  return rows[0];
}

export async function tenantSettings(client: pg.ClientBase): Promise<{ fallback_to_system: boolean; sms_from: string | null }> {
  const { rows } = await client.query(
    "select fallback_to_system, sms_from from herald_public.tenant_settings where tenant_id = herald_public.current_tenant_id()",
  );
  return rows[0] ?? { fallback_to_system: false, sms_from: null };
}

/** Records the provider's answer on the tenant's account (null: it worked). */
export async function recordAccountResult(client: pg.ClientBase, accountId: string, error: string | null, tested = false) {
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
export async function assertOwnSender(client: pg.ClientBase, clients: ProviderClients, kind: "sms" | "whatsapp" | "email", from: string) {
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
      : await client.query("select 1 from herald_public.sender_numbers where tenant_id = herald_public.current_tenant_id() and phone_number = $1 and channel = $2", [from, kind]);
  if (!rowCount) throw new SendError(`${from} is not one of this tenant's senders (nor the system's)`, "tenant", "NOT_OWN_SENDER");
}

/** Twilio errors that are about the recipient, not the account: another provider would fail the same way. */
const RECIPIENT_ERRORS = new Set([21211, 21610, 21612, 21614, 63007]);

export interface Sent {
  provider: "tenant" | "system";
  accountId?: string;
  providerMessageId: string;
  from: string;
}

function httpStatus(error: unknown): number | undefined {
  const e = error as { status?: number; code?: number };
  if (typeof e.status === "number") return e.status;
  // SendGrid's ResponseError carries the HTTP status as `code`.
  return typeof e.code === "number" && e.code >= 100 && e.code < 600 ? e.code : undefined;
}

/**
 * Whether a provider error proves the message was not accepted: an HTTP answer
 * in the 4xx range (bad credentials, a refused request, 429). A timeout, a
 * dropped connection or a 5xx may hide an accepted message: sending it again
 * (elsewhere, or later) could deliver it twice.
 */
function certainlyNotAccepted(error: unknown): boolean {
  const status = httpStatus(error);
  return status !== undefined && status >= 400 && status < 500;
}

async function withFallback(
  client: pg.ClientBase,
  account: TenantAccount | undefined,
  attempt: (via: TenantAccount | "system", fallingBack: boolean) => Promise<{ id: string; from: string }>,
  isRecipientError: (error: unknown) => boolean,
): Promise<Sent> {
  const viaSystem = async (fallingBack: boolean): Promise<Sent> => {
    try {
      const sent = await attempt("system", fallingBack);
      return { provider: "system", providerMessageId: sent.id, from: sent.from };
    } catch (error) {
      if (error instanceof SendError || error instanceof SendDeferred) throw error;
      throw providerError(`the system account failed: ${providerMessage(error)}`, "system", error);
    }
  };
  if (!account) return viaSystem(false);
  try {
    const sent = await attempt(account, false);
    await clearAccountError(client, account.id);
    return { provider: "tenant", accountId: account.id, providerMessageId: sent.id, from: sent.from };
  } catch (error) {
    // Ours (not the tenant's sender; paced), not the provider's.
    if (error instanceof SendError || error instanceof SendDeferred) throw error;
    const message = providerMessage(error);
    const recipientFault = isRecipientError(error);
    // A recipient's fault says nothing about the account.
    if (!recipientFault) await recordAccountResult(client, account.id, message);
    const { fallback_to_system: fallback } = await tenantSettings(client);
    if (!fallback || recipientFault || !certainlyNotAccepted(error)) {
      throw providerError(`the tenant's ${account.kind} account failed: ${message}`, "tenant", error);
    }
    return viaSystem(true);
  }
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
 * and the system's takes over. DESIGN.md's order: the message's own, the
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
export function intendedEmailSender(clients: ProviderClients, message: { from?: string }, account: TenantAccount | undefined): string | undefined {
  return message.from ?? (account ? (account.default_email ?? clients.system.sendgrid.emailFrom) : clients.system.sendgrid.emailFrom);
}

export async function sendSms(
  client: pg.ClientBase,
  clients: ProviderClients,
  message: { to: string; body: string; from?: string; channel?: "sms" | "whatsapp"; statusCallback?: string },
  options: SendOptions = {},
): Promise<Sent> {
  const whatsapp = message.channel === "whatsapp";
  const account = options.account !== undefined ? (options.account ?? undefined) : await activeAccount(client, "twilio", whatsapp ? "whatsapp" : "sms");
  const settings = options.settings ?? (await tenantSettings(client));
  const address = (n: string) => (whatsapp ? `whatsapp:${n}` : n);
  return withFallback(
    client,
    account,
    async (via, fallingBack) => {
      // Falling back to the system's account, only the system's number can
      // send: a tenant number belongs to the tenant's account.
      const from = fallingBack ? clients.system.twilio.smsFrom : intendedSmsSender(clients, message, via === "system" ? undefined : via, settings);
      if (!from) throw new SendError("no sender number: set tenant_settings.sms_from or HERALD_SMS_FROM", via === "system" ? "system" : "tenant", "NO_SENDER");
      await assertOwnSender(client, clients, whatsapp ? "whatsapp" : "sms", from);
      await options.pace?.(from, whatsapp ? "whatsapp" : "sms");
      const sent = await clients.twilioFor(via).messages.create({
        to: address(message.to),
        from: address(from),
        body: message.body,
        ...(message.statusCallback ? { statusCallback: message.statusCallback } : {}),
      });
      return { id: sent.sid, from };
    },
    (error) => RECIPIENT_ERRORS.has((error as { code?: number }).code ?? 0),
  );
}

export async function sendEmail(
  client: pg.ClientBase,
  clients: ProviderClients,
  message: { to: string; subject: string; text: string; html?: string; from?: string; customArgs?: Record<string, string> },
  options: SendOptions = {},
): Promise<Sent> {
  const account = options.account !== undefined ? (options.account ?? undefined) : await activeAccount(client, "sendgrid");
  return withFallback(
    client,
    account,
    async (via, fallingBack) => {
      const from = fallingBack ? clients.system.sendgrid.emailFrom : intendedEmailSender(clients, message, via === "system" ? undefined : via);
      if (!from) throw new SendError("no sender address: give one or set HERALD_EMAIL_FROM", via === "system" ? "system" : "tenant", "NO_SENDER");
      await assertOwnSender(client, clients, "email", from);
      await options.pace?.(from, "email");
      const [response] = await clients.sendgridFor(via).send({
        to: message.to,
        from,
        subject: message.subject,
        text: message.text,
        ...(message.html ? { html: message.html } : {}),
        // Echoed in every event SendGrid reports for this message (src/webhooks/sendgrid.ts).
        ...(message.customArgs ? { customArgs: message.customArgs } : {}),
      });
      return { id: String(response.headers["x-message-id"] ?? ""), from };
    },
    // A malformed recipient fails at any provider.
    (error) => (error as { code?: number }).code === 400,
  );
}
