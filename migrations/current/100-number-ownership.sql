-- Numbers a tenant provably owns. A sender number is `pending` until the
-- sender_numbers__verify task has asked the provider, under the credentials of
-- the account the number names (the system's when none), whether that account
-- holds it: Twilio's IncomingPhoneNumbers for SMS, the WhatsApp senders
-- (Messaging v2 Channels/Senders) for `whatsapp`. Only `verified` numbers send
-- (herald_hidden.sender_refusal), receive and route inbound
-- (herald_private.inbound_number_owner). A number is unique across tenants
-- only among verified rows: a squatter's pending or failed claim never blocks
-- the owner, and registering tells nobody whether another tenant claimed it.
--
-- Idempotent: re-applied on every `db watch` save.

drop table if exists herald_hidden.sender_number_checks cascade;
drop function if exists herald_private.record_sender_number_check(uuid, boolean, text, jsonb);
drop function if exists herald_private.add_provider_number(uuid, text, text, jsonb);
drop function if exists herald_private.remove_released_number(uuid);
drop function if exists herald_private.tg_sender_number_checks__apply();

alter table herald_public.sender_numbers
  add column if not exists status text not null default 'pending',
  add column if not exists verified_at timestamptz,
  add column if not exists last_checked_at timestamptz,
  add column if not exists failure_reason text,
  add column if not exists verify_requested_at timestamptz,
  add column if not exists provider_sid text,
  add column if not exists friendly_name text,
  add column if not exists sms_url text,
  add column if not exists status_callback_url text,
  add column if not exists webhooks_elsewhere boolean;

alter table herald_public.sender_numbers drop constraint if exists sender_numbers_status;
alter table herald_public.sender_numbers add constraint sender_numbers_status
  check (status in ('pending', 'verified', 'failed'));
alter table herald_public.sender_numbers drop constraint if exists sender_numbers_verified_at;
alter table herald_public.sender_numbers add constraint sender_numbers_verified_at
  check ((status = 'verified') = (verified_at is not null));
alter table herald_public.sender_numbers drop constraint if exists sender_numbers_failure_reason_length;
alter table herald_public.sender_numbers add constraint sender_numbers_failure_reason_length
  check (length(failure_reason) <= 500);
alter table herald_public.sender_numbers drop constraint if exists sender_numbers_provider_fields_length;
alter table herald_public.sender_numbers add constraint sender_numbers_provider_fields_length
  check (length(provider_sid) <= 64 and length(friendly_name) <= 200
         and length(sms_url) <= 2000 and length(status_callback_url) <= 2000);

comment on column herald_public.sender_numbers.status is
  E'`pending` until the provider confirms that the number''s account holds it, then `verified` (it sends, receives and routes inbound) or `failed` (see `failureReason`).';
comment on column herald_public.sender_numbers.verified_at is E'When the provider last confirmed the number (null unless verified).';
comment on column herald_public.sender_numbers.last_checked_at is E'When Herald last asked the provider about the number.';
comment on column herald_public.sender_numbers.failure_reason is E'Why the number is not (or not yet) verified, in words about this tenant''s own account only.';
comment on column herald_public.sender_numbers.verify_requested_at is E'@behavior -*';
comment on column herald_public.sender_numbers.provider_sid is E'The provider''s id of the number (Twilio PN… / WhatsApp sender XE…), as last seen.';
comment on column herald_public.sender_numbers.friendly_name is E'The number''s friendly name at the provider, as last seen.';
comment on column herald_public.sender_numbers.sms_url is E'Where the provider posts texts to this number, as last seen.';
comment on column herald_public.sender_numbers.status_callback_url is E'Where the provider posts status callbacks for this number, as last seen.';
comment on column herald_public.sender_numbers.webhooks_elsewhere is
  E'True when the number''s SmsUrl or StatusCallback at the provider is not Herald''s (HERALD_PUBLIC_URL): texts to it do not reach Herald. `configureSenderNumberWebhooks` fixes it. Null: not known.';

-- A tenant claims a number once; across tenants only a verified number is unique.
alter table herald_public.sender_numbers drop constraint if exists sender_numbers_number_key;
drop index if exists herald_public.sender_numbers_number_key;
alter table herald_public.sender_numbers drop constraint if exists sender_numbers_tenant_number_key;
alter table herald_public.sender_numbers add constraint sender_numbers_tenant_number_key
  unique (tenant_id, phone_number, channel);
comment on constraint sender_numbers_tenant_number_key on herald_public.sender_numbers is E'@behavior -*';
create unique index sender_numbers_number_key on herald_public.sender_numbers (phone_number, channel)
  where status = 'verified';
comment on index herald_public.sender_numbers_number_key is E'@behavior -*';

comment on table herald_public.sender_numbers is
  E'@behavior -update\nA phone number the tenant sends SMS or WhatsApp from. It is `pending` until the provider confirms that the account holds it; only verified numbers send, receive and route inbound.';

-- Verification is queued when a number is registered and when it is asked for
-- (verifySenderNumber): one job per number at a time.
create or replace function herald_private.queue_sender_number_check(tenant_id uuid, number_id uuid, delay interval default '0')
  returns void
  language plpgsql volatile security definer
  set search_path = ''
as $$
begin
  perform graphile_worker.add_job(
    'sender_numbers__verify',
    pg_catalog.json_build_object('tenant_id', queue_sender_number_check.tenant_id, 'id', queue_sender_number_check.number_id),
    run_at := pg_catalog.now() + queue_sender_number_check.delay,
    max_attempts := 25,
    job_key := 'sender_number_verify:' || queue_sender_number_check.number_id::text,
    job_key_mode := 'replace');
end;
$$;
revoke all on function herald_private.queue_sender_number_check(uuid, uuid, interval) from public;

create or replace function herald_private.tg_sender_numbers__queue_check() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
begin
  perform herald_private.queue_sender_number_check(new.tenant_id, new.id);
  return new;
end;
$$;

drop trigger if exists _500_queue_check on herald_public.sender_numbers;
create trigger _500_queue_check after insert on herald_public.sender_numbers
  for each row when (new.status = 'pending') execute function herald_private.tg_sender_numbers__queue_check();
drop trigger if exists _510_queue_recheck on herald_public.sender_numbers;
create trigger _510_queue_recheck after update of verify_requested_at on herald_public.sender_numbers
  for each row when (new.verify_requested_at is distinct from old.verify_requested_at)
  execute function herald_private.tg_sender_numbers__queue_check();

-- Numbers registered before this migration start pending like any other:
-- each is checked by the worker at once (the job key keeps one per number).
select herald_private.queue_sender_number_check(n.tenant_id, n.id)
  from herald_public.sender_numbers n
 where n.status = 'pending' and n.last_checked_at is null;

-- What the definer helpers below write (the owner is subject to forced RLS).
drop policy if exists update_definer on herald_public.sender_numbers;
create policy update_definer on herald_public.sender_numbers for update to :DATABASE_OWNER using (true) with check (true);
comment on policy update_definer on herald_public.sender_numbers is
  E'herald_private''s verification helpers record the provider''s answer (the caller''s tenant only, checked in each function).';
drop policy if exists insert_definer on herald_public.sender_numbers;
create policy insert_definer on herald_public.sender_numbers for insert to :DATABASE_OWNER with check (true);
comment on policy insert_definer on herald_public.sender_numbers is
  E'herald_private.add_provider_number adds numbers the provider listed on or sold to the tenant''s account.';
drop policy if exists delete_definer on herald_public.sender_numbers;
-- A number released at the provider is removed by the worker that released it.
drop policy if exists delete_worker on herald_public.sender_numbers;
create policy delete_worker on herald_public.sender_numbers for delete to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
comment on policy delete_worker on herald_public.sender_numbers is
  E'The worker removes a number its tenant released at the provider (number_requests__run).';
grant delete on herald_public.sender_numbers to :DATABASE_WORKER;

-- Members ask for a re-check of their own numbers; the hourly
-- sender_numbers__recheck (as an operator session) of numbers unconfirmed for a day.
grant update (verify_requested_at) on herald_public.sender_numbers to :DATABASE_MEMBER, :DATABASE_ADMIN;

-- The provider's answer about one of the session tenant's numbers. `owned`:
-- the account holds it; `reason`: why not (or why the check could not run,
-- with `owned` null: the status stays as it is). Returns the number's status,
-- or 'contested' when the provider confirmed it but another tenant's
-- verified claim still holds it: that claim is re-checked first (a number is
-- in one account at a time), and this one after it. Nothing here tells the
-- caller who the other claimant is.
create or replace function herald_private.record_sender_number_check(number_id uuid, owned boolean, reason text, details jsonb default '{}')
  returns text
  language plpgsql volatile security definer
  set search_path = ''
as $$
declare
  v_tenant uuid := herald_public.current_tenant_id();
  v_number herald_public.sender_numbers;
  v_holder herald_public.sender_numbers;
  v_was text;
begin
  select * into v_number from herald_public.sender_numbers n where n.tenant_id = v_tenant and n.id = number_id;
  if not found then
    raise exception 'sender number not found' using errcode = 'NTFND', column = 'senderNumberId';
  end if;
  -- One decision per number at a time, across tenants.
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('sender_number:' || v_number.channel || ':' || v_number.phone_number, 0));
  select * into v_number from herald_public.sender_numbers n where n.tenant_id = v_tenant and n.id = number_id for update;
  v_was := v_number.status;

  update herald_public.sender_numbers n
     set last_checked_at = pg_catalog.now(),
         provider_sid = coalesce(details ->> 'sid', n.provider_sid),
         friendly_name = coalesce(pg_catalog.left(details ->> 'friendly_name', 200), n.friendly_name),
         sms_url = case when details ? 'sms_url' then pg_catalog.left(details ->> 'sms_url', 2000) else n.sms_url end,
         status_callback_url = case when details ? 'status_callback_url' then pg_catalog.left(details ->> 'status_callback_url', 2000) else n.status_callback_url end,
         webhooks_elsewhere = case when details ? 'webhooks_elsewhere' then (details ->> 'webhooks_elsewhere')::boolean else n.webhooks_elsewhere end
   where n.tenant_id = v_tenant and n.id = number_id;

  if owned is null then
    update herald_public.sender_numbers n set failure_reason = pg_catalog.left(reason, 500)
     where n.tenant_id = v_tenant and n.id = number_id;
    return v_was;
  end if;

  if not owned then
    update herald_public.sender_numbers n
       set status = 'failed', verified_at = null, failure_reason = pg_catalog.left(coalesce(reason, 'the provider does not list this number on the account'), 500)
     where n.tenant_id = v_tenant and n.id = number_id;
    if v_was = 'verified' then
      -- The number left this account: whoever else claims it is checked now.
      perform herald_private.queue_sender_number_check(o.tenant_id, o.id)
         from herald_public.sender_numbers o
        where o.phone_number = v_number.phone_number and o.channel = v_number.channel
          and o.status <> 'verified' and o.tenant_id <> v_tenant;
    end if;
    return 'failed';
  end if;

  select * into v_holder from herald_public.sender_numbers o
   where o.phone_number = v_number.phone_number and o.channel = v_number.channel
     and o.status = 'verified' and o.tenant_id <> v_tenant;
  if found then
    update herald_public.sender_numbers n
       set failure_reason = 'the provider confirms the number; it becomes verified once an earlier registration has been re-checked'
     where n.tenant_id = v_tenant and n.id = number_id;
    perform herald_private.queue_sender_number_check(v_holder.tenant_id, v_holder.id);
    -- And this one again later, should that re-check find the number there still.
    perform herald_private.queue_sender_number_check(v_tenant, number_id, interval '10 minutes');
    return 'contested';
  end if;

  update herald_public.sender_numbers n
     set status = 'verified', verified_at = pg_catalog.now(), failure_reason = null
   where n.tenant_id = v_tenant and n.id = number_id;
  return 'verified';
