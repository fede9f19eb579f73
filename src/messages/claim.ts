import { createHash } from "node:crypto";
import type pg from "pg";
import { isValidPhoneNumber } from "libphonenumber-js/max";
import {
  activeAccount,
  intendedEmailSender,
  intendedSmsSender,
  SendDeferred,
  tenantSettings,
  type ProviderClients,
  type TenantAccount,
  type TenantSettings,
} from "../providers/send.ts";
import { gate, PACE_HORIZON_MS } from "./pacing.ts";
import { renderContent, type Content } from "./render.ts";

/**
 * The first step of a delivery__send job, in one transaction: read the
 * delivery with everything the send-time checks need, decide, and either
 * finish it (skipped, canceled), hold it back (quiet hours, pacing, monthly
 * cap), or claim it (`sending`), counted toward the month. The pacing slot is
 * taken (and waited for) before the claim, so a claim is followed at once by
 * the provider call; the claim is committed before that call: a worker that
 * dies after it leaves a `sending` delivery, which a later run reconciles
 * instead of resending.
 */

export interface DeliveryRow {
  id: string;
  status: string;
  run_at: Date;
  channel: "sms" | "whatsapp" | "email";
  attempts: number;
  claimed_at: Date | null;
  counted_month: string | null;
  content_sha256: string | null;
  claimed_by: string | null;
  message_status: string;
  metadata: { from?: string };
  content: Content;
  contact_id: string | null;
  first_name: string | null;
  last_name: string | null;
  external_id: string | null;
  attributes: Record<string, unknown>;
  phone: string | null;
  email: string | null;
  subscribed: boolean | null;
  suppressed: boolean;
  quiet_until: Date | null;
  tenant_step_ms: number;
  not_due: boolean;
  recently_claimed: boolean | null;
  at_cap: boolean;
  tenant_suspended: boolean;
}

/** What to do next with a delivery. */
export type Decision =
  | { kind: "done"; status: string }
  | { kind: "later"; until: Date; reason: string }
  | { kind: "send"; delivery: DeliveryRow; to: string; content: Content; route: Route }
  | { kind: "reconcile"; delivery: DeliveryRow; to: string; content: Content };

const deliverySelect = `
  select d.id, d.status, d.run_at, d.channel, d.attempts, d.claimed_at, d.counted_month::text, d.content_sha256, d.claimed_by,
         m.status as message_status, m.metadata,
         json_build_object('body', coalesce(t.body, m.body), 'subject', coalesce(t.subject, m.subject),
                           'html_body', coalesce(t.html_body, m.html_body)) as content,
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
         -- Quiet hours guard phones (SMS, WhatsApp), in the contact's time zone,
         -- else the tenant's; not a reply to someone who wrote in the last day
         -- (metadata is the sender's to write: the message it names must be
         -- this contact's, and recent).
         case when d.channel <> 'email'
                   and not exists (
                         select 1 from herald_public.inbound_messages i
                          where i.tenant_id = d.tenant_id and i.contact_id = d.contact_id
                            and i.id::text = m.metadata ->> 'in_reply_to'
                            and i.received_at > now() - interval '24 hours') then
           herald_hidden.send_window_opens_at(c.timezone, ts.timezone, ts.send_window_start, ts.send_window_end) end as quiet_until,
         ts.rate_batch_interval_seconds * 1000.0 / ts.rate_batch_size as tenant_step_ms,
         tn.status = 'suspended' as tenant_suspended,
         -- Compared on the database's clock, which set these times, not the worker's.
         d.run_at > now() + interval '5 seconds' as not_due,
         d.claimed_at > now() - make_interval(secs => $2 / 1000.0) as recently_claimed,
         -- Already at the cap (no lock taken: the claim re-checks under its lock).
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
   where d.tenant_id = herald_public.current_tenant_id() and d.id = $1
     for update of d`;

export async function loadDelivery(client: pg.ClientBase, deliveryId: string): Promise<DeliveryRow | undefined> {
  const { rows } = await client.query<DeliveryRow>(deliverySelect, [deliveryId, CLAIM_GRACE_MS]);
  const row = rows[0];
  if (row) row.tenant_step_ms = Number(row.tenant_step_ms);
  return row;
}

/** Ends a delivery that will never be attempted (or is canceled). */
async function finish(client: pg.ClientBase, deliveryId: string, status: "skipped" | "canceled", reason: string): Promise<Decision> {
  await client.query(
    `update herald_public.deliveries set status = $2, reason = $3, completed_at = now()
      where tenant_id = herald_public.current_tenant_id() and id = $1`,
    [deliveryId, status, reason],
  );
  return { kind: "done", status };
}

