--! Previous: sha1:0c1d2d5a153c39f51ebe13db535c2da03ae9fbe1
--! Hash: sha1:4e0d983e57b3dd1634d6d80fa7a17123e134edea
--! Message: Contacts: encrypted PII with keyed-hash lookups, tags, lists

--
-- Contacts: encrypted PII with keyed-hash lookups, tags, lists.
--
-- Phone and email are stored only as ciphertext (pgcrypto, AES-256 in an
-- OpenPGP packet with an integrity check) plus an HMAC-SHA-256 for lookups.
-- Neither the keys nor plaintext live in the database:
--   * each tenant has random 256-bit data keys, stored here only wrapped by the
--     master key (AES-256-GCM in Node; the master key never reaches Postgres);
--   * Herald unwraps the tenant's key per request/job and hands it to this
--     transaction as a transaction-local setting (a bind parameter), together
--     with the tenant's hash key (derived in Node from HERALD_HASH_KEY and the
--     tenant id, so no two tenants share a hash key);
--   * the settings are read only through the herald_hidden helpers below.
-- Settings, all base64 keys or smallint versions, absent outside a tenant:
--   herald.data_key / herald.data_key_version                  encrypt + decrypt
--   herald.data_key_previous / herald.data_key_previous_version decrypt, while a
--                                                               tenant key rotates
--   herald.hash_key / herald.hash_key_version                  hash (writes, lookups)
--   herald.hash_key_previous / herald.hash_key_previous_version lookups while the
--                                                               hash key rotates
--
-- Idempotent: graphile-migrate re-runs it in watch mode.

drop function if exists herald_hidden.upsert_contacts(jsonb);
drop function if exists herald_hidden.upsert_contacts(jsonb, text);
drop function if exists herald_hidden.rekey_contacts(uuid, integer);
drop function if exists herald_hidden.contacts_on_old_keys();
drop function if exists herald_public.search_contacts(uuid, uuid);
drop function if exists herald_public.contacts_phone(herald_public.contacts);
drop function if exists herald_public.contacts_email(herald_public.contacts);
drop function if exists herald_public.tags_contact_count(herald_public.tags);
drop function if exists herald_public.lists_member_count(herald_public.lists);
drop table if exists herald_public.list_members, herald_public.lists, herald_public.contact_tags,
  herald_public.tags, herald_public.contacts cascade;
drop table if exists herald_private.key_rotations, herald_private.tenant_data_keys, herald_private.hash_key_versions cascade;
drop function if exists herald_hidden.raise_no_key(text);
drop function if exists herald_hidden.data_key(smallint);
drop function if exists herald_hidden.current_data_key_version();
drop function if exists herald_hidden.current_hash_key_version();
drop function if exists herald_hidden.encrypt_pii(text);
drop function if exists herald_hidden.encrypt_pii(text, text);
drop function if exists herald_hidden.decrypt_pii(bytea, smallint);
drop function if exists herald_hidden.hash_key(smallint);
drop function if exists herald_hidden.keyed_hash(text, text, bytea);
drop function if exists herald_hidden.pii_hash(text, text, smallint);
drop function if exists herald_hidden.pii_hashes(text, text);
drop function if exists herald_private.tenant_data_keys(uuid);
drop function if exists herald_private.add_tenant_data_key(uuid, bytea, bytea);
drop function if exists herald_private.hash_key_version(bytea);

-------------------------------------------------------------------------------
-- Key material (herald_private: no tenant role can read it)
-------------------------------------------------------------------------------

create table herald_private.tenant_data_keys (
  tenant_id uuid not null references herald_public.tenants on delete cascade,
  version smallint not null constraint tenant_data_keys_version_positive check (version > 0),
  -- nonce ‖ AES-256-GCM(master key, data key) ‖ tag, with the tenant id and
  -- version as associated data, so a wrapped key cannot be moved to another row.
  wrapped_key bytea not null,
  -- Which master key wrapped it: the first 8 bytes of HMAC(master key, a
  -- constant). Identifies the key without revealing anything about it.
  master_key_id bytea not null,
  created_at timestamptz not null default now(),
  -- While a tenant rotates, its old version stays until no row uses it.
  retired_at timestamptz,
  primary key (tenant_id, version)
);
comment on table herald_private.tenant_data_keys is
  E'Per-tenant data keys, wrapped by the master key. Deleting a tenant deletes them: crypto-shredding.';

-- One current (not retired) key per tenant.
create unique index tenant_data_keys_one_current on herald_private.tenant_data_keys (tenant_id)
  where retired_at is null;

-- Hash keys are identified by a fingerprint; rows store the small version number.
create table herald_private.hash_key_versions (
  version smallint generated always as identity primary key,
  fingerprint bytea not null unique,
  created_at timestamptz not null default now()
);
comment on table herald_private.hash_key_versions is
  E'Registry of HERALD_HASH_KEY fingerprints → the version stored with each contact hash.';

