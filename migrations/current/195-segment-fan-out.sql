-- A broadcast to segments: the matching contacts are taken once, when fan-out
-- starts (herald_hidden.snapshot_segment_audience, called by
-- src/messages/fan-out.ts before the first batch), into a per-message table;
-- the batches then read that table like a list, and forget_segment_audience
-- empties it when fan-out is over. A contact changed after the start is
-- neither added nor removed mid-way.

drop table if exists herald_hidden.message_segment_members cascade;

create table herald_hidden.message_segment_members (
  tenant_id uuid not null references herald_public.tenants on delete cascade,
  message_id uuid not null,
  contact_id uuid not null,
  primary key (tenant_id, message_id, contact_id),
  constraint message_segment_members_message_fkey foreign key (tenant_id, message_id)
    references herald_public.messages (tenant_id, id) on delete cascade,
  constraint message_segment_members_contact_fkey foreign key (tenant_id, contact_id)
    references herald_public.contacts (tenant_id, id) on delete cascade
);
comment on table herald_hidden.message_segment_members is
  E'The contacts a message''s segments matched when its fan-out started; emptied when fan-out is done.';
create index message_segment_members_by_contact on herald_hidden.message_segment_members (tenant_id, contact_id);

alter table herald_hidden.message_segment_members enable row level security;
alter table herald_hidden.message_segment_members force row level security;

create policy select_worker on herald_hidden.message_segment_members for select to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
comment on policy select_worker on herald_hidden.message_segment_members is E'The worker reads its tenant''s snapshots.';
create policy insert_worker on herald_hidden.message_segment_members for insert to :DATABASE_WORKER
  with check (tenant_id = (select herald_public.current_tenant_id()));
comment on policy insert_worker on herald_hidden.message_segment_members is E'The worker snapshots its tenant''s segments only.';
create policy delete_worker on herald_hidden.message_segment_members for delete to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
comment on policy delete_worker on herald_hidden.message_segment_members is E'The worker empties its tenant''s snapshots.';
create policy select_admin on herald_hidden.message_segment_members for select to :DATABASE_ADMIN using (true);
comment on policy select_admin on herald_hidden.message_segment_members is E'Operators read every snapshot.';

grant select, delete on herald_hidden.message_segment_members to :DATABASE_WORKER;
grant insert (tenant_id, message_id, contact_id) on herald_hidden.message_segment_members to :DATABASE_WORKER;
grant select on herald_hidden.message_segment_members to :DATABASE_ADMIN;

-- Takes the snapshot, once: only before the first batch (no cursor yet). A
-- run that died between the snapshot and its first batch takes it again
-- (no delivery exists yet, so this is still the start). Returns how many
-- contacts matched, or null when there was nothing to take.
create or replace function herald_hidden.snapshot_segment_audience(message_id uuid) returns integer
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_tenant uuid := herald_public.current_tenant_id();
  v_message herald_public.messages;
  v_segment record;
  v_compiled record;
  v_count integer;
begin
  select * into v_message from herald_public.messages m
   where m.tenant_id = v_tenant and m.id = snapshot_segment_audience.message_id for update;
  if not found or v_message.status in ('canceled', 'fanned_out') or v_message.fan_out_cursor is not null
     or pg_catalog.cardinality(v_message.segment_ids) = 0 then
    return null;
  end if;
  delete from herald_hidden.message_segment_members sm
   where sm.tenant_id = v_tenant and sm.message_id = v_message.id;
  for v_segment in select s.id, s.filter from herald_public.segments s
                    where s.tenant_id = v_tenant and s.id = any (v_message.segment_ids) loop
    select * into v_compiled from herald_hidden.segment_filter_sql(v_segment.filter, 'filter');
    execute 'insert into herald_hidden.message_segment_members (tenant_id, message_id, contact_id)
             select c.tenant_id, $2, c.id from herald_public.contacts c
              where c.tenant_id = (select herald_public.current_tenant_id()) and ' || v_compiled.sql || '
             on conflict do nothing'
      using v_compiled.params, v_message.id;
  end loop;
  select count(*)::integer into v_count from herald_hidden.message_segment_members sm
   where sm.tenant_id = v_tenant and sm.message_id = v_message.id;
  return v_count;
