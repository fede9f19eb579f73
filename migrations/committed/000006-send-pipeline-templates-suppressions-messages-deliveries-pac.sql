--! Previous: sha1:b1d4ed76a503661e3c0ab85e1097a1849ee0d03d
--! Hash: sha1:642594d9f69ed579ca69923f67dbdc76896dce16
--! Message: Send pipeline: templates, suppressions, messages, deliveries, pacing

--
-- A tenant sends one message to many contacts. `send_message` records the
-- request (messages); a `message__fan_out` job writes one delivery per
-- recipient in set-based batches, each batch's jobs queued in one `add_jobs`
-- call by a statement-level trigger; `delivery__send` jobs then re-check
-- consent, suppression, quiet hours and the monthly cap at send time.
--
-- Pacing state (herald_private.send_pacing) lives in Postgres so that it holds
-- across any number of worker processes.
--
-- Idempotent: graphile-migrate re-runs it in watch mode.

drop function if exists herald_public.send_message(text, uuid, text, text, text, uuid[], uuid[], uuid[], boolean, timestamptz, text, jsonb);
drop function if exists herald_public.cancel_message(uuid);
drop function if exists herald_public.add_suppression(text, text, text, text);
drop function if exists herald_hidden.rekey_suppressions();
drop function if exists herald_hidden.fan_out_batch(uuid, integer, text, numeric);
drop function if exists herald_hidden.send_window_opens_at(text, text, time, time);
drop function if exists herald_hidden.sms_encoding(text);
drop function if exists herald_hidden.sms_segments(text);
drop function if exists herald_hidden.template_variables(text, text);
drop function if exists herald_hidden.count_toward_cap();
drop function if exists herald_hidden.uncount_toward_cap(date);
drop function if exists herald_hidden.plan_send_slots(integer, timestamptz, text, numeric);
drop table if exists herald_hidden.send_plans cascade;
drop function if exists herald_private.reserve_send_slot(uuid, interval, text, interval, interval);
drop function if exists herald_private.tg_messages__cancel() cascade;
drop function if exists herald_private.tg_messages__check() cascade;
drop function if exists herald_private.tg_messages__cancel_deliveries() cascade;
drop type if exists herald_public.message_stats cascade;
drop type if exists herald_public.message_reason_count cascade;
drop table if exists herald_public.deliveries cascade;
drop table if exists herald_public.messages cascade;
drop table if exists herald_public.templates cascade;
drop table if exists herald_public.suppressions cascade;
drop table if exists herald_hidden.monthly_usage cascade;
drop table if exists herald_private.send_pacing cascade;
drop table if exists herald_private.worker_processes cascade;
drop function if exists herald_private.tg_templates__validate() cascade;
drop function if exists herald_private.tg_messages__enqueue_fan_out() cascade;
drop function if exists herald_private.tg_deliveries__enqueue() cascade;
drop function if exists herald_private.tg_tenant_settings__release_held() cascade;
alter table herald_public.sender_numbers drop column if exists messages_per_second;

-------------------------------------------------------------------------------
-- SMS encoding and segments
-------------------------------------------------------------------------------

-- GSM-7 when every character is in the GSM 03.38 basic set or its extension
-- table (the extension characters cost two septets); otherwise UCS-2.
create function herald_hidden.sms_encoding(body text) returns text
  language sql immutable parallel safe
as $$
  select case
    when pg_catalog.translate(body,
           E'@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !"#¤%&''()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà'
           || E'^{}\\[~]|€\f', '') = ''
      then 'GSM-7'
    else 'UCS-2'
  end;
$$;

-- Segments a carrier bills: GSM-7 160 septets in one, 153 per part when
-- concatenated; UCS-2 70 UTF-16 units, 67 per part.
create function herald_hidden.sms_segments(body text) returns integer
  language sql immutable parallel safe
as $$
  select case
    when coalesce(body, '') = '' then 0
    when herald_hidden.sms_encoding(body) = 'GSM-7' then (
      select case when n <= 160 then 1 else ceil(n / 153.0)::integer end
        from (select pg_catalog.length(body)
                     + pg_catalog.length(body) - pg_catalog.length(pg_catalog.translate(body, E'^{}\\[~]|€\f', '')) as n) s)
    else (
      select case when n <= 70 then 1 else ceil(n / 67.0)::integer end
        from (select pg_catalog.length(body) + pg_catalog.regexp_count(body, '[\U00010000-\U0010FFFF]') as n) s)
  end;
$$;

grant execute on function herald_hidden.sms_encoding(text), herald_hidden.sms_segments(text)
  to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;

-------------------------------------------------------------------------------
-- Template variables: {{first_name}}, {{attributes.plan}}, {{first_name|there}}
-------------------------------------------------------------------------------

-- The variable names a text uses, sorted; raises 22023 naming `field` for an
-- unknown variable or an unclosed brace pair. Kept in step with
-- src/messages/render.ts, which fills them in.
create function herald_hidden.template_variables(body text, field text) returns text[]
  language plpgsql immutable parallel safe
  set search_path = ''
as $$
declare
  v_token text;
  v_names text[] := '{}';
begin
  if body is null then
    return v_names;
  end if;
  for v_token in select m[1] from pg_catalog.regexp_matches(body, '\{\{(.*?)\}\}', 'g') as m loop
    if v_token !~ '^\s*(first_name|last_name|phone|email|external_id|attributes\.[A-Za-z_][A-Za-z0-9_]*)\s*(\|[^{}|]*)?$' then
      raise exception 'Unknown template variable "{{%}}" in %: use first_name, last_name, phone, email, external_id or attributes.<name>, optionally with |default', v_token, field
        using errcode = '22023', column = field;
    end if;
    v_names := v_names || pg_catalog.btrim(pg_catalog.split_part(v_token, '|', 1));
  end loop;
  if pg_catalog.regexp_replace(body, '\{\{.*?\}\}', '', 'g') ~ '\{\{|\}\}' then
    raise exception 'Unclosed "{{" or stray "}}" in %', field using errcode = '22023', column = field;
  end if;
  return array(select distinct n from pg_catalog.unnest(v_names) n order by n);
end;
$$;
grant execute on function herald_hidden.template_variables(text, text) to :DATABASE_MEMBER, :DATABASE_WORKER;

-------------------------------------------------------------------------------
-- templates (tenant-owned)
-------------------------------------------------------------------------------