-- Progress of long key work (tenant re-encryption, hash rebuilds), for the CLI.
create table herald_private.key_rotations (
  id bigint generated always as identity primary key,
  kind text not null constraint key_rotations_kind check (kind in ('tenant_data_key', 'hash_key')),
  tenant_id uuid not null references herald_public.tenants on delete cascade,
  to_version smallint not null,
  total bigint not null default 0,
  done bigint not null default 0,
  started_at timestamptz not null default now(),
  finished_at timestamptz
);
create index key_rotations_tenant on herald_private.key_rotations (tenant_id);

-- The authenticator (API and worker connections) fetches a tenant's wrapped
-- keys to unwrap them in Node, and creates a tenant's first key. Nothing here
-- is useful without the master key, which only Herald's processes hold.
create function herald_private.tenant_data_keys(tenant_id uuid)
  returns table (version smallint, wrapped_key bytea, master_key_id bytea, retired boolean)
  language sql stable security definer
  set search_path = ''
as $$
  select k.version, k.wrapped_key, k.master_key_id, k.retired_at is not null
    from herald_private.tenant_data_keys k
   where k.tenant_id = tenant_data_keys.tenant_id
   order by k.version desc;
$$;

create function herald_private.add_tenant_data_key(tenant_id uuid, wrapped_key bytea, master_key_id bytea)
  returns void
  language sql volatile security definer
  set search_path = ''
as $$
  -- Only a tenant's first key: later versions come from `herald keys rotate-tenant`,
  -- which runs as the owner. Two racing first inserts: one wins, both re-read.
  insert into herald_private.tenant_data_keys (tenant_id, version, wrapped_key, master_key_id)
  select t.id, 1, add_tenant_data_key.wrapped_key, add_tenant_data_key.master_key_id
    from herald_public.tenants t
   where t.id = add_tenant_data_key.tenant_id
  on conflict do nothing;
$$;

create function herald_private.hash_key_version(fingerprint bytea) returns smallint
  language plpgsql volatile security definer
  set search_path = ''
as $$
declare
  v_version smallint;
begin
  insert into herald_private.hash_key_versions (fingerprint) values (hash_key_version.fingerprint)
  on conflict do nothing;
  select h.version into v_version from herald_private.hash_key_versions h
   where h.fingerprint = hash_key_version.fingerprint;
  return v_version;
end;
$$;

grant execute on function
  herald_private.tenant_data_keys(uuid),
  herald_private.add_tenant_data_key(uuid, bytea, bytea),
  herald_private.hash_key_version(bytea)
  to :DATABASE_AUTHENTICATOR;