end;
$$;
comment on function herald_private.record_sender_number_check(uuid, boolean, text, jsonb) is
  E'Records the provider''s answer about one of the session tenant''s sender numbers (the sender_numbers__verify task).';

-- A number the provider itself listed on (sync) or sold to (buy) one of the
-- session tenant's accounts: verified by construction, unless another
-- tenant's verified claim holds it (then pending, that claim re-checked).
create or replace function herald_private.add_provider_number(provider_account_id uuid, phone_number text, channel text, details jsonb default '{}')
  returns uuid
  language plpgsql volatile security definer
  set search_path = ''
as $$
declare
  v_tenant uuid := herald_public.current_tenant_id();
  v_id uuid;
begin
  -- The account is the tenant's: the composite foreign keys of the check row
  -- and of sender_numbers say so (the worker read it as a Twilio account).
  if add_provider_number.provider_account_id is null or add_provider_number.phone_number is null
     or add_provider_number.channel is null then
    raise exception 'an added number names its account, number and channel' using errcode = '22023';
  end if;
  select n.id into v_id from herald_public.sender_numbers n
   where n.tenant_id = v_tenant and n.phone_number = add_provider_number.phone_number and n.channel = add_provider_number.channel;
  if v_id is null then
    insert into herald_public.sender_numbers (tenant_id, phone_number, channel, provider_account_id, status, verified_at)
    values (v_tenant, add_provider_number.phone_number, add_provider_number.channel, add_provider_number.provider_account_id, 'verified', pg_catalog.now())
    on conflict do nothing
    returning id into v_id;
  end if;
  if v_id is null then
    -- Another tenant's verified claim: registered pending, decided below.
    insert into herald_public.sender_numbers (tenant_id, phone_number, channel, provider_account_id)
    values (v_tenant, add_provider_number.phone_number, add_provider_number.channel, add_provider_number.provider_account_id)
    on conflict (tenant_id, phone_number, channel) do update set provider_account_id = excluded.provider_account_id
    returning id into v_id;
  else
    update herald_public.sender_numbers n set provider_account_id = add_provider_number.provider_account_id
     where n.tenant_id = v_tenant and n.id = v_id and n.provider_account_id is distinct from add_provider_number.provider_account_id;
  end if;
  perform herald_private.record_sender_number_check(v_id, true, null, details);
  return v_id;
