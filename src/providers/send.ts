import type pg from "pg";
import type { ProviderClients, TenantAccount } from "./clients.ts";
import {
  activeAccount,
  assertOwnSender,
  intendedEmailSender,
  intendedSmsSender,
  recordAccountNotes,
  tenantSettings,
  type TenantSettings,
} from "./routing.ts";
import { transmitEmailBatch, transmitSms, type Sent } from "./transmit.ts";

/**
 * Sending one SMS/WhatsApp message or email for a tenant, inside a worker
 * job's tenant context: the route looked up and the sender checked
 * (routing.ts), the call made (transmit.ts), and what it taught about the
 * tenant's account recorded in the caller's transaction: a caller that
 * catches the SendError and commits (after marking its delivery failed)
 * keeps that record. The delivery engine does these steps apart, with no
 * transaction open during the call (src/messages/).
 */

/**
 * Waits until a send from `from` may start (src/messages/pacing.ts); called
 * once the sender is settled and checked, right before the provider is.
 */
export type Pace = (from: string, channel: "sms" | "whatsapp" | "email") => Promise<void>;

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
