import { createHash } from "node:crypto";
import type pg from "pg";
import type { ProviderClients, TenantAccount } from "../providers/clients.ts";
import type { IdentityMetadata } from "../providers/email-identity.ts";
import { SendError } from "../providers/errors.ts";
import type { MetaTemplate } from "../providers/meta.ts";
import { activeAccount, tenantSettings } from "../providers/routing.ts";
import type { Route } from "../providers/transmit.ts";
import { serviceRoute } from "../services/route.ts";
import { CLAIM_GRACE_MS, decideBeforeSending, type Decision } from "./decide.ts";
import { reserveSlots } from "./pacing.ts";
import { NO_UNSUBSCRIBE_LINK, renderFor, unsubscribeLink } from "./personalize.ts";
import type { Content } from "./render.ts";
import { messagesPerSecond, routeFor, senderRefusal } from "./sender-route.ts";
import { capReopens, finishMany, holdMany, type Hold } from "./settle.ts";
import { carriesUnsubscribe } from "./unsubscribe.ts";

/**
 * The first step of a run of deliveries (a delivery__send job), in one
 * transaction as herald_worker in the tenant: every delivery of the run read
 * at once with what the send-time checks need (one statement: cancel,
 * consent, suppression under every live hash key, quiet hours, the cap, the
 * tenant's standing), decided (decide.ts: a pure function of those facts),
 * and written back in a few set-based statements — finished (skipped,
 * canceled), held back (quiet hours, the cap, pacing), or claimed (`sending`,
 * counted toward the month, its pacing slot reserved). The claim is
 * committed before any provider is called: a worker that dies after it
 * leaves `sending` deliveries, which a later run reconciles instead of
 * resending. Rows another transaction holds (a callback, a cancel, another
 * job) are left for a moment later.
 */

export interface DeliveryRow {
  id: string;
  status: string;
  run_at: Date;
  channel: "sms" | "whatsapp" | "email";
  attempts: number;
  claimed_at: Date | null;
  claimed_by: string | null;
  content_sha256: string | null;
  message_id: string;
  message_status: string;
  metadata: IdentityMetadata & { messaging_service?: string };
  purpose: "marketing" | "transactional";
  content: Content;
  meta_template?: MetaTemplate | null;
  contact_id: string | null;
  first_name: string | null;
  last_name: string | null;
  external_id: string | null;
  attributes: Record<string, unknown>;
  phone: string | null;
  email: string | null;
  subscribed: boolean | null;
  suppressed: boolean;
  /** Email: suppressed for more than a marketing unsubscribe (a bounce, a spam report, an operator). */
  suppressed_hard: boolean;
  quiet_until: Date | null;
  tenant_step_ms: number;
  not_due: boolean;
  recently_claimed: boolean | null;
  at_cap: boolean;
  tenant_suspended: boolean;
  /** WhatsApp (src/messages/whatsapp.ts): the 24-hour window (null: not WhatsApp), media, an approved template. */
  session_open: boolean | null;
  media_urls: string[];
  content_sid: string | null;
  content_variables: Record<string, string> | null;
}

/** A claimed delivery: its recipient, text, route, and when its pacing slot opens (ms from the claim's commit, on this process's clock). */
export interface ClaimedSend {
  delivery: DeliveryRow;
  to: string;
  content: Content;
  route: Route;
  slotAt: number;
  /** The sender's pace (null: email, the tenant's alone), for a slot taken again when the send starts late. */
  senderStepMs: number | null;
  /** A marketing email's unsubscribe link (its List-Unsubscribe header). */
  unsubscribeUrl?: string;
}

/** A delivery the provider may have (`unknown`, or `sending` for a worker that is gone): looked up before anything else. */
export interface ReconcileCase {
  delivery: DeliveryRow;
  to: string;
  bodySha256: string;
  /** The provider's messages are searched from here (the claim that sent it, a minute's margin). */
  since: Date;
}

