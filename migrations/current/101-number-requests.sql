-- Work a tenant's owners and admins ask of the provider about numbers: list
-- the account's numbers (sync), search available ones, buy one, release one,
-- point one's webhooks at Herald. Each is a number_requests row that the
-- number_requests__run task carries out under the account's credentials (only
-- the worker may decrypt them) and completes with the provider's answer:
-- poll the row (`numberRequest`) for `status` and `result`. A purchase takes
-- an idempotency key: a retried mutation returns the same request, and the
-- task buys a number the account does not hold yet, at most once.
--
-- Idempotent: re-applied on every `db watch` save.

drop function if exists herald_public.search_available_numbers(uuid, text, text, text, boolean, boolean, boolean);
drop function if exists herald_public.sync_sender_numbers(uuid);
drop function if exists herald_public.import_sender_numbers(uuid, text[]);
drop function if exists herald_private.import_sender_numbers(uuid, text[]);
drop function if exists herald_public.buy_sender_number(uuid, text, text);
drop function if exists herald_public.release_sender_number(uuid);
drop function if exists herald_public.configure_sender_number_webhooks(uuid);
drop function if exists herald_private.new_number_request(text, uuid, uuid, jsonb, text);
drop table if exists herald_public.number_requests cascade;

create table herald_public.number_requests (
  tenant_id uuid not null default herald_public.current_tenant_id()
    references herald_public.tenants on delete cascade,
  id uuid not null default gen_random_uuid(),
  kind text not null constraint number_requests_kind check (kind in ('search', 'sync', 'import', 'buy', 'release', 'configure')),
  provider_account_id uuid not null,
  sender_number_id uuid,
  params jsonb not null default '{}',
  idempotency_key text constraint number_requests_idempotency_key_length check (length(idempotency_key) between 1 and 200),
  status text not null default 'queued' constraint number_requests_status check (status in ('queued', 'done', 'failed')),
  result jsonb,
  error text constraint number_requests_error_length check (length(error) <= 2000),
  requested_by uuid default herald_public.current_user_id(),
  created_at timestamptz not null default now(),
  completed_at timestamptz,
  primary key (tenant_id, id),
  constraint number_requests_idempotency_key unique (tenant_id, idempotency_key),
  constraint number_requests_account_fkey foreign key (tenant_id, provider_account_id)
    references herald_public.provider_accounts (tenant_id, id) on delete cascade,
  constraint number_requests_sender_number_fkey foreign key (tenant_id, sender_number_id)
    references herald_public.sender_numbers (tenant_id, id) on delete set null (sender_number_id)
);
comment on table herald_public.number_requests is
  E'@behavior -insert -update -delete\nWork asked of the provider about numbers (search, sync, buy, release, configure): `status` goes from `queued` to `done` (see `result`) or `failed` (see `error`).';
comment on constraint number_requests_account_fkey on herald_public.number_requests is
  E'@fieldName providerAccount\n@foreignFieldName numberRequests';
comment on constraint number_requests_sender_number_fkey on herald_public.number_requests is
  E'@fieldName senderNumber\n@foreignFieldName numberRequests';
comment on constraint number_requests_idempotency_key on herald_public.number_requests is E'@behavior -*';
comment on column herald_public.number_requests.result is
  E'The provider''s answer: `numbers` (search, sync: phoneNumber, friendlyName, capabilities, locality, region; sync adds sid and webhooksElsewhere), or `senderNumberId` (buy).';
create index number_requests_by_number on herald_public.number_requests (tenant_id, sender_number_id);

create trigger _500_queue_run after insert on herald_public.number_requests
  for each row execute function herald_private.tg__add_job('number_requests__run');
create trigger _900_audit_insert after insert on herald_public.number_requests referencing new table as new_rows
  for each statement execute function herald_private.tg__audit('id', '');
create trigger _900_audit_update after update on herald_public.number_requests referencing old table as old_rows new table as new_rows
  for each statement execute function herald_private.tg__audit('id', '');
create trigger _900_audit_delete after delete on herald_public.number_requests referencing old table as old_rows
  for each statement execute function herald_private.tg__audit('id', '');

alter table herald_public.number_requests enable row level security;
alter table herald_public.number_requests force row level security;

create policy select_member on herald_public.number_requests for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
comment on policy select_member on herald_public.number_requests is E'Members and the worker read their own tenant''s number requests.';
create policy insert_member on herald_public.number_requests for insert to :DATABASE_MEMBER
  with check (tenant_id = (select herald_public.current_tenant_id()) and (select herald_hidden.current_user_is_tenant_admin()));
comment on policy insert_member on herald_public.number_requests is E'A tenant''s owners and admins ask for number work (it spends money and moves numbers).';
create policy update_worker on herald_public.number_requests for update to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
comment on policy update_worker on herald_public.number_requests is E'The worker completes its tenant''s requests.';
create policy select_admin on herald_public.number_requests for select to :DATABASE_ADMIN using (true);
comment on policy select_admin on herald_public.number_requests is E'Operators read every tenant''s number requests.';

