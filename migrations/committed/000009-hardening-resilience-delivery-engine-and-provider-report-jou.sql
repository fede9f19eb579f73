--! Previous: sha1:44593e43936f5d3dbc750c8974fa24c71c5fdef3
--! Hash: sha1:08d6aeedc08a2782c595f8e9a0c7e1ce1dbcb75b
--! Message: Hardening, resilience, delivery engine and provider report journal (issues 12, 13, 19, 20)

--! split: 200-provider-tests-encrypted.sql
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

--! split: 201-memberships-through-audited-functions.sql
-- Memberships are what turns a person into a reader of a tenant's PII (a
-- member's session gets the tenant's data key). Operators could insert any
-- membership from psql as herald_admin — their own user's too — then sign in
-- as that tenant's owner. Now nobody but Herald's definer functions writes
-- memberships: herald_private.grant_membership / revoke_membership, callable
-- by the authenticator (the CLI, as the operator's tool), which refuse a
-- platform operator's own user, and whose every write lands in the tenant's
-- audit log (a trigger on the table: no request role can skip it).
--
-- Idempotent: re-applied on every `db watch` save.

drop policy if exists insert_admin on herald_public.memberships;
drop policy if exists update_admin on herald_public.memberships;
drop policy if exists delete_admin on herald_public.memberships;
revoke insert, update, delete on herald_public.memberships from :DATABASE_ADMIN;

-- The definer functions below run as the owner, under forced RLS.
drop policy if exists insert_definer on herald_public.memberships;
drop policy if exists update_definer on herald_public.memberships;
drop policy if exists delete_definer on herald_public.memberships;
create policy insert_definer on herald_public.memberships for insert to :DATABASE_OWNER with check (true);
create policy update_definer on herald_public.memberships for update to :DATABASE_OWNER using (true) with check (true);
create policy delete_definer on herald_public.memberships for delete to :DATABASE_OWNER using (true);

-- The users that platform operators act as (named in herald_admin tokens and
-- in the audit log). Such a user never belongs to a tenant: an operator
-- cannot make itself a tenant's member, owner or admin.
create table if not exists herald_private.operators (
  user_id uuid primary key references herald_public.users on delete cascade,
  registered_at timestamptz not null default now()
);

create or replace function herald_private.register_operator(user_id uuid) returns void
  language plpgsql volatile strict security definer
  set search_path = ''
as $$
begin
  if exists (select 1 from herald_public.memberships m where m.user_id = register_operator.user_id) then
    raise exception 'This user belongs to a tenant: an operator acts as a user of its own, which no tenant has'
      using errcode = 'OPMEM';
  end if;
  insert into herald_private.operators (user_id) values (register_operator.user_id) on conflict do nothing;
end;
$$;

-- Adds (or changes the role of) a membership. Refused for an operator's own
-- user: the session's user claim (an operator who names itself) and every
-- registered operator. The audit trigger on memberships writes the tenant's
-- log row in this same statement, naming the database login and what the
-- caller said it was (`herald.actor_detail`).
create or replace function herald_private.grant_membership(tenant_id uuid, user_id uuid, role text) returns void
  language plpgsql volatile strict security definer
  set search_path = ''
as $$
begin
  if grant_membership.user_id = herald_public.current_user_id()
     or exists (select 1 from herald_private.operators o where o.user_id = grant_membership.user_id) then
    raise exception 'A platform operator cannot grant itself a membership: a tenant''s owner or admin adds its people'
      using errcode = 'OPSLF';
  end if;
  insert into herald_public.memberships (tenant_id, user_id, role)
  values (grant_membership.tenant_id, grant_membership.user_id, grant_membership.role)
  on conflict on constraint memberships_pkey do update set role = excluded.role
    where herald_public.memberships.role is distinct from excluded.role;
end;
$$;

create or replace function herald_private.revoke_membership(tenant_id uuid, user_id uuid) returns boolean
  language sql volatile strict security definer
  set search_path = ''
as $$
  with removed as (
    delete from herald_public.memberships m
     where m.tenant_id = revoke_membership.tenant_id and m.user_id = revoke_membership.user_id
    returning 1
  )
  select exists (select 1 from removed);
$$;

revoke execute on function herald_private.register_operator(uuid), herald_private.grant_membership(uuid, uuid, text),
  herald_private.revoke_membership(uuid, uuid) from public;
grant execute on function herald_private.register_operator(uuid), herald_private.grant_membership(uuid, uuid, text),
  herald_private.revoke_membership(uuid, uuid) to :DATABASE_AUTHENTICATOR;

comment on table herald_public.memberships is
  E'@behavior -insert -update -delete\nA user''s role within one tenant. Granted by operators through `herald user create` (audited in the tenant''s log).';

--! split: 202-login-limits-per-account-and-client.sql
-- Password sign-in limits that an attacker cannot turn against the account's
-- owner. Before, ten wrong passwords a minute for an email, from anywhere,
-- refused the real user too. Now:
--   * per (account, client address): 10 attempts a minute;
--   * per client address: 60 a minute (password spraying across accounts);
--   * per account, for clients that have never signed in to it: a slower
--     curve, a bucket of 30 attempts that drains 2 a minute. Clients the
--     account signed in from successfully in the last 90 days skip it, so an
--     attacker rotating addresses locks out only other unknown addresses.
-- Accounts and clients are named by keyed hashes Herald computes (no email, and no
-- address next to an account).
--
-- Idempotent: re-applied on every `db watch` save.

create unlogged table if not exists herald_private.login_buckets (
  scope text primary key,
  level double precision not null,
  updated_at timestamptz not null
);

create table if not exists herald_private.login_known_clients (
  -- HMAC(account hash ‖ client address), from Herald (src/api/login-limits.ts).
  account_client text primary key,
  last_success_at timestamptz not null
);
create index if not exists login_known_clients_stale on herald_private.login_known_clients (last_success_at);

-- One attempt against a leaky bucket: `capacity` attempts, draining
-- `per_minute`. Answers 0 while within it, else the seconds until one more
-- fits. Refused attempts count too (hammering keeps it full), up to twice the
-- capacity, so it empties within a bounded time once they stop. Buckets
-- drained for an hour are swept a few at a time by new ones.
create or replace function herald_private.admit_bucket(scope text, capacity integer, per_minute double precision) returns integer
  language plpgsql volatile security definer
  set search_path = ''
as $$
declare
  v_now timestamptz := pg_catalog.clock_timestamp();
  v_level double precision;
begin
  perform pg_catalog.set_config('synchronous_commit', 'off', true);
  insert into herald_private.login_buckets as b (scope, level, updated_at)
  values (admit_bucket.scope, 1, v_now)
  on conflict on constraint login_buckets_pkey do update
    set level = least(2 * admit_bucket.capacity,
                      greatest(0, b.level - extract(epoch from (v_now - b.updated_at)) / 60 * admit_bucket.per_minute) + 1),
        updated_at = v_now
  returning b.level into v_level;
  if v_level = 1 then
    delete from herald_private.login_buckets o
     where o.scope = any (array(select s.scope from herald_private.login_buckets s
                                 where s.updated_at < v_now - interval '1 hour'
                                 limit 20 for update skip locked));
  end if;
  if v_level <= admit_bucket.capacity then
    return 0;
  end if;
  return greatest(1, ceil((v_level - admit_bucket.capacity) / admit_bucket.per_minute * 60))::integer;
end;
$$;

-- One sign-in attempt: the seconds to wait, or 0 to go ahead.
create or replace function herald_private.admit_login(account text, client text, account_client text) returns integer
  language plpgsql volatile security definer
  set search_path = ''
as $$
declare
  v_wait integer;
begin
  v_wait := greatest(herald_private.admit('login:pair:' || admit_login.account_client, 10),
                     herald_private.admit('login:client:' || admit_login.client, 60));
  if not exists (select 1 from herald_private.login_known_clients k
                  where k.account_client = admit_login.account_client
                    and k.last_success_at > pg_catalog.now() - interval '90 days') then
    v_wait := greatest(v_wait, herald_private.admit_bucket('login:account:' || admit_login.account, 30, 2));
  end if;
  return v_wait;
end;
$$;

-- After a successful sign-in: this client is the account's own for 90 days.
create or replace function herald_private.remember_login_client(account_client text) returns void
  language sql volatile security definer
  set search_path = ''
as $$
  delete from herald_private.login_known_clients o
   where o.account_client = any (array(select s.account_client from herald_private.login_known_clients s
                                        where s.last_success_at < pg_catalog.now() - interval '90 days'
                                        limit 20 for update skip locked));
  insert into herald_private.login_known_clients as k (account_client, last_success_at)
  values (remember_login_client.account_client, pg_catalog.now())
  on conflict on constraint login_known_clients_pkey do update set last_success_at = excluded.last_success_at;
$$;

revoke execute on function herald_private.admit_bucket(text, integer, double precision),
  herald_private.admit_login(text, text, text), herald_private.remember_login_client(text) from public;
grant execute on function herald_private.admit_login(text, text, text), herald_private.remember_login_client(text)
  to :DATABASE_AUTHENTICATOR;

--! split: 300-fan-out.sql
-- Fan-out (replaces 000006's herald_hidden.fan_out_batch: same arguments,
-- results, deliveries and delivery__send jobs).
--
-- Every batch used to select the *whole* rest of the audience (the union of
-- all contacts, the message's contacts, lists and tags after the cursor), sort
-- it and keep the first batch_size: a broadcast to N contacts in batches of B
-- read about N²/2B rows. Now each source yields only its own first batch_size
-- rows after the cursor, through the index that orders it (contacts' primary
-- key, list_members' primary key, contact_tags_by_tag), so a batch costs the
-- same at the end of a large audience as at its start. (Index-only reads are
-- cheap: at 100,000 recipients this was ~1 µs a delivery, within the noise
-- of a shared machine; it grows with the audience.)
--
-- Measured per delivery, backend CPU (bench/fan-out.ts): the statement shape
-- is not where the rest goes. With every trigger on deliveries off, a batch
-- costs ~24 µs a delivery (mostly the insert: a fillfactor-70 heap, five
-- indexes) against ~7 µs a row for a bare INSERT … SELECT into an unindexed
-- table; the composite foreign keys' per-row checks add ~6 µs
-- (message) and ~6 µs (contact); the two foreign keys still null at this point
-- and the statement-level trigger that queues the batch's jobs in one
-- add_jobs call cost about nothing.

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
          and case v_message.channel when 'sms' then c.sms_subscribed
                                     when 'whatsapp' then c.whatsapp_subscribed
                                     else c.email_subscribed end
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

--! split: 301-contacts-upsert.sql
-- Contact upserts, cheaper per row (replaces 000002's
-- herald_hidden.upsert_contacts: same arguments, results and rows).
--
-- Repeats inside a batch used to be found by partitioning on
-- coalesce(identifier, <a fresh random uuid>), so that absent identifiers
-- never matched one another: four gen_random_uuid() calls per item, each
-- drawing from the strong random source, ~8% of the database's CPU time in a
-- CSV import. Now an absent identifier simply takes no part: its window
-- value is null, and least() ignores it.

create or replace function herald_hidden.upsert_contacts(contacts jsonb, mode text default 'upsert')
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
             -- A later item naming the same contact, or repeating an identifier,
             -- as an earlier one. (least() skips the nulls: an absent identifier
             -- repeats nothing.)
             when m.ordinal > least(
                    case when m.phone_hash is not null then min(m.ordinal) over (partition by m.phone_hash) end,
                    case when m.email_hash is not null then min(m.ordinal) over (partition by m.email_hash) end,
                    case when m.external_id is not null then min(m.ordinal) over (partition by m.external_id) end,
                    case when m.target_id is not null then min(m.ordinal) over (partition by m.target_id) end)
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

--! split: 400-delivery-engine.sql
--
-- The delivery engine's set-based steps (src/messages/claim.ts): pacing slots
-- and monthly-cap places reserved for a whole run of deliveries in one
-- statement each, instead of one call per delivery.
--
-- Idempotent: graphile-migrate re-runs it in watch mode.

drop function if exists herald_private.reserve_send_slots(uuid, interval, text, interval, interval, integer);
drop function if exists herald_hidden.count_toward_cap_many(integer);
drop function if exists herald_hidden.uncount_toward_cap_many(date, integer);

-- Up to `wanted` consecutive send slots for the tenant and (if given) the
-- sender, as many as start within `horizon`: the first at `first_at`, each
-- next one `step` later (the slower of the two paces). `granted` may be 0:
-- then nothing is reserved, and `first_at` says when the next slot is free.
-- As reserve_send_slot (000006): rows locked tenant first, then sender, in
-- every call, on the worker's owner connection in a one-statement
-- transaction, so the pace holds across worker processes.
create function herald_private.reserve_send_slots(tenant uuid, tenant_step interval, sender text, sender_step interval,
  horizon interval, wanted integer, out first_at timestamptz, out step interval, out granted integer)
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_tenant_at timestamptz;
  v_sender_at timestamptz := '-infinity';
  v_room interval;
begin
  insert into herald_private.send_pacing (scope, next_at) values ('tenant:' || tenant, '-infinity') on conflict do nothing;
  select p.next_at into v_tenant_at from herald_private.send_pacing p where p.scope = 'tenant:' || tenant for update;
  if sender is not null then
    insert into herald_private.send_pacing (scope, next_at) values ('sender:' || sender, '-infinity') on conflict do nothing;
    select p.next_at into v_sender_at from herald_private.send_pacing p where p.scope = 'sender:' || sender for update;
  end if;
  first_at := greatest(pg_catalog.clock_timestamp(), v_tenant_at, v_sender_at);
  step := greatest(tenant_step, coalesce(sender_step, tenant_step));
  v_room := pg_catalog.clock_timestamp() + horizon - first_at;
  if v_room < interval '0' then
    granted := 0;
  elsif step <= interval '0' then
    granted := greatest(wanted, 0);
  else
    granted := least(greatest(wanted, 0),
                     floor(extract(epoch from v_room) / extract(epoch from step))::integer + 1);
  end if;
  if granted = 0 then
    return;
  end if;
  update herald_private.send_pacing p set next_at = first_at + step * (granted - 1) + tenant_step
   where p.scope = 'tenant:' || tenant;
  if sender is not null then
    update herald_private.send_pacing p set next_at = first_at + step * (granted - 1) + sender_step
     where p.scope = 'sender:' || sender;
  end if;
end;
$$;

-- Counts up to `wanted` messages toward this month, as many as the cap allows:
-- `granted` of them, in `month`. The row lock is held until the caller
-- commits, as for count_toward_cap (000006).
create function herald_hidden.count_toward_cap_many(wanted integer, out month date, out granted integer)
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_tenant uuid := herald_public.current_tenant_id();
  v_cap integer;
  v_used integer;
begin
  month := pg_catalog.date_trunc('month', now() at time zone 'UTC')::date;
  select s.monthly_message_cap into v_cap from herald_public.tenant_settings s where s.tenant_id = v_tenant;
  insert into herald_hidden.monthly_usage (tenant_id, month) values (v_tenant, month) on conflict do nothing;
  select u.messages into v_used from herald_hidden.monthly_usage u
   where u.tenant_id = v_tenant and u.month = count_toward_cap_many.month for update;
  granted := greatest(least(wanted, coalesce(v_cap - v_used, wanted)), 0);
  if granted > 0 then
    update herald_hidden.monthly_usage u set messages = u.messages + granted
     where u.tenant_id = v_tenant and u.month = count_toward_cap_many.month;
  end if;
end;
$$;

-- `count` messages counted in `month` but certainly never accepted give their places back.
create function herald_hidden.uncount_toward_cap_many(month date, count integer) returns void
  language sql volatile
  set search_path = ''
as $$
  update herald_hidden.monthly_usage u set messages = greatest(u.messages - uncount_toward_cap_many.count, 0)
   where u.tenant_id = herald_public.current_tenant_id() and u.month = uncount_toward_cap_many.month;
$$;

grant execute on function herald_hidden.count_toward_cap_many(integer), herald_hidden.uncount_toward_cap_many(date, integer) to :DATABASE_WORKER;

--! split: 401-email-runs-of-a-thousand.sql
-- Email goes to SendGrid in batches of up to 1,000 personalizations (one
-- mail/send request per run the worker claims), so the fan-out queues email in
-- runs of up to 1,000 deliveries per job; SMS and WhatsApp keep runs of 50,
-- which the worker sends one call each, concurrently. Runs are still cut per
-- tenant and per two-second window of planned time, and now per channel too,
-- so that one job never mixes an email batch with text messages.
create or replace function herald_private.tg_deliveries__enqueue() returns trigger
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
              from (select n.tenant_id, n.id, n.run_at, n.channel,
                           floor(extract(epoch from n.run_at) / 2) as window_start,
                           (row_number() over (partition by n.tenant_id, n.channel, floor(extract(epoch from n.run_at) / 2)
                                               order by n.run_at) - 1)
                             / case n.channel when 'email' then 1000 else 50 end as chunk
                      from new_rows n
                     where n.status = 'queued') d
             group by d.tenant_id, d.channel, d.window_start, d.chunk) c));
  return null;
