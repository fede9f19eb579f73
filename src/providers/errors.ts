/**
 * How a send can fail, whoever made it: the provider's refusal or a doubt
 * about acceptance (SendError), or "not now" from Herald's own pacing
 * (SendDeferred). Shared by the connection-free transport (transmit.ts) and
 * the per-call helpers (send.ts).
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
 * A provider's error text without the addresses it may quote ("The 'To'
 * number +1… is not a valid phone number"): it is stored on deliveries and
 * accounts and logged, where plaintext phone numbers and emails never go.
 */
export function withoutAddresses(text: string): string {
  return text
    .replace(/[^\s@'"<>()]+@[^\s@'"<>()]+\.[^\s@'"<>()]+/g, "[email]")
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
