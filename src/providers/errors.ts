/**
 * How a send can fail, whoever made it: the provider's refusal or a doubt
 * about acceptance (SendError), or "not now" from Herald's own pacing
 * (SendDeferred); and the one table of error codes with what each means for
 * a send (PROVIDER_CODES). Shared by the connection-free transport
 * (transmit.ts), the per-call helpers (send.ts) and the delivery engine
 * (src/messages/record.ts).
 */

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
  constructor(
    message: string,
    provider: "tenant" | "system",
    code?: number | string,
    details: { status?: number; uncertain?: boolean } = {},
  ) {
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
 * What an error code means for a send. Twilio's codes (numbers, kept here as
 * strings: https://www.twilio.com/docs/api/errors) and Herald's own refusals
 * made before any provider is called. A code not listed is decided by its
 * HTTP status (src/messages/record.ts): 429 and 5xx are retried, other 4xx not.
 */
export interface CodeMeaning {
  /** Sending the same message again cannot succeed: the delivery fails at once. */
  permanent: boolean;
  /**
   * The recipient's fault, not the account's: any account or provider would
   * refuse it alike, so there is no fallback to the system's account and the
   * tenant's account keeps no error for it. Always permanent.
   */
  recipient: boolean;
  /** The recipient is never sent to again on the channel (a suppression, the contact unsubscribed). */
  suppresses: boolean;
  /** What it means, for people reading this table (the provider's own message is what Herald keeps). */
  reason: string;
}

export const PROVIDER_CODES: Readonly<Record<string, CodeMeaning>> = {
  "21211": {
    permanent: true,
    recipient: true,
    suppresses: false,
    reason: "the 'To' number is not a valid phone number",
  },
  "21408": {
    permanent: true,
    recipient: false,
    suppresses: false,
    reason: "the account may not send to the 'To' number's region (geographic permissions); another account may",
  },
  "21610": {
    permanent: true,
    recipient: true,
    suppresses: true,
    reason: "the recipient replied STOP at the carrier: a carrier opt-out (src/messages/carrier-opt-out.ts)",
  },
  "21612": {
    permanent: true,
    recipient: true,
    suppresses: false,
    reason: "the 'To' number cannot be reached by SMS",
  },
  "21614": { permanent: true, recipient: true, suppresses: false, reason: "the 'To' number is not a mobile number" },
  "30004": {
    permanent: true,
    recipient: true,
    suppresses: false,
    reason: "message blocked: the recipient or their carrier blocks messages from this sender",
  },
  "63007": {
    permanent: true,
    recipient: false,
    suppresses: false,
    reason: "no WhatsApp channel for the 'From' address: the sender's set-up, not the recipient's",
  },
  "63016": {
    permanent: true,
    recipient: true,
    suppresses: false,
    reason:
      "WhatsApp: a free-form message outside the 24-hour session window (only an approved template may go); the delivery's reason is outside_session_window",
  },
  // Meta's WhatsApp Cloud API (src/providers/meta.ts; its rate limits 4, 80007, 130429 and 131056 are
  // answered as HTTP 429 there, and retried): https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes
  "131047": {
    permanent: true,
    recipient: true,
    suppresses: false,
    reason:
      "Meta: re-engagement message: outside_session_window (24 hours since the contact last wrote; only a template may go)",
  },
  "131026": {
    permanent: true,
    recipient: true,
    suppresses: false,
    reason: "Meta: message undeliverable (the number is not on WhatsApp, or cannot receive it)",
  },
  "190": {
    permanent: true,
    recipient: false,
    suppresses: false,
    reason: "Meta: the account's access token is invalid or expired (answered as 401; recorded on the account)",
  },
  NOT_OWN_SENDER: {
    permanent: true,
    recipient: false,
    suppresses: false,
    reason: "Herald's: the sender is not one of the tenant's own (herald_hidden.sender_refusal)",
  },
  NO_SENDER: {
    permanent: true,
    recipient: false,
    suppresses: false,
    reason: "Herald's: no sender number or address is configured for the send",
  },
};

/** The meaning of an error code (a number or a string), if the table lists it. */
export const codeMeaning = (code: number | string | null | undefined): CodeMeaning | undefined =>
  code === null || code === undefined ? undefined : PROVIDER_CODES[String(code)];

const codesWhere = (property: "permanent" | "recipient" | "suppresses"): ReadonlySet<string> =>
  new Set(Object.keys(PROVIDER_CODES).filter((code) => PROVIDER_CODES[code]![property]));
/** Codes that fail a delivery at once. */
export const PERMANENT_CODES = codesWhere("permanent");
/** Codes that are the recipient's fault (no fallback; the account is not blamed). */
export const RECIPIENT_CODES = codesWhere("recipient");
/** Codes that suppress the recipient. */
export const SUPPRESSING_CODES = codesWhere("suppresses");

/** What ends an address in a provider's text (besides "@"): spaces, quotes, brackets. */
const ADDRESS_BREAKS = /([\s'"<>()]+)/;

/**
 * A run of characters without separators, its addresses replaced: `local@domain`
 * where the local part is not empty and the domain has a dot with a character
 * on each side. Parts are visited once, so the work is linear in the text.
 */
function withoutEmailsInRun(run: string): string {
  if (!run.includes("@")) return run;
  const parts = run.split("@");
  let out = "";
  let i = 0;
  while (i < parts.length) {
    const local = parts[i]!;
    const domain = parts[i + 1];
    const dot = domain === undefined ? -1 : domain.indexOf(".", 1);
    if (local !== "" && domain !== undefined && dot !== -1 && dot < domain.length - 1) {
      out += "[email]";
      i += 2;
    } else {
      out += local;
      i += 1;
    }
    if (i < parts.length) out += "@";
  }
  return out;
}

/**
 * A provider's error text without the addresses it may quote ("The 'To'
 * number +1… is not a valid phone number"): it is stored on deliveries and
 * accounts and logged, where plaintext phone numbers and emails never go.
 * Emails are found by a scan (a regular expression for them backtracks over
 * every long run of letters, quadratic in it); numbers by one that does not.
 */
export function withoutAddresses(text: string): string {
  return text
    .split(ADDRESS_BREAKS)
    .map(withoutEmailsInRun)
    .join("")
    .replace(/\+?\d[\d\s().-]{5,}\d/g, "[number]");
}

export const providerMessage = (error: unknown) => withoutAddresses((error as Error).message ?? String(error));

export function httpStatus(error: unknown): number | undefined {
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
export function certainlyNotAccepted(error: unknown): boolean {
  const status = httpStatus(error);
  return status !== undefined && status >= 400 && status < 500;
}

/** A provider's error as a SendError: its code, HTTP status, and whether acceptance is in doubt. */
export function providerError(message: string, provider: "tenant" | "system", error: unknown): SendError {
  const e = error as { code?: number | string };
  return new SendError(message, provider, e.code, {
    status: httpStatus(error),
    uncertain: !certainlyNotAccepted(error),
  });
}