end;
$$;

-- Ask the provider again (e.g. after moving the number to this account).
create or replace function herald_public.verify_sender_number(sender_number_id uuid)
  returns herald_public.sender_numbers
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_number herald_public.sender_numbers;
begin
  update herald_public.sender_numbers n set verify_requested_at = pg_catalog.clock_timestamp()
   where n.tenant_id = herald_public.current_tenant_id() and n.id = verify_sender_number.sender_number_id
  returning * into v_number;
  if not found then
    raise exception 'sender number not found' using errcode = 'NTFND', column = 'senderNumberId';
  end if;
  return v_number;
end;
$$;
comment on function herald_public.verify_sender_number(uuid) is
  E'@resultFieldName senderNumber\nAsk the provider again whether the number''s account holds it (the answer lands on `status`).';
grant execute on function herald_public.verify_sender_number(uuid) to :DATABASE_MEMBER;

-- Routing: only a verified number finds its tenant.
create or replace function herald_private.inbound_number_owner(phone_number text, channel text)
  returns table (tenant_id uuid, sender_number_id uuid, provider_account_id uuid)
  language sql stable security definer
  set search_path = ''
as $$
  select n.tenant_id, n.id, n.provider_account_id
    from herald_public.sender_numbers n
   where n.phone_number = inbound_number_owner.phone_number and n.channel = inbound_number_owner.channel
     and n.status = 'verified';
