import type pg from "pg";
import { isValidPhoneNumber } from "libphonenumber-js/max";
import { renderContent, type Content } from "./render.ts";

/**
 * The first step of a delivery__send job, in one short transaction: read the
 * delivery with everything the send-time checks need, decide, and either
 * finish it (skipped, canceled), hold it back (quiet hours, monthly cap), or
 * claim it (`sending`), counted toward the month. The claim is committed
 * before any provider is called: a worker that dies after the call leaves a
 * `sending` delivery, which the next run reconciles instead of resending.
 */

export interface DeliveryRow {
  id: string;
  status: string;
  channel: "sms" | "whatsapp" | "email";
  attempts: number;
  claimed_at: Date | null;
  counted_month: string | null;
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
  | { kind: "send"; delivery: DeliveryRow; to: string; content: Content }
  | { kind: "reconcile"; delivery: DeliveryRow; to: string; content: Content };

const deliverySelect = `
  select d.id, d.status, d.channel, d.attempts, d.claimed_at, d.counted_month::text,
         m.status as message_status, m.metadata,
         json_build_object('body', coalesce(t.body, m.body), 'subject', coalesce(t.subject, m.subject),
                           'html_body', coalesce(t.html_body, m.html_body)) as content,
         c.id as contact_id, c.first_name, c.last_name, c.external_id, coalesce(c.attributes, '{}') as attributes,
         case when c.id is not null then herald_public.contacts_phone(c) end as phone,
         case when c.id is not null then herald_public.contacts_email(c) end as email,
         case d.channel when 'sms' then c.sms_subscribed when 'whatsapp' then c.whatsapp_subscribed else c.email_subscribed end as subscribed,
         exists (select 1 from herald_public.suppressions s
                  where s.tenant_id = d.tenant_id
                    and s.kind = case when d.channel = 'email' then 'email' else 'phone' end
                    and s.address_hash = case when d.channel = 'email' then c.email_hash else c.phone_hash end) as suppressed,
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

export async function decide(client: pg.ClientBase, deliveryId: string): Promise<Decision> {
  const d = await loadDelivery(client, deliveryId);
  if (!d) return { kind: "done", status: "gone" };
  const to = (d.channel === "email" ? d.email : d.phone) ?? "";
  if (d.status === "sending") {
    // We hold the delivery's lock, so whoever claimed it is gone, maybe after
    // the provider accepted it: find out before anything is sent again.
    await client.query(
      `update herald_public.deliveries set status = 'unknown', reason = 'the worker stopped during the send'
        where tenant_id = herald_public.current_tenant_id() and id = $1`,
      [deliveryId],
    );
    return { kind: "reconcile", delivery: d, to, content: renderFor(d) };
  }
  if (d.status === "unknown") return { kind: "reconcile", delivery: d, to, content: renderFor(d) };
  if (d.status !== "queued") return { kind: "done", status: d.status };

  // Re-checked now, however long ago the delivery was queued.
  if (d.message_status === "canceled") return finish(client, deliveryId, "canceled", "message canceled");
  if (!d.contact_id) return finish(client, deliveryId, "skipped", "contact_deleted");
  if (!d.subscribed) return finish(client, deliveryId, "skipped", "unsubscribed");
  if (!to) return finish(client, deliveryId, "skipped", d.channel === "email" ? "no_email" : "no_phone");
  if (d.suppressed) return finish(client, deliveryId, "skipped", "suppressed");
  // Stored numbers were valid when written; numbering plans change.
  if (d.channel !== "email" && !isValidPhoneNumber(to)) return finish(client, deliveryId, "skipped", "invalid_phone");
  if (d.quiet_until) return holdBack(client, deliveryId, d.quiet_until, "quiet_hours");

  // The claim, counted toward the month if the cap allows, in one statement;
  // last, because it locks the tenant's usage row until this transaction ends.
  const { rowCount } = await client.query(
    `update herald_public.deliveries
        set status = 'sending', reason = null, error_code = null, claimed_at = now(), attempts = attempts + 1, counted_month = c.month
       from (select herald_hidden.count_toward_cap() as month) c
      where tenant_id = herald_public.current_tenant_id() and id = $1 and c.month is not null`,
    [deliveryId],
  );
  if (!rowCount) {
    const now = new Date();
    return holdBack(client, deliveryId, new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1)), "monthly_cap");
  }
  return { kind: "send", delivery: d, to, content: renderFor(d) };
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
