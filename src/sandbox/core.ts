import { createHash, timingSafeEqual } from "node:crypto";
import type { Response } from "express";
import { sendgridError, twilioError } from "./wire.ts";

/**
 * What both of the sandbox's providers share: the messages kept for the page
 * and tests, the injected faults, and the callbacks posted in the background.
 */

export type SandboxChannel = "sms" | "whatsapp" | "email";

export interface SandboxMessage {
  id: string;
  provider: "twilio" | "sendgrid" | "meta";
  /** Twilio account SID, the last 4 characters of the SendGrid key, or Meta's phone number id. */
  account: string;
  channel: SandboxChannel;
  from: string;
  to: string;
  subject?: string;
  body: string;
  /** Email: the HTML part, the From name, Reply-To and the headers SendGrid was asked to add (the message's, then the recipient's). */
  html?: string;
  fromName?: string;
  replyTo?: string;
  headers?: Record<string, string>;
  createdAt: Date;
  /** Twilio: the media URLs sent with it (MMS, WhatsApp), and the approved template it was sent as. */
  media?: string[];
  contentSid?: string;
  /** Twilio: accepted, then failed with this code (WhatsApp 63016 outside the 24-hour window). */
  failedWith?: number;
}

export interface SandboxFaults {
  /** Share of requests (0–1) answered with a 500, nothing stored. */
  errorRate?: number;
  /** The next N requests get a 429 (Twilio 20429 / SendGrid's), nothing stored. */
  rateLimitBurst?: number;
  /** Share of requests (0–1) answered with a 429, nothing stored: a provider storm. */
  rateLimitShare?: number;
  /** Added before every answer. */
  latencyMs?: number;
  /** Store the message, then never answer: the connection is dropped after this many ms. */
  acceptThenTimeoutMs?: number;
  /** Store the message (its callbacks start), then answer only after this many ms: callbacks outrun the answer. */
  slowAnswerMs?: number;
}

/**
 * What happens to a message after acceptance, by the recipient's last digits
 * (documented for developers): …0001 fails (30003), …0002 is undelivered
 * (30005), bounce@… bounces; everything else is delivered. (…0003 is refused
 * outright with 21610, an unsubscribed recipient.)
 */
export function outcomeFor(to: string): {
  status: "delivered" | "failed" | "undelivered" | "bounce";
  errorCode?: number;
} {
  if (/0001$/.test(to)) return { status: "failed", errorCode: 30003 };
  if (/0002$/.test(to)) return { status: "undelivered", errorCode: 30005 };
  if (/^bounce@/i.test(to)) return { status: "bounce" };
  return { status: "delivered" };
}

const sha256 = (text: string) => createHash("sha256").update(text).digest();
/** Compares credentials in constant time, whatever their lengths. */
export const sameSecret = (a: string, b: string) => timingSafeEqual(sha256(a), sha256(b));

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export type SandboxCore = ReturnType<typeof createSandboxCore>;

export function createSandboxCore(options: { keep: number; callbackDelayMs: number }) {
  const { keep, callbackDelayMs } = options;
  let faults: SandboxFaults = {};
  const pending = new Set<Promise<void>>();
  const messages: SandboxMessage[] = [];

  return {
    keep,
    /** Newest last; at most `keep` of them. */
    messages,
    remember: (message: SandboxMessage) => {
      messages.push(message);
      if (messages.length > keep) messages.splice(0, messages.length - keep);
    },
    /** The faults in force (a 429 burst counts down as it is spent). */
    get faults(): SandboxFaults {
      return faults;
    },
    setFaults: (next: SandboxFaults) => void (faults = { ...next }),
    /** Posts callbacks in order, in the background; failures are the receiver's business, as with the real services. */
    schedule: (posts: (() => Promise<unknown>)[]) => {
      const run = (async () => {
        for (const post of posts) {
          await sleep(callbackDelayMs);
          await post().catch(() => undefined);
        }
      })();
      pending.add(run);
      void run.finally(() => pending.delete(run));
    },
    /** Resolves when every callback already scheduled has been posted. */
    settled: async () => {
      while (pending.size > 0) await Promise.all(pending);
    },
    /** Applies the injected faults; true when the request was answered (or dropped) already. */
    faulted: async (res: Response, kind: "twilio" | "sendgrid"): Promise<boolean> => {
      if (faults.latencyMs) await sleep(faults.latencyMs);
      const burst = faults.rateLimitBurst !== undefined && faults.rateLimitBurst > 0;
      if (burst || (faults.rateLimitShare && Math.random() < faults.rateLimitShare)) {
        if (burst) faults.rateLimitBurst!--;
        if (kind === "twilio") twilioError(res, 429, 20429, "Too Many Requests");
        else sendgridError(res, 429, "too many requests");
        return true;
      }
      if (faults.errorRate && Math.random() < faults.errorRate) {
        if (kind === "twilio") twilioError(res, 500, 20500, "Internal Server Error");
        else sendgridError(res, 500, "internal error");
        return true;
      }
      return false;
    },
    /** Accept-then-timeout: the message counts as sent, but the client never hears so. */
    dropAfterAccepting: (res: Response): boolean => {
      if (!faults.acceptThenTimeoutMs) return false;
      setTimeout(() => res.socket?.destroy(), faults.acceptThenTimeoutMs);
      return true;
    },
  };
}
