--! Previous: -
--! Hash: sha1:0c1d2d5a153c39f51ebe13db535c2da03ae9fbe1
--! Foundation: schemas, identity, tenants, users, memberships, API keys, settings.

--
-- Tenant isolation is enforced here, not in application code. Every table in
-- herald_public / herald_hidden has row-level security ENABLED and FORCED, with
-- one policy per operation and role. Tenant-owned tables carry `tenant_id` in
-- their primary key and in every foreign key between them, so a cross-tenant
-- reference cannot even be expressed.
--
-- This file is idempotent (graphile-migrate re-runs it in watch mode).

drop schema if exists herald_public cascade;
drop schema if exists herald_hidden cascade;
drop schema if exists herald_private cascade;

create schema herald_public;
comment on schema herald_public is 'Exposed by PostGraphile as the GraphQL API.';
create schema herald_hidden;
comment on schema herald_hidden is 'Tenant data under RLS that the GraphQL API does not expose.';
create schema herald_private;
comment on schema herald_private is 'Secrets and SECURITY DEFINER helpers; no grants to tenant roles.';

grant usage on schema herald_public, herald_hidden to :DATABASE_MEMBER, :DATABASE_ADMIN, :DATABASE_WORKER;
-- The authenticator resolves credentials (API keys, passwords) before any
-- tenant context exists, through a few definer functions granted one by one.
grant usage on schema herald_private to :DATABASE_AUTHENTICATOR;

-- Functions are executable by PUBLIC by default; ours are granted explicitly.
alter default privileges for role :DATABASE_OWNER revoke execute on functions from public;

-------------------------------------------------------------------------------
-- Identity: the only readers of the transaction-local settings.
-------------------------------------------------------------------------------

create function herald_public.current_tenant_id() returns uuid
  language sql stable parallel safe
as $$
  -- An absent or empty claim (a pooled connection after reset) yields null,
  -- which equals no tenant_id, so such a session sees nothing.
  select nullif(pg_catalog.current_setting('jwt.claims.tenant_id', true), '')::uuid;
$$;
comment on function herald_public.current_tenant_id() is
  E'The tenant of the current request, from the verified JWT or API key; null when none.';

create function herald_public.current_user_id() returns uuid
  language sql stable parallel safe
as $$
  select nullif(pg_catalog.current_setting('jwt.claims.user_id', true), '')::uuid;
$$;
comment on function herald_public.current_user_id() is
  E'The user of the current request; null for API keys and worker jobs.';

grant execute on function herald_public.current_tenant_id(), herald_public.current_user_id()
  to :DATABASE_MEMBER, :DATABASE_ADMIN, :DATABASE_WORKER;

-------------------------------------------------------------------------------
-- Generic triggers
-------------------------------------------------------------------------------

create function herald_private.tg__timestamps() returns trigger
  language plpgsql volatile
  set search_path = ''
as $$
begin
  new.created_at := case when tg_op = 'INSERT' then now() else old.created_at end;
  new.updated_at := case when tg_op = 'UPDATE' and old.updated_at >= now()
                      then old.updated_at + interval '1 millisecond'
                      else now() end;
  return new;
end;
$$;
comment on function herald_private.tg__timestamps() is
  E'Keeps created_at immutable and updated_at increasing.';

-- Queues a graphile-worker job named by the trigger's first argument with the
-- row's (tenant_id, id). SECURITY DEFINER because tenant roles have no rights
-- on the graphile_worker schema; it takes nothing from the caller but the row.
create function herald_private.tg__add_job() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
begin
  perform graphile_worker.add_job(
    tg_argv[0],
    pg_catalog.json_build_object('tenant_id', new.tenant_id, 'id', new.id),
    max_attempts := 25
  );
  return new;
end;
$$;

-------------------------------------------------------------------------------
-- tenants (global: a tenant is its own key)
-------------------------------------------------------------------------------

