import type pg from "pg";
import { providerMessage, SendDeferred, SendError } from "../providers/errors.ts";
import { statusCallbackUrl, type ProviderClients } from "../providers/clients.ts";
import type { Sent } from "../providers/transmit.ts";
import {
  EMAIL_BATCH_MAX,
  fitsSubstitutions,
  transmitEmailBatch,
  transmitSms,
  type EmailItem,
  type TransmitHooks,
} from "../providers/transmit.ts";
import type { ClaimedSend, ClaimResult } from "./claim.ts";
import { Limiter, processAccountLimiter } from "./limiter.ts";
import { sleepUntil, waitForSlot } from "./pacing.ts";
import { findAcceptedSmsVia } from "./reconcile.ts";
import { unsubscribeHeaders } from "./unsubscribe.ts";
import { renderMetaTemplate, whatsappExtras } from "./whatsapp.ts";

/**
 * The second step of a run: the provider calls for what the claim committed,
 * with no transaction open and no pooled connection held (the only database
 * statements here are one-line pacing reservations for a fallback to the
 * system's number). SMS and WhatsApp go one request each, each at its pacing
 * slot, concurrently; email goes in SendGrid batches of up to 1,000
 * personalizations; `unknown` and orphaned `sending` deliveries are looked up
 * at the provider. Every request holds one of the job's permits (limiter.ts)
 * and one of its account's; the outcomes are recorded afterwards, in sets
 * (record.ts).
 */

export type SendOutcome =
  | { id: string; kind: "sent"; sent: Sent; body: string; reason: string | null }
  | { id: string; kind: "deferred"; until: Date }
  | { id: string; kind: "error"; error: SendError }
  | { id: string; kind: "absent" }
  | { id: string; kind: "email_unknown" }
  | { id: string; kind: "lookup_failed"; message: string };

export interface Dispatched {
  outcomes: SendOutcome[];
  /** What the calls taught about the tenant's accounts: an error, or null (it works). */
  accountNotes: Map<string, string | null>;
}

/** How late past its slot a send may still start on that slot. */
const LATE_MS = 50;

interface Context {
  clients: ProviderClients;
  pacingPool: pg.Pool;
  tenantId: string;
}

/** How many provider requests a claimed run needs: one per SMS or lookup, one per email batch. */
export function requestsFor(claim: ClaimResult): number {
  return (
    emailRequests(claim.sends.filter((s) => s.delivery.channel === "email")).length +
    claim.sends.filter((s) => s.delivery.channel !== "email").length +
    claim.reconciles.filter((r) => r.delivery.channel !== "email").length
  );
}

/** Runs every request of the run through `slots` (the job's share of the process's permits), calling `done` after each. */
export async function dispatch(
  claim: ClaimResult,
  ctx: Context,
  slots: Limiter,
  done: () => void,
): Promise<Dispatched> {
  const accountNotes = new Map<string, string | null>();
  const hooksFor = (send: { route: ClaimedSend["route"]; delivery: ClaimedSend["delivery"] }): TransmitHooks => ({
    // The claim reserved the route's slot; only a fallback to the system's sender needs one now.
    pace: async (from, channel) => {
      if (from === send.route.from) return;
      const systemMps = ctx.clients.system.twilio.messagesPerSecond ?? 1;
      await waitForSlot(ctx.pacingPool, {
        tenantId: ctx.tenantId,
        tenantStepMs: send.delivery.tenant_step_ms,
        sender: channel === "email" ? null : `${channel}:${from}`,
        senderStepMs: channel === "email" ? null : 1000 / systemMps,
      });
    },
    noteAccount: (accountId, error) => void accountNotes.set(accountId, error),
    around: (key, call) => processAccountLimiter().run(key, call),
  });
  const request = <T>(work: () => Promise<T>) => slots.run(work).finally(done);

  const sms = claim.sends.filter((s) => s.delivery.channel !== "email");
  const emails = emailRequests(claim.sends.filter((s) => s.delivery.channel === "email"));
  const work: Promise<SendOutcome[]>[] = [
    ...sms.map(async (s) => {
      // Waiting for the slot holds no permit: a permit is for a request in flight.
      await sleepUntil(s.slotAt);
      return request(async () => {
        // Started late (a busy process, a wait for a permit): the slot has passed, and sends
        // delayed together must not go out in a burst, so a fresh slot is taken.
        if (Date.now() - s.slotAt > LATE_MS) {
          try {
            await waitForSlot(ctx.pacingPool, {
              tenantId: ctx.tenantId,
              tenantStepMs: s.delivery.tenant_step_ms,
              sender: s.senderStepMs === null ? null : `${s.delivery.channel}:${s.route.from}`,
              senderStepMs: s.senderStepMs,
            });
          } catch (error) {
            return [failed(s.delivery.id, error)];
          }
        }
        return [await sendSms(ctx, s, hooksFor(s))];
      });
    }),
    ...emails.map(async (batch) => {
      await sleepUntil(Math.max(...batch.map((s) => s.slotAt)));
      return request(() => sendEmails(ctx, batch, hooksFor(batch[0]!)));
    }),
    ...claim.reconciles.map(async (r): Promise<SendOutcome[]> => {
      // Email cannot be looked up (SendGrid has no per-message search without an add-on).
      // Nor can WhatsApp sent through Meta (the Cloud API has no message lookup): neither is sent again.
      if (r.delivery.channel === "email" || !r.to || (r.delivery.channel === "whatsapp" && claim.metaWhatsApp))
        return [{ id: r.delivery.id, kind: "email_unknown" }];
      return request(async () => {
        try {
          const found = await findAcceptedSmsVia(
            ctx.clients,
            claim.lookupAccount,
            { to: r.to, bodySha256: r.bodySha256, channel: r.delivery.channel as "sms" | "whatsapp", since: r.since },
            (key, call) => processAccountLimiter().run(key, call),
          );
          if (!found) return [{ id: r.delivery.id, kind: "absent" }];
          return [
            {
              id: r.delivery.id,
              kind: "sent",
              sent: found.sent,
              body: found.body,
              reason: "reconciled: the provider had accepted it",
            },
          ];
        } catch (error) {
          // No answer, no decision: looked up again later.
          return [{ id: r.delivery.id, kind: "lookup_failed", message: providerMessage(error) }];
        }
      });
    }),
  ];
  return { outcomes: (await Promise.all(work)).flat(), accountNotes };
}