end;
$$;

--! split: 500-status-check.sql
-- Status reconciliation (src/messages/status-check.ts): a `sent` delivery
-- whose final status never came (a status callback lost while Herald was
-- down; providers do not retry them) is looked up at the provider. When it
-- was last looked up, so the next look waits its turn.
alter table herald_public.deliveries add column if not exists status_checked_at timestamptz;
comment on column herald_public.deliveries.status_checked_at is
  E'@behavior -*\nWhen the worker last asked the provider for this delivery''s status, its final report being overdue.';
grant update (status_checked_at) on herald_public.deliveries to :DATABASE_WORKER;

--! split: 600-provider-reports.sql
--
-- Provider reports (Twilio status callbacks, SendGrid events): acknowledged
-- once journaled, applied to deliveries in sets.
--
-- Every SMS brings two or three status callbacks and every email two or more
-- events. Applying each one in the request (lock the delivery, insert its
-- event, update the delivery) made the callback path the cap on sending. Now
-- the webhook verifies the signature, appends what the provider said to
-- herald_hidden.provider_reports (one INSERT for all the requests of a tenant
-- that arrive together, inside the tenant under RLS) and answers once that
-- commits: a report acknowledged is a report stored. An applier
-- (src/webhooks/reports.ts, right after the insert; the provider_reports__sweep
-- task for what a crashed process left behind) takes pending reports oldest
-- first and applies them with herald_hidden.apply_provider_reports, a few
-- set-based statements per batch; the reports leave the journal in the
-- transaction that applies them, so each is applied exactly once.
--
-- Idempotent: graphile-migrate re-runs it in watch mode.

