-- Consent through the API. Whatever changes a contact's smsSubscribed,
-- emailSubscribed or whatsappSubscribed on the tenant's behalf (a GraphQL
-- update, an import, upsertContacts) leaves a consent_events row naming its
-- source; a trigger on contacts is the one place that writes it. The source
-- is the transaction-local setting `herald.consent_source` (the import and
-- upsert paths set it), else `api` for a member's request. Changes by the
-- worker without a source are the contact's own (a keyword, a carrier or
-- email-provider opt-out): those paths record their own events, with the
-- inbound message or report that caused them, and the trigger leaves them be.
--
-- Optional double opt-in for SMS (tenant_settings.sms_double_opt_in): a new
-- SMS subscription set by the tenant waits (sms_subscribed stays false,
-- sms_opt_in_pending true) until the contact replies START or YES, which the
-- keyword path applies as an opt-in. Pending contacts are not subscribed, so
-- they get no marketing SMS.

-- Who changed it: the session's setting, else `api` for a member; null for the contact's own changes.
create or replace function herald_hidden.consent_source()
  returns text
  language sql stable
  set search_path = ''
as $$
  select coalesce(nullif(pg_catalog.current_setting('herald.consent_source', true), ''),
                  case when pg_catalog.current_setting('role', true) = ':DATABASE_MEMBER' then 'api' end);
$$;
grant execute on function herald_hidden.consent_source() to :DATABASE_MEMBER, :DATABASE_WORKER;

alter table herald_public.consent_events drop constraint if exists consent_events_source;
alter table herald_public.consent_events add constraint consent_events_source
  check (source in ('keyword', 'carrier', 'email_provider', 'unsubscribe_link', 'api', 'import', 'upsert'));
comment on column herald_public.consent_events.source is
  E'`keyword` (the contact texted it), `carrier` (Twilio error 21610), `email_provider` (a SendGrid unsubscribe or spam report), '
  '`unsubscribe_link` (the contact used the unsubscribe link of an email), '
  '`api` (the tenant changed it through GraphQL), `import` (a CSV import), `upsert` (upsertContacts).';

-- The trigger below writes as the definer (members have no insert on consent_events).
drop policy if exists insert_definer on herald_public.consent_events;
create policy insert_definer on herald_public.consent_events for insert to :DATABASE_OWNER with check (true);
comment on policy insert_definer on herald_public.consent_events is
  E'The consent trigger on contacts (herald_private.tg_contacts__consent_events) records tenants'' changes.';

alter table herald_public.tenant_settings
  add column if not exists sms_double_opt_in boolean not null default false;
comment on column herald_public.tenant_settings.sms_double_opt_in is
  E'When true, an SMS subscription you set (API, import, upsert) waits for the contact to reply START or YES (`smsOptInPending`).';
grant update (sms_double_opt_in) on herald_public.tenant_settings to :DATABASE_MEMBER, :DATABASE_ADMIN;

alter table herald_public.contacts
  add column if not exists sms_opt_in_pending boolean not null default false;
comment on column herald_public.contacts.sms_opt_in_pending is
  E'Double opt-in: subscribed to SMS by the tenant, waiting for the contact to reply START or YES (until then `smsSubscribed` is false).';

create or replace function herald_public.contacts_sms_consent(c herald_public.contacts)
  returns text
  language sql stable
  set search_path = ''
as $$
  select case when c.sms_subscribed then 'subscribed' when c.sms_opt_in_pending then 'pending' else 'unsubscribed' end;
$$;
comment on function herald_public.contacts_sms_consent(herald_public.contacts) is
  E'`subscribed`, `pending` (double opt-in: waiting for START or YES) or `unsubscribed`.';
grant execute on function herald_public.contacts_sms_consent(herald_public.contacts) to :DATABASE_MEMBER, :DATABASE_ADMIN;

-- Double opt-in, before the row is written: the tenant's new SMS subscription
-- becomes pending; the contact's own keyword (START/YES confirms, STOP ends it)
-- settles it. Setting smsSubscribed false does not cancel a pending opt-in:
-- the contact is not subscribed until they reply.
create or replace function herald_private.tg_contacts__sms_opt_in() returns trigger
  language plpgsql volatile
  set search_path = ''