-------------------------------------------------------------------------------
-- Crypto helpers (invoker rights; they only read this transaction's settings).
-- Plain SQL without SET clauses, so the planner inlines them into the calling
-- query: a per-row function call would cost more than the cryptography.
-------------------------------------------------------------------------------

create function herald_hidden.raise_no_key(what text) returns text
  language plpgsql stable
  set search_path = ''
as $$
begin
  raise exception 'This session holds no % for this tenant''s contact data', what using errcode = 'NOKEY';
end;
$$;

-- The session's key for a row's data key version: the current one, or the
-- previous one while the tenant's key rotates. NOKEY when it holds neither,
-- which is what an operator or a tenant-less session gets: ciphertext only.
create function herald_hidden.data_key(version smallint) returns text
  language sql stable parallel safe
as $$
  select coalesce(
    case version
      when nullif(pg_catalog.current_setting('herald.data_key_version', true), '')::smallint
        then nullif(pg_catalog.current_setting('herald.data_key', true), '')
      when nullif(pg_catalog.current_setting('herald.data_key_previous_version', true), '')::smallint
        then nullif(pg_catalog.current_setting('herald.data_key_previous', true), '')
    end,
    herald_hidden.raise_no_key('data key for version ' || version));
$$;

create function herald_hidden.current_data_key_version() returns smallint
  language sql stable parallel safe
as $$
  select coalesce(nullif(pg_catalog.current_setting('herald.data_key_version', true), ''),
                  herald_hidden.raise_no_key('data key'))::smallint;
$$;

create function herald_hidden.current_hash_key_version() returns smallint
  language sql stable parallel safe
as $$
  select coalesce(nullif(pg_catalog.current_setting('herald.hash_key_version', true), ''),
                  herald_hidden.raise_no_key('hash key'))::smallint;
$$;

-- The data keys are random 256-bit values, so OpenPGP's password stretching
-- buys nothing: s2k-mode=1 (one salted hash) costs ~10 µs instead of ~130 µs.
-- The OpenPGP packet carries its own integrity check (MDC).
create function herald_hidden.encrypt_pii(plaintext text, data_key text) returns bytea
  language sql volatile parallel safe
as $$
  select public.pgp_sym_encrypt(plaintext, data_key, 'cipher-algo=aes256, s2k-mode=1');
$$;

create function herald_hidden.decrypt_pii(ciphertext bytea, key_version smallint) returns text
  language sql stable parallel safe
as $$
  select case when ciphertext is not null then public.pgp_sym_decrypt(ciphertext, herald_hidden.data_key(key_version)) end;
$$;

-- The session's hash key of a version (current, or previous during a rebuild), decoded; null otherwise.
create function herald_hidden.hash_key(version smallint) returns bytea
  language sql stable parallel safe
as $$
  select pg_catalog.decode(case version
    when nullif(pg_catalog.current_setting('herald.hash_key_version', true), '')::smallint
      then pg_catalog.current_setting('herald.hash_key', true)
    when nullif(pg_catalog.current_setting('herald.hash_key_previous_version', true), '')::smallint
      then pg_catalog.current_setting('herald.hash_key_previous', true)
  end, 'base64');
$$;

-- HMAC-SHA-256 of `kind:value` under a hash key; `kind` separates the phone and
-- email domains. Null for a null value or key.
create function herald_hidden.keyed_hash(kind text, normalized text, hash_key bytea) returns bytea
  -- stable, not immutable: convert_to is stable, and a function declared less
  -- volatile than its body is never inlined.
  language sql stable parallel safe
as $$
  select public.hmac(pg_catalog.convert_to(kind || ':' || normalized, 'UTF8'), hash_key, 'sha256');
$$;

create function herald_hidden.pii_hash(kind text, normalized text, version smallint) returns bytea
  language sql stable parallel safe
as $$
  select herald_hidden.keyed_hash(kind, normalized, herald_hidden.hash_key(version));
$$;

-- Every hash a stored row may carry for this value: the current version's, and
-- the previous version's while a hash-key rebuild is under way. NOKEY without a hash key.
create function herald_hidden.pii_hashes(kind text, normalized text) returns bytea[]
  language sql stable parallel safe
as $$
  select pg_catalog.array_remove(array[
    herald_hidden.pii_hash(kind, normalized, herald_hidden.current_hash_key_version()),
    herald_hidden.pii_hash(kind, normalized,
      nullif(pg_catalog.current_setting('herald.hash_key_previous_version', true), '')::smallint)
  ], null);
$$;

grant execute on function
  herald_hidden.raise_no_key(text),
  herald_hidden.data_key(smallint),
  herald_hidden.current_data_key_version(),
  herald_hidden.current_hash_key_version(),
  herald_hidden.encrypt_pii(text, text),
  herald_hidden.decrypt_pii(bytea, smallint),
  herald_hidden.hash_key(smallint),
  herald_hidden.keyed_hash(text, text, bytea),
  herald_hidden.pii_hash(text, text, smallint),
  herald_hidden.pii_hashes(text, text)
  to :DATABASE_MEMBER, :DATABASE_WORKER;
-- Operators may call the readers, and learn that they hold no key (NOKEY).
grant execute on function herald_hidden.raise_no_key(text), herald_hidden.data_key(smallint),
  herald_hidden.decrypt_pii(bytea, smallint)
  to :DATABASE_ADMIN;

-------------------------------------------------------------------------------
-- contacts (tenant-owned)
-------------------------------------------------------------------------------

create table herald_public.contacts (
  tenant_id uuid not null default herald_public.current_tenant_id()
    references herald_public.tenants on delete cascade,
  id uuid not null default gen_random_uuid(),
  first_name text constraint contacts_first_name_length check (length(first_name) <= 200),
  last_name text constraint contacts_last_name_length check (length(last_name) <= 200),
  -- PII: ciphertext under the tenant's data key `key_version`, and an HMAC
  -- under hash key `hash_version` of the E.164 phone / lower-cased email.
  phone_encrypted bytea,
  phone_hash bytea,
  email_encrypted bytea,
  email_hash bytea,
  key_version smallint not null,
  hash_version smallint not null,
  timezone text constraint contacts_timezone_length check (length(timezone) <= 64),
  locale text constraint contacts_locale_format check (locale ~ '^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$'),
  attributes jsonb not null default '{}'
    constraint contacts_attributes_object check (jsonb_typeof(attributes) = 'object'),
  external_id text constraint contacts_external_id_length check (length(external_id) between 1 and 200),
  sms_subscribed boolean not null default true,
  email_subscribed boolean not null default true,
  whatsapp_subscribed boolean not null default false,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (tenant_id, id),
  -- Ciphertext under a key that no longer exists would be lost for good: a
  -- row may only name an existing key version, and a key version still in use
  -- cannot be deleted (NO ACTION, checked at statement end, so deleting a
  -- tenant still cascades to both). Rotation deletes a retired key only after
  -- the last row has moved; a writer still holding it is refused instead.
  constraint contacts_key_version_fkey foreign key (tenant_id, key_version)
    references herald_private.tenant_data_keys (tenant_id, version),
  constraint contacts_phone_pair check ((phone_encrypted is null) = (phone_hash is null)),
  constraint contacts_email_pair check ((email_encrypted is null) = (email_hash is null))
);
comment on table herald_public.contacts is
  E'@behavior -insert -update\nA person a tenant messages. Phone and email are stored encrypted; '
  'write with `createContact` / `updateContact` / `upsertContacts`, find with `contactByPhone` / `contactByEmail`.';
comment on column herald_public.contacts.phone_encrypted is E'@behavior -*';
comment on column herald_public.contacts.phone_hash is E'@behavior -*';
comment on column herald_public.contacts.email_encrypted is E'@behavior -*';
comment on column herald_public.contacts.email_hash is E'@behavior -*';
comment on column herald_public.contacts.key_version is E'@behavior -*';
comment on constraint contacts_key_version_fkey on herald_public.contacts is E'@behavior -*';
comment on column herald_public.contacts.hash_version is E'@behavior -*';
comment on column herald_public.contacts.timezone is E'IANA time zone, e.g. `America/New_York`.';
comment on column herald_public.contacts.locale is E'BCP 47 language tag, e.g. `en` or `pt-BR`.';
comment on column herald_public.contacts.attributes is E'Free-form JSON object for templates.';
comment on column herald_public.contacts.external_id is E'The tenant''s own id for this person; unique per tenant.';

-- Unique per tenant on each hash: one contact per phone and per email.
create unique index contacts_phone_hash on herald_public.contacts (tenant_id, phone_hash);
create unique index contacts_email_hash on herald_public.contacts (tenant_id, email_hash);
create unique index contacts_external_id on herald_public.contacts (tenant_id, external_id);
comment on index herald_public.contacts_phone_hash is E'@behavior -*';
comment on index herald_public.contacts_email_hash is E'@behavior -*';

-- Update only: on insert the column defaults give the same timestamps (members
-- cannot write them), and bulk imports skip a trigger call per row.
create trigger _100_timestamps before update on herald_public.contacts
  for each row execute function herald_private.tg__timestamps();

alter table herald_public.contacts enable row level security;
alter table herald_public.contacts force row level security;

create policy select_member on herald_public.contacts for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
create policy insert_member on herald_public.contacts for insert to :DATABASE_MEMBER, :DATABASE_WORKER
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy update_member on herald_public.contacts for update to :DATABASE_MEMBER, :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy delete_member on herald_public.contacts for delete to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()));
-- Operators see that contacts exist (ciphertext only: they hold no data key).
create policy select_admin on herald_public.contacts for select to :DATABASE_ADMIN using (true);
create policy delete_admin on herald_public.contacts for delete to :DATABASE_ADMIN using (true);