drop function if exists herald_hidden.apply_provider_reports(integer);
drop function if exists herald_hidden.provider_reports_waiting(interval);
drop table if exists herald_hidden.provider_reports cascade;

create table herald_hidden.provider_reports (
  tenant_id uuid not null default herald_public.current_tenant_id()
    references herald_public.tenants on delete cascade,
  -- The order received: reports are applied in it.
  id bigint generated always as identity,
  provider text not null constraint provider_reports_provider check (provider in ('twilio', 'sendgrid')),
  -- Herald's delivery id (the callback URL's, or SendGrid's custom args), else
  -- found by the provider's message id. Not a foreign key: a report may name
  -- a delivery this tenant does not have, and is then kept by nobody.
  delivery_id uuid,
  provider_message_id text constraint provider_reports_provider_message_id_length check (length(provider_message_id) <= 300),
  -- The provider's own word (MessageStatus, SendGrid's event) and what it makes of the delivery (null: nothing).
  event text not null constraint provider_reports_event_length check (length(event) between 1 and 40),
  status text constraint provider_reports_status check (status in ('sent', 'delivered', 'undelivered', 'failed')),
  dedupe_key text not null constraint provider_reports_dedupe_key_length check (length(dedupe_key) between 1 and 200),
  error_code text constraint provider_reports_error_code_length check (length(error_code) <= 50),
  occurred_at timestamptz,
  -- An opt-out the report carries (Twilio 21610; a SendGrid bounce,
  -- unsubscribe or spam report): the address it is about, encrypted under the
  -- tenant's data key like every other address Herald keeps.
  opt_out text constraint provider_reports_opt_out check (opt_out in ('carrier_opt_out', 'bounce', 'email_opt_out')),
  channel text constraint provider_reports_channel check (channel in ('sms', 'whatsapp', 'email')),
  address_encrypted bytea,
  key_version smallint,
  -- Per row (clock_timestamp): the reports of one INSERT keep their order in delivery_events.received_at.
  received_at timestamptz not null default clock_timestamp(),
  primary key (tenant_id, id),
  constraint provider_reports_opt_out_address check ((opt_out is null) = (address_encrypted is null) and (opt_out is null) = (key_version is null)),
  -- As for contacts: a key version still in use cannot be destroyed.
  constraint provider_reports_key_version_fkey foreign key (tenant_id, key_version)
    references herald_private.tenant_data_keys (tenant_id, version)
);
comment on table herald_hidden.provider_reports is
  E'Status callbacks and email events acknowledged to the provider and not yet applied to deliveries.';