/**
 * Keeps a delivery queued, saying why and until when — unless a provider's
 * report has meanwhile shown it accepted (a status callback for an `unknown`
 * one, say): then it is not sent again.
 */
export async function holdBack(client: pg.ClientBase, deliveryId: string, until: Date, reason: string | null): Promise<Decision> {
  const { rows } = await client.query<{ status: string; held: boolean }>(
    `with held as (
       update herald_public.deliveries set status = 'queued', reason = $3, run_at = $2
        where tenant_id = herald_public.current_tenant_id() and id = $1 and status in ('queued', 'sending', 'unknown')
       returning 1)
     select d.status, exists (select 1 from held) as held from herald_public.deliveries d
      where d.tenant_id = herald_public.current_tenant_id() and d.id = $1`,
    [deliveryId, until, reason],
  );
  if (rows[0] && !rows[0].held) return { kind: "done", status: rows[0].status };
  return { kind: "later", until, reason: reason ?? "paced" };
}

/** How a delivery will go out, looked up once: the tenant's account (null: none) and settings, and the intended sender. */
export interface Route {
  account: TenantAccount | null;
  settings: TenantSettings;
  from: string | undefined;
}

async function routeFor(client: pg.ClientBase, clients: ProviderClients, d: DeliveryRow): Promise<Route> {
  const email = d.channel === "email";
  let account = (await activeAccount(client, email ? "sendgrid" : "twilio", d.channel)) ?? null;
  const settings = await tenantSettings(client);
  const from = email
    ? intendedEmailSender(clients, d.metadata, account ?? undefined)
    : intendedSmsSender(clients, { from: d.metadata.from, channel: d.channel as "sms" | "whatsapp" }, account ?? undefined, settings);
  // A number an operator assigned the tenant is on the system account, and
  // only that account can send from it (a reply goes from the number the
  // contact wrote to, which may be one of those).
  if (!email && from && account && (await onSystemAccount(client, from, d.channel))) account = null;
  return { account, settings, from };
}

async function onSystemAccount(client: pg.ClientBase, number: string, channel: string): Promise<boolean> {
  const { rows } = await client.query<{ system: boolean }>(
    `select provider_account_id is null as system from herald_public.sender_numbers
      where tenant_id = herald_public.current_tenant_id() and phone_number = $1 and channel = $2`,
    [number, channel],
  );
  return rows[0]?.system ?? false;
}

/**
 * A `sending` delivery whose lock is free was claimed by a worker process that
 * died (no longer registered: reconciled at once), or by one whose connection
 * dropped while its provider call may still be under way: after the SDKs'
 * timeouts (30 s each, two calls with a fallback) and a pacing wait, that
 * call is over either way.
 */
const CLAIM_GRACE_MS = 90_000; // the longest path: a slow tenant account, a paced fallback, a slow system account

export async function decide(
  client: pg.ClientBase,
  deliveryId: string,
  sending: { clients: ProviderClients; pacingPool: pg.Pool; tenantId: string; processId: string },
): Promise<Decision> {
  const d = await loadDelivery(client, deliveryId);
  if (!d) return { kind: "done", status: "gone" };
  const to = (d.channel === "email" ? d.email : d.phone) ?? "";
  if (d.status === "sending") {
    if (d.recently_claimed && (await processAlive(sending.pacingPool, d.claimed_by))) {
      return { kind: "later", until: new Date(Date.now() + CLAIM_GRACE_MS), reason: "claimed moments ago" };
    }
    // Maybe accepted by the provider: find out before anything is sent again.
    await client.query(
      `update herald_public.deliveries set status = 'unknown', reason = 'the worker stopped during the send'
        where tenant_id = herald_public.current_tenant_id() and id = $1`,
      [deliveryId],
    );
    return { kind: "reconcile", delivery: d, to, content: renderFor(d) };
  }
  if (d.status === "unknown") return { kind: "reconcile", delivery: d, to, content: renderFor(d) };
  if (d.status !== "queued") return { kind: "done", status: d.status };
  // A second job for a delivery held back (a retry's backoff, quiet hours)
  // does not jump the wait. (A chunk job's later deliveries are due within 2 s.)
  if (d.not_due) return { kind: "later", until: d.run_at, reason: "not yet due" };

  const refusal = await checksBeforeSending(client, d, to);
  if (refusal) return refusal;
  // Held by the cap before taking a pacing slot it would not use (a shared
  // system number's slots are other tenants' too).
  if (d.at_cap) return holdBack(client, deliveryId, await capReopens(client, d), "monthly_cap");

  // The pacing slot, before the claim: waiting for it claims nothing and
  // counts nothing; one too far off hands the delivery back, unclaimed.
  const route = await routeFor(client, sending.clients, d);
  if (route.from) {
    try {
      const waited = await gate({ ...sending, client, tenantStepMs: d.tenant_step_ms })(route.from, d.channel);
      if (waited > 0) {
        // Whatever changed while we waited (an opt-out, a cancel) still counts.
        const now = await loadDelivery(client, deliveryId);
        const late = now ? await checksBeforeSending(client, now, to) : { kind: "done" as const, status: "gone" };
        if (late) return late;
      }
    } catch (error) {
      // Many deliveries deferred together would all come back for the same
      // slot: spread them over the horizon.
      if (error instanceof SendDeferred) return holdBack(client, deliveryId, new Date(error.until.getTime() + Math.random() * PACE_HORIZON_MS), null);
      throw error;
    }
  }

  // The claim, counted toward the month if the cap allows, in one statement;
  // last, because it locks the tenant's usage row until this transaction ends.
  const content = renderFor(d);
  // The text as sent (an email: its subject) is kept encrypted for the conversation thread.
  const { rowCount } = await client.query(
    `update herald_public.deliveries
        set status = 'sending', reason = null, error_code = null, claimed_at = now(), claimed_by = $3, attempts = attempts + 1,
            counted_month = c.month, content_sha256 = $2,
            content_encrypted = herald_hidden.encrypt_pii($4, herald_hidden.data_key(k.version)), content_key_version = k.version
       from (select herald_hidden.count_toward_cap() as month) c, (select herald_hidden.current_data_key_version() as version) k
      where tenant_id = herald_public.current_tenant_id() and id = $1 and c.month is not null`,
    [deliveryId, sha256(content.body), sending.processId, d.channel === "email" ? (content.subject ?? "") : content.body],
  );
  if (!rowCount) return holdBack(client, deliveryId, await capReopens(client, d), "monthly_cap");
  return { kind: "send", delivery: d, to, content, route };
}