export interface ClaimResult {
  /** The claim's time, exactly (Postgres text): what records later must still find on the row. */
  stamp: string;
  sends: ClaimedSend[];
  reconciles: ReconcileCase[];
  /** The tenant's active Twilio account, for the lookups (null: none). */
  lookupAccount: TenantAccount | null;
  /** WhatsApp goes through a Meta account, which has no message lookup (src/providers/meta.ts). */
  metaWhatsApp?: boolean;
  later: Hold[];
  /** Held by the monthly cap in this run: looked at again at once if one of this run's sends is refused (its place comes back). */
  capped: string[];
}

/** Rows another transaction holds come back this much later. */
const BUSY_RETRY_MS = 2_000;

const deliverySelect = `
  select d.id, d.status, d.run_at, d.channel, d.attempts, d.claimed_at, d.claimed_by, d.content_sha256, d.message_id,
         m.status as message_status, m.metadata, m.purpose,
         json_build_object('body', coalesce(t.body, m.body), 'subject', coalesce(t.subject, m.subject),
                           'html_body', coalesce(t.html_body, m.html_body)) as content,
         -- WhatsApp through a Meta account (src/providers/meta.ts): the approved template the template names.
         case when t.whatsapp_template_name is not null
           then json_build_object('name', t.whatsapp_template_name, 'language', t.whatsapp_template_language,
                                  'parameters', t.whatsapp_template_parameters) end as meta_template,
         c.id as contact_id, c.first_name, c.last_name, c.external_id, coalesce(c.attributes, '{}') as attributes,
         pii.phone, pii.email,
         case d.channel when 'sms' then c.sms_subscribed when 'whatsapp' then c.whatsapp_subscribed else c.email_subscribed end as subscribed,
         -- By the address's hash under every live hash key version: during a
         -- hash-key rotation a contact and its suppression may be on different ones.
         exists (select 1 from herald_public.suppressions s
                  where s.tenant_id = d.tenant_id
                    and s.kind = case when d.channel = 'email' then 'email' else 'phone' end
                    and s.address_hash = any (herald_hidden.pii_hashes(
                          case when d.channel = 'email' then 'email' else 'phone' end,
                          case when d.channel = 'email' then pii.email else pii.phone end))) as suppressed,
         d.channel = 'email' and exists (select 1 from herald_public.suppressions s
                  where s.tenant_id = d.tenant_id and s.kind = 'email' and s.reason <> 'unsubscribe'
                    and s.address_hash = any (herald_hidden.pii_hashes('email', pii.email))) as suppressed_hard,
         -- Quiet hours guard phones (SMS, WhatsApp), in the contact's time zone,
         -- else the tenant's; not a reply to someone who wrote in the last day
         -- (metadata is the sender's to write: the message it names must be
         -- this contact's, and recent).
         -- Transactional texts (codes, reminders asked for) are not held.
         case when d.channel <> 'email' and m.purpose <> 'transactional'
                   and not exists (
                         select 1 from herald_public.inbound_messages i
                          where i.tenant_id = d.tenant_id and i.contact_id = d.contact_id
                            and i.id::text = m.metadata ->> 'in_reply_to'
                            and i.received_at > now() - interval '24 hours') then
           herald_hidden.send_window_opens_at(c.timezone, ts.timezone, ts.send_window_start, ts.send_window_end) end as quiet_until,
         ts.rate_batch_interval_seconds * 1000.0 / ts.rate_batch_size as tenant_step_ms,
         tn.status = 'suspended' as tenant_suspended,
         -- WhatsApp: the contact's 24-hour window; media and an approved template (the message's media, else the template's).
         case when d.channel = 'whatsapp' then herald_hidden.whatsapp_session_open(d.contact_id) end as session_open,
         coalesce(nullif(m.media_urls, '{}'), t.media_urls, '{}') as media_urls, t.content_sid, t.content_variables,
         -- Compared on the database's clock, which set these times, not the worker's.
         d.run_at > now() + interval '5 seconds' as not_due,
         d.claimed_at > now() - make_interval(secs => $2 / 1000.0) as recently_claimed,
         -- Already at the cap (no lock taken: the claim counts under its lock).
         coalesce((select u.messages >= ts.monthly_message_cap from herald_hidden.monthly_usage u
                    where u.tenant_id = d.tenant_id and u.month = date_trunc('month', now() at time zone 'UTC')::date), false) as at_cap
    from herald_public.deliveries d
    join herald_public.messages m on m.tenant_id = d.tenant_id and m.id = d.message_id
    left join herald_public.templates t on t.tenant_id = m.tenant_id and t.id = m.template_id
    left join herald_public.contacts c on c.tenant_id = d.tenant_id and c.id = d.contact_id
    -- Decrypted once, for the template, the address and the suppression check
    -- (OFFSET 0 keeps the planner from copying the calls into each use).
    left join lateral (select herald_public.contacts_phone(c) as phone, herald_public.contacts_email(c) as email
                        where c.id is not null offset 0) pii on true
    join herald_public.tenant_settings ts on ts.tenant_id = d.tenant_id
    join herald_public.tenants tn on tn.id = d.tenant_id
   where d.tenant_id = herald_public.current_tenant_id() and d.id = any ($1::uuid[])
   order by d.id
     for update of d skip locked`;