grant select on herald_public.contacts to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;
grant insert (tenant_id, id, first_name, last_name, phone_encrypted, phone_hash, email_encrypted, email_hash, key_version,
              hash_version, timezone, locale, attributes, external_id, sms_subscribed, email_subscribed,
              whatsapp_subscribed),
      update (first_name, last_name, phone_encrypted, phone_hash, email_encrypted, email_hash, key_version,
              hash_version, timezone, locale, attributes, external_id, sms_subscribed, email_subscribed,
              whatsapp_subscribed)
  on herald_public.contacts to :DATABASE_MEMBER, :DATABASE_WORKER;
grant delete on herald_public.contacts to :DATABASE_MEMBER, :DATABASE_ADMIN;

-- Decrypted fields for the API (`phone`, `email` on Contact).
create function herald_public.contacts_phone(contact herald_public.contacts) returns text
  language sql stable parallel safe
as $$
  select herald_hidden.decrypt_pii(contact.phone_encrypted, contact.key_version);
$$;
comment on function herald_public.contacts_phone(herald_public.contacts) is E'Phone number in E.164, decrypted.';

create function herald_public.contacts_email(contact herald_public.contacts) returns text
  language sql stable parallel safe
as $$
  select herald_hidden.decrypt_pii(contact.email_encrypted, contact.key_version);
$$;
comment on function herald_public.contacts_email(herald_public.contacts) is E'Email address, lower-cased, decrypted.';

grant execute on function herald_public.contacts_phone(herald_public.contacts), herald_public.contacts_email(herald_public.contacts)
  to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;

-------------------------------------------------------------------------------
-- Batch upsert. Callers pass values already normalised in Node (E.164 phone,
-- lower-cased email); hashing and encryption happen here, under the session's
-- keys. Matches an existing contact by external_id, then phone, then email
-- (under the current and, during a rebuild, the previous hash key). Runs with
-- the caller's rights, so RLS confines every read and write to its tenant.
-------------------------------------------------------------------------------

create function herald_hidden.upsert_contacts(contacts jsonb, mode text default 'upsert')
  returns table (ordinal integer, contact_id uuid, action text)
  language plpgsql volatile
  set search_path = ''
as $$
#variable_conflict use_column
declare
  v_tenant uuid := herald_public.current_tenant_id();
  -- The session's keys, read once per call rather than once per row.
  v_key_version smallint := herald_hidden.current_data_key_version();
  v_data_key text := herald_hidden.data_key(v_key_version);
  v_hash_version smallint := herald_hidden.current_hash_key_version();
  v_hash_key bytea := herald_hidden.hash_key(v_hash_version);
  v_previous_hash_version smallint :=
    nullif(pg_catalog.current_setting('herald.hash_key_previous_version', true), '')::smallint;
  v_previous_hash_key bytea := herald_hidden.hash_key(v_previous_hash_version);