create table herald_public.templates (
  tenant_id uuid not null default herald_public.current_tenant_id()
    references herald_public.tenants on delete cascade,
  id uuid not null default gen_random_uuid(),
  channel text not null constraint templates_channel check (channel in ('sms', 'whatsapp', 'email')),
  name public.citext not null constraint templates_name_length check (length(name) between 1 and 200),
  -- The message (SMS/WhatsApp) or the email's text part.
  body text not null constraint templates_body_length check (length(body) between 1 and 1600 or (channel = 'email' and length(body) <= 100000)),
  subject text constraint templates_subject_length check (length(subject) <= 998),
  html_body text constraint templates_html_length check (length(html_body) <= 500000),
  -- Filled by the validation trigger: every variable the template uses.
  variables text[] not null default '{}',
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (tenant_id, id),
  constraint templates_name_unique unique (tenant_id, name),
  constraint templates_email_subject check ((channel = 'email') = (subject is not null)),
  constraint templates_html_only_email check (html_body is null or channel = 'email')
);
comment on table herald_public.templates is
  E'A reusable message. Variables: `{{first_name}}`, `{{attributes.plan}}`, with a default `{{first_name|there}}`.';
comment on column herald_public.templates.body is E'The SMS/WhatsApp text, or the email''s text part.';
comment on column herald_public.templates.subject is E'Email only (required there).';
comment on column herald_public.templates.html_body is E'Email only: the HTML part.';
comment on column herald_public.templates.variables is E'@behavior -insert -update\nThe variables the template uses.';

create function herald_private.tg_templates__validate() returns trigger
  language plpgsql
  set search_path = ''
as $$
begin
  new.variables := array(
    select distinct v from pg_catalog.unnest(
      herald_hidden.template_variables(new.body, 'body')
      || herald_hidden.template_variables(new.subject, 'subject')
      || herald_hidden.template_variables(new.html_body, 'htmlBody')) v
    order by v);
  return new;
end;
$$;

create trigger _100_timestamps before insert or update on herald_public.templates
  for each row execute function herald_private.tg__timestamps();
create trigger _200_validate before insert or update on herald_public.templates
  for each row execute function herald_private.tg_templates__validate();

-- Computed columns: what the body costs as an SMS (with variables as written).
create function herald_public.templates_sms_encoding(template herald_public.templates) returns text
  language sql stable parallel safe
  set search_path = ''
as $$
  select case when template.channel = 'email' then null else herald_hidden.sms_encoding(template.body) end;
$$;
comment on function herald_public.templates_sms_encoding(herald_public.templates) is
  E'`GSM-7` or `UCS-2` (SMS/WhatsApp); null for email.';
create function herald_public.templates_sms_segments(template herald_public.templates) returns integer
  language sql stable parallel safe
  set search_path = ''
as $$
  select case when template.channel = 'email' then null else herald_hidden.sms_segments(template.body) end;
$$;
comment on function herald_public.templates_sms_segments(herald_public.templates) is
  E'Segments of the body as written (GSM-7: 160, or 153 per part; UCS-2: 70, or 67). Rendered values change it: each delivery records its own.';

alter table herald_public.templates enable row level security;
alter table herald_public.templates force row level security;
create policy select_member on herald_public.templates for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
create policy insert_member on herald_public.templates for insert to :DATABASE_MEMBER
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy update_member on herald_public.templates for update to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy delete_member on herald_public.templates for delete to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()));
create policy select_admin on herald_public.templates for select to :DATABASE_ADMIN using (true);
create policy delete_admin on herald_public.templates for delete to :DATABASE_ADMIN using (true);

grant select on herald_public.templates to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;
grant insert (tenant_id, id, channel, name, body, subject, html_body),
      update (name, body, subject, html_body)
  on herald_public.templates to :DATABASE_MEMBER;
grant delete on herald_public.templates to :DATABASE_MEMBER, :DATABASE_ADMIN;
grant execute on function herald_public.templates_sms_encoding(herald_public.templates),
  herald_public.templates_sms_segments(herald_public.templates)
  to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;

-------------------------------------------------------------------------------
-- suppressions (tenant-owned): addresses the tenant must never message
-------------------------------------------------------------------------------

-- Keyed by the same HMAC as contacts' phone_hash / email_hash, so a suppression
-- outlives the contact (deleted and re-imported, it is still suppressed); the
-- address itself is kept encrypted for operators and for a hash-key rebuild.
create table herald_public.suppressions (
  tenant_id uuid not null default herald_public.current_tenant_id()
    references herald_public.tenants on delete cascade,
  id uuid not null default gen_random_uuid(),
  kind text not null constraint suppressions_kind check (kind in ('phone', 'email')),
  address_encrypted bytea not null,
  address_hash bytea not null,
  key_version smallint not null,
  hash_version smallint not null,
  reason text not null constraint suppressions_reason check (reason in ('bounce', 'spam_report', 'unsubscribe', 'carrier_opt_out', 'manual')),
  note text constraint suppressions_note_length check (length(note) <= 500),
  created_at timestamptz not null default now(),
  primary key (tenant_id, id),
  constraint suppressions_address_unique unique (tenant_id, kind, address_hash),
  constraint suppressions_key_version_fkey foreign key (tenant_id, key_version)
    references herald_private.tenant_data_keys (tenant_id, version)
);
comment on table herald_public.suppressions is
  E'@behavior -insert -update\nAddresses this tenant never messages (bounces, complaints, carrier opt-outs, manual). Add with `addSuppression`.';
comment on column herald_public.suppressions.address_encrypted is E'@behavior -*';
comment on column herald_public.suppressions.address_hash is E'@behavior -*';
comment on column herald_public.suppressions.key_version is E'@behavior -*';
comment on column herald_public.suppressions.hash_version is E'@behavior -*';
comment on constraint suppressions_key_version_fkey on herald_public.suppressions is E'@behavior -*';
comment on constraint suppressions_address_unique on herald_public.suppressions is E'@behavior -*';

alter table herald_public.suppressions enable row level security;
alter table herald_public.suppressions force row level security;
create policy select_member on herald_public.suppressions for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
create policy insert_member on herald_public.suppressions for insert to :DATABASE_MEMBER, :DATABASE_WORKER
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy delete_member on herald_public.suppressions for delete to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()));
create policy select_admin on herald_public.suppressions for select to :DATABASE_ADMIN using (true);
create policy delete_admin on herald_public.suppressions for delete to :DATABASE_ADMIN using (true);
grant select on herald_public.suppressions to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;
grant insert (tenant_id, kind, address_encrypted, address_hash, key_version, hash_version, reason, note)
  on herald_public.suppressions to :DATABASE_MEMBER, :DATABASE_WORKER;
grant delete on herald_public.suppressions to :DATABASE_MEMBER, :DATABASE_ADMIN;

-- Key rotation (the contacts__rekey task) moves suppressions to the current
-- data key and hash key, as it moves contacts: a suppression whose hash no
-- longer matches its contact's would stop protecting that contact.
create policy update_worker on herald_public.suppressions for update to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy delete_worker on herald_public.suppressions for delete to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
grant update (address_encrypted, address_hash, key_version, hash_version), delete
  on herald_public.suppressions to :DATABASE_WORKER;