$$;

-- The one sender rule (000010), now: only verified numbers send.
create or replace function herald_hidden.sender_refusal(channel text, sender text, system_sender text default null)
  returns text
  language sql stable
  set search_path = ''
as $$
  select case
    when sender_refusal.sender is null then null
    when sender_refusal.system_sender is not null and pg_catalog.lower(sender_refusal.sender) = pg_catalog.lower(sender_refusal.system_sender) then null
    when sender_refusal.channel = 'email' then
      case when exists (select 1 from herald_public.email_domains e
                         where e.tenant_id = herald_public.current_tenant_id() and e.status = 'verified'
                           and e.domain = pg_catalog.lower(pg_catalog.split_part(sender_refusal.sender, '@', 2))::public.citext)
           then null
           else pg_catalog.format('%s is not on one of this tenant''s verified email domains', sender_refusal.sender) end
    when exists (select 1 from herald_public.sender_numbers n
                  where n.tenant_id = herald_public.current_tenant_id() and n.phone_number = sender_refusal.sender
                    and n.channel = sender_refusal.channel and n.status = 'verified')
      then null
    else pg_catalog.format('%s is not one of this tenant''s verified %s sender numbers', sender_refusal.sender, sender_refusal.channel)
  end;
$$;

-- The worker's record of what the provider answered: the one way a number's
-- status moves. A row is written only by the worker (the task that asked the
-- provider); its BEFORE INSERT trigger, a definer helper, applies it — across
-- tenants where it must (the verified claim that routes a number) — and
-- writes the outcome on the row, which the task reads back (RETURNING).
-- `action`: `check` (owned: the account holds the number; null: the check
-- could not run, status unchanged), `add` (a number the provider listed on
-- or sold to the account: verified by construction).
create table herald_hidden.sender_number_checks (
  tenant_id uuid not null default herald_public.current_tenant_id()
    references herald_public.tenants on delete cascade,
  id uuid not null default gen_random_uuid(),
  action text not null constraint sender_number_checks_action check (action in ('check', 'add')),
  sender_number_id uuid,
  phone_number text constraint sender_number_checks_e164 check (phone_number ~ '^\+[1-9][0-9]{6,14}$'),
  channel text constraint sender_number_checks_channel check (channel in ('sms', 'whatsapp')),
  provider_account_id uuid,
  owned boolean,
  reason text constraint sender_number_checks_reason_length check (length(reason) <= 500),
  details jsonb not null default '{}',
  outcome text,
  created_at timestamptz not null default now(),
  primary key (tenant_id, id),
  constraint sender_number_checks_number_fkey foreign key (tenant_id, sender_number_id)
    references herald_public.sender_numbers (tenant_id, id) on delete set null (sender_number_id),
  constraint sender_number_checks_account_fkey foreign key (tenant_id, provider_account_id)
    references herald_public.provider_accounts (tenant_id, id) on delete cascade
);
create index sender_number_checks_by_number on herald_hidden.sender_number_checks (tenant_id, sender_number_id);