begin
  if v_tenant is null then
    raise exception 'No tenant in this session' using errcode = 'NOTNT';
  end if;
  if mode not in ('upsert', 'insert', 'update') then
    raise exception 'mode must be upsert, insert or update' using errcode = '22023';
  end if;
  if jsonb_typeof(contacts) is distinct from 'array' then
    raise exception 'contacts must be a JSON array' using errcode = '22023';
  end if;

  return query
  with input as (
    select (e.ord - 1)::integer as ordinal, e.doc,
           e.doc ->> 'phone' as phone, e.doc ->> 'email' as email, e.doc ->> 'external_id' as external_id,
           (e.doc ->> 'id')::uuid as id
      from jsonb_array_elements(contacts) with ordinality as e(doc, ord)
  ),
  -- MATERIALIZED: computed once per row; inlined, each later reference would
  -- recompute the hashes and index probes.
  hashed as materialized (
    select i.*,
           herald_hidden.keyed_hash('phone', i.phone, v_hash_key) as phone_hash,
           herald_hidden.keyed_hash('email', i.email, v_hash_key) as email_hash,
           herald_hidden.keyed_hash('phone', i.phone, v_previous_hash_key) as phone_hash_previous,
           herald_hidden.keyed_hash('email', i.email, v_previous_hash_key) as email_hash_previous
      from input i
  ),
  owners as materialized (
    -- Who already holds each identifier: one unique-index probe each.
    select h.*,
           case when h.id is not null then
             (select c.id from herald_public.contacts c where c.tenant_id = v_tenant and c.id = h.id) end as id_owner,
           case when h.external_id is not null then
             (select c.id from herald_public.contacts c
               where c.tenant_id = v_tenant and c.external_id = h.external_id) end as external_owner,
           (select c.id from herald_public.contacts c
             where c.tenant_id = v_tenant and c.phone_hash in (h.phone_hash, h.phone_hash_previous)) as phone_owner,
           (select c.id from herald_public.contacts c
             where c.tenant_id = v_tenant and c.email_hash in (h.email_hash, h.email_hash_previous)) as email_owner
      from hashed h
  ),
  matched as (
    select o.*, coalesce(o.id_owner, o.external_owner, o.phone_owner, o.email_owner) as target_id
      from owners o
  ),
  decided as (
    select m.*,
           case
             -- A later item naming the same contact, or repeating an identifier, as an earlier one.
             when m.ordinal > least(
                    min(m.ordinal) over (partition by coalesce(m.phone_hash, pg_catalog.uuid_send(gen_random_uuid()))),
                    min(m.ordinal) over (partition by coalesce(m.email_hash, pg_catalog.uuid_send(gen_random_uuid()))),
                    min(m.ordinal) over (partition by coalesce(m.external_id, gen_random_uuid()::text)),
                    min(m.ordinal) over (partition by coalesce(m.target_id, gen_random_uuid())))
               then 'duplicate'
             -- `update` names its contact by id; another tenant's id is simply not found.
             when mode = 'update' and m.id_owner is null then 'not_found'
             when mode = 'insert' and m.target_id is not null then 'exists'
             -- The identifiers point at two different contacts: merging them is
             -- a decision for a person, not for an import.
             when (m.external_owner is not null and m.external_owner <> m.target_id)
               or (m.phone_owner is not null and m.phone_owner <> m.target_id)
               or (m.email_owner is not null and m.email_owner <> m.target_id)
               then 'conflict'
           end as refusal
      from matched m
  ),
  -- For matched rows: the row as it would be after the upsert. Fields absent
  -- from the input keep their value; present-and-null clears them.
  proposed as (
    select m.ordinal, c.id,
           case when m.doc ? 'first_name' then m.doc ->> 'first_name' else c.first_name end as first_name,
           case when m.doc ? 'last_name' then m.doc ->> 'last_name' else c.last_name end as last_name,
           case when m.doc ? 'timezone' then m.doc ->> 'timezone' else c.timezone end as timezone,
           case when m.doc ? 'locale' then m.doc ->> 'locale' else c.locale end as locale,
           case when m.doc ? 'attributes' then coalesce(nullif(m.doc -> 'attributes', 'null'), '{}') else c.attributes end as attributes,
           case when m.doc ? 'external_id' then m.external_id else c.external_id end as external_id,
           case when m.doc ? 'sms_subscribed' then (m.doc ->> 'sms_subscribed')::boolean else c.sms_subscribed end as sms_subscribed,
           case when m.doc ? 'email_subscribed' then (m.doc ->> 'email_subscribed')::boolean else c.email_subscribed end as email_subscribed,
           case when m.doc ? 'whatsapp_subscribed' then (m.doc ->> 'whatsapp_subscribed')::boolean else c.whatsapp_subscribed end as whatsapp_subscribed,
           -- A given phone/email changes the row when its hash, under the row's
           -- own hash version, differs from the stored one.
           (m.doc ? 'phone' and c.phone_hash is distinct from
              case c.hash_version when v_hash_version then m.phone_hash else m.phone_hash_previous end) as phone_changed,
           (m.doc ? 'email' and c.email_hash is distinct from
              case c.hash_version when v_hash_version then m.email_hash else m.email_hash_previous end) as email_changed,
           m.doc ? 'phone' as phone_given, m.phone,
           m.doc ? 'email' as email_given, m.email,
           c as old
      from decided m
      join herald_public.contacts c on c.tenant_id = v_tenant and c.id = m.target_id
     where m.refusal is null
     -- Lock the targets, in id order (no deadlock between concurrent batches),
     -- and compute from their latest version: fields the input leaves out keep
     -- what a concurrent writer committed instead of this statement's snapshot.
     order by c.id
     for update of c
  ),
  changes as (
    select p.*,
           (p.phone_changed or p.email_changed) as pii_changed,
           (p.phone_changed or p.email_changed
             or (p.first_name, p.last_name, p.timezone, p.locale, p.attributes, p.external_id,
                 p.sms_subscribed, p.email_subscribed, p.whatsapp_subscribed)
                is distinct from
                ((p.old).first_name, (p.old).last_name, (p.old).timezone, (p.old).locale, (p.old).attributes,
                 (p.old).external_id, (p.old).sms_subscribed, (p.old).email_subscribed, (p.old).whatsapp_subscribed)
           ) as changed,
           -- When PII changes, the whole row moves to the current key and hash
           -- versions, so the field not given is decrypted and re-encrypted too.
           case when p.phone_changed or p.email_changed then
             case when p.phone_given then p.phone
                  else herald_hidden.decrypt_pii((p.old).phone_encrypted, (p.old).key_version) end
           end as new_phone,
           case when p.phone_changed or p.email_changed then
             case when p.email_given then p.email
                  else herald_hidden.decrypt_pii((p.old).email_encrypted, (p.old).key_version) end
           end as new_email
      from proposed p
  ),
  updated as (
    update herald_public.contacts c
       set first_name = ch.first_name,
           last_name = ch.last_name,
           timezone = ch.timezone,
           locale = ch.locale,
           attributes = ch.attributes,
           external_id = ch.external_id,
           sms_subscribed = ch.sms_subscribed,
           email_subscribed = ch.email_subscribed,
           whatsapp_subscribed = ch.whatsapp_subscribed,
           phone_encrypted = case when ch.pii_changed then herald_hidden.encrypt_pii(ch.new_phone, v_data_key) else c.phone_encrypted end,
           email_encrypted = case when ch.pii_changed then herald_hidden.encrypt_pii(ch.new_email, v_data_key) else c.email_encrypted end,
           phone_hash = case when ch.pii_changed then herald_hidden.keyed_hash('phone', ch.new_phone, v_hash_key) else c.phone_hash end,
           email_hash = case when ch.pii_changed then herald_hidden.keyed_hash('email', ch.new_email, v_hash_key) else c.email_hash end,
           key_version = case when ch.pii_changed then v_key_version else c.key_version end,
           hash_version = case when ch.pii_changed then v_hash_version else c.hash_version end
      from changes ch
     where c.tenant_id = v_tenant and c.id = ch.id and ch.changed
    returning c.id
  ),
  fresh as (
    select m.*, gen_random_uuid() as new_id
      from decided m
     where m.refusal is null and m.target_id is null
  ),
  inserted as (
    insert into herald_public.contacts (
      id, first_name, last_name, phone_encrypted, phone_hash, email_encrypted, email_hash,
      key_version, hash_version, timezone, locale, attributes, external_id,
      sms_subscribed, email_subscribed, whatsapp_subscribed)
    select f.new_id, f.doc ->> 'first_name', f.doc ->> 'last_name',
           herald_hidden.encrypt_pii(f.phone, v_data_key), f.phone_hash,
           herald_hidden.encrypt_pii(f.email, v_data_key), f.email_hash,
           v_key_version, v_hash_version, f.doc ->> 'timezone', f.doc ->> 'locale',
           coalesce(nullif(f.doc -> 'attributes', 'null'), '{}'), f.external_id,
           coalesce((f.doc ->> 'sms_subscribed')::boolean, true),
           coalesce((f.doc ->> 'email_subscribed')::boolean, true),
           coalesce((f.doc ->> 'whatsapp_subscribed')::boolean, false)
      from fresh f
    returning id
  )
  select f.ordinal, f.new_id, 'inserted'::text from fresh f
  union all
  select ch.ordinal, ch.id, case when ch.changed then 'updated' else 'unchanged' end from changes ch
  union all
  select m.ordinal, m.target_id, m.refusal from decided m where m.refusal is not null
  order by 1;
  -- `inserted` and `updated` run even though the final select does not read
  -- them: data-modifying CTEs always execute to completion.