create function herald_hidden.rekey_suppressions() returns integer
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_tenant uuid := herald_public.current_tenant_id();
  v_key smallint := herald_hidden.current_data_key_version();
  v_hash smallint := herald_hidden.current_hash_key_version();
  v_moved integer;
begin
  with stale as materialized (
    select s.id, s.kind, herald_hidden.decrypt_pii(s.address_encrypted, s.key_version) as address
      from herald_public.suppressions s
     where s.tenant_id = v_tenant and (s.key_version <> v_key or s.hash_version <> v_hash)
  ),
  rehashed as materialized (
    select st.id, st.kind, st.address, herald_hidden.pii_hash(st.kind, st.address, v_hash) as new_hash,
           exists (select 1 from herald_public.suppressions o
                    where o.tenant_id = v_tenant and o.kind = st.kind
                      and o.address_hash = herald_hidden.pii_hash(st.kind, st.address, v_hash) and o.id <> st.id) as duplicate
      from stale st
  ),
  -- Suppressed again under the new hash meanwhile: that row already says it.
  dropped as (
    delete from herald_public.suppressions s using rehashed r
     where s.tenant_id = v_tenant and s.id = r.id and r.duplicate
  )
  update herald_public.suppressions s
     set address_encrypted = herald_hidden.encrypt_pii(r.address, herald_hidden.data_key(v_key)),
         address_hash = r.new_hash, key_version = v_key, hash_version = v_hash
    from rehashed r
   where s.tenant_id = v_tenant and s.id = r.id and not r.duplicate;
  get diagnostics v_moved = row_count;
  return v_moved;
end;
$$;
grant execute on function herald_hidden.rekey_suppressions() to :DATABASE_WORKER;

-- `address`: an E.164 phone number or an email address (normalised by the API
-- layer, which reads national formats); re-adding one is a no-op.
create function herald_public.add_suppression(kind text, address text, reason text default 'manual', note text default null)
  returns herald_public.suppressions
  language plpgsql volatile
  set search_path = ''
as $$
#variable_conflict use_column
declare
  v_normalized text := case when kind = 'email' then pg_catalog.lower(pg_catalog.btrim(address)) else pg_catalog.btrim(address) end;
  v_row herald_public.suppressions;
begin
  if kind = 'phone' and v_normalized !~ '^\+[1-9][0-9]{6,14}$' then
    raise exception 'address must be an E.164 phone number such as +14155550123' using errcode = '22023', column = 'address';
  elsif kind = 'email' and v_normalized !~ '^[^\s@]+@[^\s@]+\.[^\s@]+$' then
    raise exception 'address must be an email address' using errcode = '22023', column = 'address';
  elsif kind not in ('phone', 'email') then
    raise exception 'kind must be phone or email' using errcode = '22023', column = 'kind';
  end if;
  insert into herald_public.suppressions (kind, address_encrypted, address_hash, key_version, hash_version, reason, note)
  values (kind,
          herald_hidden.encrypt_pii(v_normalized, herald_hidden.data_key(herald_hidden.current_data_key_version())),
          herald_hidden.pii_hash(kind, v_normalized, herald_hidden.current_hash_key_version()),
          herald_hidden.current_data_key_version(), herald_hidden.current_hash_key_version(),
          add_suppression.reason, add_suppression.note)
  on conflict (tenant_id, kind, address_hash) do nothing
  returning * into v_row;
  if v_row.id is null then
    select * into v_row from herald_public.suppressions s
     where s.tenant_id = herald_public.current_tenant_id() and s.kind = add_suppression.kind
       and s.address_hash = any (herald_hidden.pii_hashes(add_suppression.kind, v_normalized));
  end if;
  return v_row;
end;
$$;
comment on function herald_public.add_suppression(text, text, text, text) is
  E'@resultFieldName suppression\nNever message this address again (`kind`: phone or email).';
grant execute on function herald_public.add_suppression(text, text, text, text) to :DATABASE_MEMBER, :DATABASE_WORKER;

-------------------------------------------------------------------------------
-- Pacing state (herald_private: shared by every worker process)
-------------------------------------------------------------------------------

alter table herald_public.sender_numbers add column messages_per_second numeric not null default 1
  constraint sender_numbers_mps_range check (messages_per_second > 0 and messages_per_second <= 1000);
comment on column herald_public.sender_numbers.messages_per_second is
  E'How fast this number may send (1 for a US long code; more for toll-free and short codes).';
grant insert (messages_per_second), update (messages_per_second) on herald_public.sender_numbers to :DATABASE_MEMBER, :DATABASE_ADMIN;

-- The next instant a send may start, per scope: `tenant:<tenant>` and
-- `sender:<number>`. A sender is global: the system number is shared by tenants.
-- Only the worker's owner connection touches it (reserve_send_slot).
create table herald_private.send_pacing (
  scope text primary key,
  next_at timestamptz not null
);

-- Where fan-out puts the next queued delivery's run_at, per tenant and per
-- sender the tenant sends from (scope `tenant` or `sender:<number>`). Only a
-- plan: the guarantee is the send-time gate (reserve_send_slot), which also
-- counts the other tenants on a shared system number.
create table herald_hidden.send_plans (
  tenant_id uuid not null references herald_public.tenants on delete cascade,
  scope text not null,
  next_at timestamptz not null,
  primary key (tenant_id, scope)
);
alter table herald_hidden.send_plans enable row level security;
alter table herald_hidden.send_plans force row level security;
create policy select_member on herald_hidden.send_plans for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
create policy insert_worker on herald_hidden.send_plans for insert to :DATABASE_WORKER
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy update_worker on herald_hidden.send_plans for update to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy select_admin on herald_hidden.send_plans for select to :DATABASE_ADMIN using (true);
grant select, insert (tenant_id, scope, next_at), update (next_at) on herald_hidden.send_plans to :DATABASE_WORKER;
grant select on herald_hidden.send_plans to :DATABASE_MEMBER, :DATABASE_ADMIN;

-- Fan-out: reserve `count` evenly spaced slots from `not_before` on, at the
-- session tenant's pace (rate_batch_size per rate_batch_interval_seconds) or
-- the sender's (`sender_mps`), whichever is slower. Planning at the pace the
-- send-time gate will enforce keeps jobs from waking up early only to wait.
create function herald_hidden.plan_send_slots(count integer, not_before timestamptz, sender text, sender_mps numeric,
  out first_at timestamptz, out step interval)
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_tenant uuid := herald_public.current_tenant_id();
  v_scopes text[] := array['tenant'] || case when sender is not null then array['sender:' || sender] else '{}' end;
