-- Twilio Messaging Services: a sender pool on one of the tenant's Twilio
-- accounts (an MG… SID). Twilio picks the pool number for each message
-- (sticky sender: a recipient keeps getting the same one); Herald paces each
-- service as one sender, imports its pool numbers from Twilio's own list of
-- the service's numbers (verified by construction, so inbound to any of them
-- routes to the tenant), and sends through it when a message names it
-- (`metadata.messaging_service`) or the tenant made it its default.

-- The ownership status of a sender number (shared with the numbers work:
-- only 'verified' numbers route inbound and send).
alter table herald_public.sender_numbers add column if not exists status text not null default 'pending';
alter table herald_public.sender_numbers drop constraint if exists sender_numbers_status;
alter table herald_public.sender_numbers add constraint sender_numbers_status
  check (status in ('pending', 'verified', 'failed'));

-- Idempotent: what this file creates is dropped first (the policies on the column before it).
drop policy if exists insert_worker_pool on herald_public.sender_numbers;
drop policy if exists update_worker_pool on herald_public.sender_numbers;
drop policy if exists delete_worker_pool on herald_public.sender_numbers;
alter table herald_public.sender_numbers drop constraint if exists sender_numbers_service_fkey;
alter table herald_public.sender_numbers drop column if exists messaging_service_id;
drop table if exists herald_public.messaging_services cascade;

create table herald_public.messaging_services (
  tenant_id uuid not null default herald_public.current_tenant_id()
    references herald_public.tenants on delete cascade,
  id uuid not null default gen_random_uuid(),
  provider_account_id uuid not null,
  name text not null constraint messaging_services_name_length check (length(name) between 1 and 200),
  service_sid text not null constraint messaging_services_sid_format check (service_sid ~ '^MG[0-9a-f]{32}$'),
  messages_per_second numeric not null default 1
    constraint messaging_services_mps_range check (messages_per_second > 0 and messages_per_second <= 1000),
  is_default boolean not null default false,
  status text not null default 'pending'
    constraint messaging_services_status check (status in ('pending', 'synced', 'failed')),
  sync_requested_at timestamptz,
  last_synced_at timestamptz,
  last_error text constraint messaging_services_last_error_length check (length(last_error) <= 2000),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (tenant_id, id),
  constraint messaging_services_sid_unique unique (tenant_id, service_sid),
  constraint messaging_services_account_fkey foreign key (tenant_id, provider_account_id)
    references herald_public.provider_accounts (tenant_id, id) on delete cascade
);
comment on table herald_public.messaging_services is
  E'@behavior -insert -update\nA Twilio Messaging Service (a sender pool) on one of the tenant''s Twilio accounts: `addMessagingService`, then its numbers are synced from Twilio (`syncMessagingService` again after changing the pool). A message goes through it when its metadata names it (`{"messaging_service": "MG…"}`) or when it is the tenant''s default.';
comment on column herald_public.messaging_services.service_sid is E'Twilio''s id of the service (MG…).';
comment on column herald_public.messaging_services.messages_per_second is
  E'How fast Herald sends through this service, all its pool numbers together.';
comment on column herald_public.messaging_services.is_default is
  E'SMS without a `from` or `messaging_service` of their own go through this service (at most one per tenant).';
comment on column herald_public.messaging_services.status is
  E'`pending` (its numbers not synced yet), `synced`, or `failed` (see `lastError`).';
comment on column herald_public.messaging_services.sync_requested_at is '@behavior -*';
comment on constraint messaging_services_account_fkey on herald_public.messaging_services is
  E'@fieldName providerAccount\n@foreignFieldName messagingServices';
comment on constraint messaging_services_sid_unique on herald_public.messaging_services is '@behavior -*';
create unique index messaging_services_one_default on herald_public.messaging_services (tenant_id) where is_default;
create index messaging_services_by_account on herald_public.messaging_services (tenant_id, provider_account_id);

create trigger _100_timestamps before update on herald_public.messaging_services
  for each row execute function herald_private.tg__timestamps();
create trigger _500_queue_sync after insert on herald_public.messaging_services
  for each row execute function herald_private.tg__add_job('messaging_services__sync');
create trigger _510_queue_resync after update of sync_requested_at on herald_public.messaging_services
  for each row when (new.sync_requested_at is distinct from old.sync_requested_at)
  execute function herald_private.tg__add_job('messaging_services__sync');