alter table herald_hidden.provider_reports enable row level security;
alter table herald_hidden.provider_reports force row level security;
create policy select_worker on herald_hidden.provider_reports for select to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
create policy insert_worker on herald_hidden.provider_reports for insert to :DATABASE_WORKER
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy delete_worker on herald_hidden.provider_reports for delete to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
-- The sweep finds which tenants have reports waiting (tenant and age only).
create policy select_admin on herald_hidden.provider_reports for select to :DATABASE_ADMIN using (true);

grant select, delete on herald_hidden.provider_reports to :DATABASE_WORKER;
grant insert (tenant_id, provider, delivery_id, provider_message_id, event, status, dedupe_key, error_code, occurred_at,
              opt_out, channel, address_encrypted, key_version)
  on herald_hidden.provider_reports to :DATABASE_WORKER;
grant select (tenant_id, received_at) on herald_hidden.provider_reports to :DATABASE_ADMIN;

-- delivery_events keep the time a report was received, not the time it was applied.
grant insert (received_at) on herald_public.delivery_events to :DATABASE_WORKER;

-- Applies up to `max_reports` of the session tenant's waiting reports, oldest
-- first, with the semantics herald_hidden.apply_delivery_event has for one:
-- each (dedupe key) once; a delivery only moves up (queued → sending/unknown
-- → sent → a final status), so a final status that outran the send's answer
-- stays; a report of another provider message than the delivery's (an
-- earlier attempt) is recorded, not applied; one that names no delivery of
-- this tenant is dropped.
-- In a batch, a report is applied when its status ranks above the delivery's
-- and above every earlier valid report's of the batch — what applying them
-- one by one would do.
create function herald_hidden.apply_provider_reports(max_reports integer default 1000)
  returns table (reports_taken integer, reports_applied integer, reports_recorded integer, reports_duplicate integer, reports_not_found integer)
  language plpgsql volatile
  set search_path = ''
  -- Its statements' plans depend on no argument's value: planned once per session, not five times first.
  set plan_cache_mode = force_generic_plan
as $$
declare
  v_tenant uuid := herald_public.current_tenant_id();
  v_reports herald_hidden.provider_reports[];
  v_deliveries uuid[];
  v_opt_outs bigint[];
  v_effect record;