/** The send-time checks: a decision that ends or holds the delivery, or none (it may go). */
async function checksBeforeSending(client: pg.ClientBase, d: DeliveryRow, to: string): Promise<Decision | undefined> {
  // Re-checked now, however long ago the delivery was queued.
  if (d.message_status === "canceled") return finish(client, d.id, "canceled", "message canceled");
  if (!d.contact_id) return finish(client, d.id, "skipped", "contact_deleted");
  if (!d.subscribed) return finish(client, d.id, "skipped", "unsubscribed");
  if (!to) return finish(client, d.id, "skipped", d.channel === "email" ? "no_email" : "no_phone");
  if (d.suppressed) return finish(client, d.id, "skipped", "suppressed");
  // Stored numbers were valid when written; numbering plans change.
  if (d.channel !== "email" && !isValidPhoneNumber(to)) return finish(client, d.id, "skipped", "invalid_phone");
  // An operator suspended the tenant: held (resuming releases it at once; a day
  // later it looks again either way).
  if (d.tenant_suspended) return holdBack(client, d.id, new Date(Date.now() + 86_400_000), "tenant_suspended");
  if (d.quiet_until) return holdBack(client, d.id, d.quiet_until, "quiet_hours");
  return undefined;
}

/** Whether a worker process is still registered (herald_private: read on the owner's pool). */
async function processAlive(ownerPool: pg.Pool, processId: string | null): Promise<boolean> {
  if (!processId) return false;
  const { rowCount } = await ownerPool.query("select 1 from herald_private.worker_processes where process_id = $1", [processId]);
  return (rowCount ?? 0) > 0;
}

/**
 * When a delivery held by the cap looks again: at the month's turn, unless
 * sends of its message are in flight (counted, not yet accepted or refused),
 * whose refusal would give a place back: then shortly. (Its own message only:
 * that is what the index on (tenant_id, message_id) answers cheaply.)
 */
async function capReopens(client: pg.ClientBase, d: DeliveryRow): Promise<Date> {
  const { rows } = await client.query(
    `select exists (select 1 from herald_public.deliveries x
                     where x.tenant_id = herald_public.current_tenant_id() and x.message_id = d.message_id
                       and x.status = 'sending' and x.counted_month is not null) as in_flight
       from herald_public.deliveries d
      where d.tenant_id = herald_public.current_tenant_id() and d.id = $1`,
    [d.id],
  );
  const now = new Date();
  return rows[0]?.in_flight ? new Date(now.getTime() + 30_000) : new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1));
}

function renderFor(d: DeliveryRow): Content {
  return renderContent(d.content, {
    first_name: d.first_name,
    last_name: d.last_name,
    phone: d.phone,
    email: d.email,
    external_id: d.external_id,
    attributes: d.attributes,
  });
}

export const sha256 = (text: string) => createHash("sha256").update(text, "utf8").digest("hex");