grant select on herald_public.number_requests to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;
grant insert (tenant_id, kind, provider_account_id, sender_number_id, params, idempotency_key) on herald_public.number_requests to :DATABASE_MEMBER;
grant update (status, result, error, completed_at) on herald_public.number_requests to :DATABASE_WORKER;

-- The account must be one of the tenant's Twilio accounts; a number, one of its own on a tenant account.
create or replace function herald_hidden.twilio_account_or_fail(provider_account_id uuid)
  returns void
  language plpgsql stable
  set search_path = ''
as $$
begin
  if not (select herald_hidden.current_user_is_tenant_admin()) then
    raise exception 'only the tenant''s owners and admins manage numbers' using errcode = '42501';
  end if;
  if not exists (select 1 from herald_public.provider_accounts a
                  where a.tenant_id = herald_public.current_tenant_id() and a.id = twilio_account_or_fail.provider_account_id
                    and a.kind = 'twilio') then
    raise exception 'no Twilio account of this tenant has this id' using errcode = 'NTFND', column = 'providerAccountId';
  end if;
end;
$$;
grant execute on function herald_hidden.twilio_account_or_fail(uuid) to :DATABASE_MEMBER;

create or replace function herald_public.search_available_numbers(
  provider_account_id uuid, country text default 'US', area_code text default null, contains text default null,
  sms boolean default true, mms boolean default false, voice boolean default false)
  returns herald_public.number_requests
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_request herald_public.number_requests;
begin
  perform herald_hidden.twilio_account_or_fail(provider_account_id);
  if country !~ '^[A-Z]{2}$' then
    raise exception 'country must be an ISO 3166 alpha-2 code (US, GB, …)' using errcode = '22023', column = 'country';
  end if;
  if area_code is not null and area_code !~ '^[0-9]{3}$' then
    raise exception 'areaCode must be 3 digits' using errcode = '22023', column = 'areaCode';
  end if;
  if contains is not null and contains !~ '^[0-9A-Za-z*]{1,16}$' then
    raise exception 'contains must be 1-16 digits, letters or *' using errcode = '22023', column = 'contains';
  end if;
  insert into herald_public.number_requests (kind, provider_account_id, params)
  values ('search', search_available_numbers.provider_account_id,
          pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object('country', country, 'area_code', area_code, 'contains', contains,
                                   'sms', sms, 'mms', mms, 'voice', voice)))
  returning * into v_request;
  return v_request;
end;
$$;
comment on function herald_public.search_available_numbers(uuid, text, text, text, boolean, boolean, boolean) is
  E'@resultFieldName numberRequest\nSearch the numbers the provider offers (country, area code, digits it contains, capabilities); the request''s `result.numbers` lists up to 20.';

create or replace function herald_public.sync_sender_numbers(provider_account_id uuid)
  returns herald_public.number_requests
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_request herald_public.number_requests;
begin
  perform herald_hidden.twilio_account_or_fail(provider_account_id);
  insert into herald_public.number_requests (kind, provider_account_id)
  values ('sync', sync_sender_numbers.provider_account_id)
  returning * into v_request;
  return v_request;
end;
$$;
comment on function herald_public.sync_sender_numbers(uuid) is
  E'@resultFieldName numberRequest\nList the numbers the account holds at the provider (`result.numbers`); `importSenderNumbers` adds the ones you pick.';

create or replace function herald_public.buy_sender_number(provider_account_id uuid, phone_number text, idempotency_key text)
  returns herald_public.number_requests
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_request herald_public.number_requests;
begin
  perform herald_hidden.twilio_account_or_fail(provider_account_id);
  if phone_number is null or phone_number !~ '^\+[1-9][0-9]{6,14}$' then
    raise exception 'phoneNumber must be E.164' using errcode = '22023', column = 'phoneNumber';
  end if;
  if idempotency_key is null or length(idempotency_key) not between 1 and 200 then
    raise exception 'idempotencyKey is required (1-200 characters): a retried purchase must not buy twice' using errcode = '22023', column = 'idempotencyKey';
  end if;
  select * into v_request from herald_public.number_requests r
   where r.tenant_id = herald_public.current_tenant_id() and r.idempotency_key = buy_sender_number.idempotency_key;
  if not found then
    insert into herald_public.number_requests (kind, provider_account_id, params, idempotency_key)
    values ('buy', buy_sender_number.provider_account_id, pg_catalog.jsonb_build_object('phone_number', phone_number), idempotency_key)
    on conflict on constraint number_requests_idempotency_key do nothing
    returning * into v_request;
    if v_request.id is null then
      select * into v_request from herald_public.number_requests r
       where r.tenant_id = herald_public.current_tenant_id() and r.idempotency_key = buy_sender_number.idempotency_key;
    end if;
  end if;
  if v_request.kind <> 'buy' or v_request.params ->> 'phone_number' <> phone_number
     or v_request.provider_account_id <> buy_sender_number.provider_account_id then
    raise exception 'this idempotencyKey was used for another request' using errcode = '22023', column = 'idempotencyKey';
  end if;
  return v_request;
