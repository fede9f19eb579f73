--! Previous: sha1:08c191557cfe86f52d3c47bf9564761b1eafb020
--! Hash: sha1:d87044fea897c1df6208905e5c4d192398187492
--! Message: Email domain authentication

--
-- A tenant proves it may send from a domain: SendGrid (through the tenant's
-- own account) names the DNS records to publish, then checks them. Both calls
-- need the account's credential, which only the worker decrypts, so requests
-- queue jobs (email_domains__authenticate, email_domains__verify).
--
-- Idempotent: graphile-migrate re-runs it in watch mode.

drop function if exists herald_public.authenticate_email_domain(text);
drop function if exists herald_public.verify_email_domain(uuid);
drop table if exists herald_public.email_domains cascade;

create table herald_public.email_domains (
  tenant_id uuid not null default herald_public.current_tenant_id()
    references herald_public.tenants on delete cascade,
  id uuid not null default gen_random_uuid(),
  domain public.citext not null
    constraint email_domains_domain_format check (domain operator(public.~) '^[a-z0-9-]+(\.[a-z0-9-]+)+$'),
  provider_account_id uuid not null,
  sendgrid_domain_id bigint,
  -- The records to publish: [{type, host, data, valid}].
  dns_records jsonb,
  status text not null default 'requested'
    constraint email_domains_status check (status in ('requested', 'pending', 'verified', 'failed')),
  verify_requested_at timestamptz,
  last_checked_at timestamptz,
  last_error text constraint email_domains_last_error_length check (length(last_error) <= 2000),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (tenant_id, id),
  constraint email_domains_domain_unique unique (tenant_id, domain),
  constraint email_domains_account_fkey foreign key (tenant_id, provider_account_id)
    references herald_public.provider_accounts (tenant_id, id) on delete cascade
);
comment on table herald_public.email_domains is
  E'@behavior -insert -update\nA domain the tenant authenticates with SendGrid: `authenticateEmailDomain`, publish `dnsRecords`, then `verifyEmailDomain`.';
comment on column herald_public.email_domains.status is
  E'`requested` (waiting for SendGrid), `pending` (publish the records, then verify), `verified`, or `failed` (see `lastError`).';
comment on constraint email_domains_account_fkey on herald_public.email_domains is
  E'@fieldName providerAccount\n@foreignFieldName emailDomains';

create trigger _100_timestamps before update on herald_public.email_domains
  for each row execute function herald_private.tg__timestamps();
create trigger _500_queue_authenticate after insert on herald_public.email_domains
  for each row execute function herald_private.tg__add_job('email_domains__authenticate');
create trigger _510_queue_verify after update of verify_requested_at on herald_public.email_domains
  for each row when (new.verify_requested_at is distinct from old.verify_requested_at)
  execute function herald_private.tg__add_job('email_domains__verify');

alter table herald_public.email_domains enable row level security;
alter table herald_public.email_domains force row level security;
create policy select_member on herald_public.email_domains for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
create policy insert_member on herald_public.email_domains for insert to :DATABASE_MEMBER
  with check (tenant_id = (select herald_public.current_tenant_id()) and (select herald_hidden.current_user_is_tenant_admin()));
create policy update_member on herald_public.email_domains for update to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()) and (select herald_hidden.current_user_is_tenant_admin()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy delete_member on herald_public.email_domains for delete to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()) and (select herald_hidden.current_user_is_tenant_admin()));
create policy update_worker on herald_public.email_domains for update to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy select_admin on herald_public.email_domains for select to :DATABASE_ADMIN using (true);
create policy delete_admin on herald_public.email_domains for delete to :DATABASE_ADMIN using (true);

grant select on herald_public.email_domains to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;
grant insert (tenant_id, domain, provider_account_id), update (verify_requested_at)
  on herald_public.email_domains to :DATABASE_MEMBER;
grant update (sendgrid_domain_id, dns_records, status, last_checked_at, last_error)
  on herald_public.email_domains to :DATABASE_WORKER;
grant delete on herald_public.email_domains to :DATABASE_MEMBER, :DATABASE_ADMIN;

create function herald_public.authenticate_email_domain(domain text) returns herald_public.email_domains
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_account uuid;
  v_row herald_public.email_domains;
begin
  select a.id into v_account from herald_public.provider_accounts a
   where a.tenant_id = herald_public.current_tenant_id() and a.kind = 'sendgrid' and a.status = 'active';
  if v_account is null then
    raise exception 'Add an active SendGrid account first: domains are authenticated with the tenant''s own account'
      using errcode = 'NTFND';
  end if;
  insert into herald_public.email_domains (domain, provider_account_id)
  values (lower(trim(authenticate_email_domain.domain)), v_account)
  returning * into v_row;
  return v_row;
end;
$$;
comment on function herald_public.authenticate_email_domain(text) is
  E'Ask SendGrid, through the tenant''s SendGrid account, for the DNS records that authenticate this domain.';

create function herald_public.verify_email_domain(email_domain_id uuid) returns herald_public.email_domains
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_row herald_public.email_domains;
begin
  update herald_public.email_domains d set verify_requested_at = clock_timestamp()
   where d.tenant_id = herald_public.current_tenant_id() and d.id = email_domain_id
  returning * into v_row;
  if v_row.id is null then
    raise exception 'No such email domain' using errcode = 'NTFND';
  end if;
  return v_row;
end;
$$;
comment on function herald_public.verify_email_domain(uuid) is
  E'Ask SendGrid to check the published DNS records; `status` and `lastError` show the result.';

grant execute on function herald_public.authenticate_email_domain(text), herald_public.verify_email_domain(uuid)
  to :DATABASE_MEMBER;