create table herald_public.tenants (
  id uuid primary key default gen_random_uuid(),
  slug public.citext not null unique
    constraint tenants_slug_format check (slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
  name text not null constraint tenants_name_length check (length(name) between 1 and 200),
  status text not null default 'active'
    constraint tenants_status_valid check (status in ('active', 'suspended')),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
comment on table herald_public.tenants is
  E'@behavior -insert -delete\nA customer organisation. Every tenant-owned row belongs to exactly one tenant.';
comment on column herald_public.tenants.slug is E'Short unique handle, e.g. `acme-clinic`.';
comment on column herald_public.tenants.status is
  E'`active`, or `suspended` (its sends stop, its API keys stop working).';

create trigger _100_timestamps before insert or update on herald_public.tenants
  for each row execute function herald_private.tg__timestamps();

alter table herald_public.tenants enable row level security;
alter table herald_public.tenants force row level security;

create policy select_member on herald_public.tenants for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (id = (select herald_public.current_tenant_id()));
create policy select_admin on herald_public.tenants for select to :DATABASE_ADMIN using (true);
create policy insert_admin on herald_public.tenants for insert to :DATABASE_ADMIN with check (true);
create policy update_admin on herald_public.tenants for update to :DATABASE_ADMIN using (true) with check (true);
create policy delete_admin on herald_public.tenants for delete to :DATABASE_ADMIN using (true);
-- herald_owner is subject to RLS too (FORCE). These read-only policies serve
-- the definer helpers in herald_private (login, API key lookup), which run as
-- the owner; the owner could disable RLS on its own tables anyway.
create policy select_definer on herald_public.tenants for select to :DATABASE_OWNER using (true);

grant select on herald_public.tenants to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;
grant insert (slug, name, status), update (name, status), delete on herald_public.tenants to :DATABASE_ADMIN;

-------------------------------------------------------------------------------
-- users (global: one person may belong to several tenants)
-------------------------------------------------------------------------------

create table herald_public.users (
  id uuid primary key default gen_random_uuid(),
  email public.citext not null unique
    constraint users_email_format check (email ~ '^[^@\s]+@[^@\s]+\.[^@\s]+$'),
  display_name text constraint users_display_name_length check (length(display_name) <= 200),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
comment on table herald_public.users is
  E'@behavior -insert -delete\nA person who signs in. Belongs to tenants through memberships.';

create trigger _100_timestamps before insert or update on herald_public.users
  for each row execute function herald_private.tg__timestamps();

-- Password hashes (bcrypt via pgcrypto) never sit in an exposed schema.
create table herald_private.user_passwords (
  user_id uuid primary key references herald_public.users on delete cascade,
  password_hash text not null,
  updated_at timestamptz not null default now()
);

-------------------------------------------------------------------------------
-- memberships (tenant-owned)
-------------------------------------------------------------------------------

create table herald_public.memberships (
  tenant_id uuid not null references herald_public.tenants on delete cascade,
  user_id uuid not null references herald_public.users on delete cascade,
  role text not null default 'member'
    constraint memberships_role_valid check (role in ('owner', 'admin', 'member')),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (tenant_id, user_id)
);
comment on table herald_public.memberships is
  E'@behavior -insert -update -delete\nA user''s role within one tenant. Managed by platform admins.';
create index memberships_user_id_idx on herald_public.memberships (user_id);

create trigger _100_timestamps before insert or update on herald_public.memberships
  for each row execute function herald_private.tg__timestamps();

alter table herald_public.memberships enable row level security;
alter table herald_public.memberships force row level security;

create policy select_member on herald_public.memberships for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
create policy select_admin on herald_public.memberships for select to :DATABASE_ADMIN using (true);
create policy insert_admin on herald_public.memberships for insert to :DATABASE_ADMIN with check (true);
create policy update_admin on herald_public.memberships for update to :DATABASE_ADMIN using (true) with check (true);
create policy delete_admin on herald_public.memberships for delete to :DATABASE_ADMIN using (true);
create policy select_definer on herald_public.memberships for select to :DATABASE_OWNER using (true);

grant select on herald_public.memberships to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;
grant insert (tenant_id, user_id, role), update (role), delete on herald_public.memberships to :DATABASE_ADMIN;

-- users' policies read memberships, so they come after it.
alter table herald_public.users enable row level security;
alter table herald_public.users force row level security;

-- A member sees themself and the users of their current tenant.
create policy select_member on herald_public.users for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (
    id = (select herald_public.current_user_id())
    or id in (select m.user_id from herald_public.memberships m
              where m.tenant_id = (select herald_public.current_tenant_id()))
  );
create policy update_member on herald_public.users for update to :DATABASE_MEMBER
  using (id = (select herald_public.current_user_id()))
  with check (id = (select herald_public.current_user_id()));
create policy select_admin on herald_public.users for select to :DATABASE_ADMIN using (true);
create policy insert_admin on herald_public.users for insert to :DATABASE_ADMIN with check (true);
create policy update_admin on herald_public.users for update to :DATABASE_ADMIN using (true) with check (true);
create policy delete_admin on herald_public.users for delete to :DATABASE_ADMIN using (true);
create policy select_definer on herald_public.users for select to :DATABASE_OWNER using (true);

grant select on herald_public.users to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;
grant update (display_name) on herald_public.users to :DATABASE_MEMBER;
grant insert (email, display_name), update (email, display_name), delete on herald_public.users to :DATABASE_ADMIN;

-- Whether the signed-in user is an owner or admin of the current tenant.
-- Invoker rights: it reads memberships through the caller's own policies.
create function herald_hidden.current_user_is_tenant_admin() returns boolean
  language sql stable parallel safe
as $$
  select exists (
    select 1 from herald_public.memberships m
    where m.tenant_id = (select herald_public.current_tenant_id())
      and m.user_id = (select herald_public.current_user_id())
      and m.role in ('owner', 'admin')
  );
$$;
grant execute on function herald_hidden.current_user_is_tenant_admin() to :DATABASE_MEMBER;

-------------------------------------------------------------------------------
-- api_keys (tenant-owned; the secret is stored only as a SHA-256 hash)
-------------------------------------------------------------------------------

create table herald_public.api_keys (
  tenant_id uuid not null references herald_public.tenants on delete cascade,
  id uuid not null default gen_random_uuid(),
  name text not null constraint api_keys_name_length check (length(name) between 1 and 100),
  -- The first characters of the secret, to recognise a key in a list.
  token_prefix text not null,
  -- A random 192-bit secret needs no slow hash: SHA-256 cannot be brute-forced
  -- at that entropy, and a lookup stays one index probe. Globally unique
  -- because the key is what identifies its tenant.
  secret_hash bytea not null unique,
  created_by uuid references herald_public.users on delete set null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  last_used_at timestamptz,
  revoked_at timestamptz,
  primary key (tenant_id, id)
);
comment on table herald_public.api_keys is
  E'@behavior -insert -update -delete\nA tenant API key (`Authorization: Bearer hk_…`). Create with `createApiKey`, revoke with `revokeApiKey`.';
comment on column herald_public.api_keys.secret_hash is E'@behavior -*';
-- No `apiKeyBySecretHash` lookup in the API either.
comment on constraint api_keys_secret_hash_key on herald_public.api_keys is E'@behavior -*';
comment on column herald_public.api_keys.token_prefix is E'The first characters of the key, for recognising it.';
comment on column herald_public.api_keys.last_used_at is E'Last successful authentication, to the minute.';

create trigger _100_timestamps before insert or update on herald_public.api_keys
  for each row execute function herald_private.tg__timestamps();

-- A revoked key stays revoked.
create function herald_private.tg_api_keys__keep_revoked() returns trigger
  language plpgsql volatile
  set search_path = ''
as $$
begin
  if old.revoked_at is not null and new.revoked_at is distinct from old.revoked_at then
    raise exception 'API key % is already revoked', old.id using errcode = 'REVKD';
  end if;
  return new;
end;
$$;
create trigger _200_keep_revoked before update on herald_public.api_keys
  for each row execute function herald_private.tg_api_keys__keep_revoked();

alter table herald_public.api_keys enable row level security;
alter table herald_public.api_keys force row level security;

create policy select_member on herald_public.api_keys for select to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()));
-- Only a tenant's owners and admins (signed-in users, not API keys) manage keys.
create policy insert_member on herald_public.api_keys for insert to :DATABASE_MEMBER
  with check (
    tenant_id = (select herald_public.current_tenant_id())
    and (select herald_hidden.current_user_is_tenant_admin())
    -- created_by names the creator, never someone else (users are global rows).
    and created_by is not distinct from (select herald_public.current_user_id())
  );
create policy update_member on herald_public.api_keys for update to :DATABASE_MEMBER
  using (
    tenant_id = (select herald_public.current_tenant_id())
    and (select herald_hidden.current_user_is_tenant_admin())
  )
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy select_admin on herald_public.api_keys for select to :DATABASE_ADMIN using (true);
create policy insert_admin on herald_public.api_keys for insert to :DATABASE_ADMIN with check (true);
create policy update_admin on herald_public.api_keys for update to :DATABASE_ADMIN using (true) with check (true);
create policy delete_admin on herald_public.api_keys for delete to :DATABASE_ADMIN using (true);
create policy select_definer on herald_public.api_keys for select to :DATABASE_OWNER using (true);
-- Lets authenticate_api_key() stamp last_used_at.
create policy update_definer on herald_public.api_keys for update to :DATABASE_OWNER using (true) with check (true);

grant select (tenant_id, id, name, token_prefix, created_by, created_at, updated_at, last_used_at, revoked_at)
  on herald_public.api_keys to :DATABASE_MEMBER;
grant insert (tenant_id, name, token_prefix, secret_hash, created_by), update (name, revoked_at)
  on herald_public.api_keys to :DATABASE_MEMBER;
grant select, insert, update, delete on herald_public.api_keys to :DATABASE_ADMIN;

create type herald_public.created_api_key as (
  api_key_id uuid,
  name text,
  token_prefix text,
  secret text
);
comment on type herald_public.created_api_key is
  E'A new API key. `secret` is shown this once and never again.';

create function herald_public.create_api_key(name text) returns herald_public.created_api_key
  language plpgsql volatile strict
  set search_path = ''
as $$
declare
  v_secret text := 'hk_' || pg_catalog.encode(public.gen_random_bytes(24), 'hex');
  v_id uuid;
begin
  if herald_public.current_tenant_id() is null then
    raise exception 'No tenant in this request' using errcode = 'NOTNT';
  end if;
  insert into herald_public.api_keys (tenant_id, name, token_prefix, secret_hash, created_by)
  values (
    herald_public.current_tenant_id(),
    create_api_key.name,
    pg_catalog.left(v_secret, 11),
    public.digest(v_secret, 'sha256'),
    herald_public.current_user_id()
  )
  returning id into v_id;
  return row(v_id, create_api_key.name, pg_catalog.left(v_secret, 11), v_secret)::herald_public.created_api_key;
end;
$$;
comment on function herald_public.create_api_key(text) is
  E'Creates an API key for the current tenant (owners and admins only) and returns its secret, once.';

create function herald_public.revoke_api_key(api_key_id uuid) returns herald_public.api_keys
  language plpgsql volatile strict
  set search_path = ''
as $$
declare
  v_key herald_public.api_keys;
begin
  -- Members may not read secret_hash, so the row comes back without it.
  update herald_public.api_keys k
     set revoked_at = now()
   where k.tenant_id = herald_public.current_tenant_id()
     and k.id = revoke_api_key.api_key_id
     and k.revoked_at is null
  returning k.tenant_id, k.id, k.name, k.token_prefix, null::bytea, k.created_by,
            k.created_at, k.updated_at, k.last_used_at, k.revoked_at
  into v_key;
  if not found then
    return null;  -- unknown, already revoked, or another tenant's: all look the same
  end if;
  return v_key;
end;
$$;
comment on function herald_public.revoke_api_key(uuid) is
  E'Revokes an API key of the current tenant; it stops authenticating at once.';

grant execute on function herald_public.create_api_key(text), herald_public.revoke_api_key(uuid)
  to :DATABASE_MEMBER, :DATABASE_ADMIN;

-------------------------------------------------------------------------------
-- tenant_settings (tenant-owned, one row per tenant)
-------------------------------------------------------------------------------

create table herald_public.tenant_settings (
  tenant_id uuid primary key references herald_public.tenants on delete cascade,
  default_country text not null default 'US'
    constraint tenant_settings_country_format check (default_country ~ '^[A-Z]{2}$'),
  timezone text not null default 'UTC',
  rate_batch_size integer not null default 50
    constraint tenant_settings_rate_batch_size_range check (rate_batch_size between 1 and 100000),
  rate_batch_interval_seconds integer not null default 1
    constraint tenant_settings_rate_interval_range check (rate_batch_interval_seconds between 1 and 86400),
  monthly_message_cap integer
    constraint tenant_settings_cap_nonnegative check (monthly_message_cap >= 0),
  send_window_start time not null default '08:00',
  send_window_end time not null default '21:00',
  fallback_to_system boolean not null default false,
  sms_from text,
  help_text text constraint tenant_settings_help_text_length check (length(help_text) <= 1600),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
comment on table herald_public.tenant_settings is
  E'@behavior -insert -delete\nPer-tenant behaviour: pacing, quiet hours, caps, defaults. Created with the tenant.';
comment on column herald_public.tenant_settings.default_country is
  E'ISO 3166 alpha-2 country used to read national phone numbers.';
comment on column herald_public.tenant_settings.timezone is
  E'IANA time zone for quiet hours when a contact has none.';

create trigger _100_timestamps before insert or update on herald_public.tenant_settings
  for each row execute function herald_private.tg__timestamps();

create function herald_private.tg_tenant_settings__validate() returns trigger
  language plpgsql volatile
  set search_path = ''
as $$
begin
  if not exists (select 1 from pg_catalog.pg_timezone_names where name = new.timezone) then
    raise exception 'Unknown time zone "%"', new.timezone
      using errcode = '22023', column = 'timezone';
  end if;
  return new;
end;
$$;
create trigger _200_validate before insert or update on herald_public.tenant_settings
  for each row execute function herald_private.tg_tenant_settings__validate();

alter table herald_public.tenant_settings enable row level security;
alter table herald_public.tenant_settings force row level security;

create policy select_member on herald_public.tenant_settings for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
create policy update_member on herald_public.tenant_settings for update to :DATABASE_MEMBER
  using (
    tenant_id = (select herald_public.current_tenant_id())
    and (select herald_hidden.current_user_is_tenant_admin())
  )
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy select_admin on herald_public.tenant_settings for select to :DATABASE_ADMIN using (true);
create policy insert_admin on herald_public.tenant_settings for insert to :DATABASE_ADMIN with check (true);
create policy update_admin on herald_public.tenant_settings for update to :DATABASE_ADMIN using (true) with check (true);
create policy delete_admin on herald_public.tenant_settings for delete to :DATABASE_ADMIN using (true);

grant select on herald_public.tenant_settings to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;
grant update (default_country, timezone, rate_batch_size, rate_batch_interval_seconds, monthly_message_cap,
              send_window_start, send_window_end, fallback_to_system, sms_from, help_text)
  on herald_public.tenant_settings to :DATABASE_MEMBER, :DATABASE_ADMIN;
grant insert (tenant_id), delete on herald_public.tenant_settings to :DATABASE_ADMIN;

-- Every tenant gets its settings row (defaults) as it is created.
create function herald_private.tg_tenants__create_settings() returns trigger
  language plpgsql volatile
  set search_path = ''
as $$
begin
  insert into herald_public.tenant_settings (tenant_id) values (new.id);
  return new;
end;
$$;
create trigger _500_create_settings after insert on herald_public.tenants
  for each row execute function herald_private.tg_tenants__create_settings();

-------------------------------------------------------------------------------
-- Credentials, resolved by the authenticator before a tenant context exists.
-------------------------------------------------------------------------------

create type herald_private.api_key_identity as (tenant_id uuid, api_key_id uuid);

-- Finds the live key for a secret in an active tenant. Stamps last_used_at at
-- most once a minute so authentication does not write on every request.
create function herald_private.authenticate_api_key(secret text) returns herald_private.api_key_identity
  language plpgsql volatile strict security definer
  set search_path = ''
as $$
declare
  v_key herald_public.api_keys;
begin
  select k.* into v_key
    from herald_public.api_keys k
    join herald_public.tenants t on t.id = k.tenant_id
   where k.secret_hash = public.digest(authenticate_api_key.secret, 'sha256')
     and k.revoked_at is null
     and t.status = 'active';
  if not found then
    return null;
  end if;
  if v_key.last_used_at is null or v_key.last_used_at < now() - interval '1 minute' then
    update herald_public.api_keys set last_used_at = now()
     where tenant_id = v_key.tenant_id and id = v_key.id;
  end if;
  return row(v_key.tenant_id, v_key.id)::herald_private.api_key_identity;
end;
$$;

create type herald_private.login_identity as (
  user_id uuid,
  tenant_id uuid,
  tenant_slug public.citext,
  membership_role text
);

-- Checks a password and returns the membership to sign a JWT for: the one in
-- `tenant_slug`, or the user's oldest. Null on any mismatch, with no hint of
-- which part was wrong.
create function herald_private.verify_login(email text, password text, tenant_slug text)
  returns herald_private.login_identity
  language plpgsql volatile security definer
  set search_path = ''
as $$
declare
  v_user_id uuid;
  v_hash text;
  v_identity herald_private.login_identity;
begin
  select u.id, p.password_hash into v_user_id, v_hash
    from herald_public.users u
    join herald_private.user_passwords p on p.user_id = u.id
   -- With search_path = '' a bare `=` would resolve to text equality and
   -- lose citext's case-insensitivity: name citext's operator explicitly.
   where u.email operator(public.=) verify_login.email::public.citext;
  if v_user_id is null then
    -- Spend the same bcrypt time as a real check, so response time does not
    -- reveal which emails have accounts.
    perform public.crypt(coalesce(verify_login.password, ''), public.gen_salt('bf', 10));
    return null;
  end if;
  if public.crypt(coalesce(verify_login.password, ''), v_hash) is distinct from v_hash then
    return null;
  end if;
  select m.user_id, m.tenant_id, t.slug, m.role into v_identity
    from herald_public.memberships m
    join herald_public.tenants t on t.id = m.tenant_id
   where m.user_id = v_user_id
     and t.status = 'active'
     and (verify_login.tenant_slug is null or t.slug operator(public.=) verify_login.tenant_slug::public.citext)
   order by m.created_at, t.slug
   limit 1;
  if not found then
    return null;
  end if;
  return v_identity;
end;
$$;

create function herald_private.set_user_password(user_id uuid, password text) returns void
  language plpgsql volatile strict security definer
  set search_path = ''
as $$
begin
  if length(set_user_password.password) < 10 then
    raise exception 'Password must be at least 10 characters' using errcode = 'WEAKP';
  end if;
  insert into herald_private.user_passwords (user_id, password_hash)
  values (set_user_password.user_id, public.crypt(set_user_password.password, public.gen_salt('bf', 10)))
  on conflict on constraint user_passwords_pkey
  do update set password_hash = excluded.password_hash, updated_at = now();
end;
$$;

-- Whether a verified member token still grants what it claims: its tenant is
-- active and, for a user, the membership still exists. A JWT outlives both
-- facts, so the API asks on every request (one index probe each).
create function herald_private.verify_member_claims(user_id uuid, tenant_id uuid) returns boolean
  language sql stable security definer
  set search_path = ''
as $$
  select exists (
    select 1
      from herald_public.tenants t
     where t.id = verify_member_claims.tenant_id
       and t.status = 'active'
       and (verify_member_claims.user_id is null
            or exists (select 1 from herald_public.memberships m
                        where m.tenant_id = t.id and m.user_id = verify_member_claims.user_id))
  );
$$;

grant execute on function
  herald_private.verify_member_claims(uuid, uuid),
  herald_private.authenticate_api_key(text),
  herald_private.verify_login(text, text, text),
  herald_private.set_user_password(uuid, text)
  to :DATABASE_AUTHENTICATOR;

-------------------------------------------------------------------------------
-- The insert → job → task path, end to end (herald__ping).
-------------------------------------------------------------------------------

create table herald_hidden.pings (
  tenant_id uuid not null references herald_public.tenants on delete cascade,
  id uuid not null default gen_random_uuid(),
  created_at timestamptz not null default now(),
  answered_at timestamptz,
  answered_by text,
  primary key (tenant_id, id)
);
comment on table herald_hidden.pings is
  E'Proves the insert → job → task path; the herald__ping task answers each row.';

create trigger _500_queue_ping after insert on herald_hidden.pings
  for each row execute function herald_private.tg__add_job('herald__ping');

alter table herald_hidden.pings enable row level security;
alter table herald_hidden.pings force row level security;

create policy select_member on herald_hidden.pings for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
create policy insert_member on herald_hidden.pings for insert to :DATABASE_MEMBER
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy update_worker on herald_hidden.pings for update to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy select_admin on herald_hidden.pings for select to :DATABASE_ADMIN using (true);
create policy delete_admin on herald_hidden.pings for delete to :DATABASE_ADMIN using (true);

grant select on herald_hidden.pings to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;
grant insert (tenant_id) on herald_hidden.pings to :DATABASE_MEMBER;
grant update (answered_at, answered_by) on herald_hidden.pings to :DATABASE_WORKER;
grant delete on herald_hidden.pings to :DATABASE_ADMIN;

create function herald_public.ping() returns uuid
  language sql volatile
  set search_path = ''
as $$
  insert into herald_hidden.pings (tenant_id) values (herald_public.current_tenant_id())
  returning id;
$$;
comment on function herald_public.ping() is
  E'Queues a job for the worker and returns its id; `pingAnsweredAt` tells when a worker ran it.';

create function herald_public.ping_answered_at(ping_id uuid) returns timestamptz
  language sql stable strict
  set search_path = ''
as $$
  select answered_at from herald_hidden.pings
   where tenant_id = herald_public.current_tenant_id() and id = ping_answered_at.ping_id;
$$;
comment on function herald_public.ping_answered_at(uuid) is
  E'When a worker answered the ping; null while it waits (or for another tenant''s ping).';

grant execute on function herald_public.ping(), herald_public.ping_answered_at(uuid) to :DATABASE_MEMBER;

-------------------------------------------------------------------------------
-- Convenience for the API
-------------------------------------------------------------------------------

create function herald_public.current_tenant() returns herald_public.tenants
  language sql stable
  set search_path = ''
as $$
  select * from herald_public.tenants where id = herald_public.current_tenant_id();
$$;
comment on function herald_public.current_tenant() is E'The tenant of the current request.';

create function herald_public.current_user() returns herald_public.users
  language sql stable
  set search_path = ''
as $$
  select * from herald_public.users where id = herald_public.current_user_id();
$$;
comment on function herald_public.current_user() is E'The signed-in user; null for API keys.';

grant execute on function herald_public.current_tenant(), herald_public.current_user()
  to :DATABASE_MEMBER, :DATABASE_ADMIN;

-------------------------------------------------------------------------------
-- Instance-wide facts (e.g. "demo tenants were created once"); owner only.
-------------------------------------------------------------------------------

create table herald_private.instance_flags (
  name text primary key,
  set_at timestamptz not null default now()
);