async function sendSms(ctx: Context, s: ClaimedSend, hooks: TransmitHooks): Promise<SendOutcome> {
  const d = s.delivery;
  try {
    // What the provider reports later finds this delivery by the status callback's URL (src/provider-callbacks/).
    const sent = await transmitSms(
      ctx.clients,
      s.route,
      {
        to: s.to,
        body: s.content.body,
        channel: d.channel as "sms" | "whatsapp",
        statusCallback: statusCallbackUrl(ctx.clients.system, ctx.tenantId, d.id),
        // Through a Meta account (src/providers/meta.ts).
        mediaUrls: d.media_urls,
        metaTemplate: renderMetaTemplate(d),
        deliveryId: d.id,
        ...whatsappExtras(d),
      },
      hooks,
    );
    return { id: d.id, kind: "sent", sent, body: s.content.body, reason: null };
  } catch (error) {
    return failed(d.id, error);
  }
}

/** One mail/send request for a batch (its events find each delivery by the custom args); a batch SendGrid refuses as malformed is sent one by one. */
async function sendEmails(ctx: Context, batch: ClaimedSend[], hooks: TransmitHooks): Promise<SendOutcome[]> {
  const item = (s: ClaimedSend): EmailItem => ({
    to: s.to,
    subject: s.content.subject ?? "",
    text: s.content.body,
    html: s.content.html_body ?? undefined,
    customArgs: { herald_tenant_id: ctx.tenantId, herald_delivery_id: s.delivery.id },
    ...(s.unsubscribeUrl ? { headers: unsubscribeHeaders(s.unsubscribeUrl) } : {}),
  });
  try {
    const sent = await transmitEmailBatch(ctx.clients, batch[0]!.route, batch.map(item), hooks);
    return batch.map((s) => ({ id: s.delivery.id, kind: "sent", sent, body: s.content.body, reason: null }));
  } catch (error) {
    // One malformed address fails the whole request: the others are not at fault.
    if (batch.length > 1 && error instanceof SendError && !error.uncertain && error.status === 400) {
      const outcomes: SendOutcome[] = [];
      for (const s of batch) outcomes.push(...(await sendEmails(ctx, [s], hooks)));
      return outcomes;
    }
    return batch.map((s) => failed(s.delivery.id, error));
  }
}

function failed(id: string, error: unknown): SendOutcome {
  if (error instanceof SendDeferred) return { id, kind: "deferred", until: error.until };
  if (error instanceof SendError) return { id, kind: "error", error };
  // Not the provider's answer (a bug, say): whether it went out is unknown, so it is looked up, never resent blindly.
  return {
    id,
    kind: "error",
    error: new SendError(`unexpected error during the send: ${providerMessage(error)}`, "system", undefined, {
      uncertain: true,
    }),
  };
}

/**
 * Claimed emails as requests: those of one route (so one sender) together,
 * up to 1,000 a request; one whose text is too long to ride as substitutions
 * goes alone, unless the whole batch has the same text.
 */
function emailRequests(sends: ClaimedSend[]): ClaimedSend[][] {
  const byRoute = new Map<unknown, ClaimedSend[]>();
  for (const s of sends) {
    const group = byRoute.get(s.route);
    if (group) group.push(s);
    else byRoute.set(s.route, [s]);
  }
  const requests: ClaimedSend[][] = [];
  for (const group of byRoute.values()) {
    const first = group[0]!.content;
    const same = group.every(
      (s) =>
        s.content.body === first.body && s.content.subject === first.subject && s.content.html_body === first.html_body,
    );
    const fits = (s: ClaimedSend) =>
      same ||
      fitsSubstitutions({
        to: s.to,
        subject: s.content.subject ?? "",
        text: s.content.body,
        html: s.content.html_body ?? undefined,
      });
    const together = group.filter(fits);
    const alone = group.filter((s) => !fits(s));
    for (let i = 0; i < together.length; i += EMAIL_BATCH_MAX) requests.push(together.slice(i, i + EMAIL_BATCH_MAX));
    for (const s of alone) requests.push([s]);
  }
  return requests;
}