begin
  -- Taken out of the journal in this transaction: gone exactly when their
  -- effects commit. A concurrent applier of the tenant waits for this one on
  -- the rows both chose, and then finds them gone.
  with taken as (
    delete from herald_hidden.provider_reports r
     where r.tenant_id = v_tenant
       and r.id in (select o.id from herald_hidden.provider_reports o
                     where o.tenant_id = v_tenant order by o.id limit apply_provider_reports.max_reports)
    returning r.*
  )
  select coalesce(pg_catalog.array_agg(row(t.*)::herald_hidden.provider_reports order by t.id), '{}') into v_reports from taken t;
  if pg_catalog.cardinality(v_reports) = 0 then
    return query select 0, 0, 0, 0, 0;
    return;
  end if;

  -- Each report's delivery: by Herald's id, else by the provider's message id.
  select pg_catalog.array_agg(
           case when r.delivery_id is not null
                then (select d.id from herald_public.deliveries d where d.tenant_id = v_tenant and d.id = r.delivery_id)
                when r.provider_message_id is not null
                then (select d.id from herald_public.deliveries d
                       where d.tenant_id = v_tenant and d.provider_message_id = r.provider_message_id limit 1)
           end order by r.ordinality)
    into v_deliveries
    from pg_catalog.unnest(v_reports) with ordinality r;

  -- Locked in one order (the sender locks one at a time): what follows reads
  -- them as they are now, and nobody moves them until this commits.
  perform 1 from herald_public.deliveries d
    where d.tenant_id = v_tenant and d.id = any (v_deliveries)
    order by d.id
    for update;

  return query
  with reports as (
    select r.id, r.provider, r.provider_message_id, r.event, r.status, r.dedupe_key, r.error_code, r.occurred_at,
           r.received_at, r.opt_out, v_deliveries[r.ordinality] as delivery_id,
           -- New: no event of the tenant has its key, and it is the first of its key in the batch.
           not exists (select 1 from herald_public.delivery_events e where e.tenant_id = v_tenant and e.dedupe_key = r.dedupe_key)
             and r.id = pg_catalog.min(r.id) over (partition by r.dedupe_key) as fresh
      from pg_catalog.unnest(v_reports) with ordinality r
  ),
  found as (
    select r.*, d.status as initial_status, d.provider_message_id as current_message_id,
           coalesce(herald_hidden.delivery_status_rank(d.status), 99) as initial_rank,
           herald_hidden.delivery_status_rank(r.status) as rank
      from reports r
      join herald_public.deliveries d on d.tenant_id = v_tenant and d.id = r.delivery_id
     where r.fresh
  ),
  named as (
    -- The provider message the delivery is, or becomes (one sent without an
    -- answer): the first report that would move it names it.
    select f.*,
           coalesce(f.current_message_id,
                    (pg_catalog.array_agg(f.provider_message_id)
                       filter (where f.status is not null and f.provider_message_id is not null and f.rank > f.initial_rank)
                       over (partition by f.delivery_id order by f.id rows between unbounded preceding and unbounded following))[1]) as delivery_message_id
      from found f
  ),
  valid as (
    select n.*,
           n.status is not null
             and (n.delivery_message_id is null or n.provider_message_id is null or n.delivery_message_id = n.provider_message_id) as valid
      from named n
  ),
  decided as (
    select v.*,
           v.valid and v.rank > greatest(v.initial_rank,
             pg_catalog.max(case when v.valid then v.rank end)
               over (partition by v.delivery_id order by v.id rows between unbounded preceding and 1 preceding)) as applied
      from valid v
  ),
  told as (
    -- The status the delivery had after each report (the last applied one's
    -- so far, else its own); per delivery, the first applied report's message
    -- id and the last applied error code.
    select k.*,
           coalesce((pg_catalog.array_agg(k.status) filter (where k.applied)
                      over (partition by k.delivery_id order by k.id rows between unbounded preceding and current row)),
                    '{}') as applied_so_far,
           (pg_catalog.array_agg(k.provider_message_id) filter (where k.applied and k.provider_message_id is not null)
              over whole)[1] as first_message_id,
           (pg_catalog.array_agg(k.error_code) filter (where k.applied and k.error_code is not null)
              over (partition by k.delivery_id order by k.id desc rows between unbounded preceding and unbounded following))[1] as last_error_code
      from decided k
    window whole as (partition by k.delivery_id order by k.id rows between unbounded preceding and unbounded following)
  ),
  events as (
    insert into herald_public.delivery_events (delivery_id, provider, event, dedupe_key, error_code, applied, status, occurred_at, received_at)
    select t.delivery_id, t.provider, t.event, t.dedupe_key, t.error_code, t.applied,
           coalesce(t.applied_so_far[pg_catalog.cardinality(t.applied_so_far)], t.initial_status), t.occurred_at, t.received_at
      from told t
     order by t.id
    on conflict on constraint delivery_events_dedupe_unique do nothing
    returning 1
  ),
  finals as (
    -- Per delivery, the last report applied.
    select distinct on (t.delivery_id) t.delivery_id, t.status, t.provider, t.event, t.error_code, t.first_message_id, t.last_error_code
      from told t
     where t.applied
     order by t.delivery_id, t.id desc
  ),
  moved as (
    update herald_public.deliveries d
       set status = f.status,
           provider_message_id = coalesce(d.provider_message_id, f.first_message_id),
           error_code = coalesce(f.last_error_code, d.error_code),
           reason = case when f.status in ('failed', 'undelivered')
                         then 'reported by ' || f.provider || ': ' || f.event || coalesce(' ' || f.error_code, '')
                         when d.status in ('sending', 'unknown') then null
                         else d.reason end,
           sent_at = coalesce(d.sent_at, now()),
           completed_at = case when herald_hidden.delivery_status_rank(f.status) = 3 then now() else d.completed_at end
      from finals f
     where d.tenant_id = v_tenant and d.id = f.delivery_id
    returning 1
  )
  select pg_catalog.cardinality(v_reports),
         (select count(*)::integer from told t where t.applied) + 0 * (select count(*)::integer from moved) + 0 * (select count(*)::integer from events),
         (select count(*)::integer from told t where not t.applied),
         (select count(*)::integer from reports r where not r.fresh),
         (select count(*)::integer from reports r where r.fresh and r.delivery_id is null);

  -- Opt-outs the provider reported, each once (a repeated report is a duplicate), applied or not.
  select pg_catalog.array_agg(r.id) into v_opt_outs
    from pg_catalog.unnest(v_reports) r
   where r.opt_out is not null
     and r.id = (select pg_catalog.min(s.id) from pg_catalog.unnest(v_reports) s where s.dedupe_key = r.dedupe_key)
     and not exists (select 1 from herald_public.delivery_events e
                      where e.tenant_id = v_tenant and e.dedupe_key = r.dedupe_key and e.received_at < r.received_at);
  for v_effect in
    select r.opt_out, r.channel, r.event, r.error_code, herald_hidden.decrypt_pii(r.address_encrypted, r.key_version) as address
      from pg_catalog.unnest(v_reports) r where r.id = any (v_opt_outs) order by r.id
  loop
    if v_effect.opt_out = 'carrier_opt_out' then
      perform herald_hidden.record_opt_out('phone', v_effect.address, v_effect.channel, 'carrier', v_effect.error_code);
    elsif v_effect.opt_out = 'bounce' then
      perform herald_public.add_suppression('email', v_effect.address, 'bounce', 'sendgrid: bounce');
    else
      perform herald_hidden.record_opt_out('email', v_effect.address, 'email', 'email_provider', v_effect.event);
    end if;
  end loop;