end;
$$;
comment on function herald_public.buy_sender_number(uuid, text, text) is
  E'@resultFieldName numberRequest\nBuy a number (from `searchAvailableNumbers`) on the account; it becomes a verified sender number with its webhooks pointing at Herald. The same `idempotencyKey` returns the same request: a retry never buys twice.';

-- A request about one of the tenant's own numbers on one of its own accounts.
create or replace function herald_hidden.number_request_for(kind text, sender_number_id uuid)
  returns herald_public.number_requests
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_number herald_public.sender_numbers;
  v_request herald_public.number_requests;
begin
  if not (select herald_hidden.current_user_is_tenant_admin()) then
    raise exception 'only the tenant''s owners and admins manage numbers' using errcode = '42501';
  end if;
  select * into v_number from herald_public.sender_numbers n
   where n.tenant_id = herald_public.current_tenant_id() and n.id = number_request_for.sender_number_id;
  if not found then
    raise exception 'sender number not found' using errcode = 'NTFND', column = 'senderNumberId';
  end if;
  if v_number.provider_account_id is null then
    raise exception 'the number is on the system account: operators manage it' using errcode = '22023', column = 'senderNumberId';
  end if;
  if v_number.status <> 'verified' then
    raise exception 'only a verified number can be changed at the provider' using errcode = '22023', column = 'senderNumberId';
  end if;
  insert into herald_public.number_requests (kind, provider_account_id, sender_number_id)
  values (number_request_for.kind, v_number.provider_account_id, v_number.id)
  returning * into v_request;
  return v_request;
end;
$$;
grant execute on function herald_hidden.number_request_for(text, uuid) to :DATABASE_MEMBER;

create or replace function herald_public.release_sender_number(sender_number_id uuid)
  returns herald_public.number_requests
  language sql volatile
  set search_path = ''
as $$ select herald_hidden.number_request_for('release', release_sender_number.sender_number_id); $$;
comment on function herald_public.release_sender_number(uuid) is
  E'@resultFieldName numberRequest\nRelease the number at the provider (it stops being the account''s and this tenant''s).';

create or replace function herald_public.configure_sender_number_webhooks(sender_number_id uuid)
  returns herald_public.number_requests
  language sql volatile
  set search_path = ''
as $$ select herald_hidden.number_request_for('configure', configure_sender_number_webhooks.sender_number_id); $$;
comment on function herald_public.configure_sender_number_webhooks(uuid) is
  E'@resultFieldName numberRequest\nPoint the number''s SmsUrl and StatusCallback at Herald (HERALD_PUBLIC_URL).';

-- Adds numbers picked from a finished sync: the task lists the account's
-- numbers again and adds the picked ones the provider lists (verified by
-- construction: the provider itself named them under the account's credentials).
create or replace function herald_public.import_sender_numbers(request_id uuid, phone_numbers text[])
  returns herald_public.number_requests
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_sync herald_public.number_requests;
  v_request herald_public.number_requests;
begin
  if not (select herald_hidden.current_user_is_tenant_admin()) then
    raise exception 'only the tenant''s owners and admins manage numbers' using errcode = '42501';
  end if;
  select * into v_sync from herald_public.number_requests r
   where r.tenant_id = herald_public.current_tenant_id() and r.id = import_sender_numbers.request_id
     and r.kind = 'sync' and r.status = 'done';
  if not found then
    raise exception 'no finished sync of this tenant has this id' using errcode = 'NTFND', column = 'requestId';
  end if;
  if coalesce(cardinality(phone_numbers), 0) not between 1 and 1000 then
    raise exception 'phoneNumbers: pick 1 to 1000 numbers' using errcode = '22023', column = 'phoneNumbers';
  end if;
  insert into herald_public.number_requests (kind, provider_account_id, params)
  values ('import', v_sync.provider_account_id,
          pg_catalog.jsonb_build_object('sync_request_id', v_sync.id, 'phone_numbers', pg_catalog.to_jsonb(phone_numbers)))
  returning * into v_request;
  return v_request;
end;
$$;
comment on function herald_public.import_sender_numbers(uuid, text[]) is
  E'@resultFieldName numberRequest\nAdd numbers a finished `syncSenderNumbers` listed as sender numbers (verified: the provider lists them on the account); `result.senderNumberIds` names them.';

grant execute on function
  herald_public.search_available_numbers(uuid, text, text, text, boolean, boolean, boolean),
  herald_public.sync_sender_numbers(uuid),
  herald_public.buy_sender_number(uuid, text, text),
  herald_public.release_sender_number(uuid),
  herald_public.configure_sender_number_webhooks(uuid),
  herald_public.import_sender_numbers(uuid, text[])
  to :DATABASE_MEMBER;