begin
  select make_interval(secs => s.rate_batch_interval_seconds::double precision / s.rate_batch_size) into step
    from herald_public.tenant_settings s where s.tenant_id = v_tenant;
  if step is null then
    raise exception 'no tenant in this session' using errcode = 'NOTNT';
  end if;
  if sender is not null then
    step := greatest(step, make_interval(secs => 1 / sender_mps::double precision));
  end if;
  insert into herald_hidden.send_plans (tenant_id, scope, next_at)
  select v_tenant, x, '-infinity' from pg_catalog.unnest(v_scopes) x
  on conflict do nothing;
  -- Locked in scope order, the same in every call: two fan-outs never deadlock.
  select greatest(max(p.next_at), not_before, now()) into first_at
    from (select p.next_at from herald_hidden.send_plans p
           where p.tenant_id = v_tenant and p.scope = any (v_scopes)
           order by p.scope for update) p;
  update herald_hidden.send_plans p set next_at = first_at + step * count
   where p.tenant_id = v_tenant and p.scope = any (v_scopes);
end;
$$;
grant execute on function herald_hidden.plan_send_slots(integer, timestamptz, text, numeric) to :DATABASE_WORKER;

-- Send time: the instant this send may start, at most one per `tenant_step`
-- for the tenant and one per `sender_step` for the sender. Reserved only when
-- it is within `horizon`; otherwise nothing changes and the caller comes back
-- later. Rows are locked tenant first, then sender, in every call: no deadlock.
-- Called on the worker's own owner connection, in its own short transaction,
-- so a slow provider call never holds these locks.
create function herald_private.reserve_send_slot(tenant uuid, tenant_step interval, sender text, sender_step interval, horizon interval)
  returns timestamptz
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_tenant_at timestamptz;
  v_sender_at timestamptz := '-infinity';
  v_slot timestamptz;
begin
  insert into herald_private.send_pacing (scope, next_at) values ('tenant:' || tenant, '-infinity') on conflict do nothing;
  select next_at into v_tenant_at from herald_private.send_pacing where scope = 'tenant:' || tenant for update;
  if sender is not null then
    insert into herald_private.send_pacing (scope, next_at) values ('sender:' || sender, '-infinity') on conflict do nothing;
    select next_at into v_sender_at from herald_private.send_pacing where scope = 'sender:' || sender for update;
  end if;
  v_slot := greatest(pg_catalog.clock_timestamp(), v_tenant_at, v_sender_at);
  if v_slot > pg_catalog.clock_timestamp() + horizon then
    return v_slot;
  end if;
  update herald_private.send_pacing set next_at = v_slot + tenant_step where scope = 'tenant:' || tenant;
  if sender is not null then
    update herald_private.send_pacing set next_at = v_slot + sender_step where scope = 'sender:' || sender;
  end if;
  return v_slot;
end;
$$;

-------------------------------------------------------------------------------
-- Worker processes: finding the jobs of one that died (kill -9, lost host)
-------------------------------------------------------------------------------

-- Each worker process registers its graphile-worker ids and holds a session
-- advisory lock on `lock_key` for as long as it lives. A lock anyone can take
-- belongs to a dead process: its jobs are unlocked at once instead of after
-- graphile-worker's four-hour timeout.
create table herald_private.worker_processes (
  process_id text primary key,
  lock_key bigint not null unique,
  worker_ids text[] not null default '{}',
  started_at timestamptz not null default now()
);

-------------------------------------------------------------------------------
-- messages (tenant-owned): one send request
-------------------------------------------------------------------------------

create table herald_public.messages (
  tenant_id uuid not null default herald_public.current_tenant_id()
    references herald_public.tenants on delete cascade,
  id uuid not null default gen_random_uuid(),
  channel text not null constraint messages_channel check (channel in ('sms', 'whatsapp', 'email')),
  template_id uuid,
  -- Inline content, when no template.
  body text constraint messages_body_length check (length(body) <= 100000),
  subject text constraint messages_subject_length check (length(subject) <= 998),
  html_body text constraint messages_html_length check (length(html_body) <= 500000),
  -- Audience: any mix; a contact in several gets one delivery.
  contact_ids uuid[] not null default '{}',
  list_ids uuid[] not null default '{}',
  tag_ids uuid[] not null default '{}',
  all_contacts boolean not null default false,
  scheduled_at timestamptz,
  idempotency_key text constraint messages_idempotency_key_length check (length(idempotency_key) between 1 and 255),
  request_fingerprint text,
  metadata jsonb not null default '{}' constraint messages_metadata_object check (jsonb_typeof(metadata) = 'object'),
  status text not null default 'pending'
    constraint messages_status check (status in ('pending', 'fanning_out', 'fanned_out', 'canceled')),
  recipient_count integer not null default 0,
  -- Fan-out resumes after this contact id (batches in contact id order).
  fan_out_cursor uuid,
  created_by uuid references herald_public.users on delete set null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  fanned_out_at timestamptz,
  canceled_at timestamptz,
  primary key (tenant_id, id),
  constraint messages_idempotency_key_unique unique (tenant_id, idempotency_key),
  constraint messages_template_fkey foreign key (tenant_id, template_id)
    references herald_public.templates (tenant_id, id) on delete restrict,
  constraint messages_content check ((template_id is null) <> (body is null))
);
comment on table herald_public.messages is
  E'@behavior -insert -update -delete\nA send request: one message to many contacts. Create with `sendMessage`, stop with `cancelMessage`; `stats` shows progress.';
comment on constraint messages_template_fkey on herald_public.messages is E'@fieldName template\n@foreignFieldName messages';
comment on constraint messages_idempotency_key_unique on herald_public.messages is E'@behavior -*';
comment on column herald_public.messages.request_fingerprint is E'@behavior -*';
comment on column herald_public.messages.fan_out_cursor is E'@behavior -*';
comment on column herald_public.messages.status is
  E'`pending` (waiting for its time), `fanning_out`, `fanned_out` (every delivery exists), or `canceled`.';
create index messages_created on herald_public.messages (tenant_id, created_at desc);

create trigger _100_timestamps before insert or update on herald_public.messages
  for each row execute function herald_private.tg__timestamps();