end;
$$;
comment on function herald_hidden.upsert_contacts(jsonb, text) is
  E'Inserts or updates contacts from normalised JSON objects; one result row per input: inserted, updated, unchanged, or refused (duplicate, conflict, exists, not_found).';

grant execute on function herald_hidden.upsert_contacts(jsonb, text) to :DATABASE_MEMBER, :DATABASE_WORKER;

-------------------------------------------------------------------------------
-- Key rotation: move one batch of the session tenant's contacts (in id order,
-- after `after`) to the current data key and hash key versions. Rows already
-- current are skipped, so a rerun after a crash only redoes what is left.
-------------------------------------------------------------------------------

create function herald_hidden.rekey_contacts(after uuid, batch_size integer)
  returns table (last_id uuid, scanned integer, moved integer)
  language sql volatile
  set search_path = ''
as $$
  with target as materialized (
    select herald_hidden.current_data_key_version() as key_version,
           herald_hidden.current_hash_key_version() as hash_version
  ),
  batch as (
    select c.id, c.key_version, c.hash_version, c.phone_encrypted, c.email_encrypted
      from herald_public.contacts c
     where c.tenant_id = herald_public.current_tenant_id() and c.id > rekey_contacts.after
     order by c.id
     limit rekey_contacts.batch_size
     -- Re-encrypt the latest version of each row, never a stale snapshot that
     -- would write back a phone or email changed meanwhile.
     for update
  ),
  plain as (
    select b.id,
           herald_hidden.decrypt_pii(b.phone_encrypted, b.key_version) as phone,
           herald_hidden.decrypt_pii(b.email_encrypted, b.key_version) as email
      from batch b, target t
     where b.key_version <> t.key_version or b.hash_version <> t.hash_version
  ),
  moved as (
    update herald_public.contacts c
       set phone_encrypted = herald_hidden.encrypt_pii(p.phone, herald_hidden.data_key(t.key_version)),
           email_encrypted = herald_hidden.encrypt_pii(p.email, herald_hidden.data_key(t.key_version)),
           phone_hash = herald_hidden.pii_hash('phone', p.phone, t.hash_version),
           email_hash = herald_hidden.pii_hash('email', p.email, t.hash_version),
           key_version = t.key_version,
           hash_version = t.hash_version
      from plain p, target t
     where c.tenant_id = herald_public.current_tenant_id() and c.id = p.id
    returning c.id
  )
  select (select b.id from batch b order by b.id desc limit 1),
         (select count(*)::integer from batch),
         (select count(*)::integer from moved);