as $$
begin
  if herald_hidden.consent_source() is null then
    new.sms_opt_in_pending := false;
  elsif new.sms_subscribed and (tg_op = 'INSERT' or not old.sms_subscribed)
        and coalesce((select s.sms_double_opt_in from herald_public.tenant_settings s where s.tenant_id = new.tenant_id), false) then
    new.sms_subscribed := false;
    new.sms_opt_in_pending := true;
  end if;
  return new;
end;
$$;

-- Whether the tenant asks for SMS double opt-in. In the insert trigger's WHEN,
-- so that an import into a tenant without it (the default) calls no trigger
-- function per row.
create or replace function herald_hidden.sms_double_opt_in(tenant_id uuid)
  returns boolean
  language sql stable
  set search_path = ''
as $$
  select coalesce((select s.sms_double_opt_in from herald_public.tenant_settings s where s.tenant_id = sms_double_opt_in.tenant_id), false);
$$;
grant execute on function herald_hidden.sms_double_opt_in(uuid) to :DATABASE_MEMBER, :DATABASE_WORKER;

drop trigger if exists _200_sms_opt_in_insert on herald_public.contacts;
create trigger _200_sms_opt_in_insert before insert on herald_public.contacts
  for each row when (new.sms_subscribed and herald_hidden.sms_double_opt_in(new.tenant_id))
  execute function herald_private.tg_contacts__sms_opt_in();
drop trigger if exists _200_sms_opt_in_update on herald_public.contacts;
create trigger _200_sms_opt_in_update before update of sms_subscribed on herald_public.contacts
  for each row when (new.sms_subscribed is distinct from old.sms_subscribed
                     or (old.sms_opt_in_pending and herald_hidden.consent_source() is null))
  execute function herald_private.tg_contacts__sms_opt_in();

-- SMS consent as one state: subscribed, pending (double opt-in) or unsubscribed.
create or replace function herald_hidden.sms_consent_state(subscribed boolean, pending boolean)
  returns text
  language sql immutable
  set search_path = ''
as $$
  select case when subscribed then 'subscribed' when pending then 'pending' else 'unsubscribed' end;
$$;

-- One event per channel whose consent the tenant changed (a new contact: each
-- channel whose consent differs from the defaults).
create or replace function herald_private.tg_contacts__consent_events() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
declare
  v_source text := herald_hidden.consent_source();
  v_sms_new text := herald_hidden.sms_consent_state(new.sms_subscribed, new.sms_opt_in_pending);
  v_sms_old text := case when tg_op = 'INSERT' then 'subscribed'
                         else herald_hidden.sms_consent_state(old.sms_subscribed, old.sms_opt_in_pending) end;
  v_email_old boolean := case when tg_op = 'INSERT' then true else old.email_subscribed end;
  v_whatsapp_old boolean := case when tg_op = 'INSERT' then false else old.whatsapp_subscribed end;
begin
  if v_source is null then
    return null;
  end if;
  insert into herald_public.consent_events (tenant_id, contact_id, channel, action, source, detail)
  select new.tenant_id, new.id, e.channel, e.action, v_source, e.detail
    from (values
      ('sms', case when v_sms_new = v_sms_old then null
                   when v_sms_new = 'unsubscribed' then 'opt_out' else 'opt_in' end,
              case when v_sms_new = 'pending' then 'pending: awaiting START or YES' end),
      ('email', case when new.email_subscribed is distinct from v_email_old
                     then case when new.email_subscribed then 'opt_in' else 'opt_out' end end, null),
      ('whatsapp', case when new.whatsapp_subscribed is distinct from v_whatsapp_old
                        then case when new.whatsapp_subscribed then 'opt_in' else 'opt_out' end end, null)
    ) as e(channel, action, detail)
   where e.action is not null;
  return null;
end;
$$;

drop trigger if exists _700_consent_events_insert on herald_public.contacts;
create trigger _700_consent_events_insert after insert on herald_public.contacts
  for each row when (not new.sms_subscribed or not new.email_subscribed or new.whatsapp_subscribed or new.sms_opt_in_pending)
  execute function herald_private.tg_contacts__consent_events();
drop trigger if exists _700_consent_events_update on herald_public.contacts;
create trigger _700_consent_events_update after update on herald_public.contacts
  for each row when (new.sms_subscribed is distinct from old.sms_subscribed
                     or new.email_subscribed is distinct from old.email_subscribed
                     or new.whatsapp_subscribed is distinct from old.whatsapp_subscribed
                     or new.sms_opt_in_pending is distinct from old.sms_opt_in_pending)
  execute function herald_private.tg_contacts__consent_events();