-- Whoever inserts a message (send_message, or a member's own INSERT), it
-- records the session's user, and a template of its channel.
create function herald_private.tg_messages__check() returns trigger
  language plpgsql
  set search_path = ''
as $$
begin
  new.created_by := herald_public.current_user_id();
  if new.template_id is not null and not exists (
       select 1 from herald_public.templates t
        where t.tenant_id = new.tenant_id and t.id = new.template_id and t.channel = new.channel) then
    raise exception 'template is not a % template of this tenant', new.channel using errcode = '22023', column = 'templateId';
  end if;
  return new;
end;
$$;
create trigger _200_check before insert on herald_public.messages
  for each row execute function herald_private.tg_messages__check();

-- The fan-out job runs at the scheduled time (or now); one per message.
create function herald_private.tg_messages__enqueue_fan_out() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
begin
  perform graphile_worker.add_job(
    'message__fan_out',
    pg_catalog.json_build_object('tenant_id', new.tenant_id, 'id', new.id),
    run_at := coalesce(new.scheduled_at, now()),
    job_key := 'message:' || new.id,
    max_attempts := 25);
  return new;
end;
$$;
create trigger _500_enqueue_fan_out after insert on herald_public.messages
  for each row execute function herald_private.tg_messages__enqueue_fan_out();

alter table herald_public.messages enable row level security;
alter table herald_public.messages force row level security;
create policy select_member on herald_public.messages for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
create policy insert_member on herald_public.messages for insert to :DATABASE_MEMBER
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy update_worker on herald_public.messages for update to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy select_admin on herald_public.messages for select to :DATABASE_ADMIN using (true);

grant select on herald_public.messages to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;
-- Members write through send_message; status moves only by the worker and cancel_message.
grant insert (tenant_id, channel, template_id, body, subject, html_body, contact_ids, list_ids, tag_ids, all_contacts,
              scheduled_at, idempotency_key, request_fingerprint, metadata, created_by)
  on herald_public.messages to :DATABASE_MEMBER;
grant update (status, recipient_count, fan_out_cursor, fanned_out_at) on herald_public.messages to :DATABASE_WORKER;

-------------------------------------------------------------------------------
-- deliveries (tenant-owned): one recipient of one message
-------------------------------------------------------------------------------

-- States: queued → sending → sent → delivered | failed | undelivered; or
-- skipped (never attempted, `reason` says why), canceled, unknown (the provider
-- may have accepted it: reconciled, never blindly resent). A queued delivery
-- may carry a `reason` too: why it is waiting (quiet_hours, monthly_cap, …).
create table herald_public.deliveries (
  -- No foreign key of its own to tenants: the message's (composite, below)
  -- implies it and cascades the same way, and on the hottest insert of the
  -- system every foreign key is a per-row check.
  tenant_id uuid not null default herald_public.current_tenant_id(),
  id uuid not null default gen_random_uuid(),
  message_id uuid not null,
  -- Erasing a contact keeps the delivery (counts, costs) without the person.
  contact_id uuid,
  channel text not null constraint deliveries_channel check (channel in ('sms', 'whatsapp', 'email')),
  status text not null default 'queued' constraint deliveries_status check (status in
    ('queued', 'sending', 'sent', 'delivered', 'failed', 'undelivered', 'skipped', 'canceled', 'unknown')),
  reason text constraint deliveries_reason_length check (length(reason) <= 500),
  error_code text constraint deliveries_error_code_length check (length(error_code) <= 50),
  run_at timestamptz not null default now(),
  attempts integer not null default 0,
  claimed_at timestamptz,
  -- The worker process that claimed it (herald_private.worker_processes):
  -- once that process is known dead, a `sending` delivery is reconciled at once.
  claimed_by text constraint deliveries_claimed_by_length check (length(claimed_by) <= 200),
  provider text constraint deliveries_provider check (provider in ('tenant', 'system')),
  provider_account_id uuid,
  provider_message_id text constraint deliveries_provider_message_id_length check (length(provider_message_id) <= 200),
  from_address text,
  segments integer,
  -- SHA-256 (hex) of the body as rendered when claimed: what a reconciliation
  -- looks for at the provider, whatever the template or contact says since.
  content_sha256 text constraint deliveries_content_sha256_format check (content_sha256 ~ '^[0-9a-f]{64}$'),
  -- The usage month this delivery was counted in (monthly cap), if any.
  counted_month date,
  sent_at timestamptz,
  completed_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (tenant_id, id),
  -- One delivery per contact per message: fan-out replays insert nothing new.
  constraint deliveries_message_contact_unique unique (tenant_id, message_id, contact_id),
  constraint deliveries_message_fkey foreign key (tenant_id, message_id)
    references herald_public.messages (tenant_id, id) on delete cascade,
  constraint deliveries_contact_fkey foreign key (tenant_id, contact_id)
    references herald_public.contacts (tenant_id, id) on delete set null (contact_id),
  constraint deliveries_provider_account_fkey foreign key (tenant_id, provider_account_id)
    references herald_public.provider_accounts (tenant_id, id) on delete set null (provider_account_id)
)
-- Each delivery is updated two or three times after its insert: room on the
-- page lets an update that changes no indexed column stay HOT (no index writes).
with (fillfactor = 70);
comment on table herald_public.deliveries is
  E'@behavior -insert -update -delete\nOne recipient of one message, and what became of it.';
comment on constraint deliveries_message_fkey on herald_public.deliveries is E'@fieldName message\n@foreignFieldName deliveries';
comment on constraint deliveries_contact_fkey on herald_public.deliveries is E'@fieldName contact\n@foreignFieldName deliveries';
comment on constraint deliveries_provider_account_fkey on herald_public.deliveries is E'@fieldName providerAccount\n@foreignFieldName deliveries';
comment on constraint deliveries_message_contact_unique on herald_public.deliveries is E'@behavior -*';
comment on column herald_public.deliveries.counted_month is E'@behavior -*';
comment on column herald_public.deliveries.content_sha256 is E'@behavior -*';
comment on column herald_public.deliveries.claimed_by is E'@behavior -*';
comment on column herald_public.deliveries.reason is
  E'Why it was skipped or failed, or why it is still waiting (`quiet_hours`, `monthly_cap`, …).';
-- Not by status: a status change would then touch this index on every update.
create index deliveries_by_message on herald_public.deliveries (tenant_id, message_id);
create index deliveries_by_contact on herald_public.deliveries (tenant_id, contact_id);
create index deliveries_by_provider_message on herald_public.deliveries (provider_message_id) where provider_message_id is not null;

create trigger _100_timestamps before update on herald_public.deliveries
  for each row execute function herald_private.tg__timestamps();

-- One add_jobs call per inserted batch (not one add_job per row), and one job
-- per run of up to 50 queued deliveries planned within the same two seconds:
-- the job sends them in turn, at the pace the send-time gate allows, so the
-- queue holds a fiftieth of the jobs and a job never waits long for a slot.
-- A delivery that must wait longer (quiet hours, the cap, a retry) gets a job
-- of its own then.
create function herald_private.tg_deliveries__enqueue() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
begin
  perform graphile_worker.add_jobs(array(
    select pg_catalog.json_populate_record(null::graphile_worker.job_spec, pg_catalog.json_build_object(
             'identifier', 'delivery__send',
             'payload', pg_catalog.json_build_object('tenant_id', c.tenant_id, 'ids', c.ids),
             'run_at', c.run_at,
             'max_attempts', 25))
      from (select d.tenant_id, min(d.run_at) as run_at, pg_catalog.array_agg(d.id order by d.run_at) as ids
              from (select n.tenant_id, n.id, n.run_at,
                           floor(extract(epoch from n.run_at) / 2) as window_start,
                           (row_number() over (partition by n.tenant_id, floor(extract(epoch from n.run_at) / 2) order by n.run_at) - 1) / 50 as chunk
                      from new_rows n
                     where n.status = 'queued') d
             group by d.tenant_id, d.window_start, d.chunk) c));
  return null;
end;
$$;
create trigger _500_enqueue after insert on herald_public.deliveries
  referencing new table as new_rows
  for each statement execute function herald_private.tg_deliveries__enqueue();

alter table herald_public.deliveries enable row level security;
alter table herald_public.deliveries force row level security;
create policy select_member on herald_public.deliveries for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
create policy insert_worker on herald_public.deliveries for insert to :DATABASE_WORKER
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy update_worker on herald_public.deliveries for update to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy select_admin on herald_public.deliveries for select to :DATABASE_ADMIN using (true);

grant select on herald_public.deliveries to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;
grant insert (tenant_id, message_id, contact_id, channel, status, reason, run_at) on herald_public.deliveries to :DATABASE_WORKER;
grant update (status, reason, error_code, run_at, attempts, claimed_at, claimed_by, provider, provider_account_id, provider_message_id,
              from_address, segments, content_sha256, counted_month, sent_at, completed_at)
  on herald_public.deliveries to :DATABASE_WORKER;

-------------------------------------------------------------------------------
-- Progress
-------------------------------------------------------------------------------

create type herald_public.message_stats as (
  total integer,
  queued integer,
  sending integer,
  sent integer,
  delivered integer,
  failed integer,
  undelivered integer,
  skipped integer,
  canceled integer,
  unknown integer,
  -- Queued deliveries waiting on a reason (quiet hours, the monthly cap, a retry).
  waiting integer
);

create function herald_public.messages_stats(message herald_public.messages) returns herald_public.message_stats
  language sql stable parallel safe
  set search_path = ''
as $$
  select count(*)::integer,
         count(*) filter (where status = 'queued')::integer,
         count(*) filter (where status = 'sending')::integer,
         count(*) filter (where status = 'sent')::integer,
         count(*) filter (where status = 'delivered')::integer,
         count(*) filter (where status = 'failed')::integer,
         count(*) filter (where status = 'undelivered')::integer,
         count(*) filter (where status = 'skipped')::integer,
         count(*) filter (where status = 'canceled')::integer,
         count(*) filter (where status = 'unknown')::integer,
         count(*) filter (where status = 'queued' and reason is not null)::integer
    from herald_public.deliveries d
   where d.tenant_id = message.tenant_id and d.message_id = message.id;
$$;
comment on function herald_public.messages_stats(herald_public.messages) is E'Deliveries by status.';

create type herald_public.message_reason_count as (status text, reason text, count integer);

create function herald_public.messages_reasons(message herald_public.messages) returns setof herald_public.message_reason_count
  language sql stable parallel safe
  set search_path = ''
as $$
  select status, reason, count(*)::integer
    from herald_public.deliveries d
   where d.tenant_id = message.tenant_id and d.message_id = message.id and d.reason is not null
   group by status, reason
   order by status, reason;
$$;
comment on function herald_public.messages_reasons(herald_public.messages) is
  E'Why deliveries were skipped or failed, or why queued ones wait: counts by status and reason.';

grant execute on function herald_public.messages_stats(herald_public.messages),
  herald_public.messages_reasons(herald_public.messages)
  to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;

-------------------------------------------------------------------------------
-- send_message / cancel_message
-------------------------------------------------------------------------------

create function herald_public.send_message(
  channel text,
  template_id uuid default null,
  body text default null,
  subject text default null,
  html_body text default null,
  contact_ids uuid[] default null,
  list_ids uuid[] default null,
  tag_ids uuid[] default null,
  all_contacts boolean default false,
  scheduled_at timestamptz default null,
  idempotency_key text default null,
  metadata jsonb default null
) returns herald_public.messages
  language plpgsql volatile
  set search_path = ''
as $$
#variable_conflict use_column
declare
  v_contact_ids uuid[] := array(select distinct x from pg_catalog.unnest(coalesce(contact_ids, '{}')) x);
  v_list_ids uuid[] := array(select distinct x from pg_catalog.unnest(coalesce(list_ids, '{}')) x);
  v_tag_ids uuid[] := array(select distinct x from pg_catalog.unnest(coalesce(tag_ids, '{}')) x);
  v_metadata jsonb := coalesce(metadata, '{}');
  v_from text := v_metadata ->> 'from';
  v_template herald_public.templates;
  v_fingerprint text;
  v_missing integer;
  v_message herald_public.messages;
begin
  if herald_public.current_tenant_id() is null then
    raise exception 'no tenant in this session' using errcode = 'NOTNT';
  end if;
  if channel is null or channel not in ('sms', 'whatsapp', 'email') then
    raise exception 'channel must be sms, whatsapp or email' using errcode = '22023', column = 'channel';
  end if;
  if pg_catalog.jsonb_typeof(v_metadata) <> 'object' then
    raise exception 'metadata must be a JSON object' using errcode = '22023', column = 'metadata';
  end if;

  -- The same key again is the same request: return the original, send nothing.
  -- A different request under a used key is a client bug worth hearing about.
  v_fingerprint := pg_catalog.md5(pg_catalog.jsonb_build_array(channel, template_id, body, subject, html_body,
    v_contact_ids, v_list_ids, v_tag_ids, coalesce(all_contacts, false), scheduled_at, v_metadata)::text);
  if idempotency_key is not null then
    select * into v_message from herald_public.messages m
     where m.tenant_id = herald_public.current_tenant_id() and m.idempotency_key = send_message.idempotency_key;
    if found then
      if v_message.request_fingerprint is distinct from v_fingerprint then
        raise exception 'idempotencyKey "%" was already used for a different message', idempotency_key
          using errcode = '22023', column = 'idempotencyKey';
      end if;
      return v_message;
    end if;
  end if;

  -- Content: a template of this channel, or inline text.
  if template_id is not null then
    if body is not null or subject is not null or html_body is not null then
      raise exception 'give either templateId or inline content, not both' using errcode = '22023', column = 'templateId';
    end if;
    select * into v_template from herald_public.templates t
     where t.tenant_id = herald_public.current_tenant_id() and t.id = send_message.template_id;
    if not found then
      raise exception 'template not found' using errcode = 'NTFND', column = 'templateId';
    elsif v_template.channel <> send_message.channel then
      raise exception 'template "%" is for %, not %', v_template.name, v_template.channel, channel
        using errcode = '22023', column = 'templateId';
    end if;
  else
    if body is null or pg_catalog.btrim(body) = '' then
      raise exception 'body is required (or give templateId)' using errcode = '22023', column = 'body';
    end if;
    if channel <> 'email' and pg_catalog.length(body) > 1600 then
      raise exception 'body is longer than 1600 characters' using errcode = '22023', column = 'body';
    end if;
    if (channel = 'email') <> (subject is not null) then
      raise exception 'subject is required for email, and only for email' using errcode = '22023', column = 'subject';
    end if;
    if html_body is not null and channel <> 'email' then
      raise exception 'htmlBody is for email only' using errcode = '22023', column = 'htmlBody';
    end if;
    perform herald_hidden.template_variables(body, 'body'), herald_hidden.template_variables(subject, 'subject'),
            herald_hidden.template_variables(html_body, 'htmlBody');
  end if;

  -- Audience: ids must be this tenant's (another tenant's do not exist here).
  if pg_catalog.cardinality(v_contact_ids) + pg_catalog.cardinality(v_list_ids) + pg_catalog.cardinality(v_tag_ids) = 0
     and not coalesce(all_contacts, false) then
    raise exception 'no audience: give contactIds, listIds, tagIds or allContacts' using errcode = '22023', column = 'contactIds';
  end if;
  select pg_catalog.cardinality(v_contact_ids) - count(*) into v_missing from herald_public.contacts c
   where c.tenant_id = herald_public.current_tenant_id() and c.id = any (v_contact_ids);
  if v_missing > 0 then
    raise exception '% of contactIds not found', v_missing using errcode = 'NTFND', column = 'contactIds';
  end if;
  select pg_catalog.cardinality(v_list_ids) - count(*) into v_missing from herald_public.lists l
   where l.tenant_id = herald_public.current_tenant_id() and l.id = any (v_list_ids);
  if v_missing > 0 then
    raise exception '% of listIds not found', v_missing using errcode = 'NTFND', column = 'listIds';
  end if;
  select pg_catalog.cardinality(v_tag_ids) - count(*) into v_missing from herald_public.tags t
   where t.tenant_id = herald_public.current_tenant_id() and t.id = any (v_tag_ids);
  if v_missing > 0 then
    raise exception '% of tagIds not found', v_missing using errcode = 'NTFND', column = 'tagIds';
  end if;

  -- A `from` override must be one of the tenant's own senders.
  if v_from is not null then
    if channel = 'email' then
      if not exists (select 1 from herald_public.email_domains e
                      where e.tenant_id = herald_public.current_tenant_id() and e.status = 'verified'
                        and e.domain = pg_catalog.lower(pg_catalog.split_part(v_from, '@', 2))::public.citext) then
        raise exception 'metadata.from "%" is not on one of this tenant''s verified email domains', v_from
          using errcode = '22023', column = 'metadata';
      end if;
    elsif not exists (select 1 from herald_public.sender_numbers n
                       where n.tenant_id = herald_public.current_tenant_id() and n.phone_number = v_from and n.channel = send_message.channel) then
      raise exception 'metadata.from "%" is not one of this tenant''s % sender numbers', v_from, channel
        using errcode = '22023', column = 'metadata';
    end if;
  end if;

  if scheduled_at is not null and scheduled_at > now() + interval '1 year' then
    raise exception 'scheduledAt is more than a year ahead' using errcode = '22023', column = 'scheduledAt';
  end if;

  insert into herald_public.messages (channel, template_id, body, subject, html_body, contact_ids, list_ids, tag_ids,
                                      all_contacts, scheduled_at, idempotency_key, request_fingerprint, metadata, created_by)
  values (channel, template_id, body, subject, html_body, v_contact_ids, v_list_ids, v_tag_ids,
          coalesce(all_contacts, false), scheduled_at, idempotency_key, v_fingerprint, v_metadata,
          herald_public.current_user_id())
  -- Two concurrent requests with one key: the loser returns the winner's row.
  on conflict (tenant_id, idempotency_key) do nothing
  returning * into v_message;
  if v_message.id is null then
    select * into v_message from herald_public.messages m
     where m.tenant_id = herald_public.current_tenant_id() and m.idempotency_key = send_message.idempotency_key;
  end if;
  return v_message;
