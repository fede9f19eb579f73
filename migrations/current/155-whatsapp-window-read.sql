-- WhatsApp's 24-hour customer-service window, and read receipts.
-- Idempotent: re-applied on every `db watch` save.

-------------------------------------------------------------------------------
-- The window
-------------------------------------------------------------------------------

-- Whether the contact wrote to the tenant on WhatsApp in the last 24 hours:
-- only then may a free-form WhatsApp message go (an approved template may go
-- any time). Read by the delivery claim (src/messages/claim.ts) for every
-- WhatsApp delivery, whatever the provider; the index inbound_messages_by_contact
-- (tenant_id, contact_id, received_at) answers it.
create or replace function herald_hidden.whatsapp_session_open(contact_id uuid)
  returns boolean
  language sql stable
  set search_path = ''
as $$
  select exists (select 1 from herald_public.inbound_messages i
                  where i.tenant_id = herald_public.current_tenant_id() and i.contact_id = whatsapp_session_open.contact_id
                    and i.channel = 'whatsapp' and i.received_at > now() - interval '24 hours');
$$;
grant execute on function herald_hidden.whatsapp_session_open(uuid) to :DATABASE_MEMBER, :DATABASE_WORKER;

-- The provider refused a free-form message outside the window (Twilio 63016,
-- Meta's Cloud API 131047): the delivery's reason says so, in the same words
-- the claim uses when it skips one, whichever path recorded the failure (the
-- send's answer, or a status callback).
create or replace function herald_private.tg_deliveries__session_window_reason() returns trigger
  language plpgsql
  set search_path = ''
as $$
begin
  new.reason := 'outside_session_window';
  return new;
end;
$$;
drop trigger if exists _020_session_window_reason on herald_public.deliveries;
create trigger _020_session_window_reason before update on herald_public.deliveries
  for each row when (new.error_code in ('63016', '131047') and new.status in ('failed', 'undelivered'))
  execute function herald_private.tg_deliveries__session_window_reason();

-------------------------------------------------------------------------------
-- Read receipts
-------------------------------------------------------------------------------

alter table herald_public.deliveries add column if not exists read_at timestamptz;
comment on column herald_public.deliveries.read_at is
  E'When the recipient read it (WhatsApp read receipts): set once, after (or implying) `delivered`, never cleared.';
grant update (read_at) on herald_public.deliveries to :DATABASE_WORKER;

-- A `read` report: the delivery is delivered (an early `read` made it so:
-- read implies delivered) and is read from then on. Set once; a repeated or
-- late report changes nothing, and nothing moves it back. Runs after the
-- statement that recorded the event, so it sees the status that statement set.
create or replace function herald_private.tg_delivery_events__read() returns trigger
  language plpgsql
  set search_path = ''
as $$
begin
  update herald_public.deliveries d
     set read_at = coalesce(new.occurred_at, new.received_at)
   where d.tenant_id = new.tenant_id and d.id = new.delivery_id and d.status = 'delivered' and d.read_at is null;
  return null;
end;
$$;
drop trigger if exists _300_read on herald_public.delivery_events;
create trigger _300_read after insert on herald_public.delivery_events
  for each row when (new.event = 'read')
  execute function herald_private.tg_delivery_events__read();

-- Read deliveries per message (the stats' companion: `readCount`).
create or replace function herald_public.messages_read_count(message herald_public.messages) returns integer
  language sql stable parallel safe
  set search_path = ''
as $$
  select count(*)::integer from herald_public.deliveries d
   where d.tenant_id = message.tenant_id and d.message_id = message.id and d.read_at is not null;
$$;
comment on function herald_public.messages_read_count(herald_public.messages) is
  E'Deliveries the recipient has read (WhatsApp read receipts); each also counts as delivered in `stats`.';
grant execute on function herald_public.messages_read_count(herald_public.messages) to :DATABASE_MEMBER, :DATABASE_ADMIN;

-- Outbound webhooks: `delivery.read`, once per delivery. The event type is
-- listed in herald_hidden.webhook_event_types() (140-engagement), which the
-- endpoint and delivery checks and create_webhook_endpoint read.

-- A definer (the owner), like herald_private.tg__webhook_event: it writes the
-- event for the endpoints listening, whoever marked the delivery read.
create or replace function herald_private.tg_deliveries__webhook_read() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
declare
  v_event_id uuid;
begin
  if not exists (select 1 from herald_public.webhook_endpoints e
                  where e.tenant_id = new.tenant_id and e.status = 'active' and 'delivery.read' = any (e.event_types)) then
    return null;
  end if;
  v_event_id := gen_random_uuid();
  insert into herald_public.webhook_deliveries (tenant_id, endpoint_id, event_id, event_type, payload)
  select new.tenant_id, e.id, v_event_id, 'delivery.read',
         pg_catalog.jsonb_build_object('delivery_id', new.id, 'message_id', new.message_id, 'contact_id', new.contact_id,
                                       'channel', new.channel, 'status', new.status, 'read_at', new.read_at,
                                       'provider_message_id', new.provider_message_id)
    from herald_public.webhook_endpoints e
   where e.tenant_id = new.tenant_id and e.status = 'active' and 'delivery.read' = any (e.event_types);
  return null;
end;
$$;
drop trigger if exists _810_webhook_read on herald_public.deliveries;
create trigger _810_webhook_read after update of read_at on herald_public.deliveries
  for each row when (old.read_at is null and new.read_at is not null)
  execute function herald_private.tg_deliveries__webhook_read();
