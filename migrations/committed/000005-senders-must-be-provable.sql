--! Previous: sha1:d87044fea897c1df6208905e5c4d192398187492
--! Hash: sha1:b1d4ed76a503661e3c0ab85e1097a1849ee0d03d
--! Message: Senders must be provable

--
-- A tenant may only register a sender number on its own provider account (a
-- number for the system account is assigned by an operator), and an email
-- domain only on its own SendGrid account. Whether an address may be used at
-- all is decided when sending: it must be on one of the tenant's verified
-- email domains (src/providers/send.ts).

drop policy if exists insert_member on herald_public.sender_numbers;
create policy insert_member on herald_public.sender_numbers for insert to :DATABASE_MEMBER
  with check (
    tenant_id = (select herald_public.current_tenant_id())
    and (select herald_hidden.current_user_is_tenant_admin())
    -- Numbers on the system account would let a tenant claim a shared or
    -- unowned number (and with it, inbound replies): operators assign those.
    and provider_account_id is not null
  );
drop policy if exists insert_admin on herald_public.sender_numbers;
create policy insert_admin on herald_public.sender_numbers for insert to :DATABASE_ADMIN with check (true);
grant insert (tenant_id, phone_number, channel, provider_account_id) on herald_public.sender_numbers to :DATABASE_ADMIN;

drop policy if exists insert_member on herald_public.email_domains;
create policy insert_member on herald_public.email_domains for insert to :DATABASE_MEMBER
  with check (
    tenant_id = (select herald_public.current_tenant_id())
    and (select herald_hidden.current_user_is_tenant_admin())
    -- Only a SendGrid account can authenticate a domain (its key is what the task sends).
    and exists (select 1 from herald_public.provider_accounts a
                 where a.tenant_id = email_domains.tenant_id and a.id = email_domains.provider_account_id
                   and a.kind = 'sendgrid')
  );