$$;
comment on function herald_hidden.rekey_contacts(uuid, integer) is
  E'One batch of a key rotation: re-encrypts and re-hashes the tenant''s contacts still on an older key version.';

-- How many of the session tenant's contacts still use an older key version.
create function herald_hidden.contacts_on_old_keys() returns bigint
  language sql stable
  set search_path = ''
as $$
  select count(*) from herald_public.contacts c
   where c.tenant_id = herald_public.current_tenant_id()
     and (c.key_version <> herald_hidden.current_data_key_version()
          or c.hash_version <> herald_hidden.current_hash_key_version());
$$;

grant execute on function herald_hidden.rekey_contacts(uuid, integer), herald_hidden.contacts_on_old_keys()
  to :DATABASE_WORKER;

-------------------------------------------------------------------------------
-- tags and contact_tags (tenant-owned)
-------------------------------------------------------------------------------

create table herald_public.tags (
  tenant_id uuid not null default herald_public.current_tenant_id()
    references herald_public.tenants on delete cascade,
  id uuid not null default gen_random_uuid(),
  name public.citext not null constraint tags_name_length check (length(name) between 1 and 100),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (tenant_id, id),
  constraint tags_name_unique unique (tenant_id, name)
);
comment on table herald_public.tags is E'A label on contacts, e.g. `vip`; names are case-insensitive and unique per tenant.';

create table herald_public.contact_tags (
  tenant_id uuid not null default herald_public.current_tenant_id()
    references herald_public.tenants on delete cascade,
  contact_id uuid not null,
  tag_id uuid not null,
  created_at timestamptz not null default now(),
  primary key (tenant_id, contact_id, tag_id),
  -- Composite keys: a tag of one tenant cannot name a contact of another.
  constraint contact_tags_contact_fkey foreign key (tenant_id, contact_id)
    references herald_public.contacts (tenant_id, id) on delete cascade,
  constraint contact_tags_tag_fkey foreign key (tenant_id, tag_id)
    references herald_public.tags (tenant_id, id) on delete cascade
);
comment on table herald_public.contact_tags is E'@behavior -update\nA tag on a contact.';
comment on constraint contact_tags_contact_fkey on herald_public.contact_tags is
  E'@fieldName contact\n@foreignFieldName contactTags';
comment on constraint contact_tags_tag_fkey on herald_public.contact_tags is
  E'@fieldName tag\n@foreignFieldName contactTags';
create index contact_tags_by_tag on herald_public.contact_tags (tenant_id, tag_id, contact_id);

create trigger _100_timestamps before insert or update on herald_public.tags
  for each row execute function herald_private.tg__timestamps();

-------------------------------------------------------------------------------
-- lists and list_members (tenant-owned)
-------------------------------------------------------------------------------

create table herald_public.lists (
  tenant_id uuid not null default herald_public.current_tenant_id()
    references herald_public.tenants on delete cascade,
  id uuid not null default gen_random_uuid(),
  name public.citext not null constraint lists_name_length check (length(name) between 1 and 200),
  description text constraint lists_description_length check (length(description) <= 2000),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (tenant_id, id),
  constraint lists_name_unique unique (tenant_id, name)
);
comment on table herald_public.lists is E'A named audience, e.g. `Newsletter`; names are unique per tenant.';