end;
$$;
comment on function herald_hidden.apply_provider_reports(integer) is
  E'Applies the session tenant''s oldest waiting provider reports (at most `max_reports`) to its deliveries, and removes them from the journal.';
grant execute on function herald_hidden.apply_provider_reports(integer) to :DATABASE_WORKER;

-- For the sweep (as herald_admin): the tenants with reports waiting longer
-- than `older_than` — what a process that acknowledged them and died left.
create function herald_hidden.provider_reports_waiting(older_than interval)
  returns table (tenant_id uuid, waiting bigint)
  language sql stable
  set search_path = ''
as $$
  select r.tenant_id, count(*) from herald_hidden.provider_reports r
   where r.received_at < now() - provider_reports_waiting.older_than
   group by r.tenant_id;
$$;
grant execute on function herald_hidden.provider_reports_waiting(interval) to :DATABASE_ADMIN;

--! split: 610-inbound-in-sets.sql
--
-- Inbound messages received in sets.
--
-- The webhook groups the messages of one tenant that arrive together
-- (src/webhooks/inbound-batches.ts). receive_inbound_batch used to receive
-- them one by one, each in a subtransaction running receive_inbound's ten or
-- so statements: PostgreSQL spent most of a message's time starting up
-- executors. Now a batch costs the same few statements whatever its size:
-- one that finds unknown senders (and, if there are any, one INSERT of their
-- contacts); one that stores every message (one INSERT); the answers; and,
-- only when the batch holds keywords, the tenant's replies and one statement
-- each for consent events, flags and suppressions, applied as sets.
--
-- Same rules as receive_inbound, which stays for single messages. Within one
-- batch, a contact's keywords take effect in the order received (the last
-- STOP or START of a channel sets its flag; of a phone, whether its opt-out
-- suppression stays); whether YES is an answer rather than an opt-in is
-- judged on the contact as it was before the batch. A statement that fails
-- fails the batch, and the webhook receives its messages again one at a time,
-- so that one bad message takes no other with it.
--
-- Idempotent: graphile-migrate re-runs it in watch mode.

create or replace function herald_hidden.receive_inbound_batch(messages jsonb)
  returns table (ordinal integer, inbound_message_id uuid, contact_id uuid, duplicate boolean, keyword text, reply text, error_code text)
  language plpgsql volatile
  set search_path = ''
  -- Its statements' plans depend on no argument's value: planned once per session, not five times first.
  set plan_cache_mode = force_generic_plan
as $$
declare
  v_tenant uuid := herald_public.current_tenant_id();
  v_key_version smallint := herald_hidden.current_data_key_version();
  v_key text := herald_hidden.data_key(v_key_version);
  v_hash_version smallint := herald_hidden.current_hash_key_version();
  v_replies herald_public.keyword_replies;
  v_inserted uuid[];
  v_unknown jsonb;
  v_keywords jsonb;
  v_phones jsonb;