end;
$$;
comment on function herald_public.send_message(text, uuid, text, text, text, uuid[], uuid[], uuid[], boolean, timestamptz, text, jsonb) is
  E'@resultFieldName message\nSend a message (template or inline) to contacts, lists, tags, or every subscribed contact; now or at `scheduledAt`. '
  'The same `idempotencyKey` again returns the original message and sends nothing new. `metadata.from` picks one of your senders.';
grant execute on function herald_public.send_message(text, uuid, text, text, text, uuid[], uuid[], uuid[], boolean, timestamptz, text, jsonb)
  to :DATABASE_MEMBER;

-- Members may not write message or delivery states (they feed usage and
-- billing). Cancelling is a member setting `canceled_at`, the one column they
-- may update; triggers do the rest: the message's status, and every delivery
-- not yet handed to a provider (a `sending` one finishes); until the job has
-- run, the send-time check cancels any that come up.
create function herald_private.tg_messages__cancel() returns trigger
  language plpgsql
  set search_path = ''
as $$
begin
  if old.canceled_at is not null or new.canceled_at is null then
    new.canceled_at := old.canceled_at; -- once canceled, always canceled
  else
    new.canceled_at := now();
    new.status := 'canceled';
  end if;
  return new;
end;
$$;
create trigger _200_cancel before update of canceled_at on herald_public.messages
  for each row execute function herald_private.tg_messages__cancel();

