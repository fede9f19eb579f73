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
import { gate } from "./pacing.ts";
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
         case when c.id is not null then herald_public.contacts_phone(c) end as phone,
         case when c.id is not null then herald_public.contacts_email(c) end as email,
         case d.channel when 'sms' then c.sms_subscribed when 'whatsapp' then c.whatsapp_subscribed else c.email_subscribed end as subscribed,
         -- By the address's hash under every live hash key version: during a
         -- hash-key rotation a contact and its suppression may be on different ones.
         exists (select 1 from herald_public.suppressions s
                  where s.tenant_id = d.tenant_id
                    and s.kind = case when d.channel = 'email' then 'email' else 'phone' end
                    and s.address_hash = any (herald_hidden.pii_hashes(
                          case when d.channel = 'email' then 'email' else 'phone' end,
                          case when d.channel = 'email' then herald_public.contacts_email(c) else herald_public.contacts_phone(c) end))) as suppressed,
         -- Quiet hours guard phones (SMS, WhatsApp), in the contact's time zone, else the tenant's.
         case when d.channel <> 'email' then
           herald_hidden.send_window_opens_at(c.timezone, ts.timezone, ts.send_window_start, ts.send_window_end) end as quiet_until,
         ts.rate_batch_interval_seconds * 1000.0 / ts.rate_batch_size as tenant_step_ms
    from herald_public.deliveries d
    join herald_public.messages m on m.tenant_id = d.tenant_id and m.id = d.message_id
    left join herald_public.templates t on t.tenant_id = m.tenant_id and t.id = m.template_id
    left join herald_public.contacts c on c.tenant_id = d.tenant_id and c.id = d.contact_id
    join herald_public.tenant_settings ts on ts.tenant_id = d.tenant_id
   where d.tenant_id = herald_public.current_tenant_id() and d.id = $1
     for update of d`;

export async function loadDelivery(client: pg.ClientBase, deliveryId: string): Promise<DeliveryRow | undefined> {
  const { rows } = await client.query<DeliveryRow>(deliverySelect, [deliveryId]);
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

/** Keeps a delivery queued, saying why and until when. */
export async function holdBack(client: pg.ClientBase, deliveryId: string, until: Date, reason: string | null): Promise<Decision> {
  await client.query(
    `update herald_public.deliveries set status = 'queued', reason = $3, run_at = $2
      where tenant_id = herald_public.current_tenant_id() and id = $1`,
    [deliveryId, until, reason],
  );
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
  const account = (await activeAccount(client, email ? "sendgrid" : "twilio", d.channel)) ?? null;
  const settings = await tenantSettings(client);
  const from = email
    ? intendedEmailSender(clients, d.metadata, account ?? undefined)
    : intendedSmsSender(clients, { from: d.metadata.from, channel: d.channel as "sms" | "whatsapp" }, account ?? undefined, settings);
  return { account, settings, from };
}

/**
 * A `sending` delivery whose lock is free was claimed by a worker process that
 * died (no longer registered: reconciled at once), or by one whose connection
 * dropped while its provider call may still be under way: after the SDKs'
 * 30 s timeout and a margin, that call is over either way.
 */
const CLAIM_GRACE_MS = 60_000;
/** A chunk job starts at its first delivery's run_at; the others are due within two seconds. */
const EARLY_MS = 5_000;

export async function decide(
  client: pg.ClientBase,
  deliveryId: string,
  sending: { clients: ProviderClients; pacingPool: pg.Pool; tenantId: string; processId: string },
): Promise<Decision> {
  const d = await loadDelivery(client, deliveryId);
  if (!d) return { kind: "done", status: "gone" };
  const to = (d.channel === "email" ? d.email : d.phone) ?? "";
  if (d.status === "sending") {
    const graceEnds = (d.claimed_at?.getTime() ?? 0) + CLAIM_GRACE_MS;
    if (graceEnds > Date.now() && (await processAlive(sending.pacingPool, d.claimed_by))) {
      return { kind: "later", until: new Date(graceEnds), reason: "claimed moments ago" };
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
  // A second job for a delivery held back (a retry's backoff, quiet hours) does not jump the wait.
  if (d.run_at.getTime() > Date.now() + EARLY_MS) return { kind: "later", until: d.run_at, reason: "not yet due" };

  // Re-checked now, however long ago the delivery was queued.
  if (d.message_status === "canceled") return finish(client, deliveryId, "canceled", "message canceled");
  if (!d.contact_id) return finish(client, deliveryId, "skipped", "contact_deleted");
  if (!d.subscribed) return finish(client, deliveryId, "skipped", "unsubscribed");
  if (!to) return finish(client, deliveryId, "skipped", d.channel === "email" ? "no_email" : "no_phone");
  if (d.suppressed) return finish(client, deliveryId, "skipped", "suppressed");
  // Stored numbers were valid when written; numbering plans change.
  if (d.channel !== "email" && !isValidPhoneNumber(to)) return finish(client, deliveryId, "skipped", "invalid_phone");
  if (d.quiet_until) return holdBack(client, deliveryId, d.quiet_until, "quiet_hours");

  // The pacing slot, before the claim: waiting for it claims nothing and
  // counts nothing; one too far off hands the delivery back, unclaimed.
  const route = await routeFor(client, sending.clients, d);
  if (route.from) {
    try {
      const waited = await gate({ ...sending, client, tenantStepMs: d.tenant_step_ms })(route.from, d.channel);
      if (waited > 0 && (await messageCanceled(client, deliveryId))) return finish(client, deliveryId, "canceled", "message canceled");
    } catch (error) {
      if (error instanceof SendDeferred) return holdBack(client, deliveryId, error.until, null);
      throw error;
    }
  }

  // The claim, counted toward the month if the cap allows, in one statement;
  // last, because it locks the tenant's usage row until this transaction ends.
  const content = renderFor(d);
  const { rowCount } = await client.query(
    `update herald_public.deliveries
        set status = 'sending', reason = null, error_code = null, claimed_at = now(), claimed_by = $3, attempts = attempts + 1,
            counted_month = c.month, content_sha256 = $2
       from (select herald_hidden.count_toward_cap() as month) c
      where tenant_id = herald_public.current_tenant_id() and id = $1 and c.month is not null`,
    [deliveryId, sha256(content.body), sending.processId],
  );
  if (!rowCount) return holdBack(client, deliveryId, await capReopens(client), "monthly_cap");
  return { kind: "send", delivery: d, to, content, route };
}

/** Whether a worker process is still registered (herald_private: read on the owner's pool). */
async function processAlive(ownerPool: pg.Pool, processId: string | null): Promise<boolean> {
  if (!processId) return false;
  const { rowCount } = await ownerPool.query("select 1 from herald_private.worker_processes where process_id = $1", [processId]);
  return (rowCount ?? 0) > 0;
}

async function messageCanceled(client: pg.ClientBase, deliveryId: string): Promise<boolean> {
  const { rows } = await client.query(
    `select m.status from herald_public.deliveries d join herald_public.messages m on m.tenant_id = d.tenant_id and m.id = d.message_id
      where d.tenant_id = herald_public.current_tenant_id() and d.id = $1`,
    [deliveryId],
  );
  return rows[0]?.status === "canceled";
}

/**
 * When a delivery held by the cap looks again: at the month's turn, unless
 * sends are in flight (counted, not yet accepted or refused), whose refusal
 * would give a place back: then shortly.
 */
async function capReopens(client: pg.ClientBase): Promise<Date> {
  const { rows } = await client.query(
    `select exists (select 1 from herald_public.deliveries
                     where tenant_id = herald_public.current_tenant_id() and status = 'sending' and counted_month is not null) as in_flight`,
  );
  const now = new Date();
  return rows[0].in_flight ? new Date(now.getTime() + 30_000) : new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1));
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