begin
  if pg_catalog.jsonb_array_length(messages) > 500 then
    raise exception 'at most 500 messages in one batch' using errcode = '22023';
  end if;

  if exists (select 1 from pg_catalog.jsonb_array_elements(messages) m where m ->> 'keyword' is not null) then
    if exists (select 1 from herald_public.tenants t where t.id = v_tenant and t.status = 'suspended') then
      -- An operator suspended the tenant: its keywords still work, but it says
      -- nothing of its own (its texts may be why it was suspended).
      v_replies := row('This service is not available at the moment. Reply STOP to unsubscribe.',
                       'You are unsubscribed and will receive no more messages from this number.',
                       'You are resubscribed.')::herald_public.keyword_replies;
    else
      select r.* into v_replies
        from herald_public.tenant_settings s, herald_public.tenant_settings_keyword_replies(s) r where s.tenant_id = v_tenant;
    end if;
  end if;

  -- Unknown senders become contacts, flagged as created by their message (a
  -- message already received, or to a number not the tenant's, creates none).
  -- Two batches creating one at once: one insert wins, the other finds it below.
  -- (Only when there is one: the contacts' audit trigger runs for every INSERT statement.)
  -- (Materialized, with the hashes computed once: inlined, the hash would be
  -- an expression of the outer row, and each contact hashed to compare.)
  with candidates as materialized (
    select distinct on (m.from_phone) m.from_phone, m.channel, herald_hidden.pii_hashes('phone', m.from_phone) as hashes
      from rows from (pg_catalog.jsonb_to_recordset(messages) as (channel text, to_number text, from_phone text, provider_message_id text)) with ordinality as m(channel, to_number, from_phone, provider_message_id, n)
     where m.from_phone is not null
       and exists (select 1 from herald_public.sender_numbers s
                    where s.tenant_id = v_tenant and s.phone_number = m.to_number and s.channel = m.channel)
       and not exists (select 1 from herald_public.inbound_messages i
                        where i.tenant_id = v_tenant and i.provider_message_id = m.provider_message_id)
     order by m.from_phone, m.n
  )
  select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('from_phone', c.from_phone, 'channel', c.channel)) into v_unknown
    from candidates c
   where not exists (select 1 from herald_public.contacts x
                      where x.tenant_id = v_tenant and x.phone_hash = any (c.hashes));
  if v_unknown is not null then
    insert into herald_public.contacts (phone_encrypted, phone_hash, key_version, hash_version, created_by_inbound, whatsapp_subscribed)
    select herald_hidden.encrypt_pii(p.from_phone, v_key), herald_hidden.pii_hash('phone', p.from_phone, v_hash_version),
           v_key_version, v_hash_version, true,
           -- Someone who writes on WhatsApp has opened that conversation.
           p.channel = 'whatsapp'
      from pg_catalog.jsonb_to_recordset(v_unknown) as p(from_phone text, channel text)
    on conflict (tenant_id, phone_hash) do nothing;
  end if;

  with m as (
    select m.*
      from rows from (pg_catalog.jsonb_to_recordset(messages) as (channel text, to_number text, from_phone text, body text, provider_message_id text, media_count integer, keyword text, keyword_word text)) with ordinality as m(channel, to_number, from_phone, body, provider_message_id, media_count, keyword, keyword_word, n)
  ),
  fresh as materialized (
    -- (Materialized: the hashes are values the contact and suppression indexes are probed with.)
    -- To one of the tenant's numbers, not received before, the first of its MessageSid in the batch.
    select m.*, s.id as sender_number_id, s.provider_account_id,
           case when m.from_phone is not null then herald_hidden.pii_hashes('phone', m.from_phone) end as hashes
      from m
      join herald_public.sender_numbers s on s.tenant_id = v_tenant and s.phone_number = m.to_number and s.channel = m.channel
     where not exists (select 1 from herald_public.inbound_messages i
                        where i.tenant_id = v_tenant and i.provider_message_id = m.provider_message_id)
       and m.n = (select pg_catalog.min(o.n) from m o where o.provider_message_id = m.provider_message_id)
  ),
  senders as (
    select f.*, c.id as contact, c.subscribed
      from fresh f
      left join lateral (
        select c.id, case f.channel when 'sms' then c.sms_subscribed else c.whatsapp_subscribed end as subscribed
          from herald_public.contacts c
         where c.tenant_id = v_tenant and c.phone_hash = any (f.hashes)
         limit 1
      ) c on true
  ),
  decided as (
    select s.*,
           case
             -- Keywords need someone to apply to.
             when s.contact is null then null
             -- "YES" answers questions ("Reply YES to confirm"): from a contact
             -- who is subscribed and not suppressed it is an ordinary message.
             when s.keyword = 'start' and s.keyword_word = 'YES' and s.subscribed
                  and not exists (select 1 from herald_public.suppressions x
                                   where x.tenant_id = v_tenant and x.kind = 'phone' and x.address_hash = any (s.hashes))
               then null
             else s.keyword
           end as applied_keyword
      from senders s
  ),
  stored as (
    insert into herald_public.inbound_messages (channel, sender_number_id, to_number, contact_id, from_encrypted, body_encrypted,
                                                key_version, media_count, keyword, auto_reply, provider_message_id, provider_account_id, account)
    select d.channel, d.sender_number_id, d.to_number, d.contact,
           herald_hidden.encrypt_pii(coalesce(d.from_phone, '(unknown)'), v_key), herald_hidden.encrypt_pii(coalesce(d.body, ''), v_key),
           v_key_version, coalesce(d.media_count, 0), d.applied_keyword,
           case d.applied_keyword when 'stop' then v_replies.stop when 'start' then v_replies.start when 'help' then v_replies.help end,
           d.provider_message_id, d.provider_account_id,
           case when d.provider_account_id is null then 'system' else 'tenant' end
      from decided d
     order by d.n
    -- The same message in a concurrent batch: the other one received it.
    on conflict on constraint inbound_messages_provider_message_unique do nothing
    returning id, provider_message_id
  ),
  keywords as (
    -- The keywords of the messages stored now, in the order received.
    select d.n, d.contact, d.channel, d.from_phone, d.applied_keyword, d.keyword_word, s.id as inbound_id
      from decided d join stored s on s.provider_message_id = d.provider_message_id
     where d.applied_keyword is not null
  ),
  keyword_rows as (
    select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
             'n', k.n, 'contact', k.contact, 'channel', k.channel, 'from_phone', k.from_phone,
             'applied_keyword', k.applied_keyword, 'keyword_word', k.keyword_word, 'inbound_id', k.inbound_id)) as rows
      from keywords k
  )
  select (select pg_catalog.array_agg(s.id) from stored s), (select r.rows from keyword_rows r) into v_inserted, v_keywords;

  -- The keywords, as sets (each statement only when there is something for it:
  -- the audit triggers of contacts and suppressions run for every statement).
  if v_keywords is not null then
    insert into herald_public.consent_events (contact_id, channel, action, source, detail, inbound_message_id)
    select k.contact, k.channel,
           case k.applied_keyword when 'stop' then 'opt_out' when 'start' then 'opt_in' else 'help' end,
           'keyword', pg_catalog.left(k.keyword_word, 100), k.inbound_id
      from pg_catalog.jsonb_to_recordset(v_keywords) as k(n bigint, contact uuid, channel text, applied_keyword text, keyword_word text, inbound_id uuid)
     order by k.n;

  end if;
  if v_keywords is not null and pg_catalog.jsonb_path_exists(v_keywords, '$[*] ? (@.applied_keyword == "stop" || @.applied_keyword == "start")') then
    -- The channel's flag covers every number of the tenant: the last STOP or START of each contact and channel sets it.
    with flags as (
      select distinct on (k.contact, k.channel) k.contact, k.channel, k.applied_keyword = 'start' as subscribed
        from pg_catalog.jsonb_to_recordset(v_keywords) as k(n bigint, contact uuid, channel text, applied_keyword text)
       where k.applied_keyword in ('stop', 'start')
       order by k.contact, k.channel, k.n desc
    )
    update herald_public.contacts c
       set sms_subscribed = coalesce((select f.subscribed from flags f where f.contact = c.id and f.channel = 'sms'), c.sms_subscribed),
           whatsapp_subscribed = coalesce((select f.subscribed from flags f where f.contact = c.id and f.channel = 'whatsapp'), c.whatsapp_subscribed)
     where c.tenant_id = v_tenant and c.id in (select f.contact from flags f);

    -- An SMS STOP also suppresses the phone (it outlives the contact and
    -- blocks WhatsApp too); a START (either channel) lifts what the contact's
    -- own opt-outs put there. The last of them for each phone decides.
    select pg_catalog.jsonb_agg(pg_catalog.to_jsonb(p)) into v_phones
      from (select distinct on (k.contact) k.from_phone, k.keyword_word, k.applied_keyword = 'stop' as suppress
              from pg_catalog.jsonb_to_recordset(v_keywords) as k(n bigint, contact uuid, channel text, from_phone text, applied_keyword text, keyword_word text)
             where (k.applied_keyword = 'stop' and k.channel = 'sms') or k.applied_keyword = 'start'
             order by k.contact, k.n desc) p;
    if exists (select 1 from pg_catalog.jsonb_to_recordset(v_phones) as p(suppress boolean) where p.suppress) then
      insert into herald_public.suppressions (kind, address_encrypted, address_hash, key_version, hash_version, reason, note)
      select 'phone', herald_hidden.encrypt_pii(p.from_phone, v_key), herald_hidden.pii_hash('phone', p.from_phone, v_hash_version),
             v_key_version, v_hash_version, 'unsubscribe', 'keyword: ' || p.keyword_word
        from pg_catalog.jsonb_to_recordset(v_phones) as p(from_phone text, keyword_word text, suppress boolean)
       where p.suppress
      on conflict (tenant_id, kind, address_hash) do nothing;
    end if;
    if exists (select 1 from pg_catalog.jsonb_to_recordset(v_phones) as p(suppress boolean) where not p.suppress) then
      delete from herald_public.suppressions x
       using pg_catalog.jsonb_to_recordset(v_phones) as p(from_phone text, suppress boolean)
       where not p.suppress and x.tenant_id = v_tenant and x.kind = 'phone'
         and x.address_hash = any (herald_hidden.pii_hashes('phone', p.from_phone)) and x.reason in ('unsubscribe', 'carrier_opt_out');
    end if;
  end if;

  -- The answers, from what is stored now (a fresh snapshot: a concurrent
  -- batch's copy of a message is visible here). Ordinals from 0, as given.
  return query
  select (m.n - 1)::integer, i.id, i.contact_id,
         case when i.id is null then null else not (i.id = any (coalesce(v_inserted, '{}'))
              and m.n = (select pg_catalog.min(o.n) from rows from (pg_catalog.jsonb_to_recordset(messages) as (provider_message_id text)) with ordinality as o(provider_message_id, n)
                          where o.provider_message_id = m.provider_message_id)) end,
         i.keyword, i.auto_reply,
         case when s.id is null then 'NTFND' end
    from rows from (pg_catalog.jsonb_to_recordset(messages) as (channel text, to_number text, provider_message_id text)) with ordinality as m(channel, to_number, provider_message_id, n)
    left join herald_public.sender_numbers s on s.tenant_id = v_tenant and s.phone_number = m.to_number and s.channel = m.channel
    left join herald_public.inbound_messages i on s.id is not null and i.tenant_id = v_tenant and i.provider_message_id = m.provider_message_id
   order by m.n;
end;
$$;
comment on function herald_hidden.receive_inbound_batch(jsonb) is
  E'Stores a batch of inbound messages for the session''s tenant (one INSERT), applies their keywords as sets, and returns each one''s reply (or NTFND when its number is not the tenant''s).';
grant execute on function herald_hidden.receive_inbound_batch(jsonb) to :DATABASE_WORKER;

--! split: 700-every-granted-update-has-its-policy.sql
--
-- Every privilege a request role holds on a table has a policy for that
-- command and role (test/catalog.test.ts checks it from the catalog). Under
-- forced RLS a privilege without one is worse than none: the statement runs,
-- matches no row and reports success.
--

-- sender_numbers.messages_per_second (000006): members and operators were
-- granted UPDATE of a number's pace, but no UPDATE policy existed, so the
-- update silently changed nothing. A number's pace is managed like the number
-- itself: by the tenant's owners and admins (as insert_member and
-- delete_member), and by operators, who assign the system account's numbers.
drop policy if exists update_member on herald_public.sender_numbers;
create policy update_member on herald_public.sender_numbers for update to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()) and (select herald_hidden.current_user_is_tenant_admin()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
comment on policy update_member on herald_public.sender_numbers is
  E'A tenant''s owners and admins change their own numbers'' pace (messages_per_second, the only column granted).';

drop policy if exists update_admin on herald_public.sender_numbers;
create policy update_admin on herald_public.sender_numbers for update to :DATABASE_ADMIN
  using (true) with check (true);
comment on policy update_admin on herald_public.sender_numbers is
  E'Operators change any number''s pace (messages_per_second, the only column granted).';

-- tags and lists (000002): the worker was granted UPDATE of their names, with
-- no policy. No task renames a tag or a list (the CSV import creates missing
-- ones with ON CONFLICT DO NOTHING, which needs no UPDATE): the grant goes.
revoke update on herald_public.tags, herald_public.lists from :DATABASE_WORKER;
