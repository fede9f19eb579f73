--! Previous: sha1:4e0d983e57b3dd1634d6d80fa7a17123e134edea
--! Hash: sha1:08c191557cfe86f52d3c47bf9564761b1eafb020
--! Message: Provider accounts, sender numbers and email senders

--
-- A tenant's own Twilio and SendGrid accounts, the numbers and addresses it
-- sends from. Credentials are encrypted with the tenant's data key (as contact
-- PII is) and write-only: no request role can select the ciphertext column;
-- the API shows a hint (last 4 characters). Only the worker reads them, to send.
--
-- Idempotent: graphile-migrate re-runs it in watch mode.

drop function if exists herald_public.create_provider_account(text, text, text, text, text, text);
drop function if exists herald_public.set_provider_account_secret(uuid, text);
drop function if exists herald_hidden.provider_account_secret(uuid);
drop function if exists herald_hidden.rekey_provider_accounts();
drop table if exists herald_hidden.provider_tests, herald_public.email_senders, herald_public.sender_numbers, herald_public.provider_accounts cascade;
drop function if exists herald_public.test_provider_account(uuid, text);

-------------------------------------------------------------------------------
-- provider_accounts (tenant-owned)
-------------------------------------------------------------------------------

create table herald_public.provider_accounts (
  tenant_id uuid not null default herald_public.current_tenant_id()
    references herald_public.tenants on delete cascade,
  id uuid not null default gen_random_uuid(),
  kind text not null constraint provider_accounts_kind check (kind in ('twilio', 'sendgrid')),
  name text not null constraint provider_accounts_name_length check (length(name) between 1 and 100),
  -- Twilio: the account SID routes requests (not secret); with an API key, its
  -- SID too, and the secret is the API key secret instead of the auth token.
  twilio_account_sid text
    constraint provider_accounts_twilio_sid check (twilio_account_sid ~ '^AC[0-9a-fA-F]{32}$'),
  twilio_api_key_sid text
    constraint provider_accounts_twilio_key_sid check (twilio_api_key_sid ~ '^SK[0-9a-fA-F]{32}$'),
  -- The auth token / API key secret / SendGrid API key, under the tenant's data key.
  secret_encrypted bytea not null,
  secret_hint text not null,
  -- SendGrid's event webhook verification key (base64 DER), encrypted likewise.
  webhook_public_key_encrypted bytea,
  key_version smallint not null,
  status text not null default 'active' constraint provider_accounts_status check (status in ('active', 'disabled')),
  last_tested_at timestamptz,
  last_error text constraint provider_accounts_last_error_length check (length(last_error) <= 2000),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (tenant_id, id),
  constraint provider_accounts_key_version_fkey foreign key (tenant_id, key_version)
    references herald_private.tenant_data_keys (tenant_id, version),
  constraint provider_accounts_twilio_fields check (
    (kind = 'twilio') = (twilio_account_sid is not null)
    and (kind = 'twilio' or twilio_api_key_sid is null)
    and (kind = 'sendgrid' or webhook_public_key_encrypted is null))
);
comment on table herald_public.provider_accounts is
  E'@behavior -insert -update\nA tenant''s own Twilio or SendGrid account. Create with `createProviderAccount`; '
  'credentials are write-only (`secretHint` shows the last 4 characters).';
comment on column herald_public.provider_accounts.secret_encrypted is E'@behavior -*';
comment on column herald_public.provider_accounts.webhook_public_key_encrypted is E'@behavior -*';
comment on column herald_public.provider_accounts.key_version is E'@behavior -*';
comment on constraint provider_accounts_key_version_fkey on herald_public.provider_accounts is E'@behavior -*';
comment on column herald_public.provider_accounts.secret_hint is E'The last 4 characters of the credential, to recognise it.';
comment on column herald_public.provider_accounts.last_error is E'The provider''s answer to the last failed use or test.';

-- One active account per kind and tenant: provider selection is unambiguous.
create unique index provider_accounts_one_active on herald_public.provider_accounts (tenant_id, kind)
  where status = 'active';
comment on index herald_public.provider_accounts_one_active is E'@behavior -*';

create trigger _100_timestamps before update on herald_public.provider_accounts
  for each row execute function herald_private.tg__timestamps();

alter table herald_public.provider_accounts enable row level security;
alter table herald_public.provider_accounts force row level security;

create policy select_member on herald_public.provider_accounts for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
-- Credentials are managed by the tenant's owners and admins (signed-in users, not API keys).
create policy insert_member on herald_public.provider_accounts for insert to :DATABASE_MEMBER
  with check (tenant_id = (select herald_public.current_tenant_id()) and (select herald_hidden.current_user_is_tenant_admin()));