create table herald_public.list_members (
  tenant_id uuid not null default herald_public.current_tenant_id()
    references herald_public.tenants on delete cascade,
  list_id uuid not null,
  contact_id uuid not null,
  created_at timestamptz not null default now(),
  primary key (tenant_id, list_id, contact_id),
  constraint list_members_list_fkey foreign key (tenant_id, list_id)
    references herald_public.lists (tenant_id, id) on delete cascade,
  constraint list_members_contact_fkey foreign key (tenant_id, contact_id)
    references herald_public.contacts (tenant_id, id) on delete cascade
);
comment on table herald_public.list_members is E'@behavior -update\nA contact on a list.';
comment on constraint list_members_list_fkey on herald_public.list_members is
  E'@fieldName list\n@foreignFieldName members';
comment on constraint list_members_contact_fkey on herald_public.list_members is
  E'@fieldName contact\n@foreignFieldName listMemberships';
create index list_members_by_contact on herald_public.list_members (tenant_id, contact_id);

create trigger _100_timestamps before insert or update on herald_public.lists
  for each row execute function herald_private.tg__timestamps();

-- The four tables share one policy shape: members read and write their own
-- tenant's rows, the worker reads them, operators read and delete.
do $$
declare
  v_table text;
begin
  foreach v_table in array array['tags', 'contact_tags', 'lists', 'list_members'] loop
    execute format('alter table herald_public.%I enable row level security', v_table);
    execute format('alter table herald_public.%I force row level security', v_table);
    execute format($p$create policy select_member on herald_public.%I for select to :DATABASE_MEMBER, :DATABASE_WORKER
                        using (tenant_id = (select herald_public.current_tenant_id()))$p$, v_table);
    execute format($p$create policy insert_member on herald_public.%I for insert to :DATABASE_MEMBER, :DATABASE_WORKER
                        with check (tenant_id = (select herald_public.current_tenant_id()))$p$, v_table);
    execute format($p$create policy update_member on herald_public.%I for update to :DATABASE_MEMBER
                        using (tenant_id = (select herald_public.current_tenant_id()))
                        with check (tenant_id = (select herald_public.current_tenant_id()))$p$, v_table);
    execute format($p$create policy delete_member on herald_public.%I for delete to :DATABASE_MEMBER
                        using (tenant_id = (select herald_public.current_tenant_id()))$p$, v_table);
    execute format('create policy select_admin on herald_public.%I for select to :DATABASE_ADMIN using (true)', v_table);
    execute format('create policy delete_admin on herald_public.%I for delete to :DATABASE_ADMIN using (true)', v_table);
    execute format('grant select on herald_public.%I to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN', v_table);
    execute format('grant delete on herald_public.%I to :DATABASE_MEMBER, :DATABASE_ADMIN', v_table);
  end loop;
end;
$$;

-- tenant_id may be given (it must then be the session's tenant: WITH CHECK) or defaulted.
grant insert (tenant_id, id, name), update (name) on herald_public.tags to :DATABASE_MEMBER, :DATABASE_WORKER;
grant insert (tenant_id, id, name, description), update (name, description)
  on herald_public.lists to :DATABASE_MEMBER, :DATABASE_WORKER;
grant insert (tenant_id, contact_id, tag_id) on herald_public.contact_tags to :DATABASE_MEMBER, :DATABASE_WORKER;
grant insert (tenant_id, list_id, contact_id) on herald_public.list_members to :DATABASE_MEMBER, :DATABASE_WORKER;

create function herald_public.tags_contact_count(tag herald_public.tags) returns integer
  language sql stable parallel safe
  set search_path = ''
as $$
  select count(*)::integer from herald_public.contact_tags ct
   where ct.tenant_id = tag.tenant_id and ct.tag_id = tag.id;
$$;
comment on function herald_public.tags_contact_count(herald_public.tags) is E'How many contacts carry this tag.';

create function herald_public.lists_member_count(list herald_public.lists) returns integer
  language sql stable parallel safe
  set search_path = ''
as $$
  select count(*)::integer from herald_public.list_members lm
   where lm.tenant_id = list.tenant_id and lm.list_id = list.id;
$$;
comment on function herald_public.lists_member_count(herald_public.lists) is E'How many contacts are on this list.';

-- Contacts carrying a tag and/or on a list (both optional; both = intersection).
create function herald_public.search_contacts(tag_id uuid default null, list_id uuid default null)
  returns setof herald_public.contacts
  language sql stable parallel safe
  set search_path = ''
as $$
  select c.* from herald_public.contacts c
   where c.tenant_id = herald_public.current_tenant_id()
     and (search_contacts.tag_id is null or exists (
           select 1 from herald_public.contact_tags ct
            where ct.tenant_id = c.tenant_id and ct.contact_id = c.id and ct.tag_id = search_contacts.tag_id))
     and (search_contacts.list_id is null or exists (
           select 1 from herald_public.list_members lm
            where lm.tenant_id = c.tenant_id and lm.contact_id = c.id and lm.list_id = search_contacts.list_id))
   order by c.created_at, c.id;
$$;
comment on function herald_public.search_contacts(uuid, uuid) is
  E'Contacts with the given tag and/or on the given list, oldest first.';

grant execute on function
  herald_public.tags_contact_count(herald_public.tags),
  herald_public.lists_member_count(herald_public.lists),
  herald_public.search_contacts(uuid, uuid)
  to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;
