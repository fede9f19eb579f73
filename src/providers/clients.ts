import type { Config } from "../config.ts";
import type { UnsubscribeConfig } from "../messages/unsubscribe.ts";
import { SANDBOX_SYSTEM_SENDGRID_KEY, SANDBOX_SYSTEM_TWILIO } from "../sandbox/sandbox.ts";
import { createSendGridClient, createSendGridMailer, type SendGridClient, type SendGridMailer } from "./sendgrid.ts";
import { createTwilioClient, type TwilioClient } from "./twilio.ts";

/**
 * The provider SDK clients a process sends through: the system's accounts
 * (from the environment, or the sandbox's), and one client per tenant account
 * built from its decrypted credential. Which account a send uses is
 * routing.ts's business; the calls themselves, transmit.ts's.
 */

export interface SystemProviders {
  twilio: { accountSid: string; authToken: string; smsFrom?: string; messagesPerSecond?: number };
  sendgrid: { apiKey: string; emailFrom?: string };
  /** Where each SDK is pointed instead of the real service: set only for a provider with no credentials configured. */
  twilioSandboxUrl?: string;
  sendgridSandboxUrl?: string;
  /** Meta's Graph API for tenants' Meta accounts (src/providers/meta.ts): its base URL (the sandbox's in development) and version. */
  metaGraph?: { url: string; version: string };
  /**
   * HERALD_PUBLIC_URL, where Twilio's status callbacks for each send go
   * (src/provider-callbacks/twilio.ts); unset: sends ask for none.
   */
  callbackBaseUrl?: string;
  /** Where marketing email's unsubscribe links point (HERALD_PUBLIC_URL) and their key; unset: such email is not sent (src/messages/unsubscribe.ts). */
  unsubscribe?: UnsubscribeConfig;
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
    unsubscribe: config.callbackBaseUrl ? { baseUrl: config.callbackBaseUrl, key: config.unsubscribeKey } : undefined,
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
    metaGraph: {
      url: config.metaGraph.url ?? (sandboxUrl ? `${sandboxUrl}/meta` : "https://graph.facebook.com"),
      version: config.metaGraph.version,
    },
  };
}

export interface TenantAccount {
  id: string;
  kind: "twilio" | "sendgrid" | "meta";
  twilio_account_sid: string | null;
  twilio_api_key_sid: string | null;
  updated_at: Date;
  secret: string;
  /** The account's first sender number of the channel / email sender, if any. */
  default_number?: string | null;
  default_email?: string | null;
  /** A Meta account's phone number id (its `secret` is the Graph API access token). */
  meta_phone_number_id?: string | null;
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
