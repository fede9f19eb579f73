import type { ProviderClients, TenantAccount } from "./clients.ts";
import {
  certainlyNotAccepted,
  providerError,
  providerMessage,
  RECIPIENT_CODES,
  SendDeferred,
  SendError,
} from "./errors.ts";
import { metaSender, sendViaMeta, type MetaTemplate } from "./meta.ts";
import type { TenantSettings } from "./routing.ts";

/**
 * The provider calls themselves, with everything looked up beforehand (the
 * route: the tenant's account with its decrypted credential, its settings,
 * the intended sender, already checked to be the tenant's own): no database
 * connection is needed or held here, so the delivery engine makes these
 * calls outside any transaction (src/messages/dispatch.ts). What the calls
 * teach about the tenant's account (its error, or that it works again) is
 * handed to `noteAccount`, for the caller to record afterwards.
 *
 * The tenant's active account of the right kind sends, else the system's;
 * when the tenant's account fails and `fallback_to_system` is on, the
 * system's is tried too, from the system's sender — but only when the
 * provider's 4xx answer proves the message was not accepted, and never for a
 * recipient's fault.
 */

export interface Route {
  /** The tenant's active account of the kind (null: none; the system's sends). */
  account: TenantAccount | null;
  settings: TenantSettings;
  /** The intended sender (none: the send fails with NO_SENDER); a Messaging Service's SID when it sends. */
  from: string | undefined;
  /** Email: the From name and Reply-To (src/providers/email-identity.ts). */
  fromName?: string;
  replyTo?: string;
  /** Sent through this Twilio Messaging Service (MG…): Twilio picks the pool number (src/services/). */
  messagingServiceSid?: string;
}

/** What a send that worked went through. */
export interface Sent {
  provider: "tenant" | "system";
  accountId?: string;
  providerMessageId: string;
  from: string;
}

export interface TransmitHooks {
  /** Before each provider call, with its sender: waits for a pacing slot (or throws SendDeferred). */
  pace?: (from: string, channel: "sms" | "whatsapp" | "email") => Promise<void>;
  /** What a call taught about a tenant account: its error, or null (it worked). */
  noteAccount?: (accountId: string, error: string | null) => void;
  /** Wraps each HTTP call to an account (a bound on requests in flight per account). */
  around?: <T>(accountKey: string, call: () => Promise<T>) => Promise<T>;
}

type Via = TenantAccount | "system";
const keyOf = (via: Via) => (via === "system" ? "system" : via.id);

async function withFallback<T>(
  route: Route,
  hooks: TransmitHooks,
  attempt: (via: Via, fallingBack: boolean) => Promise<T>,
  isRecipientError: (error: unknown) => boolean,
): Promise<{ result: T; provider: "tenant" | "system"; accountId?: string }> {
  const viaSystem = async (fallingBack: boolean) => {
    try {
      return { result: await attempt("system", fallingBack), provider: "system" as const };
    } catch (error) {
      if (error instanceof SendError || error instanceof SendDeferred) throw error;
      throw providerError(`the system account failed: ${providerMessage(error)}`, "system", error);
    }
  };
  const account = route.account;
  if (!account) return viaSystem(false);
  try {
    const result = await attempt(account, false);
    hooks.noteAccount?.(account.id, null);
    return { result, provider: "tenant", accountId: account.id };
  } catch (error) {
    // Ours (no sender; paced), not the provider's.
    if (error instanceof SendError || error instanceof SendDeferred) throw error;
    const message = providerMessage(error);
    const recipientFault = isRecipientError(error);
    // A recipient's fault says nothing about the account.
    if (!recipientFault) hooks.noteAccount?.(account.id, message);
    if (!route.settings.fallback_to_system || recipientFault || !certainlyNotAccepted(error)) {
      throw providerError(`the tenant's ${account.kind} account failed: ${message}`, "tenant", error);
    }
    return viaSystem(true);
  }
}

const call = <T>(hooks: TransmitHooks, via: Via, fn: () => Promise<T>) =>
  hooks.around ? hooks.around(keyOf(via), fn) : fn();

