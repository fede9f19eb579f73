-- provider_tests.to_address held the phone number or email a test send went
-- to in plaintext. It is now encrypted under the tenant's data key like every
-- other address (to_address_encrypted + key_version), and cleared once the
-- test has run: the outcome is kept, the address is not needed any more.
--
-- Idempotent: re-applied on every `db watch` save.

alter table herald_hidden.provider_tests
  add column if not exists to_address_encrypted bytea,
  add column if not exists key_version smallint;

do $$
begin
  if not exists (select 1 from pg_constraint where conname = 'provider_tests_key_version_fkey'
                   and conrelid = 'herald_hidden.provider_tests'::regclass) then
    -- A key still used by a pending test cannot be destroyed (rotation moves the test first).
    alter table herald_hidden.provider_tests add constraint provider_tests_key_version_fkey
      foreign key (tenant_id, key_version) references herald_private.tenant_data_keys (tenant_id, version);
  end if;
  if not exists (select 1 from pg_constraint where conname = 'provider_tests_address_with_key'
                   and conrelid = 'herald_hidden.provider_tests'::regclass) then
    alter table herald_hidden.provider_tests add constraint provider_tests_address_with_key
      check ((to_address_encrypted is null) = (key_version is null));
  end if;
  -- Rows written before: SQL holds no key to encrypt them with, so a test not
  -- yet run is closed with a reason (the owner can test again) and every
  -- plaintext address goes with the column.
  if exists (select 1 from pg_attribute where attrelid = 'herald_hidden.provider_tests'::regclass
               and attname = 'to_address' and not attisdropped) then
    update herald_hidden.provider_tests
       set finished_at = now(), error = 'not sent: addresses of test sends are now stored encrypted; test the account again'
     where finished_at is null;
    alter table herald_hidden.provider_tests drop column to_address;
  end if;
end;
$$;

grant insert (provider_account_id, to_address_encrypted, key_version) on herald_hidden.provider_tests to :DATABASE_MEMBER;
-- The worker clears the address when the test is done, and moves a pending one to a new key.
grant update (to_address_encrypted, key_version) on herald_hidden.provider_tests to :DATABASE_WORKER;

create or replace function herald_public.test_provider_account(provider_account_id uuid, to_address text) returns uuid
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_version smallint := herald_hidden.current_data_key_version();
  v_id uuid;
begin
  if to_address is null or length(to_address) not between 3 and 254 then
    raise exception 'toAddress must be a phone number or an email address' using errcode = '22023', column = 'to_address';
  end if;
  insert into herald_hidden.provider_tests (provider_account_id, to_address_encrypted, key_version)
  values (test_provider_account.provider_account_id,
          herald_hidden.encrypt_pii(test_provider_account.to_address, herald_hidden.data_key(v_version)), v_version)
  returning id into v_id;
  return v_id;
end;
$$;

-- Key rotation moves the tenant's credentials (and now its pending test
-- addresses) to the current data key, so the retired key can be destroyed.
create or replace function herald_hidden.rekey_provider_accounts() returns integer
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
  ),
  tests as (
    update herald_hidden.provider_tests p
       set to_address_encrypted = herald_hidden.encrypt_pii(
             herald_hidden.decrypt_pii(p.to_address_encrypted, p.key_version), herald_hidden.data_key(t.version)),
           key_version = t.version
      from target t
     where p.tenant_id = herald_public.current_tenant_id() and p.key_version <> t.version
    returning 1
  )
  -- `tests` runs whether or not it is read (a data-modifying WITH always does).
  select count(*)::integer from moved;
$$;
