-- One-click unsubscribe from marketing email (RFC 8058), and resubscribing
-- from the same link's page. The link's token is made and checked in
-- src/messages/unsubscribe.ts (HMAC under a server key: a forged or altered
-- token never reaches the database); this is what a valid one does, run by
-- POST/GET /unsubscribe/:token as herald_worker inside the token's tenant.

-- Consent events from the link say so.
alter table herald_public.consent_events drop constraint if exists consent_events_source;
alter table herald_public.consent_events add constraint consent_events_source
  check (source in ('keyword', 'carrier', 'email_provider', 'unsubscribe_link'));
comment on column herald_public.consent_events.source is
  E'`keyword` (the contact texted it), `carrier` (Twilio error 21610), `email_provider` (a SendGrid unsubscribe or spam report), `unsubscribe_link` (the contact used the unsubscribe link of an email).';

drop function if exists herald_hidden.email_link_consent(uuid, boolean, text);
drop type if exists herald_hidden.unsubscribe_result;
create type herald_hidden.unsubscribe_result as (
  -- The tenant's name, for the page (null: no such contact in this tenant).
  tenant_name text,
  -- The contact's email subscription after the call.
  subscribed boolean,
  -- Whether this call changed anything (a second click writes nothing).
  changed boolean
);

-- `subscribe` false: unsubscribed from the tenant's email (the flag, a consent
-- event, an `unsubscribe` suppression of the address); true: subscribed again
-- (the flag, a consent event, and the `unsubscribe` suppression gone; a bounce,
-- a spam report or an operator's suppression stays). `detail`: how (one-click,
-- page). Nothing is written when nothing changes.
create or replace function herald_hidden.email_link_consent(contact_id uuid, subscribe boolean, detail text)
  returns herald_hidden.unsubscribe_result
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_tenant uuid := herald_public.current_tenant_id();
  v_contact herald_public.contacts;
  v_email text;
  v_name text;
  v_suppressed boolean;
begin
  select * into v_contact from herald_public.contacts c where c.tenant_id = v_tenant and c.id = email_link_consent.contact_id;
  select t.name into v_name from herald_public.tenants t where t.id = v_tenant;
  if v_contact.id is null or v_name is null then
    return row(null, null, false)::herald_hidden.unsubscribe_result;
  end if;
  v_email := herald_public.contacts_email(v_contact);
  v_suppressed := v_email is not null and exists (
    select 1 from herald_public.suppressions s
     where s.tenant_id = v_tenant and s.kind = 'email' and s.reason = 'unsubscribe'
       and s.address_hash = any (herald_hidden.pii_hashes('email', pg_catalog.lower(pg_catalog.btrim(v_email)))));
  if not subscribe then
    if not v_contact.email_subscribed and (v_suppressed or v_email is null) then
      return row(v_name, false, false)::herald_hidden.unsubscribe_result;
    end if;
    perform herald_hidden.record_consent(v_contact.id, 'email', 'opt_out', 'unsubscribe_link', detail, null);
    if v_email is not null then
      perform herald_public.add_suppression('email', v_email, 'unsubscribe', 'unsubscribe link');
    end if;
    return row(v_name, false, true)::herald_hidden.unsubscribe_result;
  end if;
  if v_contact.email_subscribed and not v_suppressed then
    return row(v_name, true, false)::herald_hidden.unsubscribe_result;
  end if;
  perform herald_hidden.record_consent(v_contact.id, 'email', 'opt_in', 'unsubscribe_link', detail, null);
  if v_email is not null then
    delete from herald_public.suppressions s
     where s.tenant_id = v_tenant and s.kind = 'email' and s.reason = 'unsubscribe'
       and s.address_hash = any (herald_hidden.pii_hashes('email', pg_catalog.lower(pg_catalog.btrim(v_email))));
  end if;
  return row(v_name, true, true)::herald_hidden.unsubscribe_result;
end;
$$;
comment on function herald_hidden.email_link_consent(uuid, boolean, text) is
  E'The unsubscribe link of an email (src/api/routes/unsubscribe.ts): unsubscribes the contact from the session tenant''s email, or subscribes them again.';
grant execute on function herald_hidden.email_link_consent(uuid, boolean, text) to :DATABASE_WORKER;