create policy update_member on herald_public.provider_accounts for update to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()) and (select herald_hidden.current_user_is_tenant_admin()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy delete_member on herald_public.provider_accounts for delete to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()) and (select herald_hidden.current_user_is_tenant_admin()));
-- The worker records test results and errors.
create policy update_worker on herald_public.provider_accounts for update to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy select_admin on herald_public.provider_accounts for select to :DATABASE_ADMIN using (true);
create policy update_admin on herald_public.provider_accounts for update to :DATABASE_ADMIN using (true) with check (true);
create policy delete_admin on herald_public.provider_accounts for delete to :DATABASE_ADMIN using (true);

-- Write-only credentials: request roles may not even select the ciphertext.
grant select (tenant_id, id, kind, name, twilio_account_sid, twilio_api_key_sid, secret_hint, status,
              last_tested_at, last_error, created_at, updated_at)
  on herald_public.provider_accounts to :DATABASE_MEMBER, :DATABASE_ADMIN;
grant select on herald_public.provider_accounts to :DATABASE_WORKER;
grant insert (tenant_id, kind, name, twilio_account_sid, twilio_api_key_sid, secret_encrypted, secret_hint,
              webhook_public_key_encrypted, key_version),
      update (name, status, secret_encrypted, secret_hint, webhook_public_key_encrypted, key_version)
  on herald_public.provider_accounts to :DATABASE_MEMBER;
grant update (status, last_tested_at, last_error) on herald_public.provider_accounts to :DATABASE_WORKER, :DATABASE_ADMIN;
grant delete on herald_public.provider_accounts to :DATABASE_MEMBER, :DATABASE_ADMIN;

create function herald_public.create_provider_account(
  kind text,
  name text,
  secret text,
  twilio_account_sid text default null,
  twilio_api_key_sid text default null,
  webhook_public_key text default null
) returns herald_public.provider_accounts
  language plpgsql volatile
  set search_path = ''
as $$
-- Unqualified names in the statements are columns; the arguments are written
-- create_provider_account.kind etc.
#variable_conflict use_column
declare
  v_version smallint := herald_hidden.current_data_key_version();
  v_key text := herald_hidden.data_key(v_version);
  v_account herald_public.provider_accounts;
begin
  if secret is null or length(secret) < 8 then
    raise exception 'secret must be the provider credential (at least 8 characters)' using errcode = '22023', column = 'secret';
  end if;
  insert into herald_public.provider_accounts (kind, name, twilio_account_sid, twilio_api_key_sid, secret_encrypted,
                                                secret_hint, webhook_public_key_encrypted, key_version)
  values (create_provider_account.kind, create_provider_account.name, create_provider_account.twilio_account_sid,
          create_provider_account.twilio_api_key_sid, herald_hidden.encrypt_pii(secret, v_key), right(secret, 4),
          herald_hidden.encrypt_pii(webhook_public_key, v_key), v_version)
  -- Not RETURNING *: members may not select the ciphertext, and the API never returns it.
  returning tenant_id, id, kind, name, twilio_account_sid, twilio_api_key_sid, secret_hint, status, last_tested_at, last_error, created_at, updated_at
       into v_account.tenant_id, v_account.id, v_account.kind, v_account.name, v_account.twilio_account_sid, v_account.twilio_api_key_sid, v_account.secret_hint, v_account.status, v_account.last_tested_at, v_account.last_error, v_account.created_at, v_account.updated_at;
  return v_account;
end;
$$;
comment on function herald_public.create_provider_account(text, text, text, text, text, text) is
  E'Add a Twilio (`kind: "twilio"`, with `twilioAccountSid`) or SendGrid account. The secret is stored encrypted and never returned.';

create function herald_public.set_provider_account_secret(provider_account_id uuid, secret text)
  returns herald_public.provider_accounts
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_version smallint := herald_hidden.current_data_key_version();
  v_account herald_public.provider_accounts;
begin
  if secret is null or length(secret) < 8 then
    raise exception 'secret must be the provider credential (at least 8 characters)' using errcode = '22023', column = 'secret';
  end if;
  update herald_public.provider_accounts a
     set secret_encrypted = herald_hidden.encrypt_pii(secret, herald_hidden.data_key(v_version)),
         secret_hint = right(secret, 4), key_version = v_version
   where a.tenant_id = herald_public.current_tenant_id() and a.id = provider_account_id
  returning a.tenant_id, a.id, a.kind, a.name, a.twilio_account_sid, a.twilio_api_key_sid, a.secret_hint, a.status, a.last_tested_at, a.last_error, a.created_at, a.updated_at
       into v_account.tenant_id, v_account.id, v_account.kind, v_account.name, v_account.twilio_account_sid, v_account.twilio_api_key_sid, v_account.secret_hint, v_account.status, v_account.last_tested_at, v_account.last_error, v_account.created_at, v_account.updated_at;
  if v_account.id is null then
    raise exception 'No such provider account' using errcode = 'NTFND';
  end if;
  return v_account;