create function herald_private.tg_sender_number_checks__apply() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
begin
  -- A row for another tenant is applied nowhere: the insert policy refuses it next.
  if new.tenant_id is distinct from herald_public.current_tenant_id() then
    return new;
  end if;
  if new.action = 'add' then
    new.sender_number_id := herald_private.add_provider_number(new.provider_account_id, new.phone_number, new.channel, new.details);
    select n.status into new.outcome from herald_public.sender_numbers n
     where n.tenant_id = new.tenant_id and n.id = new.sender_number_id;
  else
    new.outcome := herald_private.record_sender_number_check(new.sender_number_id, new.owned, new.reason, new.details);
  end if;
  return new;
end;
$$;
create trigger _100_apply before insert on herald_hidden.sender_number_checks
  for each row execute function herald_private.tg_sender_number_checks__apply();

alter table herald_hidden.sender_number_checks enable row level security;
alter table herald_hidden.sender_number_checks force row level security;
create policy select_member on herald_hidden.sender_number_checks for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
comment on policy select_member on herald_hidden.sender_number_checks is E'Members and the worker read their own tenant''s checks.';
create policy insert_worker on herald_hidden.sender_number_checks for insert to :DATABASE_WORKER
  with check (tenant_id = (select herald_public.current_tenant_id()));
comment on policy insert_worker on herald_hidden.sender_number_checks is
  E'Only the worker, having asked the provider, records its answer (members cannot vouch for a number).';
create policy select_admin on herald_hidden.sender_number_checks for select to :DATABASE_ADMIN using (true);
comment on policy select_admin on herald_hidden.sender_number_checks is E'Operators read every tenant''s checks.';
grant select on herald_hidden.sender_number_checks to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;
grant insert (tenant_id, action, sender_number_id, phone_number, channel, provider_account_id, owned, reason, details)
  on herald_hidden.sender_number_checks to :DATABASE_WORKER;
create trigger _900_audit_insert after insert on herald_hidden.sender_number_checks referencing new table as new_rows
  for each statement execute function herald_private.tg__audit('id', '');
create trigger _900_audit_update after update on herald_hidden.sender_number_checks referencing old table as old_rows new table as new_rows
  for each statement execute function herald_private.tg__audit('id', '');
create trigger _900_audit_delete after delete on herald_hidden.sender_number_checks referencing old table as old_rows
  for each statement execute function herald_private.tg__audit('id', '');