create trigger _900_audit_insert after insert on herald_public.messaging_services referencing new table as new_rows
  for each statement execute function herald_private.tg__audit('id', 'last_synced_at');
create trigger _900_audit_update after update on herald_public.messaging_services referencing old table as old_rows new table as new_rows
  for each statement execute function herald_private.tg__audit('id', 'last_synced_at');
create trigger _900_audit_delete after delete on herald_public.messaging_services referencing old table as old_rows
  for each statement execute function herald_private.tg__audit('id', 'last_synced_at');

alter table herald_public.messaging_services enable row level security;
alter table herald_public.messaging_services force row level security;
create policy select_member on herald_public.messaging_services for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
comment on policy select_member on herald_public.messaging_services is E'Members and the tenant''s jobs read its own services.';
create policy insert_member on herald_public.messaging_services for insert to :DATABASE_MEMBER
  with check (tenant_id = (select herald_public.current_tenant_id()) and (select herald_hidden.current_user_is_tenant_admin()));
comment on policy insert_member on herald_public.messaging_services is E'A tenant''s owners and admins add services, to their own tenant only.';
create policy update_member on herald_public.messaging_services for update to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()) and (select herald_hidden.current_user_is_tenant_admin()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
comment on policy update_member on herald_public.messaging_services is E'A tenant''s owners and admins rename, pace, choose the default and ask for a sync.';
create policy delete_member on herald_public.messaging_services for delete to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()) and (select herald_hidden.current_user_is_tenant_admin()));
comment on policy delete_member on herald_public.messaging_services is E'A tenant''s owners and admins remove services.';
create policy update_worker on herald_public.messaging_services for update to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
comment on policy update_worker on herald_public.messaging_services is E'The sync job records its outcome.';
create policy select_admin on herald_public.messaging_services for select to :DATABASE_ADMIN using (true);
comment on policy select_admin on herald_public.messaging_services is E'Operators read every tenant''s services.';
create policy delete_admin on herald_public.messaging_services for delete to :DATABASE_ADMIN using (true);
comment on policy delete_admin on herald_public.messaging_services is E'Operators remove any service.';

grant select on herald_public.messaging_services to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;
grant insert (tenant_id, provider_account_id, name, service_sid, messages_per_second, is_default),
  update (name, messages_per_second, is_default, sync_requested_at)
  on herald_public.messaging_services to :DATABASE_MEMBER;
grant update (status, last_synced_at, last_error) on herald_public.messaging_services to :DATABASE_WORKER;
grant delete on herald_public.messaging_services to :DATABASE_MEMBER, :DATABASE_ADMIN;

-- A pool number names its service. Deleting the service keeps the numbers
-- (still the tenant's, on its account), no longer in a pool.
alter table herald_public.sender_numbers add column messaging_service_id uuid;
alter table herald_public.sender_numbers add constraint sender_numbers_service_fkey
  foreign key (tenant_id, messaging_service_id)
  references herald_public.messaging_services (tenant_id, id) on delete set null (messaging_service_id);
comment on column herald_public.sender_numbers.messaging_service_id is
  E'The Messaging Service whose pool this number is in (imported from Twilio by the service''s sync).';
comment on constraint sender_numbers_service_fkey on herald_public.sender_numbers is
  E'@fieldName messagingService\n@foreignFieldName poolNumbers';
create index sender_numbers_by_service on herald_public.sender_numbers (tenant_id, messaging_service_id)
  where messaging_service_id is not null;

-- The sync job (herald_worker) writes pool numbers, and only pool numbers:
-- what Twilio lists as the service's numbers, under the tenant's credentials.
create policy insert_worker_pool on herald_public.sender_numbers for insert to :DATABASE_WORKER
  with check (tenant_id = (select herald_public.current_tenant_id()) and messaging_service_id is not null
              and provider_account_id is not null and status = 'verified');
comment on policy insert_worker_pool on herald_public.sender_numbers is E'A Messaging Service''s sync imports its pool numbers, verified by the provider''s list.';
create policy update_worker_pool on herald_public.sender_numbers for update to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
comment on policy update_worker_pool on herald_public.sender_numbers is E'A Messaging Service''s sync marks the tenant''s own numbers as its pool''s (or no longer).';
create policy delete_worker_pool on herald_public.sender_numbers for delete to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()) and messaging_service_id is not null);
comment on policy delete_worker_pool on herald_public.sender_numbers is E'A Messaging Service''s sync removes numbers that left its pool.';
grant insert (tenant_id, phone_number, channel, provider_account_id, messaging_service_id, status, messages_per_second),
  update (messaging_service_id, status), delete
  on herald_public.sender_numbers to :DATABASE_WORKER;