end;
$$;
comment on function herald_public.set_provider_account_secret(uuid, text) is
  E'Replace an account''s credential (write-only; `secretHint` changes).';

-- For the worker only: an account's credentials, decrypted with the session's key.
create function herald_hidden.provider_account_secret(provider_account_id uuid)
  returns table (secret text, webhook_public_key text)
  language sql stable
  set search_path = ''
as $$
  select herald_hidden.decrypt_pii(a.secret_encrypted, a.key_version),
         herald_hidden.decrypt_pii(a.webhook_public_key_encrypted, a.key_version)
    from herald_public.provider_accounts a
   where a.tenant_id = herald_public.current_tenant_id() and a.id = provider_account_id;
$$;

-- Key rotation (the contacts__rekey task): move the session tenant's accounts
-- to its current data key, so the retired key can be destroyed.
create function herald_hidden.rekey_provider_accounts() returns integer
  language sql volatile
  set search_path = ''
as $$
  with target as materialized (
    select herald_hidden.current_data_key_version() as version
  ),
  moved as (
    update herald_public.provider_accounts a
       set secret_encrypted = herald_hidden.encrypt_pii(
             herald_hidden.decrypt_pii(a.secret_encrypted, a.key_version), herald_hidden.data_key(t.version)),
           webhook_public_key_encrypted = herald_hidden.encrypt_pii(
             herald_hidden.decrypt_pii(a.webhook_public_key_encrypted, a.key_version), herald_hidden.data_key(t.version)),
           key_version = t.version
      from target t
     where a.tenant_id = herald_public.current_tenant_id() and a.key_version <> t.version
    returning 1
  )
  select count(*)::integer from moved;
$$;

grant execute on function
  herald_public.create_provider_account(text, text, text, text, text, text),
  herald_public.set_provider_account_secret(uuid, text)
  to :DATABASE_MEMBER;
grant execute on function herald_hidden.provider_account_secret(uuid), herald_hidden.rekey_provider_accounts()
  to :DATABASE_WORKER;
grant update (secret_encrypted, webhook_public_key_encrypted, key_version) on herald_public.provider_accounts to :DATABASE_WORKER;

-------------------------------------------------------------------------------
-- sender_numbers: a number belongs to exactly one tenant (globally unique, as
-- DESIGN.md allows for this mapping: inbound messages find their tenant by it)
-------------------------------------------------------------------------------

create table herald_public.sender_numbers (
  tenant_id uuid not null default herald_public.current_tenant_id()
    references herald_public.tenants on delete cascade,
  id uuid not null default gen_random_uuid(),
  phone_number text not null constraint sender_numbers_e164 check (phone_number ~ '^\+[1-9][0-9]{6,14}$'),
  channel text not null default 'sms' constraint sender_numbers_channel check (channel in ('sms', 'whatsapp')),
  -- The tenant's account that owns the number; null: the system account.
  provider_account_id uuid,
  created_at timestamptz not null default now(),
  primary key (tenant_id, id),
  constraint sender_numbers_number_key unique (phone_number, channel),
  -- Composite: a number can only name its own tenant's account. Deleting the
  -- account falls back to the system account (only that column is nulled).
  constraint sender_numbers_account_fkey foreign key (tenant_id, provider_account_id)
    references herald_public.provider_accounts (tenant_id, id) on delete set null (provider_account_id)
);
comment on table herald_public.sender_numbers is
  E'@behavior -update\nA phone number the tenant sends SMS or WhatsApp from; each number belongs to one tenant.';
comment on constraint sender_numbers_account_fkey on herald_public.sender_numbers is
  E'@fieldName providerAccount\n@foreignFieldName senderNumbers';
comment on constraint sender_numbers_number_key on herald_public.sender_numbers is E'@behavior -*';

-------------------------------------------------------------------------------
-- email_senders: addresses a tenant sends email from
-------------------------------------------------------------------------------

create table herald_public.email_senders (
  tenant_id uuid not null default herald_public.current_tenant_id()
    references herald_public.tenants on delete cascade,
  id uuid not null default gen_random_uuid(),
  from_email public.citext not null
    constraint email_senders_from_email check (from_email operator(public.~) '^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$'),
  from_name text constraint email_senders_from_name_length check (length(from_name) <= 100),
  domain public.citext generated always as (split_part(from_email::text, '@', 2)) stored,
  provider_account_id uuid,
  created_at timestamptz not null default now(),
  primary key (tenant_id, id),
  constraint email_senders_from_email_unique unique (tenant_id, from_email),
  constraint email_senders_account_fkey foreign key (tenant_id, provider_account_id)
    references herald_public.provider_accounts (tenant_id, id) on delete set null (provider_account_id)
);
comment on table herald_public.email_senders is
  E'@behavior -update\nAn address the tenant sends email from.';
