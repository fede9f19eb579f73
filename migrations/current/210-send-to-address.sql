-- Sends to an address: sendMessage(to: …) finds the contact holding that
-- phone or email (by keyed hash, under every live hash key) or creates one,
-- flagged as created by a send; then the message goes the normal way
-- (consent, suppression, idempotency key). The API normalises `to` like
-- contact imports (src/api/send-to-address-plugin.ts); this function accepts
-- only what normalisation produces: E.164 for SMS and WhatsApp, a lower-cased
-- trimmed address for email.

alter table herald_public.contacts
  add column if not exists created_by_send boolean not null default false;
comment on column herald_public.contacts.created_by_send is
  E'Created by `sendMessage(to: …)` for an address the tenant had no contact for.';
grant insert (created_by_send) on herald_public.contacts to :DATABASE_MEMBER;

create or replace function herald_hidden.contact_for_address(channel text, address text)
  returns uuid
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_tenant uuid := herald_public.current_tenant_id();
  v_kind text := case when channel = 'email' then 'email' else 'phone' end;
  v_hashes bytea[];
  v_contact uuid;
  v_key_version smallint;
  v_hash_version smallint;
begin
  if v_tenant is null then
    raise exception 'no tenant in this session' using errcode = 'NOTNT';
  end if;
  if v_kind = 'phone' and (address is null or address !~ '^\+[1-9][0-9]{6,14}$') then
    raise exception 'to must be a phone number for %', channel using errcode = '22023', column = 'to';
  end if;
  if v_kind = 'email' and (address is null or pg_catalog.length(address) > 254
                           or address <> pg_catalog.lower(pg_catalog.btrim(address))
                           or address !~ '^[^@\s]+@[^@\s]+\.[^@\s]+$') then
    raise exception 'to must be an email address for email' using errcode = '22023', column = 'to';
  end if;

  v_hashes := herald_hidden.pii_hashes(v_kind, address);
  -- Found, else created; two sends to one new address at once: one insert
  -- wins (the unique hash index), the other finds its row on the second pass.
  for attempt in 1..2 loop
    if v_kind = 'phone' then
      select c.id into v_contact from herald_public.contacts c
       where c.tenant_id = v_tenant and c.phone_hash = any (v_hashes);
    else
      select c.id into v_contact from herald_public.contacts c
       where c.tenant_id = v_tenant and c.email_hash = any (v_hashes);
    end if;
    exit when v_contact is not null or attempt = 2;
    v_key_version := herald_hidden.current_data_key_version();
    v_hash_version := herald_hidden.current_hash_key_version();
    if v_kind = 'phone' then
      insert into herald_public.contacts (phone_encrypted, phone_hash, key_version, hash_version, created_by_send)
      values (herald_hidden.encrypt_pii(address, herald_hidden.data_key(v_key_version)),
              herald_hidden.pii_hash('phone', address, v_hash_version), v_key_version, v_hash_version, true)
      on conflict (tenant_id, phone_hash) do nothing;
    else
      insert into herald_public.contacts (email_encrypted, email_hash, key_version, hash_version, created_by_send)
      values (herald_hidden.encrypt_pii(address, herald_hidden.data_key(v_key_version)),
              herald_hidden.pii_hash('email', address, v_hash_version), v_key_version, v_hash_version, true)
      on conflict (tenant_id, email_hash) do nothing;
    end if;
  end loop;
  return v_contact;
end;
$$;
comment on function herald_hidden.contact_for_address(text, text) is
  E'The session tenant''s contact holding this normalised phone (E.164) or email, found by keyed hash or created (flagged created_by_send).';
grant execute on function herald_hidden.contact_for_address(text, text) to :DATABASE_MEMBER;