-- The service's numbers as Twilio lists them, imported in one call: each goes
-- through the number-ownership checks as an `add` (the provider listed it under
-- this account, so it is verified by construction, unless another tenant holds
-- it verified: then it stays pending and is counted in `refused`, with nothing
-- said about whose it is); verified ones join the pool, and numbers that left
-- the pool are removed.
create or replace function herald_hidden.sync_pool_numbers(messaging_service_id uuid, numbers text[],
  out added integer, out joined integer, out removed integer, out refused integer)
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_service herald_public.messaging_services;
  v_number text;
  v_number_id uuid;
  v_outcome text;
  v_known boolean;
begin
  select * into v_service from herald_public.messaging_services s
   where s.tenant_id = herald_public.current_tenant_id() and s.id = sync_pool_numbers.messaging_service_id;
  if v_service.id is null then
    raise exception 'No such messaging service' using errcode = 'NTFND';
  end if;
  added := 0; joined := 0; refused := 0;
  foreach v_number in array coalesce(numbers, '{}') loop
    v_known := exists (select 1 from herald_public.sender_numbers n
                        where n.tenant_id = v_service.tenant_id and n.phone_number = v_number and n.channel = 'sms');
    insert into herald_hidden.sender_number_checks (action, phone_number, channel, provider_account_id)
    values ('add', v_number, 'sms', v_service.provider_account_id)
    returning sender_number_id, outcome into v_number_id, v_outcome;
    if v_outcome is distinct from 'verified' then
      refused := refused + 1;
      continue;
    end if;
    update herald_public.sender_numbers n set messaging_service_id = v_service.id
     where n.tenant_id = v_service.tenant_id and n.id = v_number_id;
    if v_known then joined := joined + 1; else added := added + 1; end if;
  end loop;
  delete from herald_public.sender_numbers n
   where n.tenant_id = v_service.tenant_id and n.messaging_service_id = v_service.id
     and not (n.phone_number = any (coalesce(numbers, '{}')));
  get diagnostics removed = row_count;
end;
$$;
comment on function herald_hidden.sync_pool_numbers(uuid, text[]) is
  E'Imports a Messaging Service''s pool numbers as Twilio listed them (the sync job calls it).';
grant execute on function herald_hidden.sync_pool_numbers(uuid, text[]) to :DATABASE_WORKER;

create or replace function herald_public.add_messaging_service(provider_account_id uuid, service_sid text, name text,
  messages_per_second numeric default 1, is_default boolean default false)
  returns herald_public.messaging_services
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_row herald_public.messaging_services;
begin
  if not exists (select 1 from herald_public.provider_accounts a
                  where a.tenant_id = herald_public.current_tenant_id() and a.id = add_messaging_service.provider_account_id
                    and a.kind = 'twilio') then
    raise exception 'No such Twilio account' using errcode = 'NTFND', column = 'providerAccountId';
  end if;
  insert into herald_public.messaging_services (provider_account_id, service_sid, name, messages_per_second, is_default)
  values (add_messaging_service.provider_account_id, pg_catalog.btrim(add_messaging_service.service_sid),
          add_messaging_service.name, coalesce(add_messaging_service.messages_per_second, 1),
          coalesce(add_messaging_service.is_default, false))
  returning * into v_row;
  return v_row;
end;
$$;
comment on function herald_public.add_messaging_service(uuid, text, text, numeric, boolean) is
  E'Send through a Twilio Messaging Service (MG…) of one of the tenant''s Twilio accounts; its pool numbers are then synced from Twilio.';

create or replace function herald_public.update_messaging_service(messaging_service_id uuid, name text default null,
  messages_per_second numeric default null, is_default boolean default null)
  returns herald_public.messaging_services
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_row herald_public.messaging_services;
begin
  -- The default moves: the tenant's other services stop being it first.
  if update_messaging_service.is_default then
    update herald_public.messaging_services s set is_default = false
     where s.tenant_id = herald_public.current_tenant_id() and s.is_default and s.id <> update_messaging_service.messaging_service_id;
  end if;
  update herald_public.messaging_services s
     set name = coalesce(update_messaging_service.name, s.name),
         messages_per_second = coalesce(update_messaging_service.messages_per_second, s.messages_per_second),
         is_default = coalesce(update_messaging_service.is_default, s.is_default)
   where s.tenant_id = herald_public.current_tenant_id() and s.id = update_messaging_service.messaging_service_id
  returning * into v_row;
  if v_row.id is null then
    raise exception 'No such messaging service' using errcode = 'NTFND', column = 'messagingServiceId';
  end if;
  return v_row;
