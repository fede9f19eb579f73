--! Previous: sha1:172244ec97867ad29ec95220d75b9e2b1013e56f
--! Hash: sha1:1742458a13c1a6fbf8ece1cc4468624c0bc041e9
--! Message: Operators: audit log, suspension, API rate limits, usage, outbound webhooks

--
-- Operators and tenant admins: the audit log, suspending a tenant, per-tenant
-- API rate limits, usage, and outbound webhooks to tenants' own apps.
--
-- Idempotent: graphile-migrate re-runs it in watch mode.

drop function if exists herald_public.suspend_tenant(uuid, text);
drop function if exists herald_public.resume_tenant(uuid);
drop function if exists herald_private.admit_api_request(uuid);
drop function if exists herald_private.tg_tenants__release_held() cascade;
drop table if exists herald_private.api_request_windows;
drop table if exists herald_public.audit_log cascade;
drop function if exists herald_private.tg__audit() cascade;
drop function if exists herald_private.audit_actor();
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
    kind := case when herald_public.current_user_id() is not null then 'user' else 'api_key' end;
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
           from %3$I r$q$,
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
-- What a person wrote is a record; erasing it is worth one.
create trigger _900_audit_delete after delete on herald_public.inbound_messages referencing old table as old_rows
  for each statement execute function herald_private.tg__audit('id', '');

-------------------------------------------------------------------------------
-- Suspending a tenant (platform operators)
-------------------------------------------------------------------------------

alter table herald_public.tenants
  add column suspended_at timestamptz,
  add column suspension_reason text constraint tenants_suspension_reason_length check (length(suspension_reason) <= 500);
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

-- Resuming releases what the suspension held (a job: the deliveries are the
-- worker's to change, and this definer runs as the owner).
create function herald_private.tg_tenants__release_held() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
begin
  perform graphile_worker.add_job(
    'tenant__release_held',
    pg_catalog.json_build_object('tenant_id', new.id, 'id', new.id),
    max_attempts := 25);
  return new;
end;
$$;
create trigger _500_release_held after update of status on herald_public.tenants
  for each row when (old.status = 'suspended' and new.status = 'active')
  execute function herald_private.tg_tenants__release_held();

-------------------------------------------------------------------------------
-- Per-tenant API rate limits, shared by every API process
-------------------------------------------------------------------------------

alter table herald_public.tenant_settings add column api_requests_per_minute integer not null default 600
  constraint tenant_settings_api_requests_per_minute_range check (api_requests_per_minute between 1 and 1000000);
comment on column herald_public.tenant_settings.api_requests_per_minute is
  E'GraphQL requests per minute the tenant''s users and API keys may make together (set by operators); more get 429.';
-- Operators set it; a tenant may not raise its own.
grant update (api_requests_per_minute) on herald_public.tenant_settings to :DATABASE_ADMIN;

-- Requests per tenant per minute. Unlogged: a counter lost in a crash costs
-- nothing worth a WAL write per request.
create unlogged table herald_private.api_request_windows (
  tenant_id uuid not null,
  window_start timestamptz not null,
  requests integer not null,
  primary key (tenant_id, window_start)
);

-- Counts one request for the tenant in the current minute and answers 0 when
-- it is within the tenant's limit, or the seconds until the next minute when
-- it is not (refused requests count too: hammering does not help). Called by
-- the authenticator for every tenant request, in a statement of its own.
create function herald_private.admit_api_request(tenant_id uuid) returns integer
  language plpgsql volatile security definer
  set search_path = ''
as $$
declare
  v_window timestamptz := pg_catalog.date_trunc('minute', pg_catalog.clock_timestamp());
  v_limit integer;
  v_requests integer;
begin
  -- Losing the last moments of a counter in a crash is harmless; waiting for a flush per request is not.
  perform pg_catalog.set_config('synchronous_commit', 'off', true);
  select s.api_requests_per_minute into v_limit from herald_public.tenant_settings s where s.tenant_id = admit_api_request.tenant_id;
  insert into herald_private.api_request_windows as w (tenant_id, window_start, requests)
  values (admit_api_request.tenant_id, v_window, 1)
  on conflict on constraint api_request_windows_pkey do update set requests = w.requests + 1
  returning w.requests into v_requests;
  if v_requests = 1 then
    -- A new minute: the tenant's old windows go.
    delete from herald_private.api_request_windows w
     where w.tenant_id = admit_api_request.tenant_id and w.window_start < v_window;
  end if;
  if v_requests <= coalesce(v_limit, 600) then
    return 0;
  end if;
  return greatest(1, ceil(extract(epoch from (v_window + interval '1 minute' - pg_catalog.clock_timestamp())))::integer);
end;
$$;
grant execute on function herald_private.admit_api_request(uuid) to :DATABASE_AUTHENTICATOR;
-- The owner reads the limit (forced RLS on tenant_settings).
drop policy if exists select_definer on herald_public.tenant_settings;
create policy select_definer on herald_public.tenant_settings for select to :DATABASE_OWNER using (true);