end;
$$;
grant execute on function herald_hidden.snapshot_segment_audience(uuid) to :DATABASE_WORKER;

-- Once fan-out is over (done or canceled), the snapshot has served: every
-- member has a delivery, or none will. Returns how many rows went.
create or replace function herald_hidden.forget_segment_audience(message_id uuid) returns integer
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_count integer;
begin
  delete from herald_hidden.message_segment_members sm
   using herald_public.messages m
   where m.tenant_id = herald_public.current_tenant_id() and m.id = forget_segment_audience.message_id
     and m.status in ('fanned_out', 'canceled')
     and sm.tenant_id = m.tenant_id and sm.message_id = m.id;
  get diagnostics v_count = row_count;
  return v_count;
end;
$$;
grant execute on function herald_hidden.forget_segment_audience(uuid) to :DATABASE_WORKER;

-- Fan-out as in 000009, reading the snapshot as one more source, pacing a
-- Messaging Service's pool at the service's rate, and taking every contact of
-- `allContacts` for a transactional message.
create or replace function herald_hidden.fan_out_batch(message_id uuid, batch_size integer, system_sender text, system_mps numeric,
  out contacts integer, out queued integer, out skipped integer, out done boolean)
  language plpgsql volatile
  set search_path = ''
as $$
#variable_conflict use_column
declare
  v_tenant uuid := herald_public.current_tenant_id();
  v_message herald_public.messages;
  v_ids uuid[];
  v_sender text;
  v_sender_mps numeric;
  v_cursor uuid;
