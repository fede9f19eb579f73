--! Previous: sha1:0ec4c1e73e3241ceb448717512f8980c08ecb9d9
--! Hash: sha1:44593e43936f5d3dbc750c8974fa24c71c5fdef3
--! Message: Operators: audit log, suspension, API rate limits, usage, outbound webhooks

--
-- Operators and tenant admins: the audit log, suspending a tenant, per-tenant
-- API rate limits, usage, and outbound webhooks to tenants' own apps.
--
-- Idempotent: graphile-migrate re-runs it in watch mode.

drop view if exists herald_public.daily_usage;
drop function if exists herald_hidden.usage_between(timestamptz, timestamptz);
drop function if exists herald_public.tenants_usage_this_month(herald_public.tenants);
drop type if exists herald_public.month_usage cascade;
drop function if exists herald_public.create_webhook_endpoint(text, text[], text);
drop function if exists herald_public.enable_webhook_endpoint(uuid);
drop function if exists herald_public.replay_webhook_delivery(uuid);
drop function if exists herald_hidden.webhook_endpoint_secret(uuid);
drop function if exists herald_hidden.rekey_webhook_endpoints();
drop type if exists herald_public.created_webhook_endpoint cascade;
drop function if exists herald_private.tg__webhook_event() cascade;
drop function if exists herald_private.tg_webhook_endpoints__status() cascade;
drop function if exists herald_private.tg_webhook_deliveries__queue() cascade;
drop function if exists herald_private.queue_webhook_delivery(uuid, uuid, timestamptz);
drop function if exists herald_public.usage(date, date);
drop type if exists herald_public.usage_day cascade;
drop function if exists herald_private.admit(text, integer);
drop table if exists herald_private.rate_windows;
drop table if exists herald_public.webhook_deliveries, herald_public.webhook_endpoints cascade;
drop function if exists herald_public.suspend_tenant(uuid, text);
drop function if exists herald_public.resume_tenant(uuid);
drop function if exists herald_private.admit_api_request(uuid);
drop function if exists herald_private.tg__release_held() cascade;
drop table if exists herald_public.audit_log cascade;
drop function if exists herald_private.tg__audit() cascade;
drop function if exists herald_private.audit_actor();
drop function if exists herald_private.tg_users__audit() cascade;
alter table herald_public.tenants drop column if exists suspended_at, drop column if exists suspension_reason;
alter table herald_public.tenant_settings drop column if exists api_requests_per_minute;

-------------------------------------------------------------------------------
-- The audit log (tenant-owned, append-only)
-------------------------------------------------------------------------------

-- Who changed what in a tenant's configuration and data: never the values (a
-- phone number, an email, a message), only which columns changed.
create table herald_public.audit_log (
  tenant_id uuid not null references herald_public.tenants on delete cascade,
  id bigint generated always as identity,
  at timestamptz not null default now(),
  -- user: a tenant's user (JWT); api_key: a tenant API key; worker: a job;
  -- webhook: a provider's verified callback; admin: a platform operator
  -- through herald_admin (API token or `SET ROLE`); operator: a database login
  -- acting as itself (migrations, maintenance, Herald's own definer helpers).
  actor_kind text not null constraint audit_log_actor_kind check (actor_kind in ('user', 'api_key', 'worker', 'webhook', 'admin', 'operator')),
  -- The user or API key, when there is one.
  actor_id uuid,
  -- The database login (an operator's psql session, or Herald's own), and what Herald says it was doing (`twilio`, a task name).
  db_user text not null,
  actor_detail text constraint audit_log_actor_detail_length check (length(actor_detail) <= 100),
  action text not null constraint audit_log_action check (action in ('insert', 'update', 'delete')),
  table_name text not null,
  -- The row's key (its id; for rows keyed by two ids, both, joined by '/').
  record_id text not null,
  changed_columns text[] not null default '{}',
  primary key (tenant_id, id)
);
comment on table herald_public.audit_log is
  E'@behavior -insert -update -delete\nWho changed what in this tenant: the actor, the table, the row and the columns (never their values). Nobody can edit or delete it.';
comment on column herald_public.audit_log.actor_kind is
  E'`user`, `api_key`, `worker`, `webhook`, `admin` (a platform operator) or `operator` (a database login acting as itself).';
comment on column herald_public.audit_log.changed_columns is E'The columns an insert set or an update changed (names only).';
create index audit_log_at on herald_public.audit_log (tenant_id, at desc);

alter table herald_public.audit_log enable row level security;
alter table herald_public.audit_log force row level security;
-- The tenant's owners and admins read their own tenant's log.
create policy select_member on herald_public.audit_log for select to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()) and (select herald_hidden.current_user_is_tenant_admin()));
create policy select_admin on herald_public.audit_log for select to :DATABASE_ADMIN using (true);
-- Written only by the audit trigger (a definer, as the owner); no role may update or delete.
create policy insert_definer on herald_public.audit_log for insert to :DATABASE_OWNER with check (true);
grant select on herald_public.audit_log to :DATABASE_MEMBER, :DATABASE_ADMIN;

