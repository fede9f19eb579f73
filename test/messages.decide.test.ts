import { describe, expect, it } from "vitest";
import { CLAIM_GRACE_MS, decideBeforeSending, SUSPENDED_RECHECK_MS, type SendFacts } from "../src/messages/decide.ts";

/**
 * The decision before a send, from facts alone (no database): one table of
 * cases, each a delivery that may go except for what the case changes.
 */

const now = new Date("2026-03-10T04:08:00Z");
const opens = new Date("2026-03-10T08:00:00Z");
const runAt = new Date("2026-03-10T04:08:01Z");

/** A queued SMS, due, to a subscribed contact with a valid number, in a window that is open. */
const mayGo: SendFacts = {
  now,
  status: "queued",
  channel: "sms",
  runAt,
  notDue: false,
  claimedByLiveProcess: false,
  messageCanceled: false,
  hasContact: true,
  subscribed: true,
  to: "+14155550101",
  suppressed: false,
  tenantSuspended: false,
  quietUntil: null,
  atCap: false,
};

const cases: [string, Partial<SendFacts>, ReturnType<typeof decideBeforeSending>][] = [
  ["nothing in the way: it goes", {}, { kind: "send" }],
  ["an email to an address goes", { channel: "email", to: "ada@example.test" }, { kind: "send" }],
  // Who else has it.
  [
    "claimed moments ago by a live worker: left to it",
    { status: "sending", claimedByLiveProcess: true },
    { kind: "later", until: new Date(now.getTime() + CLAIM_GRACE_MS), reason: "claimed moments ago" },
  ],
  ["sending by a worker that is gone: looked up", { status: "sending" }, { kind: "reconcile" }],
  ["unknown: looked up, never blindly resent", { status: "unknown" }, { kind: "reconcile" }],
  ["already sent: nothing to do", { status: "sent" }, { kind: "none" }],
  ["already delivered: nothing to do", { status: "delivered" }, { kind: "none" }],
  ["canceled: nothing to do", { status: "canceled" }, { kind: "none" }],
  ["not yet due: its own time", { notDue: true }, { kind: "later", until: runAt, reason: "not yet due" }],
  // What ends it.
  [
    "its message canceled",
    { messageCanceled: true },
    { kind: "finish", status: "canceled", reason: "message canceled" },
  ],
  ["contact erased", { hasContact: false }, { kind: "finish", status: "skipped", reason: "contact_deleted" }],
  ["unsubscribed since", { subscribed: false }, { kind: "finish", status: "skipped", reason: "unsubscribed" }],
  ["no phone", { to: "" }, { kind: "finish", status: "skipped", reason: "no_phone" }],
  ["no email", { channel: "email", to: "" }, { kind: "finish", status: "skipped", reason: "no_email" }],
  ["suppressed since", { suppressed: true }, { kind: "finish", status: "skipped", reason: "suppressed" }],
  ["a number no longer valid", { to: "+1415555" }, { kind: "finish", status: "skipped", reason: "invalid_phone" }],
  // Purpose: a transactional email ignores a marketing unsubscribe, not a bounce or complaint; SMS keeps STOP for all.
  [
    "transactional email to an unsubscribed contact goes",
    { channel: "email", to: "a@b.test", purpose: "transactional", subscribed: false },
    { kind: "send" },
  ],
  [
    "transactional email to an address suppressed only by an unsubscribe goes",
    { channel: "email", to: "a@b.test", purpose: "transactional", suppressed: true, hardSuppressed: false },
    { kind: "send" },
  ],
  [
    "transactional email to a bounced or complaining address is skipped",
    { channel: "email", to: "a@b.test", purpose: "transactional", suppressed: true, hardSuppressed: true },
    { kind: "finish", status: "skipped", reason: "suppressed" },
  ],
  [
    "marketing email to an unsubscribe-suppressed address is skipped",
    { channel: "email", to: "a@b.test", purpose: "marketing", suppressed: true, hardSuppressed: false },
    { kind: "finish", status: "skipped", reason: "suppressed" },
  ],
  [
    "marketing email to an unsubscribed contact is skipped",
    { channel: "email", to: "a@b.test", purpose: "marketing", subscribed: false },
    { kind: "finish", status: "skipped", reason: "unsubscribed" },
  ],
  [
    "transactional SMS after STOP is skipped (carriers require it)",
    { purpose: "transactional", subscribed: false },
    { kind: "finish", status: "skipped", reason: "unsubscribed" },
  ],
  [
    "transactional SMS to a suppressed phone is skipped",
    { purpose: "transactional", suppressed: true },
    { kind: "finish", status: "skipped", reason: "suppressed" },
  ],
  ["an email address is not a phone number", { channel: "email", to: "x@y.test" }, { kind: "send" }],
  // WhatsApp's 24-hour window: free-form only while open; an approved template any time.
  ["WhatsApp within the window goes", { channel: "whatsapp", whatsappSessionOpen: true }, { kind: "send" }],
  [
    "WhatsApp free-form outside the window",
    { channel: "whatsapp", whatsappSessionOpen: false },
    { kind: "finish", status: "skipped", reason: "outside_session_window" },
  ],
  [
    "WhatsApp template outside the window goes",
    { channel: "whatsapp", whatsappSessionOpen: false, approvedTemplate: true },
    { kind: "send" },
  ],
  ["the window is WhatsApp's alone", { channel: "sms", whatsappSessionOpen: false }, { kind: "send" }],
  [
    "outside the window, unsubscribed first",
    { channel: "whatsapp", whatsappSessionOpen: false, subscribed: false },
    { kind: "finish", status: "skipped", reason: "unsubscribed" },
  ],
  // What holds it.
  [
    "the tenant suspended",
    { tenantSuspended: true },
    {
      kind: "hold",
      until: new Date(now.getTime() + SUSPENDED_RECHECK_MS),
      hold: "tenant_suspended",
      reason: "tenant_suspended",
    },
  ],
  [
    "quiet hours: until the window opens",
    { quietUntil: opens },
    { kind: "hold", until: opens, hold: "quiet_hours", reason: "quiet_hours" },
  ],
  ["at the monthly cap", { atCap: true }, { kind: "capped" }],
  // Which rule wins when several apply.
  [
    "canceled beats unsubscribed",
    { messageCanceled: true, subscribed: false },
    { kind: "finish", status: "canceled", reason: "message canceled" },
  ],
  [
    "an ending beats a hold (no point waiting for the window to skip it)",
    { suppressed: true, quietUntil: opens },
    { kind: "finish", status: "skipped", reason: "suppressed" },
  ],
  [
    "suspension beats quiet hours",
    { tenantSuspended: true, quietUntil: opens },
    {
      kind: "hold",
      until: new Date(now.getTime() + SUSPENDED_RECHECK_MS),
      hold: "tenant_suspended",
      reason: "tenant_suspended",
    },
  ],
  [
    "quiet hours beat the cap (no place taken for a send that waits anyway)",
    { quietUntil: opens, atCap: true },
    { kind: "hold", until: opens, hold: "quiet_hours", reason: "quiet_hours" },
  ],
  [
    "not yet due beats everything a queued delivery is checked for",
    { notDue: true, messageCanceled: true },
    { kind: "later", until: runAt, reason: "not yet due" },
  ],
  [
    "a live claim is respected even if the message was canceled",
    { status: "sending", claimedByLiveProcess: true, messageCanceled: true },
    { kind: "later", until: new Date(now.getTime() + CLAIM_GRACE_MS), reason: "claimed moments ago" },
  ],
];

describe("decideBeforeSending", () => {
  it.each(cases)("%s", (_name, facts, expected) => {
    expect(decideBeforeSending({ ...mayGo, ...facts })).toEqual(expected);
  });
});