end;
$$;
comment on function herald_public.update_messaging_service(uuid, text, numeric, boolean) is
  E'Rename a Messaging Service, change its pace, or make it (or stop it being) the tenant''s default.';

create or replace function herald_public.sync_messaging_service(messaging_service_id uuid)
  returns herald_public.messaging_services
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_row herald_public.messaging_services;
begin
  update herald_public.messaging_services s set sync_requested_at = pg_catalog.clock_timestamp()
   where s.tenant_id = herald_public.current_tenant_id() and s.id = sync_messaging_service.messaging_service_id
  returning * into v_row;
  if v_row.id is null then
    raise exception 'No such messaging service' using errcode = 'NTFND', column = 'messagingServiceId';
  end if;
  return v_row;
end;
$$;
comment on function herald_public.sync_messaging_service(uuid) is
  E'Import the service''s pool numbers from Twilio again; `status`, `lastSyncedAt` and `lastError` show the result.';

grant execute on function herald_public.add_messaging_service(uuid, text, text, numeric, boolean),
  herald_public.update_messaging_service(uuid, text, numeric, boolean),
  herald_public.sync_messaging_service(uuid) to :DATABASE_MEMBER;

-- A message names its service in metadata (`messaging_service`): it must be
-- one of the tenant's, on SMS, and not together with a `from` (the service
-- picks the number). Checked as the message is written, so sendMessage
-- answers NOT_OWN_SENDER on `metadata` for another tenant's SID, as for
-- another tenant's number.
create or replace function herald_hidden.messaging_service_refusal(channel text, service_sid text, sender text)
  returns text
  language sql stable
  set search_path = ''
as $$
  select case
    when messaging_service_refusal.service_sid is null then null
    when messaging_service_refusal.channel <> 'sms' then 'a messaging service sends SMS only'
    when messaging_service_refusal.sender is not null then 'give either a from number or a messaging service, not both'
    when exists (select 1 from herald_public.messaging_services s
                  where s.tenant_id = herald_public.current_tenant_id()
                    and s.service_sid = messaging_service_refusal.service_sid) then null
    else pg_catalog.format('%s is not one of this tenant''s messaging services', messaging_service_refusal.service_sid)
  end;
$$;
comment on function herald_hidden.messaging_service_refusal(text, text, text) is
  E'Why a message may not go through the messaging service it names (null: it may).';
grant execute on function herald_hidden.messaging_service_refusal(text, text, text) to :DATABASE_MEMBER, :DATABASE_WORKER;

create or replace function herald_private.tg_messages__check_service() returns trigger
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_refusal text;
begin
  v_refusal := herald_hidden.messaging_service_refusal(new.channel, new.metadata ->> 'messaging_service', new.metadata ->> 'from');
  if v_refusal is not null then
    raise exception '%', v_refusal using errcode = 'NOSND', column = 'metadata';
  end if;
  return new;
end;
$$;
drop trigger if exists _210_check_service on herald_public.messages;
create trigger _210_check_service before insert on herald_public.messages
  for each row when (new.metadata ? 'messaging_service')
  execute function herald_private.tg_messages__check_service();

-- The pool, on the service in GraphQL (`poolNumbers`).
create or replace function herald_public.messaging_services_pool_numbers(service herald_public.messaging_services)
  returns setof herald_public.sender_numbers
  language sql stable
  set search_path = ''
as $$
  select n.* from herald_public.sender_numbers n
   where n.tenant_id = service.tenant_id and n.messaging_service_id = service.id
   order by n.phone_number;
$$;
comment on function herald_public.messaging_services_pool_numbers(herald_public.messaging_services) is
  E'The numbers of the service''s pool, as last synced from Twilio.';
grant execute on function herald_public.messaging_services_pool_numbers(herald_public.messaging_services)
  to :DATABASE_MEMBER, :DATABASE_ADMIN;