comment on constraint email_senders_account_fkey on herald_public.email_senders is
  E'@fieldName providerAccount\n@foreignFieldName emailSenders';

-- Both tables: members read, the tenant's admins add and remove, the worker
-- reads, operators read and remove.
do $$
declare
  v_table text;
begin
  foreach v_table in array array['sender_numbers', 'email_senders'] loop
    execute format('alter table herald_public.%I enable row level security', v_table);
    execute format('alter table herald_public.%I force row level security', v_table);
    execute format($p$create policy select_member on herald_public.%I for select to :DATABASE_MEMBER, :DATABASE_WORKER
                        using (tenant_id = (select herald_public.current_tenant_id()))$p$, v_table);
    execute format($p$create policy insert_member on herald_public.%I for insert to :DATABASE_MEMBER
                        with check (tenant_id = (select herald_public.current_tenant_id())
                                    and (select herald_hidden.current_user_is_tenant_admin()))$p$, v_table);
    execute format($p$create policy delete_member on herald_public.%I for delete to :DATABASE_MEMBER
                        using (tenant_id = (select herald_public.current_tenant_id())
                               and (select herald_hidden.current_user_is_tenant_admin()))$p$, v_table);
    execute format('create policy select_admin on herald_public.%I for select to :DATABASE_ADMIN using (true)', v_table);
    execute format('create policy delete_admin on herald_public.%I for delete to :DATABASE_ADMIN using (true)', v_table);
    execute format('grant select on herald_public.%I to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN', v_table);
    execute format('grant delete on herald_public.%I to :DATABASE_MEMBER, :DATABASE_ADMIN', v_table);
  end loop;
end;
$$;
grant insert (tenant_id, phone_number, channel, provider_account_id) on herald_public.sender_numbers to :DATABASE_MEMBER;
grant insert (tenant_id, from_email, from_name, provider_account_id) on herald_public.email_senders to :DATABASE_MEMBER;

-------------------------------------------------------------------------------
-- Test sends: `testProviderAccount` queues one message through an account; the
-- provider_accounts__test task records the provider's answer on the account.
-------------------------------------------------------------------------------

create table herald_hidden.provider_tests (
  tenant_id uuid not null default herald_public.current_tenant_id()
    references herald_public.tenants on delete cascade,
  id uuid not null default gen_random_uuid(),
  provider_account_id uuid not null,
  -- Where the test goes: a phone number (E.164) or an email address the caller chose.
  to_address text not null constraint provider_tests_to_length check (length(to_address) between 3 and 254),
  created_at timestamptz not null default now(),
  finished_at timestamptz,
  error text,
  primary key (tenant_id, id),
  constraint provider_tests_account_fkey foreign key (tenant_id, provider_account_id)
    references herald_public.provider_accounts (tenant_id, id) on delete cascade
);

create trigger _500_queue_test after insert on herald_hidden.provider_tests
  for each row execute function herald_private.tg__add_job('provider_accounts__test');

alter table herald_hidden.provider_tests enable row level security;
alter table herald_hidden.provider_tests force row level security;
create policy select_member on herald_hidden.provider_tests for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
create policy insert_member on herald_hidden.provider_tests for insert to :DATABASE_MEMBER
  with check (tenant_id = (select herald_public.current_tenant_id()) and (select herald_hidden.current_user_is_tenant_admin()));
create policy update_worker on herald_hidden.provider_tests for update to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy select_admin on herald_hidden.provider_tests for select to :DATABASE_ADMIN using (true);
grant select on herald_hidden.provider_tests to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;
grant insert (provider_account_id, to_address) on herald_hidden.provider_tests to :DATABASE_MEMBER;
grant update (finished_at, error) on herald_hidden.provider_tests to :DATABASE_WORKER;

create function herald_public.test_provider_account(provider_account_id uuid, to_address text) returns uuid
  language sql volatile
  set search_path = ''
as $$
  insert into herald_hidden.provider_tests (provider_account_id, to_address)
  values (test_provider_account.provider_account_id, test_provider_account.to_address)
  returning id;
$$;
comment on function herald_public.test_provider_account(uuid, text) is
  E'Send one test SMS or email through the account; `lastTestedAt` and `lastError` on the account show the outcome.';
grant execute on function herald_public.test_provider_account(uuid, text) to :DATABASE_MEMBER;