-- The deliveries are the worker's to change (message__cancel), as the
-- definers here run as the owner, whom forced RLS shows no tenant rows.
create trigger _500_cancel_deliveries after update of canceled_at on herald_public.messages
  for each row when (old.canceled_at is null and new.canceled_at is not null)
  execute function herald_private.tg__add_job('message__cancel');

create policy update_member on herald_public.messages for update to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
grant update (canceled_at) on herald_public.messages to :DATABASE_MEMBER;

create function herald_public.cancel_message(message_id uuid) returns herald_public.messages
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_message herald_public.messages;
begin
  update herald_public.messages m set canceled_at = now()
   where m.tenant_id = herald_public.current_tenant_id() and m.id = message_id
  returning * into v_message;
  if not found then
    raise exception 'message not found' using errcode = 'NTFND', column = 'messageId';
  end if;
  return v_message;
end;
$$;
comment on function herald_public.cancel_message(uuid) is
  E'@resultFieldName message\nStop a message: every delivery not yet handed to a provider is canceled (scheduled ones never start).';
grant execute on function herald_public.cancel_message(uuid) to :DATABASE_MEMBER;

-------------------------------------------------------------------------------
-- Fan-out: one batch of recipients, set-based (run by the worker in the tenant)
-------------------------------------------------------------------------------