interface Context {
  clients: ProviderClients;
  /** Owner connections: pacing reservations and the worker registry (herald_private). */
  pacingPool: pg.Pool;
  tenantId: string;
  processId: string;
}

export async function claimRun(client: pg.ClientBase, ids: string[], ctx: Context): Promise<ClaimResult> {
  const {
    rows: [now],
  } = await client.query<{ stamp: string }>("select now()::text as stamp");
  const { rows } = await client.query<DeliveryRow>(deliverySelect, [ids, CLAIM_GRACE_MS]);
  const result: ClaimResult = {
    stamp: now!.stamp,
    sends: [],
    reconciles: [],
    lookupAccount: null,
    later: [],
    capped: [],
  };
  const finishes: { id: string; status: "skipped" | "canceled" | "failed"; reason: string; code?: string }[] = [];
  const holds: Hold[] = [];
  const capped: DeliveryRow[] = [];
  const candidates: { d: DeliveryRow; to: string }[] = [];

  // Not read: held by another transaction (busy, a moment later), or gone.
  const seen = new Set(rows.map((r) => r.id));
  const unseen = ids.filter((id) => !seen.has(id));
  if (unseen.length > 0) {
    const { rows: busy } = await client.query<{ id: string }>(
      "select id from herald_public.deliveries where tenant_id = herald_public.current_tenant_id() and id = any ($1::uuid[])",
      [unseen],
    );
    for (const { id } of busy)
      result.later.push({ id, until: new Date(Date.now() + BUSY_RETRY_MS), hold: null, reason: "busy in another job" });
  }

  const alive = await liveProcesses(
    ctx.pacingPool,
    rows.filter((r) => r.status === "sending" && r.recently_claimed).map((r) => r.claimed_by),
  );
  const clock = new Date();
  for (const d of rows) {
    d.tenant_step_ms = Number(d.tenant_step_ms);
    const to = (d.channel === "email" ? d.email : d.phone) ?? "";
    const decision: Decision = decideBeforeSending({
      now: clock,
      status: d.status,
      channel: d.channel,
      runAt: d.run_at,
      notDue: d.not_due,
      claimedByLiveProcess: Boolean(d.recently_claimed && d.claimed_by && alive.has(d.claimed_by)),
      messageCanceled: d.message_status === "canceled",
      hasContact: Boolean(d.contact_id),
      subscribed: d.subscribed,
      to,
      suppressed: d.suppressed,
      purpose: d.purpose,
      hardSuppressed: d.suppressed_hard,
      tenantSuspended: d.tenant_suspended,
      quietUntil: d.quiet_until,
      atCap: d.at_cap,
      whatsappSessionOpen: d.session_open,
      approvedTemplate: d.content_sid !== null || Boolean(d.meta_template),
    });
    switch (decision.kind) {
      case "later":
        result.later.push({ id: d.id, until: decision.until, hold: null, reason: decision.reason });
        break;
      case "reconcile":
        result.reconciles.push({
          delivery: d,
          to,
          bodySha256: d.content_sha256 ?? sha256(renderFor(d).body),
          since: new Date((d.claimed_at ?? clock).getTime() - 60_000),
        });
        break;
      case "finish":
        finishes.push({ id: d.id, status: decision.status, reason: decision.reason });
        break;
      case "hold":
        holds.push({ id: d.id, until: decision.until, hold: decision.hold, reason: decision.reason });
        break;
      case "capped":
        capped.push(d);
        break;
      case "send":
        // A marketing email goes only with its unsubscribe link (RFC 8058).
        if (carriesUnsubscribe(d.channel, d.purpose) && !ctx.clients.system.unsubscribe)
          finishes.push({ id: d.id, status: "failed", reason: NO_UNSUBSCRIBE_LINK, code: "NO_UNSUBSCRIBE_URL" });
        else candidates.push({ d, to });
        break;
      case "none":
        break;
    }
  }

  // Routes, senders and pacing, per group of the same channel and sender.
  const groups = new Map<string, { d: DeliveryRow; to: string }[]>();
  for (const c of candidates) {
    const m = c.d.metadata;
    const key = [c.d.channel, m.from, m.messaging_service, m.fromName, m.replyTo].map((v) => v ?? "").join("\u0000");
    const group = groups.get(key);
    if (group) group.push(c);
    else groups.set(key, [c]);
  }
  const settings = groups.size > 0 ? await tenantSettings(client) : undefined;
  const slotted: { d: DeliveryRow; to: string; route: Route; slotAt: number; senderStepMs: number | null }[] = [];
  for (const group of groups.values()) {
    // Through a Twilio Messaging Service (src/services/route.ts), or from a number by the sender rules.
    const viaService = await serviceRoute(client, group[0]!.d, settings!);
    if (viaService instanceof SendError) {
      for (const { d } of group)
        finishes.push({ id: d.id, status: "failed", reason: viaService.message, code: String(viaService.code) });
      continue;
    }
    const route = viaService?.route ?? (await routeFor(client, ctx.clients, group[0]!.d, settings!));
    if ("refusal" in route) {
      for (const { d } of group) finishes.push({ id: d.id, status: "skipped", reason: route.refusal });
      continue;
    }
    const refusal = viaService ? undefined : await senderRefusal(client, ctx.clients, group[0]!.d.channel, route.from);
    if (refusal) {
      for (const { d } of group)
        finishes.push({ id: d.id, status: "failed", reason: refusal.message, code: String(refusal.code) });
      continue;
    }
    const senderStepMs =
      group[0]!.d.channel === "email"
        ? null
        : 1000 /
          (viaService?.messagesPerSecond ??
            (await messagesPerSecond(client, ctx.clients, route.from!, group[0]!.d.channel)));
    const slots = await reserveSlots(ctx.pacingPool, {
      tenantId: ctx.tenantId,
      tenantStepMs: group[0]!.d.tenant_step_ms,
      sender: senderStepMs === null ? null : `${group[0]!.d.channel}:${route.from}`,
      senderStepMs,
      wanted: group.length,
    });
    group.forEach((c, i) => {
      if (i < slots.times.length) slotted.push({ ...c, route, slotAt: slots.times[i]!, senderStepMs });
      // Beyond the horizon: unclaimed, all back together when the next slot is free.
      else holds.push({ id: c.d.id, until: slots.nextFree, hold: null, reason: null });
    });
  }

  // The cap, counted for the whole run at once; last, as it locks the tenant's usage row until commit.
  let claimed = slotted;
  let month: string | null = null;
  if (slotted.length > 0) {
    const {
      rows: [count],
    } = await client.query<{ month: string; granted: number }>(
      "select month::text, granted from herald_hidden.count_toward_cap_many($1)",
      [slotted.length],
    );
    month = count!.month;
    claimed = slotted.slice(0, count!.granted);
    capped.push(...slotted.slice(count!.granted).map((s) => s.d));
  }
  if (claimed.length > 0) {
    const links = claimed.map((c) => unsubscribeLink(ctx.clients, ctx.tenantId, c.d));
    const contents = claimed.map((c, i) => renderFor(c.d, links[i]));
    // The text as sent (an email: its subject) is kept encrypted for the conversation thread.
    await client.query(
      `update herald_public.deliveries d
          set status = 'sending', reason = null, hold_reason = null, error_code = null, claimed_at = now(), claimed_by = $2, attempts = d.attempts + 1,
              counted_month = $3::date, content_sha256 = x.sha,
              content_encrypted = herald_hidden.encrypt_pii(x.kept, herald_hidden.data_key(k.version)), content_key_version = k.version
         from unnest($1::uuid[], $4::text[], $5::text[]) as x(id, sha, kept), (select herald_hidden.current_data_key_version() as version) k
        where d.tenant_id = herald_public.current_tenant_id() and d.id = x.id`,
      [
        claimed.map((c) => c.d.id),
        ctx.processId,
        month,
        contents.map((c) => sha256(c.body)),
        claimed.map((c, i) => (c.d.channel === "email" ? (contents[i]!.subject ?? "") : contents[i]!.body)),
      ],
    );
    result.sends = claimed.map((c, i) => ({
      delivery: c.d,
      to: c.to,
      content: contents[i]!,
      route: c.route,
      slotAt: c.slotAt,
      senderStepMs: c.senderStepMs,
      ...(links[i] ? { unsubscribeUrl: links[i] } : {}),
    }));
  }
  if (result.reconciles.length > 0) {
    // Claimed for the lookup: a record from an older claim no longer applies.
    await client.query(
      `update herald_public.deliveries
          set status = 'unknown', claimed_at = now(), claimed_by = $2,
              reason = case when status = 'sending' then 'the worker stopped during the send' else reason end
        where tenant_id = herald_public.current_tenant_id() and id = any ($1::uuid[])`,
      [result.reconciles.map((r) => r.delivery.id), ctx.processId],
    );
    if (result.reconciles.some((r) => r.delivery.channel !== "email"))
      result.lookupAccount = (await activeAccount(client, "twilio")) ?? null;
    if (result.reconciles.some((r) => r.delivery.channel === "whatsapp"))
      result.metaWhatsApp = (await activeAccount(client, "twilio", "whatsapp"))?.kind === "meta";
  }
  const reopens = new Map<string, Date>();
  for (const d of capped) {
    if (!reopens.has(d.message_id)) reopens.set(d.message_id, await capReopens(client, d.message_id, ctx.processId));
    holds.push({ id: d.id, until: reopens.get(d.message_id)!, hold: "monthly_cap", reason: "monthly_cap" });
  }
  result.capped = capped.map((d) => d.id);
  await finishMany(client, finishes);
  result.later.push(...(await holdMany(client, holds)));
  return result;
}

/** The registered (live) worker processes among these (herald_private: read on the owner's pool). */
async function liveProcesses(ownerPool: pg.Pool, processIds: (string | null)[]): Promise<Set<string>> {
  const wanted = [...new Set(processIds.filter((p): p is string => Boolean(p)))];
  if (wanted.length === 0) return new Set();
  const { rows } = await ownerPool.query<{ process_id: string }>(
    "select process_id from herald_private.worker_processes where process_id = any ($1)",
    [wanted],
  );
  return new Set(rows.map((r) => r.process_id));
}

export const sha256 = (text: string) => createHash("sha256").update(text, "utf8").digest("hex");

export { holdBack } from "./settle.ts";