-- Who is acting, from what Herald put in the session. The role comes from
-- the `role` setting — what SET ROLE (or PostGraphile's pgSettings) set, which
-- a definer function still reports — so it cannot be claimed without the
-- right to become that role.
create function herald_private.audit_actor(out kind text, out actor_id uuid, out detail text)
  language plpgsql stable
  set search_path = ''
as $$
declare
  v_role text := pg_catalog.current_setting('role', true);
  v_actor text := nullif(pg_catalog.current_setting('herald.actor', true), '');
begin
  detail := nullif(pg_catalog.current_setting('herald.actor_detail', true), '');
  if v_role = ':DATABASE_ADMIN' then
    kind := 'admin';
    actor_id := herald_public.current_user_id();
  elsif v_role = ':DATABASE_WORKER' then
    kind := case when v_actor = 'webhook' then 'webhook' else 'worker' end;
  elsif v_role = ':DATABASE_MEMBER' then
    actor_id := coalesce(herald_public.current_user_id(), nullif(pg_catalog.current_setting('herald.api_key_id', true), '')::uuid);
    -- An API key only when Herald verified one; a token without a user (an
    -- identity provider's machine token) is a `user` with no id.
    kind := case when nullif(pg_catalog.current_setting('herald.api_key_id', true), '') is not null
                  and herald_public.current_user_id() is null then 'api_key' else 'user' end;
  else
    kind := 'operator';
  end if;
end;
$$;

-- One statement-level trigger per table and operation (transition tables):
-- an import of a thousand contacts writes its thousand log rows in one
-- statement. tg_argv: the key columns (the first one is the tenant for
-- `tenants` itself), then the columns whose change alone is not worth a row
-- (timestamps Herald stamps).
create function herald_private.tg__audit() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
declare
  v_keys text[] := pg_catalog.string_to_array(tg_argv[0], ',');
  v_ignored text[] := coalesce(pg_catalog.string_to_array(nullif(tg_argv[1], ''), ','), '{}') || array['created_at', 'updated_at'];
  v_tenant text := case when tg_table_name = 'tenants' then 'id' else 'tenant_id' end;
  v_actor record;
  v_record_id text;
  v_join text;
begin
  select * into v_actor from herald_private.audit_actor();
  v_record_id := pg_catalog.array_to_string(array(select pg_catalog.format('(r.%I)::text', k) from pg_catalog.unnest(v_keys) k), $s$ || '/' || $s$);
  if tg_op = 'INSERT' or tg_op = 'DELETE' then
    execute pg_catalog.format(
      $q$insert into herald_public.audit_log (tenant_id, actor_kind, actor_id, db_user, actor_detail, action, table_name, record_id, changed_columns)
         select r.%1$I, $1, $2, session_user, $3, $4, $5, %2$s,
                case when $4 = 'insert'
                     then array(select e.key from pg_catalog.jsonb_each(pg_catalog.to_jsonb(r)) e
                                 where e.value <> 'null'::jsonb and e.key <> all ($6) order by e.key)
                     else '{}' end
           from %3$I r
          -- Deleting a tenant deletes its log with it (and what it owned, by
          -- cascade): nothing is written for a tenant that is gone.
          where exists (select 1 from herald_public.tenants t where t.id = r.%1$I)$q$,
      v_tenant, v_record_id, case when tg_op = 'INSERT' then 'new_rows' else 'old_rows' end)
    using v_actor.kind, v_actor.actor_id, v_actor.detail, pg_catalog.lower(tg_op), tg_table_name, v_ignored;
  else
    v_join := pg_catalog.array_to_string(array(select pg_catalog.format('o.%1$I = r.%1$I', k) from pg_catalog.unnest(v_keys) k), ' and ');
    execute pg_catalog.format(
      $q$insert into herald_public.audit_log (tenant_id, actor_kind, actor_id, db_user, actor_detail, action, table_name, record_id, changed_columns)
         select c.tenant_id, $1, $2, session_user, $3, 'update', $4, c.record_id, c.changed
           from (select r.%1$I as tenant_id, %2$s as record_id,
                        array(select e.key from pg_catalog.jsonb_each(pg_catalog.to_jsonb(r)) e
                               where e.value is distinct from (pg_catalog.to_jsonb(o) -> e.key) and e.key <> all ($5)
                               order by e.key) as changed
                   from new_rows r join old_rows o on %3$s) c
          where pg_catalog.cardinality(c.changed) > 0$q$,
      v_tenant, v_record_id, v_join)
    using v_actor.kind, v_actor.actor_id, v_actor.detail, tg_table_name, v_ignored;
  end if;
  return null;
end;
$$;
comment on function herald_private.tg__audit() is
  E'Writes audit_log rows for a statement: actor, table, row key and changed column names (never values).';

-- The tables whose changes are audited, with their keys and the columns not
-- worth a row of their own. Deliveries, delivery and consent events and
-- inbound messages (other than deleting one) are records themselves.
do $$
declare
  v_spec record;
begin
  for v_spec in select * from (values
      ('tenants', 'id', ''),
      ('memberships', 'user_id', ''),
      ('api_keys', 'id', 'last_used_at'),
      ('tenant_settings', 'tenant_id', ''),
      ('provider_accounts', 'id', 'last_error,last_tested_at'),
      ('sender_numbers', 'id', ''),
      ('email_senders', 'id', ''),
      ('email_domains', 'id', 'last_checked_at'),
      ('contacts', 'id', ''),
      ('tags', 'id', ''),
      ('contact_tags', 'contact_id,tag_id', ''),
      ('lists', 'id', ''),
      ('list_members', 'list_id,contact_id', ''),
      ('templates', 'id', ''),
      ('messages', 'id', 'fan_out_cursor,recipient_count,fanned_out_at'),
      ('suppressions', 'id', '')
    ) as s(table_name, keys, ignored)
  loop
    execute format('create trigger _900_audit_insert after insert on herald_public.%I referencing new table as new_rows
                    for each statement execute function herald_private.tg__audit(%L, %L)', v_spec.table_name, v_spec.keys, v_spec.ignored);
    execute format('create trigger _900_audit_update after update on herald_public.%I referencing old table as old_rows new table as new_rows
                    for each statement execute function herald_private.tg__audit(%L, %L)', v_spec.table_name, v_spec.keys, v_spec.ignored);
    execute format('create trigger _900_audit_delete after delete on herald_public.%I referencing old table as old_rows
                    for each statement execute function herald_private.tg__audit(%L, %L)', v_spec.table_name, v_spec.keys, v_spec.ignored);
  end loop;
end;
$$;
-- Users are global rows: a change to one (an operator changing its email, a
-- new password) is written to the log of every tenant it belongs to.
create function herald_private.tg_users__audit() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
declare
  v_actor record;
  -- Through jsonb: the two tables name the user's column differently, and a
  -- record's missing field is an error even in a branch not taken.
  v_row jsonb := coalesce(pg_catalog.to_jsonb(new), pg_catalog.to_jsonb(old));
  v_user uuid := coalesce(v_row ->> 'user_id', v_row ->> 'id')::uuid;
  v_changed text[];
begin
  select * into v_actor from herald_private.audit_actor();
  v_changed := case
    when tg_table_name = 'user_passwords' then array['password_hash']
    when tg_op = 'UPDATE' then array(select e.key from pg_catalog.jsonb_each(pg_catalog.to_jsonb(new)) e
                                      where e.value is distinct from (pg_catalog.to_jsonb(old) -> e.key) and e.key <> 'updated_at' order by e.key)
    else '{}' end;
  if tg_op = 'UPDATE' and pg_catalog.cardinality(v_changed) = 0 then
    return null;
  end if;
  insert into herald_public.audit_log (tenant_id, actor_kind, actor_id, db_user, actor_detail, action, table_name, record_id, changed_columns)
  select m.tenant_id, v_actor.kind, v_actor.actor_id, session_user, v_actor.detail, pg_catalog.lower(tg_op), tg_table_name, v_user::text, v_changed
    from herald_public.memberships m
   where m.user_id = v_user;
  return null;
end;
$$;
create trigger _900_audit after update or delete on herald_public.users
  for each row execute function herald_private.tg_users__audit();
create trigger _900_audit after insert or update on herald_private.user_passwords
  for each row execute function herald_private.tg_users__audit();

-- What a person wrote is a record; erasing it is worth one.
create trigger _900_audit_delete after delete on herald_public.inbound_messages referencing old table as old_rows
  for each statement execute function herald_private.tg__audit('id', '');

-------------------------------------------------------------------------------
-- Suspending a tenant (platform operators)
-------------------------------------------------------------------------------

alter table herald_public.tenants
  add column suspended_at timestamptz,
  add column suspension_reason text constraint tenants_suspension_reason_length check (length(suspension_reason) <= 500);
-- Operators may also update `status` directly (000001): the two cannot disagree.
alter table herald_public.tenants add constraint tenants_suspended_at check ((status = 'suspended') = (suspended_at is not null));
comment on column herald_public.tenants.suspended_at is E'When an operator suspended it (`suspendTenant`); null while active.';
comment on column herald_public.tenants.suspension_reason is E'Why, as the operator said.';

-- A suspended tenant's users and API keys stop authenticating at once (the
-- checks in herald_private read `status`); its deliveries are held at send
-- time (`tenant_suspended`) until it is resumed, which releases them. Inbound
-- messages and providers' reports are still received: an opt-out must count
-- whatever the tenant's standing.
create function herald_public.suspend_tenant(tenant_id uuid, reason text) returns herald_public.tenants
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_tenant herald_public.tenants;
begin
  if coalesce(pg_catalog.btrim(reason), '') = '' then
    raise exception 'reason is required: say why the tenant is suspended' using errcode = '22023', column = 'reason';
  end if;
  update herald_public.tenants t
     set status = 'suspended', suspended_at = coalesce(t.suspended_at, now()), suspension_reason = suspend_tenant.reason
   where t.id = suspend_tenant.tenant_id
  returning * into v_tenant;
  if v_tenant.id is null then
    raise exception 'tenant not found' using errcode = 'NTFND', column = 'tenantId';
  end if;
  return v_tenant;
end;
$$;
comment on function herald_public.suspend_tenant(uuid, text) is
  E'@resultFieldName tenant\nPlatform operators: suspend a tenant. Its users and API keys stop working and its sends are held until `resumeTenant`.';

create function herald_public.resume_tenant(tenant_id uuid) returns herald_public.tenants
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_tenant herald_public.tenants;
begin
  update herald_public.tenants t set status = 'active', suspended_at = null, suspension_reason = null
   where t.id = resume_tenant.tenant_id
  returning * into v_tenant;
  if v_tenant.id is null then
    raise exception 'tenant not found' using errcode = 'NTFND', column = 'tenantId';
  end if;
  return v_tenant;
end;
$$;
comment on function herald_public.resume_tenant(uuid) is
  E'@resultFieldName tenant\nPlatform operators: resume a suspended tenant; the sends it held go out.';
-- Only operators: the admin policies on tenants are what let the update through.
grant execute on function herald_public.suspend_tenant(uuid, text), herald_public.resume_tenant(uuid) to :DATABASE_ADMIN;
grant update (suspended_at, suspension_reason) on herald_public.tenants to :DATABASE_ADMIN;

-- Resuming a tenant releases what the suspension held, as raising its cap
-- (000006) releases what the cap held: a job, since the deliveries are the
-- worker's to change. tg_argv[0]: the column naming the tenant. The payload
-- names it twice: row tasks take (tenant_id, id).
create function herald_private.tg__release_held() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
declare
  v_tenant uuid := (pg_catalog.to_jsonb(new) ->> tg_argv[0])::uuid;
begin
  perform graphile_worker.add_job(
    'tenant__release_held',
    pg_catalog.json_build_object('tenant_id', v_tenant, 'id', v_tenant),
    max_attempts := 25);
  return new;
end;
$$;
create trigger _500_release_held after update of status on herald_public.tenants
  for each row when (old.status = 'suspended' and new.status = 'active')
  execute function herald_private.tg__release_held('id');
-- The cap's trigger, on the shared function (dropping the old one drops it).
drop function if exists herald_private.tg_tenant_settings__release_held() cascade;
create trigger _500_release_held after update of monthly_message_cap on herald_public.tenant_settings
  for each row
  when (new.monthly_message_cap is null or new.monthly_message_cap > coalesce(old.monthly_message_cap, 0))
  execute function herald_private.tg__release_held('tenant_id');

-------------------------------------------------------------------------------
-- Per-tenant API rate limits, shared by every API process
-------------------------------------------------------------------------------

alter table herald_public.tenant_settings add column api_requests_per_minute integer not null default 600
  constraint tenant_settings_api_requests_per_minute_range check (api_requests_per_minute between 1 and 1000000);
comment on column herald_public.tenant_settings.api_requests_per_minute is
  E'GraphQL requests per minute the tenant''s users and API keys may make together (set by operators); more get 429.';
-- Operators set it; a tenant may not raise its own.
grant update (api_requests_per_minute) on herald_public.tenant_settings to :DATABASE_ADMIN;

-- Fixed one-minute windows, one row per scope: `api:<tenant>` (the tenant's
-- API requests), `login:email:<hash>` and `login:client:<address>` (password
-- attempts, each a bcrypt hash). A new minute restarts the count in the same
-- upsert. Unlogged: a counter lost in a crash costs nothing worth a WAL write
-- per request.
create unlogged table herald_private.rate_windows (
  scope text primary key,
  window_start timestamptz not null,
  hits integer not null
);
create index rate_windows_stale on herald_private.rate_windows (window_start);

-- Counts one hit for `scope` in the current minute and answers 0 while it is
-- within `per_minute`, else the seconds until the minute turns (refused hits
-- count too: hammering does not help). Scopes that stopped coming are swept a
-- few at a time by those that start a new minute, so the table holds about
-- one minute's scopes however many keys are tried.
create function herald_private.admit(scope text, per_minute integer) returns integer
  language plpgsql volatile security definer
  set search_path = ''
as $$
declare
  v_window timestamptz := pg_catalog.date_trunc('minute', pg_catalog.clock_timestamp());
  v_hits integer;
begin
  -- Losing the last moments of a counter in a crash is harmless; waiting for a flush per request is not.
  perform pg_catalog.set_config('synchronous_commit', 'off', true);
  insert into herald_private.rate_windows as w (scope, window_start, hits)
  values (admit.scope, v_window, 1)
  on conflict on constraint rate_windows_pkey do update
    set hits = case when excluded.window_start > w.window_start then 1 else w.hits + 1 end,
        window_start = greatest(w.window_start, excluded.window_start)
  returning w.hits into v_hits;
  if v_hits = 1 then
    delete from herald_private.rate_windows w
     where w.scope = any (array(select s.scope from herald_private.rate_windows s
                                 where s.window_start < v_window - interval '1 minute'
                                 limit 20 for update skip locked));
  end if;
  if v_hits <= per_minute then
    return 0;
  end if;
  return greatest(1, ceil(extract(epoch from (v_window + interval '1 minute' - pg_catalog.clock_timestamp())))::integer);
end;
$$;
grant execute on function herald_private.admit(text, integer) to :DATABASE_AUTHENTICATOR;

-- One request of a tenant, against its api_requests_per_minute. Called by the
-- authenticator for every tenant request, in a statement of its own.
create function herald_private.admit_api_request(tenant_id uuid) returns integer
  language sql volatile security definer
  set search_path = ''
as $$
  select herald_private.admit('api:' || admit_api_request.tenant_id, s.api_requests_per_minute)
    from herald_public.tenant_settings s
   where s.tenant_id = admit_api_request.tenant_id;
$$;
grant execute on function herald_private.admit_api_request(uuid) to :DATABASE_AUTHENTICATOR;

-- The owner reads the limit (forced RLS on tenant_settings).
drop policy if exists select_definer on herald_public.tenant_settings;
create policy select_definer on herald_public.tenant_settings for select to :DATABASE_OWNER using (true);

-------------------------------------------------------------------------------
-- Usage, per tenant and day
-------------------------------------------------------------------------------

-- What a tenant sent and received, per UTC day, channel and account (the
-- tenant's own provider account or the system's; none for deliveries never
-- handed to one): messages (send requests), deliveries by status, SMS
-- segments billed, inbound messages and opt-outs, for what happened between
-- two instants. Computed from the rows themselves, under the caller's RLS
-- (invoker's rights): a tenant's members see their tenant's, operators every
-- tenant's. A delivery counts on its message's day. One SQL statement, so the
-- planner inlines it and a range reads through the (tenant_id, created_at)
-- indexes rather than everything the tenant ever sent.
create function herald_hidden.usage_between(from_at timestamptz, to_at timestamptz)
  returns table (tenant_id uuid, day date, channel text, account text, provider text, messages integer, deliveries integer,
                 queued integer, sending integer, sent integer, delivered integer, undelivered integer, failed integer,
                 skipped integer, canceled integer, unknown integer, segments integer, inbound integer, opt_outs integer)
  language sql stable
as $$
  select u.tenant_id, u.day, u.channel, u.account,
         case when u.channel = 'email' then 'sendgrid' else 'twilio' end,
         sum(u.messages)::integer, sum(u.deliveries)::integer, sum(u.queued)::integer, sum(u.sending)::integer,
         sum(u.sent)::integer, sum(u.delivered)::integer, sum(u.undelivered)::integer, sum(u.failed)::integer,
         sum(u.skipped)::integer, sum(u.canceled)::integer, sum(u.unknown)::integer, sum(u.segments)::integer,
         sum(u.inbound)::integer, sum(u.opt_outs)::integer
    from (
      select m.tenant_id, (m.created_at at time zone 'UTC')::date as day, d.channel, d.provider as account,
             count(distinct d.message_id) as messages, count(*) as deliveries,
             count(*) filter (where d.status = 'queued') as queued,
             count(*) filter (where d.status = 'sending') as sending,
             count(*) filter (where d.status = 'sent') as sent,
             count(*) filter (where d.status = 'delivered') as delivered,
             count(*) filter (where d.status = 'undelivered') as undelivered,
             count(*) filter (where d.status = 'failed') as failed,
             count(*) filter (where d.status = 'skipped') as skipped,
             count(*) filter (where d.status = 'canceled') as canceled,
             count(*) filter (where d.status = 'unknown') as unknown,
             coalesce(sum(d.segments), 0) as segments, 0 as inbound, 0 as opt_outs
        from herald_public.messages m
        join herald_public.deliveries d on d.tenant_id = m.tenant_id and d.message_id = m.id
       where m.created_at >= usage_between.from_at and m.created_at < usage_between.to_at
       group by 1, 2, 3, 4
      union all
      select i.tenant_id, (i.received_at at time zone 'UTC')::date, i.channel, i.account,
             0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, count(*), 0
        from herald_public.inbound_messages i
       where i.received_at >= usage_between.from_at and i.received_at < usage_between.to_at
       group by 1, 2, 3, 4
      union all
      select e.tenant_id, (e.created_at at time zone 'UTC')::date, e.channel, null,
             0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, count(*)
        from herald_public.consent_events e
       where e.action = 'opt_out' and e.created_at >= usage_between.from_at and e.created_at < usage_between.to_at
       group by 1, 2, 3
    ) u
   group by u.tenant_id, u.day, u.channel, u.account;
$$;
grant execute on function herald_hidden.usage_between(timestamptz, timestamptz) to :DATABASE_MEMBER, :DATABASE_ADMIN;

-- For operators in SQL (and BI tools): every day there is.
create view herald_public.daily_usage with (security_invoker = true) as
select * from herald_hidden.usage_between('-infinity', 'infinity');
comment on view herald_public.daily_usage is
  E'@behavior -*\nWhat the tenant sent and received per UTC day, channel and account (`tenant` or `system`; none for deliveries never handed to a provider): messages, deliveries by status, SMS segments, inbound messages, opt-outs. A delivery counts on its message''s day.';
comment on column herald_public.daily_usage.account is E'`tenant` (its own provider account), `system`, or null (never handed to a provider: skipped, canceled, still queued).';
grant select on herald_public.daily_usage to :DATABASE_MEMBER, :DATABASE_ADMIN;

-- The same rows for GraphQL: a range of days (at most 366) of the session's tenant.
create type herald_public.usage_day as (
  day date, channel text, account text, provider text, messages integer, deliveries integer, queued integer, sending integer,
  sent integer, delivered integer, undelivered integer, failed integer, skipped integer, canceled integer, unknown integer,
  segments integer, inbound integer, opt_outs integer);
comment on type herald_public.usage_day is
  E'One UTC day of one channel and account (`tenant`, `system`, or none for deliveries never handed to a provider).';

create function herald_public.usage(from_day date, to_day date) returns setof herald_public.usage_day
  language plpgsql stable
  set search_path = ''
as $$
begin
  if from_day is null or to_day is null or to_day < from_day or to_day - from_day > 366 then
    raise exception 'give fromDay and toDay, at most 366 days apart' using errcode = '22023', column = 'toDay';
  end if;
  return query
  select u.day, u.channel, u.account, u.provider, u.messages, u.deliveries, u.queued, u.sending, u.sent, u.delivered,
         u.undelivered, u.failed, u.skipped, u.canceled, u.unknown, u.segments, u.inbound, u.opt_outs
    from herald_hidden.usage_between((from_day::timestamp) at time zone 'UTC', ((to_day + 1)::timestamp) at time zone 'UTC') u
   where u.tenant_id = herald_public.current_tenant_id()
   order by u.day, u.channel, u.account nulls last;
end;
$$;
comment on function herald_public.usage(date, date) is
  E'The tenant''s usage per UTC day (`fromDay` to `toDay`, at most 366 days), channel and account: messages, deliveries by status, SMS segments, inbound messages, opt-outs. A delivery counts on its message''s day.';
grant execute on function herald_public.usage(date, date) to :DATABASE_MEMBER, :DATABASE_ADMIN;
create index if not exists consent_events_created on herald_public.consent_events (tenant_id, created_at);

create type herald_public.month_usage as (month date, messages integer, cap integer, remaining integer);
comment on type herald_public.month_usage is E'Messages handed to a provider this UTC month, against the tenant''s cap (null: none).';

create function herald_public.tenants_usage_this_month(tenant herald_public.tenants) returns herald_public.month_usage
  language sql stable
  set search_path = ''
as $$
  select row(m.month, coalesce(u.messages, 0), s.monthly_message_cap,
             case when s.monthly_message_cap is not null then greatest(s.monthly_message_cap - coalesce(u.messages, 0), 0) end)::herald_public.month_usage
    from (select pg_catalog.date_trunc('month', now() at time zone 'UTC')::date as month) m
    join herald_public.tenant_settings s on s.tenant_id = tenant.id
    left join herald_hidden.monthly_usage u on u.tenant_id = tenant.id and u.month = m.month;
$$;
comment on function herald_public.tenants_usage_this_month(herald_public.tenants) is
  E'Month to date: messages handed to a provider, the monthly cap and what remains of it.';
grant execute on function herald_public.tenants_usage_this_month(herald_public.tenants) to :DATABASE_MEMBER, :DATABASE_ADMIN;

-------------------------------------------------------------------------------
-- Outbound webhooks: telling tenants' own apps what happened
-------------------------------------------------------------------------------

create table herald_public.webhook_endpoints (
  tenant_id uuid not null default herald_public.current_tenant_id()
    references herald_public.tenants on delete cascade,
  id uuid not null default gen_random_uuid(),
  url text not null constraint webhook_endpoints_url check (url ~ '^https?://[^\s/?#@]+(/[^\s]*)?$' and length(url) <= 2000),
  description text constraint webhook_endpoints_description_length check (length(description) <= 200),
  event_types text[] not null constraint webhook_endpoints_event_types check (
    pg_catalog.cardinality(event_types) > 0 and event_types <@ array['delivery.updated', 'inbound.received', 'consent.changed']),
  -- The signing secret, under the tenant's data key: only the worker reads it.
  secret_encrypted bytea not null,
  secret_hint text not null,
  key_version smallint not null,
  status text not null default 'active' constraint webhook_endpoints_status check (status in ('active', 'disabled')),
  -- Failed attempts in a row, across deliveries; past the limit the endpoint is disabled.
  consecutive_failures integer not null default 0,
  disabled_at timestamptz,
  disabled_reason text constraint webhook_endpoints_disabled_reason_length check (length(disabled_reason) <= 500),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (tenant_id, id),
  constraint webhook_endpoints_key_version_fkey foreign key (tenant_id, key_version)
    references herald_private.tenant_data_keys (tenant_id, version)
);
comment on table herald_public.webhook_endpoints is
  E'@behavior -insert\nAn URL of the tenant''s own app that Herald posts events to, signed (`Herald-Signature`). Create with `createWebhookEndpoint`.';
comment on column herald_public.webhook_endpoints.secret_encrypted is E'@behavior -*';
comment on column herald_public.webhook_endpoints.key_version is E'@behavior -*';
comment on constraint webhook_endpoints_key_version_fkey on herald_public.webhook_endpoints is E'@behavior -*';
comment on column herald_public.webhook_endpoints.event_types is E'Any of `delivery.updated`, `inbound.received`, `consent.changed`.';
comment on column herald_public.webhook_endpoints.secret_hint is E'The last 4 characters of the signing secret.';
comment on column herald_public.webhook_endpoints.consecutive_failures is E'Failed attempts in a row; past the limit the endpoint is disabled (`enableWebhookEndpoint` turns it back on).';

create trigger _100_timestamps before update on herald_public.webhook_endpoints
  for each row execute function herald_private.tg__timestamps();

-- The failure count and the reason an endpoint was disabled are Herald's
-- bookkeeping (the worker's to write; no grant lets a tenant set them). A
-- tenant turning an endpoint back on gets a clean slate; one turning it off
-- has it recorded when.
create function herald_private.tg_webhook_endpoints__status() returns trigger
  language plpgsql volatile
  set search_path = ''
as $$
begin
  if new.status = 'active' and old.status = 'disabled' then
    new.consecutive_failures := 0;
    new.disabled_at := null;
    new.disabled_reason := null;
  elsif new.status = 'disabled' and old.status = 'active' then
    new.disabled_at := coalesce(new.disabled_at, now());
  end if;
  return new;
end;
$$;
create trigger _200_status before update of status on herald_public.webhook_endpoints
  for each row execute function herald_private.tg_webhook_endpoints__status();

alter table herald_public.webhook_endpoints enable row level security;
alter table herald_public.webhook_endpoints force row level security;
create policy select_member on herald_public.webhook_endpoints for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
-- The tenant's owners and admins manage endpoints (signed-in users, not API keys).
create policy insert_member on herald_public.webhook_endpoints for insert to :DATABASE_MEMBER
  with check (tenant_id = (select herald_public.current_tenant_id()) and (select herald_hidden.current_user_is_tenant_admin()));
create policy update_member on herald_public.webhook_endpoints for update to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()) and (select herald_hidden.current_user_is_tenant_admin()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy delete_member on herald_public.webhook_endpoints for delete to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()) and (select herald_hidden.current_user_is_tenant_admin()));
-- The worker counts failures and disables.
create policy update_worker on herald_public.webhook_endpoints for update to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy select_admin on herald_public.webhook_endpoints for select to :DATABASE_ADMIN using (true);
create policy delete_admin on herald_public.webhook_endpoints for delete to :DATABASE_ADMIN using (true);
-- The event triggers (definers, as the owner) find who listens.
create policy select_definer on herald_public.webhook_endpoints for select to :DATABASE_OWNER using (true);

grant select (tenant_id, id, url, description, event_types, secret_hint, status, consecutive_failures, disabled_at,
              disabled_reason, created_at, updated_at)
  on herald_public.webhook_endpoints to :DATABASE_MEMBER, :DATABASE_ADMIN;
grant select on herald_public.webhook_endpoints to :DATABASE_WORKER;
grant insert (tenant_id, url, description, event_types, secret_encrypted, secret_hint, key_version),
      update (url, description, event_types, status)
  on herald_public.webhook_endpoints to :DATABASE_MEMBER;
grant update (status, consecutive_failures, disabled_at, disabled_reason, secret_encrypted, key_version)
  on herald_public.webhook_endpoints to :DATABASE_WORKER;
grant delete on herald_public.webhook_endpoints to :DATABASE_MEMBER, :DATABASE_ADMIN;

create type herald_public.created_webhook_endpoint as (webhook_endpoint_id uuid, url text, secret text);
comment on type herald_public.created_webhook_endpoint is
  E'A new endpoint. `secret` (to check `Herald-Signature`) is shown this once and never again.';

create function herald_public.create_webhook_endpoint(url text, event_types text[], description text default null)
  returns herald_public.created_webhook_endpoint
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_secret text := 'whsec_' || pg_catalog.encode(public.gen_random_bytes(24), 'hex');
  v_version smallint := herald_hidden.current_data_key_version();
  v_id uuid;
begin
  if not herald_hidden.current_user_is_tenant_admin() then
    raise exception 'only the tenant''s owners and admins manage webhook endpoints' using errcode = '42501';
  end if;
  if create_webhook_endpoint.url !~ '^https?://[^\s/?#@]+(/[^\s]*)?$' then
    raise exception 'url must be an http(s) URL without credentials in it' using errcode = '22023', column = 'url';
  end if;
  if event_types is null or pg_catalog.cardinality(event_types) = 0
     or not (event_types <@ array['delivery.updated', 'inbound.received', 'consent.changed']) then
    raise exception 'eventTypes must be some of delivery.updated, inbound.received, consent.changed' using errcode = '22023', column = 'eventTypes';
  end if;
  -- Each endpoint is worker time: a tenant has a handful, not hundreds.
  if (select count(*) from herald_public.webhook_endpoints e where e.tenant_id = herald_public.current_tenant_id()) >= 20 then
    raise exception 'a tenant may have at most 20 webhook endpoints' using errcode = '22023', column = 'url';
  end if;
  insert into herald_public.webhook_endpoints (url, description, event_types, secret_encrypted, secret_hint, key_version)
  values (create_webhook_endpoint.url, create_webhook_endpoint.description,
          array(select distinct e from pg_catalog.unnest(create_webhook_endpoint.event_types) e order by e),
          herald_hidden.encrypt_pii(v_secret, herald_hidden.data_key(v_version)), pg_catalog.right(v_secret, 4), v_version)
  returning id into v_id;
  return row(v_id, create_webhook_endpoint.url, v_secret)::herald_public.created_webhook_endpoint;
end;
$$;
comment on function herald_public.create_webhook_endpoint(text, text[], text) is
  E'@resultFieldName endpoint\nPost these events to your app''s URL (owners and admins). The signing secret is returned once.';

-- After the endpoint was disabled for failing: on again, with a clean slate.
create function herald_public.enable_webhook_endpoint(webhook_endpoint_id uuid) returns herald_public.webhook_endpoints
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_endpoint herald_public.webhook_endpoints;
begin
  -- The status trigger clears the failure count and the reason.
  update herald_public.webhook_endpoints e
     set status = 'active'
   where e.tenant_id = herald_public.current_tenant_id() and e.id = enable_webhook_endpoint.webhook_endpoint_id
  returning e.tenant_id, e.id, e.url, e.description, e.event_types, null::bytea, e.secret_hint, null::smallint, e.status,
            e.consecutive_failures, e.disabled_at, e.disabled_reason, e.created_at, e.updated_at
  into v_endpoint;
  if v_endpoint.id is null then
    raise exception 'webhook endpoint not found' using errcode = 'NTFND', column = 'webhookEndpointId';
  end if;
  return v_endpoint;
end;
$$;
comment on function herald_public.enable_webhook_endpoint(uuid) is E'@resultFieldName endpoint\nTurn an endpoint back on (after it was disabled for failing).';

-- For the worker only: the secret that signs an endpoint's posts.
create function herald_hidden.webhook_endpoint_secret(webhook_endpoint_id uuid) returns text
  language sql stable
  set search_path = ''
as $$
  select herald_hidden.decrypt_pii(e.secret_encrypted, e.key_version) from herald_public.webhook_endpoints e
   where e.tenant_id = herald_public.current_tenant_id() and e.id = webhook_endpoint_secret.webhook_endpoint_id;
$$;

-- One event sent (or to be sent) to one endpoint: the log the tenant reads and replays.
create table herald_public.webhook_deliveries (
  -- The endpoint's composite key implies the tenant (and cascades with it).
  tenant_id uuid not null default herald_public.current_tenant_id(),
  id uuid not null default gen_random_uuid(),
  endpoint_id uuid not null,
  -- The event's own id, the same for every endpoint it went to (and for a replay): a receiver's idempotency key.
  event_id uuid not null,
  event_type text not null constraint webhook_deliveries_event_type check (event_type in ('delivery.updated', 'inbound.received', 'consent.changed')),
  -- Ids and states only; an inbound message's sender and text are added when it is sent, never stored here.
  payload jsonb not null,
  status text not null default 'pending' constraint webhook_deliveries_status check (status in ('pending', 'succeeded', 'failed')),
  attempts integer not null default 0,
  response_status integer,
  last_error text constraint webhook_deliveries_last_error_length check (length(last_error) <= 500),
  replay_of uuid,
  created_at timestamptz not null default now(),
  last_attempt_at timestamptz,
  delivered_at timestamptz,
  primary key (tenant_id, id),
  constraint webhook_deliveries_endpoint_fkey foreign key (tenant_id, endpoint_id)
    references herald_public.webhook_endpoints (tenant_id, id) on delete cascade,
  constraint webhook_deliveries_replay_of_fkey foreign key (tenant_id, replay_of)
    references herald_public.webhook_deliveries (tenant_id, id) on delete set null (replay_of)
);
comment on table herald_public.webhook_deliveries is
  E'@behavior -insert -update -delete\nEach event posted (or to be posted) to an endpoint, and how it went. `replayWebhookDelivery` sends one again.';
comment on constraint webhook_deliveries_endpoint_fkey on herald_public.webhook_deliveries is E'@fieldName endpoint\n@foreignFieldName deliveries';
comment on constraint webhook_deliveries_replay_of_fkey on herald_public.webhook_deliveries is E'@fieldName original\n@foreignFieldName replays';
create index webhook_deliveries_by_endpoint on herald_public.webhook_deliveries (tenant_id, endpoint_id, created_at desc);

alter table herald_public.webhook_deliveries enable row level security;
alter table herald_public.webhook_deliveries force row level security;
create policy select_member on herald_public.webhook_deliveries for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
-- A replay: the tenant's owners and admins.
create policy insert_member on herald_public.webhook_deliveries for insert to :DATABASE_MEMBER
  with check (tenant_id = (select herald_public.current_tenant_id()) and (select herald_hidden.current_user_is_tenant_admin()));
create policy update_worker on herald_public.webhook_deliveries for update to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy select_admin on herald_public.webhook_deliveries for select to :DATABASE_ADMIN using (true);
-- The event triggers (definers, as the owner) write the deliveries.
create policy insert_definer on herald_public.webhook_deliveries for insert to :DATABASE_OWNER with check (true);
grant select on herald_public.webhook_deliveries to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;
grant insert (tenant_id, endpoint_id, event_id, event_type, payload, replay_of) on herald_public.webhook_deliveries to :DATABASE_MEMBER;
grant update (status, attempts, response_status, last_error, last_attempt_at, delivered_at) on herald_public.webhook_deliveries to :DATABASE_WORKER;

-- One post at a time per tenant (a graphile-worker queue of the tenant's
-- own): a tenant whose endpoints are slow holds one worker, never all of them.
-- The first try (the trigger below) and each retry (the task, at `run_at`)
-- queue through here, so both land in the same queue.
-- (plpgsql: graphile-worker's schema is installed when the worker first starts, after the migrations.)
create function herald_private.queue_webhook_delivery(tenant_id uuid, id uuid, run_at timestamptz default now()) returns void
  language plpgsql volatile
  set search_path = ''
as $$
begin
  perform graphile_worker.add_job(
    'webhook_deliveries__send',
    pg_catalog.json_build_object('tenant_id', queue_webhook_delivery.tenant_id, 'id', queue_webhook_delivery.id),
    queue_name := 'webhooks:' || queue_webhook_delivery.tenant_id,
    run_at := queue_webhook_delivery.run_at,
    max_attempts := 25);
end;
$$;
create function herald_private.tg_webhook_deliveries__queue() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
begin
  perform herald_private.queue_webhook_delivery(new.tenant_id, new.id);
  return new;
end;
$$;
create trigger _500_queue_send after insert on herald_public.webhook_deliveries
  for each row execute function herald_private.tg_webhook_deliveries__queue();

create function herald_public.replay_webhook_delivery(webhook_delivery_id uuid) returns herald_public.webhook_deliveries
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_original herald_public.webhook_deliveries;
  v_replay herald_public.webhook_deliveries;
begin
  select * into v_original from herald_public.webhook_deliveries w
   where w.tenant_id = herald_public.current_tenant_id() and w.id = replay_webhook_delivery.webhook_delivery_id;
  if not found then
    raise exception 'webhook delivery not found' using errcode = 'NTFND', column = 'webhookDeliveryId';
  end if;
  if not exists (select 1 from herald_public.webhook_endpoints e
                  where e.tenant_id = v_original.tenant_id and e.id = v_original.endpoint_id and e.status = 'active') then
    raise exception 'the endpoint is disabled: enable it first' using errcode = '22023', column = 'webhookDeliveryId';
  end if;
  insert into herald_public.webhook_deliveries (endpoint_id, event_id, event_type, payload, replay_of)
  values (v_original.endpoint_id, v_original.event_id, v_original.event_type, v_original.payload, v_original.id)
  returning * into v_replay;
  return v_replay;
end;
$$;
comment on function herald_public.replay_webhook_delivery(uuid) is
  E'@resultFieldName webhookDelivery\nSend an event to its endpoint again (same event id, so your app can tell).';

grant execute on function herald_public.create_webhook_endpoint(text, text[], text), herald_public.enable_webhook_endpoint(uuid),
  herald_public.replay_webhook_delivery(uuid)
  to :DATABASE_MEMBER;
grant execute on function herald_hidden.webhook_endpoint_secret(uuid) to :DATABASE_WORKER;

-- The events: a delivery's status moved, a message came in, consent changed.
-- A definer (the owner) because it writes the deliveries whoever made the
-- change (a worker, a webhook, a member), and only for endpoints listening.
create function herald_private.tg__webhook_event() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
declare
  v_type text := tg_argv[0];
  -- Through jsonb: one function serves three tables, and a record's missing
  -- field is an error even in a branch not taken.
  v_row jsonb;
  v_payload jsonb;
  -- One id for the event, whichever endpoints it goes to (in a variable: a
  -- volatile call in the query would be made once per endpoint).
  v_event_id uuid;
begin
  -- Most changes have no listener: nothing is built until one is known.
  if not exists (select 1 from herald_public.webhook_endpoints e
                  where e.tenant_id = new.tenant_id and e.status = 'active' and v_type = any (e.event_types)) then
    return null;
  end if;
  v_row := pg_catalog.to_jsonb(new);
  v_event_id := gen_random_uuid();
  v_payload := case v_type
    when 'delivery.updated' then pg_catalog.jsonb_build_object(
      'delivery_id', new.id, 'message_id', v_row -> 'message_id', 'contact_id', v_row -> 'contact_id', 'channel', v_row -> 'channel',
      'status', v_row -> 'status', 'previous_status', pg_catalog.to_jsonb(old) -> 'status', 'reason', v_row -> 'reason',
      'error_code', v_row -> 'error_code', 'provider_message_id', v_row -> 'provider_message_id', 'segments', v_row -> 'segments')
    when 'inbound.received' then pg_catalog.jsonb_build_object(
      'inbound_message_id', new.id, 'contact_id', v_row -> 'contact_id', 'channel', v_row -> 'channel', 'to', v_row -> 'to_number',
      'keyword', v_row -> 'keyword', 'media_count', v_row -> 'media_count', 'received_at', v_row -> 'received_at')
    when 'consent.changed' then pg_catalog.jsonb_build_object(
      'consent_event_id', new.id, 'contact_id', v_row -> 'contact_id', 'channel', v_row -> 'channel', 'action', v_row -> 'action',
      'source', v_row -> 'source', 'detail', v_row -> 'detail', 'at', v_row -> 'created_at')
  end;
  insert into herald_public.webhook_deliveries (tenant_id, endpoint_id, event_id, event_type, payload)
  select new.tenant_id, e.id, v_event_id, v_type, v_payload
    from herald_public.webhook_endpoints e
   where e.tenant_id = new.tenant_id and e.status = 'active' and v_type = any (e.event_types);
  return null;
end;
$$;
create trigger _800_webhook_event after update of status on herald_public.deliveries
  for each row when (old.status is distinct from new.status)
  execute function herald_private.tg__webhook_event('delivery.updated');
create trigger _800_webhook_event after insert on herald_public.inbound_messages
  for each row execute function herald_private.tg__webhook_event('inbound.received');
create trigger _800_webhook_event after insert on herald_public.consent_events
  for each row execute function herald_private.tg__webhook_event('consent.changed');

-- Endpoints are tenant configuration: audited like the rest.
create trigger _900_audit_insert after insert on herald_public.webhook_endpoints referencing new table as new_rows
  for each statement execute function herald_private.tg__audit('id', '');
create trigger _900_audit_update after update on herald_public.webhook_endpoints referencing old table as old_rows new table as new_rows
  for each statement execute function herald_private.tg__audit('id', 'consecutive_failures');
create trigger _900_audit_delete after delete on herald_public.webhook_endpoints referencing old table as old_rows
  for each statement execute function herald_private.tg__audit('id', '');

-- Key rotation (the contacts__rekey task) moves the endpoints' secrets along.
create function herald_hidden.rekey_webhook_endpoints() returns integer
  language sql volatile
  set search_path = ''
as $$
  with target as materialized (select herald_hidden.current_data_key_version() as version),
  moved as (
    update herald_public.webhook_endpoints e
       set secret_encrypted = herald_hidden.encrypt_pii(herald_hidden.decrypt_pii(e.secret_encrypted, e.key_version), herald_hidden.data_key(t.version)),
           key_version = t.version
      from target t
     where e.tenant_id = herald_public.current_tenant_id() and e.key_version <> t.version
    returning 1
  )
  select count(*)::integer from moved;
$$;
grant execute on function herald_hidden.rekey_webhook_endpoints() to :DATABASE_WORKER;