-- Writes the deliveries of the next `batch_size` audience contacts after the
-- message's cursor and moves the cursor, in the caller's transaction. Skips
-- (with a reason) whoever is unsubscribed from the channel, suppressed, or has
-- no address for it; plans queued ones' run_at at the tenant's pace.
create function herald_hidden.fan_out_batch(message_id uuid, batch_size integer, system_sender text, system_mps numeric,
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
begin
  select * into v_message from herald_public.messages m
   where m.tenant_id = v_tenant and m.id = message_id for update;
  if not found or v_message.status in ('canceled', 'fanned_out') then
    contacts := 0; queued := 0; skipped := 0; done := true;
    return;
  end if;

  -- The number the worker will most likely send from (as src/providers/send.ts
  -- picks it: the message's, the tenant's sms_from, the active account's first
  -- number, the system's), for planning at its pace. Email has no sender pace.
  if v_message.channel <> 'email' then
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

  -- The next batch of distinct audience members, in contact id order.
  select array(
    select a.id from (
      select c.id from herald_public.contacts c
       where v_message.all_contacts and c.tenant_id = v_tenant
         and c.id > coalesce(v_message.fan_out_cursor, '00000000-0000-0000-0000-000000000000')
         and case v_message.channel when 'sms' then c.sms_subscribed
                                    when 'whatsapp' then c.whatsapp_subscribed
                                    else c.email_subscribed end
      union
      select x from pg_catalog.unnest(v_message.contact_ids) x
       where x > coalesce(v_message.fan_out_cursor, '00000000-0000-0000-0000-000000000000')
      union
      select lm.contact_id from herald_public.list_members lm
       where lm.tenant_id = v_tenant and lm.list_id = any (v_message.list_ids)
         and lm.contact_id > coalesce(v_message.fan_out_cursor, '00000000-0000-0000-0000-000000000000')
      union
      select ct.contact_id from herald_public.contact_tags ct
       where ct.tenant_id = v_tenant and ct.tag_id = any (v_message.tag_ids)
         and ct.contact_id > coalesce(v_message.fan_out_cursor, '00000000-0000-0000-0000-000000000000')
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

-------------------------------------------------------------------------------
-- Send-time checks
-------------------------------------------------------------------------------

-- Null when `now()` is inside the daily send window in time zone `tz` (the
-- contact's, else `fallback_tz`, the tenant's); otherwise when it next opens.
-- A window may wrap midnight (start 20:00, end 02:00).
create function herald_hidden.send_window_opens_at(tz text, fallback_tz text, window_start time, window_end time)
  returns timestamptz
  language plpgsql stable
  set search_path = ''
as $$
declare
  v_zone text := fallback_tz;
  v_local timestamp;
  v_open boolean;
begin
  -- A contact's zone is free text: only an IANA name (Area/City, or UTC) that
  -- Postgres knows is used, else the tenant's. Tried rather than looked up in
  -- pg_timezone_names (far slower); the shape test keeps out POSIX strings
  -- such as 'UTC+5' and abbreviations, which Postgres reads differently.
  if tz ~ '^([A-Za-z_]+(/[A-Za-z0-9_+-]+)+|UTC)$' then
    begin
      v_local := now() at time zone tz;
      v_zone := tz;
    exception when invalid_parameter_value then
      v_zone := fallback_tz;
    end;
  end if;
  v_local := now() at time zone v_zone;
  v_open := case when window_start <= window_end
                 then v_local::time >= window_start and v_local::time < window_end
                 else v_local::time >= window_start or v_local::time < window_end end;
  if v_open or window_start = window_end then
    return null;
  end if;
  return (case when v_local::time < window_start then v_local::date + window_start
               else v_local::date + 1 + window_start end) at time zone v_zone;
end;
$$;
grant execute on function herald_hidden.send_window_opens_at(text, text, time, time) to :DATABASE_WORKER;

-- Messages handed to a provider per tenant and calendar month (UTC): the
-- monthly cap, and usage.
create table herald_hidden.monthly_usage (
  tenant_id uuid not null references herald_public.tenants on delete cascade,
  month date not null,
  messages integer not null default 0,
  primary key (tenant_id, month)
);
alter table herald_hidden.monthly_usage enable row level security;
alter table herald_hidden.monthly_usage force row level security;
create policy select_member on herald_hidden.monthly_usage for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
create policy insert_worker on herald_hidden.monthly_usage for insert to :DATABASE_WORKER
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy update_worker on herald_hidden.monthly_usage for update to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy select_admin on herald_hidden.monthly_usage for select to :DATABASE_ADMIN using (true);
grant select on herald_hidden.monthly_usage to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;
grant insert (tenant_id, month, messages), update (messages) on herald_hidden.monthly_usage to :DATABASE_WORKER;

-- Counts one message toward this month if the cap allows; returns the month
-- counted in, or null at the cap. The row lock is held until the caller
-- commits, so call it last in a short transaction.
create function herald_hidden.count_toward_cap() returns date
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_tenant uuid := herald_public.current_tenant_id();
  v_month date := pg_catalog.date_trunc('month', now() at time zone 'UTC')::date;
  v_cap integer;
begin
  select s.monthly_message_cap into v_cap from herald_public.tenant_settings s where s.tenant_id = v_tenant;
  insert into herald_hidden.monthly_usage (tenant_id, month) values (v_tenant, v_month) on conflict do nothing;
  update herald_hidden.monthly_usage u set messages = u.messages + 1
   where u.tenant_id = v_tenant and u.month = v_month and (v_cap is null or u.messages < v_cap);
  return case when found then v_month end;
end;
$$;

-- A message counted but certainly never accepted gives its place back.
create function herald_hidden.uncount_toward_cap(month date) returns void
  language sql volatile
  set search_path = ''
as $$
  update herald_hidden.monthly_usage u set messages = greatest(u.messages - 1, 0)
   where u.tenant_id = herald_public.current_tenant_id() and u.month = uncount_toward_cap.month;
$$;
grant execute on function herald_hidden.count_toward_cap(), herald_hidden.uncount_toward_cap(date) to :DATABASE_WORKER;

-- Raising (or removing) the cap releases what it held back, now: a job
-- queues their sends again (those waiting for the month's turn stay, and find
-- them sent). The payload names the tenant twice: row tasks take (tenant_id, id).
create function herald_private.tg_tenant_settings__release_held() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
begin
  perform graphile_worker.add_job(
    'tenant__release_held',
    pg_catalog.json_build_object('tenant_id', new.tenant_id, 'id', new.tenant_id),
    max_attempts := 25);
  return new;
end;
$$;
create trigger _500_release_held after update of monthly_message_cap on herald_public.tenant_settings
  for each row
  when (new.monthly_message_cap is null or new.monthly_message_cap > coalesce(old.monthly_message_cap, 0))
  execute function herald_private.tg_tenant_settings__release_held();