begin
  select * into v_message from herald_public.messages m
   where m.tenant_id = v_tenant and m.id = message_id for update;
  if not found or v_message.status in ('canceled', 'fanned_out') then
    contacts := 0; queued := 0; skipped := 0; done := true;
    return;
  end if;
  v_cursor := coalesce(v_message.fan_out_cursor, '00000000-0000-0000-0000-000000000000');

  -- The number the worker will most likely send from (as src/providers/send.ts
  -- picks it: the message's, the tenant's sms_from, the active account's first
  -- number, the system's), for planning at its pace. Email has no sender pace.
  -- A Twilio Messaging Service (the message's, or the tenant's default) paces
  -- its whole pool as one sender, as src/services/route.ts sends through it.
  if v_message.channel = 'sms' and v_message.metadata ->> 'from' is null then
    select s.service_sid, s.messages_per_second into v_sender, v_sender_mps
      from herald_public.messaging_services s
     where s.tenant_id = v_tenant
       and case when v_message.metadata ? 'messaging_service'
                then s.service_sid = v_message.metadata ->> 'messaging_service' else s.is_default end;
  end if;
  if v_message.channel <> 'email' and v_sender is null then
    v_sender := coalesce(
      v_message.metadata ->> 'from',
      (select s.sms_from from herald_public.tenant_settings s where s.tenant_id = v_tenant and v_message.channel = 'sms'),
      (select n.phone_number from herald_public.provider_accounts a
         join herald_public.sender_numbers n on n.tenant_id = a.tenant_id and n.provider_account_id = a.id
        where a.tenant_id = v_tenant and a.kind = 'twilio' and a.status = 'active' and n.channel = v_message.channel
        order by n.created_at limit 1),
      system_sender);
    v_sender_mps := coalesce(
      (select n.messages_per_second from herald_public.sender_numbers n
        where n.tenant_id = v_tenant and n.phone_number = v_sender and n.channel = v_message.channel),
      case when v_sender = system_sender then system_mps end,
      1);
  end if;

  -- The next batch of distinct audience members, in contact id order. Each
  -- source gives only its own first `batch_size` after the cursor (an index
  -- range scan: contacts by id, a list's or tag's members by contact id), so a
  -- batch reads at most a few batches' worth of rows, however large the
  -- audience; ordering the whole rest of it on every batch made fan-out
  -- quadratic in the audience size.
  select array(
    select a.id from (
      (select c.id from herald_public.contacts c
        where v_message.all_contacts and c.tenant_id = v_tenant and c.id > v_cursor
          -- Transactional messages reach the unsubscribed too: the claim decides
          -- (a STOP still stops a text; a marketing unsubscribe does not stop a receipt).
          and (v_message.purpose = 'transactional'
               or case v_message.channel when 'sms' then c.sms_subscribed
                                         when 'whatsapp' then c.whatsapp_subscribed
                                         else c.email_subscribed end)
        order by c.id
        limit batch_size)
      union
      (select x from pg_catalog.unnest(v_message.contact_ids) x
        where x > v_cursor
        order by x
        limit batch_size)
      union
      (select m.contact_id from pg_catalog.unnest(v_message.list_ids) l(list_id)
        cross join lateral (
          select lm.contact_id from herald_public.list_members lm
           where lm.tenant_id = v_tenant and lm.list_id = l.list_id and lm.contact_id > v_cursor
           order by lm.contact_id
           limit batch_size) m)
      union
      (select t.contact_id from pg_catalog.unnest(v_message.tag_ids) g(tag_id)
        cross join lateral (
          select ct.contact_id from herald_public.contact_tags ct
           where ct.tenant_id = v_tenant and ct.tag_id = g.tag_id and ct.contact_id > v_cursor
           order by ct.contact_id
           limit batch_size) t)
      union
      -- Segments: the members snapshotted when fan-out started (190-segments.sql).
      (select sm.contact_id from herald_hidden.message_segment_members sm
        where pg_catalog.cardinality(v_message.segment_ids) > 0
          and sm.tenant_id = v_tenant and sm.message_id = v_message.id and sm.contact_id > v_cursor
        order by sm.contact_id
        limit batch_size)
    ) a
    order by a.id
    limit batch_size) into v_ids;

  -- Each member's fate, then the tenant's pace for the queued ones, then the
  -- rows: one statement (the plan's volatile function runs once).
  with batch as (
    select c.id as contact_id,
           case when r.reason is null then 'queued' else 'skipped' end as status,
           r.reason
      from herald_public.contacts c
      cross join lateral (select case
          when not (case v_message.channel when 'sms' then c.sms_subscribed
                                           when 'whatsapp' then c.whatsapp_subscribed
                                           else c.email_subscribed end) then 'unsubscribed'
          when v_message.channel <> 'email' and c.phone_hash is null then 'no_phone'
          when v_message.channel = 'email' and c.email_hash is null then 'no_email'
          when exists (select 1 from herald_public.suppressions s
                        where s.tenant_id = v_tenant
                          and s.kind = case when v_message.channel = 'email' then 'email' else 'phone' end
                          and s.address_hash = case when v_message.channel = 'email' then c.email_hash else c.phone_hash end)
            then 'suppressed'
        end as reason) r
     where c.tenant_id = v_tenant and c.id = any (v_ids)
  ),
  numbered as (
    select b.*, (row_number() over (partition by b.status order by b.contact_id))::integer - 1 as ordinal from batch b
  ),
  plan as (
    select * from herald_hidden.plan_send_slots((select count(*)::integer from batch where status = 'queued'),
                                                 coalesce(v_message.scheduled_at, now()), v_sender, v_sender_mps)
  ),
  inserted as (
    insert into herald_public.deliveries (message_id, contact_id, channel, status, reason, run_at, tenant_id)
    select v_message.id, n.contact_id, v_message.channel, n.status, n.reason,
           case when n.status = 'queued' then plan.first_at + plan.step * n.ordinal else now() end,
           v_tenant
      from numbered n cross join plan
    on conflict (tenant_id, message_id, contact_id) do nothing
    returning 1
  )
  -- (A data-modifying CTE runs whether or not it is read.)
  select count(*) filter (where b.status = 'queued')::integer, count(*) filter (where b.status = 'skipped')::integer
    into queued, skipped
    from batch b;

  contacts := pg_catalog.cardinality(v_ids);
  done := contacts < batch_size;
  update herald_public.messages m
     set fan_out_cursor = coalesce(v_ids[contacts], m.fan_out_cursor),
         -- Those who got a delivery: an id that matched no contact of this tenant is no recipient.
         recipient_count = m.recipient_count + queued + skipped,
         status = case when done then 'fanned_out' else 'fanning_out' end,
         fanned_out_at = case when done then now() end
   where m.tenant_id = v_tenant and m.id = message_id;
end;
$$;
grant execute on function herald_hidden.fan_out_batch(uuid, integer, text, numeric) to :DATABASE_WORKER;
