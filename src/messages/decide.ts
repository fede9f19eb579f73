import { isValidPhoneNumber } from "libphonenumber-js/max";

/**
 * What becomes of one delivery when its send job looks at it: a pure function
 * of facts the claim read in one statement (and the clock), so that every rule
 * before a send is here, in order, and tested by a table of cases without a
 * database (test/messages.decide.test.ts). The claim (claim.ts) gathers the
 * facts and writes the decisions in sets.
 */

/** Why a queued delivery waits: the `deliveries.hold_reason` values (a check constraint names the same). */
export type HoldReason = "quiet_hours" | "monthly_cap" | "tenant_suspended" | "retry";

/**
 * A `sending` delivery claimed by a worker process that is gone (no longer
 * registered) is reconciled at once; one claimed by a live process whose
 * provider call may still be under way waits this long: the SDKs' timeouts
 * (30 s each, two calls with a fallback) and a pacing wait.
 */
export const CLAIM_GRACE_MS = 90_000;
/** A suspended tenant's deliveries look again after this long (resuming releases them at once). */
export const SUSPENDED_RECHECK_MS = 86_400_000;

export interface SendFacts {
  now: Date;
  status: string;
  channel: "sms" | "whatsapp" | "email";
  runAt: Date;
  /** run_at is still more than a moment away (on the database's clock). */
  notDue: boolean;
  /** `sending`, claimed within the grace period by a process still registered. */
  claimedByLiveProcess: boolean;
  messageCanceled: boolean;
  /** The contact still exists (an erased contact leaves the delivery without one). */
  hasContact: boolean;
  subscribed: boolean | null;
  /** The address for the channel ("" when the contact has none). */
  to: string;
  suppressed: boolean;
  /** The message's purpose (default marketing): a transactional email ignores a marketing unsubscribe. */
  purpose?: "marketing" | "transactional";
  /** Suppressed for more than a marketing unsubscribe: a bounce, a spam report, an operator's (email). */
  hardSuppressed?: boolean;
  tenantSuspended: boolean;
  /** When the send window next opens (null: open now, or email, or a reply to a recent inbound). */
  quietUntil: Date | null;
  /** The month's cap is already reached. */
  atCap: boolean;
  /**
   * WhatsApp: whether the contact wrote on WhatsApp in the last 24 hours (the
   * customer-service window), and whether the message is a provider-approved
   * template (which may go outside it). Absent for other channels.
   */
  whatsappSessionOpen?: boolean | null;
  approvedTemplate?: boolean;
}

export type Decision =
  /** Ends it here: never attempted. */
  | { kind: "finish"; status: "skipped" | "canceled"; reason: string }
  /** Stays queued until `until`, written with why. */
  | { kind: "hold"; until: Date; hold: HoldReason; reason: string }
  /** Held by the monthly cap; when it looks again depends on its message's sends in flight (claim.ts asks). */
  | { kind: "capped" }
  /** Not touched now; its job comes back at `until`. */
  | { kind: "later"; until: Date; reason: string }
  /** Its send is in doubt (`unknown`, or `sending` by a worker that is gone): looked up before anything else. */
  | { kind: "reconcile" }
  /** Already past sending (or finished): nothing to do. */
  | { kind: "none" }
  /** May go: route, pacing and the cap's count decide the rest. */
  | { kind: "send" };

export function decideBeforeSending(f: SendFacts): Decision {
  if (f.status === "sending" && f.claimedByLiveProcess)
    return { kind: "later", until: new Date(f.now.getTime() + CLAIM_GRACE_MS), reason: "claimed moments ago" };
  if (f.status === "sending" || f.status === "unknown") return { kind: "reconcile" };
  if (f.status !== "queued") return { kind: "none" };
  // A second job for a delivery held back (a retry's backoff, quiet hours)
  // does not jump the wait.
  if (f.notDue) return { kind: "later", until: f.runAt, reason: "not yet due" };

  // Re-checked now, however long ago the delivery was queued.
  const skip = (reason: string): Decision => ({ kind: "finish", status: "skipped", reason });
  if (f.messageCanceled) return { kind: "finish", status: "canceled", reason: "message canceled" };
  if (!f.hasContact) return skip("contact_deleted");
  // Consent: transactional email (a receipt, a password reset) is not a
  // marketing message, so neither the email flag nor an `unsubscribe`
  // suppression stops it; a bounce or a complaint does. On SMS and WhatsApp
  // STOP stops every purpose (carriers require it).
  const marketingConsent = f.purpose !== "transactional" || f.channel !== "email";
  if (marketingConsent && !f.subscribed) return skip("unsubscribed");
  if (!f.to) return skip(f.channel === "email" ? "no_email" : "no_phone");
  if (marketingConsent ? f.suppressed : Boolean(f.hardSuppressed)) return skip("suppressed");
  // Stored numbers were valid when written; numbering plans change.
  if (f.channel !== "email" && !isValidPhoneNumber(f.to)) return skip("invalid_phone");
  // WhatsApp: free-form text only within 24 hours of the contact's last message; a template any time.
  if (f.channel === "whatsapp" && f.whatsappSessionOpen === false && !f.approvedTemplate)
    return skip("outside_session_window");

  // An operator suspended the tenant: held (resuming releases it at once; a day later it looks again either way).
  if (f.tenantSuspended)
    return {
      kind: "hold",
      until: new Date(f.now.getTime() + SUSPENDED_RECHECK_MS),
      hold: "tenant_suspended",
      reason: "tenant_suspended",
    };
  if (f.quietUntil) return { kind: "hold", until: f.quietUntil, hold: "quiet_hours", reason: "quiet_hours" };
  // Before a pacing slot is taken that it would not use.
  if (f.atCap) return { kind: "capped" };
  return { kind: "send" };
}