/** One SMS or WhatsApp message. */
export async function transmitSms(
  clients: ProviderClients,
  route: Route,
  message: {
    to: string;
    body: string;
    channel?: "sms" | "whatsapp";
    statusCallback?: string;
    /** WhatsApp through a Meta account (src/providers/meta.ts): media, the approved template, the delivery echoed in status webhooks. */
    metaTemplate?: MetaTemplate | null;
    deliveryId?: string;
    /** MMS / WhatsApp media (https URLs). */
    mediaUrls?: string[];
    /** WhatsApp: a provider-approved template (Twilio Content SID) and its rendered variables; sent instead of the body. */
    contentSid?: string | null;
    contentVariables?: Record<string, string> | null;
  },
  hooks: TransmitHooks = {},
): Promise<Sent> {
  const whatsapp = message.channel === "whatsapp";
  const channel = whatsapp ? "whatsapp" : "sms";
  const address = (n: string) => (whatsapp ? `whatsapp:${n}` : n);
  const { result, provider, accountId } = await withFallback(
    route,
    hooks,
    async (via, fallingBack) => {
      // Falling back to the system's account, only the system's number can
      // send: a tenant number belongs to the tenant's account.
      const from = fallingBack ? clients.system.twilio.smsFrom : route.from;
      if (!from)
        throw new SendError(
          "no sender number: set tenant_settings.sms_from or HERALD_SMS_FROM",
          via === "system" ? "system" : "tenant",
          "NO_SENDER",
        );
      if (via !== "system" && via.kind === "meta") {
        const meta = metaSender(via, from);
        await hooks.pace?.(from, channel);
        const { to, body, mediaUrls, metaTemplate: template, deliveryId } = message;
        const id = await call(hooks, via, () =>
          sendViaMeta(clients.system.metaGraph, meta, { to, body, mediaUrls, template, deliveryId }),
        );
        return { id, from };
      }
      await hooks.pace?.(from, channel);
      // Through a Messaging Service (never when falling back): the provider picks the number and reports it.
      const service = fallingBack ? undefined : route.messagingServiceSid;
      const sent = await call(hooks, via, () =>
        clients.twilioFor(via).messages.create({
          to: address(message.to),
          ...(service ? { messagingServiceSid: service } : { from: address(from) }),
          ...(message.contentSid
            ? {
                contentSid: message.contentSid,
                ...(message.contentVariables ? { contentVariables: JSON.stringify(message.contentVariables) } : {}),
              }
            : { body: message.body }),
          ...(message.mediaUrls?.length ? { mediaUrl: message.mediaUrls } : {}),
          ...(message.statusCallback ? { statusCallback: message.statusCallback } : {}),
        }),
      );
      return { id: sent.sid, from: service ? (sent.from ?? from) : from };
    },
    // Twilio's codes that are about the recipient, not the account (errors.ts).
    (error) => RECIPIENT_CODES.has(String((error as { code?: number }).code)),
  );
  return { provider, accountId, providerMessageId: result.id, from: result.from };
}

/** One recipient of an email: what was rendered for them, and the custom args their events will carry. */
export interface EmailItem {
  to: string;
  subject: string;
  text: string;
  html?: string;
  customArgs?: Record<string, string>;
  /** Headers of this recipient's copy (a marketing email's List-Unsubscribe). */
  headers?: Record<string, string>;
}

/** SendGrid's limits per personalization's substitutions (bytes), with room for the keys. */
const SUBSTITUTION_BUDGET = 9_000;
/** SendGrid's limit of personalizations (and recipients) per mail/send request. */
export const EMAIL_BATCH_MAX = 1_000;

/** Whether an item can ride in a batch of differing contents (its whole text as substitutions). */
export const fitsSubstitutions = (item: EmailItem) =>
  Buffer.byteLength(item.subject) + Buffer.byteLength(item.text) + Buffer.byteLength(item.html ?? "") <=
  SUBSTITUTION_BUDGET;

/**
 * Up to 1,000 recipients of one email in one mail/send request, one
 * personalization each (its custom args name its delivery, so that events
 * find it). The same content for all is sent once; differing contents go as
 * each recipient's substitutions of the whole subject and text (each item
 * must then fit: `fitsSubstitutions`). One message id for the request.
 */
export async function transmitEmailBatch(
  clients: ProviderClients,
  route: Route,
  items: EmailItem[],
  hooks: TransmitHooks = {},
): Promise<Sent> {
  if (items.length === 0 || items.length > EMAIL_BATCH_MAX)
    throw new Error(`an email batch holds 1 to ${EMAIL_BATCH_MAX} recipients, not ${items.length}`);
  const first = items[0]!;
  const same = items.every(
    (i) => i.subject === first.subject && i.text === first.text && (i.html ?? "") === (first.html ?? ""),
  );
  const withHtml = items.some((i) => i.html);
  const { result, provider, accountId } = await withFallback(
    route,
    hooks,
    async (via, fallingBack) => {
      const from = fallingBack ? clients.system.sendgrid.emailFrom : route.from;
      if (!from)
        throw new SendError(
          "no sender address: give one or set HERALD_EMAIL_FROM",
          via === "system" ? "system" : "tenant",
          "NO_SENDER",
        );
      await hooks.pace?.(from, "email");
      const personalizations = items.map((item) => ({
        to: [{ email: item.to }],
        // Echoed in every event SendGrid reports for this recipient (src/provider-callbacks/sendgrid.ts).
        ...(item.customArgs ? { customArgs: item.customArgs } : {}),
        ...(item.headers ? { headers: item.headers } : {}),
        ...(same
          ? {}
          : {
              substitutions: {
                herald_subject: item.subject,
                herald_text: item.text,
                ...(withHtml ? { herald_html: item.html ?? "" } : {}),
              },
            }),
      }));
      const content = same
        ? { subject: first.subject, text: first.text, ...(first.html ? { html: first.html } : {}) }
        : { subject: "{{herald_subject}}", text: "{{herald_text}}", ...(withHtml ? { html: "{{herald_html}}" } : {}) };
      const [response] = await call(hooks, via, () =>
        clients.sendgridFor(via).send({
          from: route.fromName ? { email: from, name: route.fromName } : from,
          ...(route.replyTo ? { replyTo: route.replyTo } : {}),
          personalizations,
          ...content,
          ...(same ? {} : { substitutionWrappers: ["{{", "}}"] }),
        }),
      );
      return { id: String(response.headers["x-message-id"] ?? ""), from };
    },
    // A malformed recipient fails at any provider.
    (error) => (error as { code?: number }).code === 400,
  );
  return { provider, accountId, providerMessageId: result.id, from: result.from };
}
