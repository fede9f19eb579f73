--! Previous: sha1:642594d9f69ed579ca69923f67dbdc76896dce16
--! Hash: sha1:0ec4c1e73e3241ceb448717512f8980c08ecb9d9
--! Message: Inbound messages, consent, provider events, conversations

--
-- Inbound messages, consent, and what providers report back.
--
-- Providers call Herald with no JWT. The webhook code (src/webhooks/) finds the
-- tenant from what the provider signed — the receiving number (through
-- herald_private.inbound_number_owner, the one cross-tenant lookup), or the
-- tenant and delivery ids Herald put in the callback URL or SendGrid custom
-- args — verifies the signature with that tenant's (or the system's)
-- credential, and only then works inside the tenant, as herald_worker, under
-- the same policies as everyone else. Everything written here is therefore
-- confined to that one tenant by RLS, whatever the request says.
--
-- Opt-outs are compliance, not a feature a tenant turns on: STOP / START /
-- HELP are handled for every tenant (herald_hidden.receive_inbound), and the
-- send-time checks of src/messages/claim.ts read the flags and suppressions
-- written here, so an opt-out beats any delivery still queued.
--
-- Idempotent: graphile-migrate re-runs it in watch mode.

drop function if exists herald_public.reply_to_contact(uuid, text, text, text);
drop function if exists herald_public.contacts_conversation(herald_public.contacts, text);
drop type if exists herald_public.conversation_entry cascade;
drop function if exists herald_public.inbound_messages_from(herald_public.inbound_messages);
drop function if exists herald_public.inbound_messages_body(herald_public.inbound_messages);
drop function if exists herald_hidden.receive_inbound_batch(jsonb);
drop function if exists herald_hidden.receive_inbound(text, text, text, text, text, integer, text, text);
drop type if exists herald_hidden.inbound_result cascade;
drop function if exists herald_hidden.apply_delivery_event(uuid, text, text, text, text, text, text, timestamptz);
drop function if exists herald_hidden.record_consent(uuid, text, text, text, text, uuid);
drop function if exists herald_hidden.record_opt_out(text, text, text, text, text);
drop function if exists herald_hidden.delivery_status_rank(text);
drop function if exists herald_hidden.rekey_inbound_messages(uuid, integer);
drop function if exists herald_hidden.rekey_delivery_contents(uuid, integer);
drop function if exists herald_public.tenant_settings_keyword_replies(herald_public.tenant_settings);
drop type if exists herald_public.keyword_replies cascade;
drop function if exists herald_private.inbound_number_owner(text, text);
drop policy if exists select_definer on herald_public.sender_numbers;
drop table if exists herald_public.delivery_events, herald_public.consent_events, herald_public.inbound_messages cascade;
alter table herald_public.deliveries drop column if exists content_encrypted, drop column if exists content_key_version;
alter table herald_public.contacts drop column if exists created_by_inbound;
alter table herald_public.tenant_settings
  drop column if exists business_name,
  drop column if exists program_description,
  drop column if exists support_phone,
  drop column if exists support_email,
  drop column if exists support_website,
  drop column if exists message_frequency,
  drop column if exists help_disclaimer,
  drop column if exists stop_reply,
  drop column if exists start_reply;

-------------------------------------------------------------------------------
-- Contacts an unknown number created by writing in
-------------------------------------------------------------------------------

alter table herald_public.contacts add column created_by_inbound boolean not null default false;
comment on column herald_public.contacts.created_by_inbound is
  E'Created when a number the tenant did not know wrote to one of its numbers (`inboundMessages` shows what it sent).';
grant insert (created_by_inbound) on herald_public.contacts to :DATABASE_WORKER;

-------------------------------------------------------------------------------
-- Keyword replies: what STOP, START and HELP answer, per tenant
-------------------------------------------------------------------------------

-- Carriers (CTIA) expect a HELP answer to name the program, how often it
-- writes, that rates may apply, how to get help and how to stop. Each part
-- may be set by the tenant; `help_text` replaces the composed answer entirely.
alter table herald_public.tenant_settings
  add column business_name text constraint tenant_settings_business_name_length check (length(business_name) between 1 and 100),
  add column program_description text constraint tenant_settings_program_description_length check (length(program_description) between 1 and 200),
  add column support_phone text constraint tenant_settings_support_phone_length check (length(support_phone) between 3 and 40),
  add column support_email text constraint tenant_settings_support_email_length check (length(support_email) between 3 and 254),
  add column support_website text constraint tenant_settings_support_website_length check (length(support_website) between 3 and 200),
  add column message_frequency text constraint tenant_settings_message_frequency_length check (length(message_frequency) between 1 and 100),
  add column help_disclaimer text constraint tenant_settings_help_disclaimer_length check (length(help_disclaimer) between 1 and 300),
  add column stop_reply text constraint tenant_settings_stop_reply_length check (length(stop_reply) between 1 and 480),
  add column start_reply text constraint tenant_settings_start_reply_length check (length(start_reply) between 1 and 480);
comment on column herald_public.tenant_settings.help_text is
  E'The whole answer to HELP/INFO, replacing the one composed from the fields below (see `keywordReplies`).';
comment on column herald_public.tenant_settings.business_name is E'Named in keyword replies; default: the tenant''s name.';
comment on column herald_public.tenant_settings.program_description is E'What the messages are for, e.g. `appointment reminders`; default: `account notifications`.';
comment on column herald_public.tenant_settings.support_phone is E'Where HELP sends people (any of phone, email, website).';
comment on column herald_public.tenant_settings.message_frequency is E'e.g. `Up to 4 msgs/month`; default: `Msg frequency varies`.';
comment on column herald_public.tenant_settings.help_disclaimer is E'Appended to the HELP answer, e.g. terms or a privacy link.';
comment on column herald_public.tenant_settings.stop_reply is E'The answer to STOP (and its family); default: an unsubscribe confirmation naming the business.';
comment on column herald_public.tenant_settings.start_reply is E'The answer to START/UNSTOP/YES; default: a resubscribe confirmation naming the business.';
grant update (business_name, program_description, support_phone, support_email, support_website, message_frequency,
              help_disclaimer, stop_reply, start_reply)
  on herald_public.tenant_settings to :DATABASE_MEMBER, :DATABASE_ADMIN;

create type herald_public.keyword_replies as (help text, stop text, start text);
comment on type herald_public.keyword_replies is E'What Herald answers to HELP, STOP and START for this tenant.';

-- The defaults here are Herald's global ones: every tenant gets a compliant
-- answer without configuring anything.
create function herald_public.tenant_settings_keyword_replies(settings herald_public.tenant_settings)
  returns herald_public.keyword_replies
  language sql stable
  set search_path = ''
as $$
  select row(
    coalesce(settings.help_text, pg_catalog.concat_ws(' ',
      n.name || ': ' || coalesce(settings.program_description, 'account notifications') || '.',
      'Help: ' || nullif(pg_catalog.concat_ws(', ', settings.support_phone, settings.support_email, settings.support_website), '') || '.',
      coalesce(settings.message_frequency, 'Msg frequency varies') || '.',
      'Msg&data rates may apply.',
      'Reply STOP to cancel.',
      settings.help_disclaimer)),
    coalesce(settings.stop_reply,
      n.name || ': You are unsubscribed and will receive no more messages. Reply START to resubscribe.'),
    coalesce(settings.start_reply,
      n.name || ': You are resubscribed. ' || coalesce(settings.message_frequency, 'Msg frequency varies')
        || '. Msg&data rates may apply. Reply HELP for help, STOP to cancel.')
  )::herald_public.keyword_replies
  from (select coalesce(settings.business_name, t.name) as name
          from herald_public.tenants t where t.id = settings.tenant_id) n;
$$;
comment on function herald_public.tenant_settings_keyword_replies(herald_public.tenant_settings) is
  E'The replies to HELP, STOP and START as they would be sent now, with Herald''s defaults where a field is unset.';
grant execute on function herald_public.tenant_settings_keyword_replies(herald_public.tenant_settings)
  to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;

-------------------------------------------------------------------------------
-- Finding the tenant of an inbound message: its receiving number
-------------------------------------------------------------------------------

-- A number on a tenant's own account goes with that account. Until now,
-- deleting the account moved its numbers to the system account (the FK set
-- provider_account_id to null): a tenant could register any number — the
-- system's shared sender, say — on an account of its own, delete the account,
-- and hold the number as a system number, whose inbound messages the system's
-- token verifies. Only operators assign system numbers (000005).
alter table herald_public.sender_numbers drop constraint sender_numbers_account_fkey;
alter table herald_public.sender_numbers add constraint sender_numbers_account_fkey foreign key (tenant_id, provider_account_id)
  references herald_public.provider_accounts (tenant_id, id) on delete cascade;
comment on constraint sender_numbers_account_fkey on herald_public.sender_numbers is
  E'@fieldName providerAccount\n@foreignFieldName senderNumbers';

-- The one lookup across tenants a webhook makes, before any tenant context
-- exists: which tenant owns the number a message was sent to, and which of its
-- accounts (null: the system's) signs that number's webhooks. sender_numbers
-- is a global mapping (a number belongs to one tenant), so this reveals no
-- tenant data: only who owns a public phone number.
create policy select_definer on herald_public.sender_numbers for select to :DATABASE_OWNER using (true);

create function herald_private.inbound_number_owner(phone_number text, channel text)
  returns table (tenant_id uuid, sender_number_id uuid, provider_account_id uuid)
  language sql stable security definer
  set search_path = ''
as $$
  select n.tenant_id, n.id, n.provider_account_id
    from herald_public.sender_numbers n
   where n.phone_number = inbound_number_owner.phone_number and n.channel = inbound_number_owner.channel;
$$;
grant execute on function herald_private.inbound_number_owner(text, text) to :DATABASE_AUTHENTICATOR;

-------------------------------------------------------------------------------
-- inbound_messages (tenant-owned)
-------------------------------------------------------------------------------

create table herald_public.inbound_messages (
  tenant_id uuid not null default herald_public.current_tenant_id()
    references herald_public.tenants on delete cascade,
  id uuid not null default gen_random_uuid(),
  channel text not null constraint inbound_messages_channel check (channel in ('sms', 'whatsapp')),
  -- The tenant's number it arrived at (kept as text too: the number may be released later).
  sender_number_id uuid,
  to_number text not null constraint inbound_messages_to_e164 check (to_number ~ '^\+[1-9][0-9]{6,14}$'),
  -- Who wrote: the contact matched by keyed hash (or created for an unknown number).
  contact_id uuid,
  -- PII: the sender's number and the text, under the tenant's data key `key_version`.
  from_encrypted bytea not null,
  body_encrypted bytea not null,
  key_version smallint not null,
  media_count integer not null default 0 constraint inbound_messages_media_count check (media_count between 0 and 10),
  -- The keyword family the text was, if any: it changed the contact's consent (consent_events).
  keyword text constraint inbound_messages_keyword check (keyword in ('stop', 'start', 'help')),
  -- What Herald answered in its TwiML (the tenant's own keyword reply, no PII).
  auto_reply text constraint inbound_messages_auto_reply_length check (length(auto_reply) <= 1600),
  provider_message_id text not null constraint inbound_messages_provider_message_id_length check (length(provider_message_id) between 1 and 64),
  provider_account_id uuid,
  -- Which account received it, kept as received: provider_account_id is
  -- nulled when the account is deleted, and usage must not move with it.
  account text not null constraint inbound_messages_account check (account in ('tenant', 'system')),
  received_at timestamptz not null default now(),
  primary key (tenant_id, id),
  -- Twilio retries a webhook it is not sure reached us: one row per MessageSid.
  constraint inbound_messages_provider_message_unique unique (tenant_id, provider_message_id),
  constraint inbound_messages_sender_number_fkey foreign key (tenant_id, sender_number_id)
    references herald_public.sender_numbers (tenant_id, id) on delete set null (sender_number_id),
  constraint inbound_messages_contact_fkey foreign key (tenant_id, contact_id)
    references herald_public.contacts (tenant_id, id) on delete set null (contact_id),
  constraint inbound_messages_provider_account_fkey foreign key (tenant_id, provider_account_id)
    references herald_public.provider_accounts (tenant_id, id) on delete set null (provider_account_id),
  -- As for contacts: a key version still in use cannot be destroyed.
  constraint inbound_messages_key_version_fkey foreign key (tenant_id, key_version)
    references herald_private.tenant_data_keys (tenant_id, version)
);
comment on table herald_public.inbound_messages is
  E'@behavior -insert -update\nAn SMS or WhatsApp message a contact sent to one of the tenant''s numbers. `from` and `body` are stored encrypted.';
comment on column herald_public.inbound_messages.from_encrypted is E'@behavior -*';
comment on column herald_public.inbound_messages.body_encrypted is E'@behavior -*';
comment on column herald_public.inbound_messages.key_version is E'@behavior -*';
comment on constraint inbound_messages_key_version_fkey on herald_public.inbound_messages is E'@behavior -*';
comment on constraint inbound_messages_provider_message_unique on herald_public.inbound_messages is E'@behavior -*';
comment on constraint inbound_messages_sender_number_fkey on herald_public.inbound_messages is
  E'@fieldName senderNumber\n@foreignFieldName inboundMessages';
comment on constraint inbound_messages_contact_fkey on herald_public.inbound_messages is
  E'@fieldName contact\n@foreignFieldName inboundMessages';
comment on constraint inbound_messages_provider_account_fkey on herald_public.inbound_messages is
  E'@fieldName providerAccount\n@foreignFieldName inboundMessages';
comment on column herald_public.inbound_messages.keyword is E'`stop`, `start` or `help` when the text was one of those keywords (any case, spacing or punctuation).';
comment on column herald_public.inbound_messages.auto_reply is E'What Herald answered at once (keyword replies), if anything.';
comment on column herald_public.inbound_messages.provider_message_id is E'Twilio''s MessageSid.';
comment on column herald_public.inbound_messages.account is E'`tenant` (received on its own provider account) or `system`.';
create index inbound_messages_by_contact on herald_public.inbound_messages (tenant_id, contact_id, received_at);
create index inbound_messages_received on herald_public.inbound_messages (tenant_id, received_at desc);

alter table herald_public.inbound_messages enable row level security;
alter table herald_public.inbound_messages force row level security;
create policy select_member on herald_public.inbound_messages for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
create policy insert_worker on herald_public.inbound_messages for insert to :DATABASE_WORKER
  with check (tenant_id = (select herald_public.current_tenant_id()));
-- Key rotation only (the columns granted below).
create policy update_worker on herald_public.inbound_messages for update to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
-- Erasing what a person wrote is the tenant's admins' call.
create policy delete_member on herald_public.inbound_messages for delete to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()) and (select herald_hidden.current_user_is_tenant_admin()));
create policy select_admin on herald_public.inbound_messages for select to :DATABASE_ADMIN using (true);
create policy delete_admin on herald_public.inbound_messages for delete to :DATABASE_ADMIN using (true);

grant select on herald_public.inbound_messages to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;
grant insert (tenant_id, channel, sender_number_id, to_number, contact_id, from_encrypted, body_encrypted, key_version,
              media_count, keyword, auto_reply, provider_message_id, provider_account_id, account)
  on herald_public.inbound_messages to :DATABASE_WORKER;
grant update (from_encrypted, body_encrypted, key_version) on herald_public.inbound_messages to :DATABASE_WORKER;
grant delete on herald_public.inbound_messages to :DATABASE_MEMBER, :DATABASE_ADMIN;

create function herald_public.inbound_messages_from(message herald_public.inbound_messages) returns text
  language sql stable parallel safe
as $$
  select herald_hidden.decrypt_pii(message.from_encrypted, message.key_version);
$$;
-- (Plain SQL without SET clauses, like contacts_phone: the planner inlines them.)
comment on function herald_public.inbound_messages_from(herald_public.inbound_messages) is
  E'The sender''s number (E.164). Operators get NO_KEY: they hold no tenant key.';
create function herald_public.inbound_messages_body(message herald_public.inbound_messages) returns text
  language sql stable parallel safe
as $$
  select herald_hidden.decrypt_pii(message.body_encrypted, message.key_version);
$$;
comment on function herald_public.inbound_messages_body(herald_public.inbound_messages) is E'The text as received.';
grant execute on function herald_public.inbound_messages_from(herald_public.inbound_messages),
  herald_public.inbound_messages_body(herald_public.inbound_messages)
  to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;

-------------------------------------------------------------------------------
-- consent_events (tenant-owned): the record of every opt-out, opt-in and HELP
-------------------------------------------------------------------------------

create table herald_public.consent_events (
  tenant_id uuid not null default herald_public.current_tenant_id()
    references herald_public.tenants on delete cascade,
  id uuid not null default gen_random_uuid(),
  contact_id uuid,
  channel text not null constraint consent_events_channel check (channel in ('sms', 'whatsapp', 'email')),
  action text not null constraint consent_events_action check (action in ('opt_out', 'opt_in', 'help')),
  -- keyword: the contact texted it; carrier: Twilio refused with 21610 (they
  -- opted out at the carrier); email_provider: SendGrid reported an
  -- unsubscribe or spam report.
  source text not null constraint consent_events_source check (source in ('keyword', 'carrier', 'email_provider')),
  -- The word or event: `STOP`, `UNSUBSCRIBE`, `21610`, `spamreport` … (never the address).
  detail text constraint consent_events_detail_length check (length(detail) <= 100),
  inbound_message_id uuid,
  created_at timestamptz not null default now(),
  primary key (tenant_id, id),
  constraint consent_events_contact_fkey foreign key (tenant_id, contact_id)
    references herald_public.contacts (tenant_id, id) on delete set null (contact_id),
  constraint consent_events_inbound_message_fkey foreign key (tenant_id, inbound_message_id)
    references herald_public.inbound_messages (tenant_id, id) on delete set null (inbound_message_id)
);
comment on table herald_public.consent_events is
  E'@behavior -insert -update -delete\nEvery opt-out, opt-in and HELP request, and where it came from. Kept as a record: nobody edits it.';
comment on constraint consent_events_contact_fkey on herald_public.consent_events is
  E'@fieldName contact\n@foreignFieldName consentEvents';
comment on constraint consent_events_inbound_message_fkey on herald_public.consent_events is
  E'@fieldName inboundMessage\n@foreignFieldName consentEvents';
comment on column herald_public.consent_events.source is
  E'`keyword` (the contact texted it), `carrier` (Twilio error 21610), `email_provider` (a SendGrid unsubscribe or spam report).';
create index consent_events_by_contact on herald_public.consent_events (tenant_id, contact_id, created_at);
create index consent_events_by_inbound on herald_public.consent_events (tenant_id, inbound_message_id);

alter table herald_public.consent_events enable row level security;
alter table herald_public.consent_events force row level security;
create policy select_member on herald_public.consent_events for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
create policy insert_worker on herald_public.consent_events for insert to :DATABASE_WORKER
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy select_admin on herald_public.consent_events for select to :DATABASE_ADMIN using (true);
grant select on herald_public.consent_events to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;
grant insert (tenant_id, contact_id, channel, action, source, detail, inbound_message_id)
  on herald_public.consent_events to :DATABASE_WORKER;

-------------------------------------------------------------------------------
-- Consent changes, shared by keywords, carrier opt-outs and email events
-------------------------------------------------------------------------------

-- Records one consent event for a contact; opt_out / opt_in also set the
-- contact's flag for that channel (help changes nothing).
create function herald_hidden.record_consent(contact_id uuid, channel text, action text, source text, detail text,
                                              inbound_message_id uuid)
  returns void
  language plpgsql volatile
  set search_path = ''
as $$
begin
  if action in ('opt_out', 'opt_in') and contact_id is not null then
    update herald_public.contacts c
       set sms_subscribed = case when record_consent.channel = 'sms' then record_consent.action = 'opt_in' else c.sms_subscribed end,
           whatsapp_subscribed = case when record_consent.channel = 'whatsapp' then record_consent.action = 'opt_in' else c.whatsapp_subscribed end,
           email_subscribed = case when record_consent.channel = 'email' then record_consent.action = 'opt_in' else c.email_subscribed end
     where c.tenant_id = herald_public.current_tenant_id() and c.id = record_consent.contact_id;
  end if;
  insert into herald_public.consent_events (contact_id, channel, action, source, detail, inbound_message_id)
  values (record_consent.contact_id, record_consent.channel, record_consent.action, record_consent.source,
          pg_catalog.left(record_consent.detail, 100), record_consent.inbound_message_id);
end;
$$;

-- An opt-out reported by a provider about an address (Twilio 21610, a SendGrid
-- unsubscribe or spam report): the address is suppressed (kept by hash, so it
-- outlives the contact) and the contact holding it, if any, unsubscribed.
create function herald_hidden.record_opt_out(kind text, address text, channel text, source text, detail text)
  returns void
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_contact uuid;
begin
  perform herald_public.add_suppression(kind, address,
    case when source = 'carrier' then 'carrier_opt_out' when detail = 'spamreport' then 'spam_report' else 'unsubscribe' end,
    source || ': ' || detail);
  -- Two statements, so that each probes its own (tenant_id, hash) index.
  if kind = 'email' then
    select c.id into v_contact from herald_public.contacts c
     where c.tenant_id = herald_public.current_tenant_id()
       and c.email_hash = any ((select herald_hidden.pii_hashes('email', pg_catalog.lower(pg_catalog.btrim(address))))::bytea[]);
  else
    select c.id into v_contact from herald_public.contacts c
     where c.tenant_id = herald_public.current_tenant_id()
       and c.phone_hash = any ((select herald_hidden.pii_hashes('phone', address))::bytea[]);
  end if;
  if v_contact is not null then
    perform herald_hidden.record_consent(v_contact, channel, 'opt_out', source, detail, null);
  end if;
end;
$$;
grant execute on function herald_hidden.record_consent(uuid, text, text, text, text, uuid),
  herald_hidden.record_opt_out(text, text, text, text, text)
  to :DATABASE_WORKER;

-------------------------------------------------------------------------------
-- Receiving one SMS / WhatsApp message (run by the webhook inside the tenant)
-------------------------------------------------------------------------------

create type herald_hidden.inbound_result as (
  inbound_message_id uuid,
  contact_id uuid,
  -- The same MessageSid was received before: nothing was written this time.
  duplicate boolean,
  keyword text,
  reply text
);

-- `from_phone`: the sender in E.164, normalised by the caller (null when it is
-- no phone number, e.g. a short code: stored, matched to nobody). `keyword`:
-- the family the text belongs to (src/webhooks/keywords.ts), `keyword_word`
-- the word itself. In one statement, so Twilio's answer waits on one round trip.
create function herald_hidden.receive_inbound(channel text, to_number text, from_phone text, body text,
                                              provider_message_id text, media_count integer, keyword text,
                                              keyword_word text)
  returns herald_hidden.inbound_result
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_tenant uuid := herald_public.current_tenant_id();
  v_number herald_public.sender_numbers;
  v_key_version smallint := herald_hidden.current_data_key_version();
  v_key text := herald_hidden.data_key(v_key_version);
  v_existing herald_public.inbound_messages;
  v_contact uuid;
  v_subscribed boolean;
  v_keyword text := receive_inbound.keyword;
  v_inbound uuid;
  v_replies herald_public.keyword_replies;
  v_reply text;
  -- The sender's phone under every live hash version (null: no phone), computed once.
  v_hashes bytea[] := case when from_phone is not null then herald_hidden.pii_hashes('phone', from_phone) end;
  v_hash_version smallint := herald_hidden.current_hash_key_version();
begin
  -- The number must be this tenant's: the webhook resolved the tenant from it,
  -- and RLS confirms it here, inside the tenant, in the same transaction.
  select * into v_number from herald_public.sender_numbers n
   where n.tenant_id = v_tenant and n.phone_number = receive_inbound.to_number and n.channel = receive_inbound.channel;
  if not found then
    raise exception 'number % does not belong to this tenant', receive_inbound.to_number using errcode = 'NTFND';
  end if;

  -- Twilio retries a webhook it is unsure of: answer the same, write nothing.
  select * into v_existing from herald_public.inbound_messages m
   where m.tenant_id = v_tenant and m.provider_message_id = receive_inbound.provider_message_id;
  if found then
    return row(v_existing.id, v_existing.contact_id, true, v_existing.keyword, v_existing.auto_reply)::herald_hidden.inbound_result;
  end if;

  -- The sender, by keyed hash (every live hash version), else a new contact
  -- flagged as created by this message. Two messages from one new number at
  -- once: one insert wins, the other finds it.
  if from_phone is not null then
    for attempt in 1..2 loop
      select c.id, case receive_inbound.channel when 'sms' then c.sms_subscribed else c.whatsapp_subscribed end
        into v_contact, v_subscribed
        from herald_public.contacts c
       where c.tenant_id = v_tenant
         and c.phone_hash = any (v_hashes);
      exit when v_contact is not null or attempt = 2;
      insert into herald_public.contacts (phone_encrypted, phone_hash, key_version, hash_version, created_by_inbound,
                                          whatsapp_subscribed)
      values (herald_hidden.encrypt_pii(from_phone, v_key),
              herald_hidden.pii_hash('phone', from_phone, v_hash_version),
              v_key_version, v_hash_version, true,
              -- Someone who writes on WhatsApp has opened that conversation.
              receive_inbound.channel = 'whatsapp')
      on conflict (tenant_id, phone_hash) do nothing;
    end loop;
  end if;

  -- "YES" answers questions ("Reply YES to confirm"): from a contact who is
  -- subscribed and not suppressed it is an ordinary message, not an opt-in.
  if v_keyword = 'start' and keyword_word = 'YES' and v_subscribed
     and not exists (select 1 from herald_public.suppressions s
                      where s.tenant_id = v_tenant and s.kind = 'phone'
                        and s.address_hash = any (v_hashes)) then
    v_keyword := null;
  end if;
  -- Keywords need someone to apply to.
  if v_contact is null then
    v_keyword := null;
  end if;

  if v_keyword is not null then
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
    v_reply := case v_keyword when 'stop' then v_replies.stop when 'start' then v_replies.start when 'help' then v_replies.help end;
  end if;

  insert into herald_public.inbound_messages (channel, sender_number_id, to_number, contact_id, from_encrypted, body_encrypted,
                                              key_version, media_count, keyword, auto_reply, provider_message_id, provider_account_id, account)
  values (receive_inbound.channel, v_number.id, receive_inbound.to_number, v_contact,
          herald_hidden.encrypt_pii(coalesce(from_phone, '(unknown)'), v_key), herald_hidden.encrypt_pii(coalesce(body, ''), v_key),
          v_key_version, coalesce(media_count, 0), v_keyword, v_reply, receive_inbound.provider_message_id, v_number.provider_account_id,
          case when v_number.provider_account_id is null then 'system' else 'tenant' end)
  on conflict on constraint inbound_messages_provider_message_unique do nothing
  returning id into v_inbound;
  if v_inbound is null then
    -- The same message, received twice at once: the other request answered it.
    select * into v_existing from herald_public.inbound_messages m
     where m.tenant_id = v_tenant and m.provider_message_id = receive_inbound.provider_message_id;
    return row(v_existing.id, v_existing.contact_id, true, v_existing.keyword, v_existing.auto_reply)::herald_hidden.inbound_result;
  end if;

  -- Consent. The channel's flag covers every number of the tenant; an SMS
  -- opt-out is also a phone suppression, which outlives the contact (deleted
  -- and re-imported, they stay opted out) and blocks WhatsApp to that phone too.
  if v_keyword = 'stop' then
    perform herald_hidden.record_consent(v_contact, receive_inbound.channel, 'opt_out', 'keyword', keyword_word, v_inbound);
    if receive_inbound.channel = 'sms' then
      perform herald_public.add_suppression('phone', from_phone, 'unsubscribe', 'keyword: ' || keyword_word);
    end if;
  elsif v_keyword = 'start' then
    perform herald_hidden.record_consent(v_contact, receive_inbound.channel, 'opt_in', 'keyword', keyword_word, v_inbound);
    -- What the contact's own opt-outs put there (keyword or carrier); an
    -- operator's manual suppression or a bounce stays.
    delete from herald_public.suppressions s
     where s.tenant_id = v_tenant and s.kind = 'phone'
       and s.address_hash = any (v_hashes)
       and s.reason in ('unsubscribe', 'carrier_opt_out');
  elsif v_keyword = 'help' then
    perform herald_hidden.record_consent(v_contact, receive_inbound.channel, 'help', 'keyword', keyword_word, v_inbound);
  end if;

  return row(v_inbound, v_contact, false, v_keyword, v_reply)::herald_hidden.inbound_result;
end;
$$;
comment on function herald_hidden.receive_inbound(text, text, text, text, text, integer, text, text) is
  E'Stores one inbound message for the session''s tenant, applies its keyword, and returns the reply to send.';
grant execute on function herald_hidden.receive_inbound(text, text, text, text, text, integer, text, text) to :DATABASE_WORKER;

-------------------------------------------------------------------------------
-- What was sent, kept for the conversation thread
-------------------------------------------------------------------------------

-- The text as rendered for this contact (SMS/WhatsApp), or the email's
-- subject, under the tenant's data key: written with the claim (in the same
-- update), read by contacts_conversation.
alter table herald_public.deliveries
  add column content_encrypted bytea,
  add column content_key_version smallint,
  add constraint deliveries_content_key_version_fkey foreign key (tenant_id, content_key_version)
    references herald_private.tenant_data_keys (tenant_id, version);
comment on column herald_public.deliveries.content_encrypted is E'@behavior -*';
comment on column herald_public.deliveries.content_key_version is E'@behavior -*';
comment on constraint deliveries_content_key_version_fkey on herald_public.deliveries is E'@behavior -*';
grant update (content_encrypted, content_key_version) on herald_public.deliveries to :DATABASE_WORKER;

-------------------------------------------------------------------------------
-- delivery_events (tenant-owned): what providers reported, in order received
-------------------------------------------------------------------------------

create table herald_public.delivery_events (
  -- As for deliveries: the delivery's composite key implies the tenant.
  tenant_id uuid not null default herald_public.current_tenant_id(),
  id uuid not null default gen_random_uuid(),
  delivery_id uuid not null,
  provider text not null constraint delivery_events_provider check (provider in ('twilio', 'sendgrid')),
  -- The provider's own word: Twilio's MessageStatus, SendGrid's event.
  event text not null constraint delivery_events_event_length check (length(event) between 1 and 40),
  -- Providers repeat themselves: Twilio per (MessageSid, status), SendGrid per sg_event_id.
  dedupe_key text not null constraint delivery_events_dedupe_key_length check (length(dedupe_key) between 1 and 200),
  error_code text constraint delivery_events_error_code_length check (length(error_code) <= 50),
  -- Whether it moved the delivery's status; a late `sent` after `delivered` is kept here, not applied.
  applied boolean not null,
  -- The status the delivery had afterwards.
  status text not null,
  occurred_at timestamptz,
  received_at timestamptz not null default now(),
  primary key (tenant_id, id),
  constraint delivery_events_dedupe_unique unique (tenant_id, dedupe_key),
  constraint delivery_events_delivery_fkey foreign key (tenant_id, delivery_id)
    references herald_public.deliveries (tenant_id, id) on delete cascade
);
comment on table herald_public.delivery_events is
  E'@behavior -insert -update -delete\nThe status callbacks and email events a delivery received, applied or not.';
comment on constraint delivery_events_delivery_fkey on herald_public.delivery_events is
  E'@fieldName delivery\n@foreignFieldName events';
comment on constraint delivery_events_dedupe_unique on herald_public.delivery_events is E'@behavior -*';
comment on column herald_public.delivery_events.dedupe_key is E'@behavior -*';
comment on column herald_public.delivery_events.applied is
  E'Whether it changed the delivery''s status (states never move backwards: a late `sent` after `delivered` is recorded, not applied).';
comment on column herald_public.delivery_events.occurred_at is E'When the provider says it happened (SendGrid''s timestamp), if it says.';
create index delivery_events_by_delivery on herald_public.delivery_events (tenant_id, delivery_id, received_at);

alter table herald_public.delivery_events enable row level security;
alter table herald_public.delivery_events force row level security;
create policy select_member on herald_public.delivery_events for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
create policy insert_worker on herald_public.delivery_events for insert to :DATABASE_WORKER
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy select_admin on herald_public.delivery_events for select to :DATABASE_ADMIN using (true);
grant select on herald_public.delivery_events to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;
grant insert (tenant_id, delivery_id, provider, event, dedupe_key, error_code, applied, status, occurred_at)
  on herald_public.delivery_events to :DATABASE_WORKER;

-- How far along a status is. A delivery only moves up: queued (0) → sending
-- or unknown (1) → sent (2) → delivered, undelivered or failed (3, final).
create function herald_hidden.delivery_status_rank(status text) returns integer
  language sql immutable parallel safe
as $$
  select case status
    when 'queued' then 0 when 'sending' then 1 when 'unknown' then 1 when 'sent' then 2
    when 'delivered' then 3 when 'undelivered' then 3 when 'failed' then 3
  end;
$$;
grant execute on function herald_hidden.delivery_status_rank(text) to :DATABASE_WORKER;

-- Applies one provider event to the session tenant's delivery — found by
-- `delivery_id` (Herald's own, from the callback URL or custom args) or else
-- by the provider's message id. `status` is what the event says the delivery
-- became (null: nothing, e.g. an open). Outcomes: applied, recorded (kept, not
-- applied: the delivery is as far or further), duplicate, mismatch (the id
-- names a delivery sent as another provider message), not_found.
-- An event for a delivery still `sending` or `unknown` proves the provider
-- accepted it, and records its message id.
create function herald_hidden.apply_delivery_event(delivery_id uuid, provider_message_id text, provider text, event text,
                                                    status text, dedupe_key text, error_code text, occurred_at timestamptz,
                                                    out outcome text, out delivery uuid, out delivery_status text)
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_tenant uuid := herald_public.current_tenant_id();
  v_delivery herald_public.deliveries;
  v_applied boolean;
  v_event uuid;
begin
  if apply_delivery_event.delivery_id is not null then
    select * into v_delivery from herald_public.deliveries d
     where d.tenant_id = v_tenant and d.id = apply_delivery_event.delivery_id for update;
  elsif apply_delivery_event.provider_message_id is not null then
    select * into v_delivery from herald_public.deliveries d
     where d.tenant_id = v_tenant and d.provider_message_id = apply_delivery_event.provider_message_id for update;
  end if;
  if v_delivery.id is null then
    outcome := 'not_found';
    return;
  end if;
  delivery := v_delivery.id;
  -- A delivery sent again after an uncertain first try has the second
  -- message's id: the first message's reports are kept, not applied.
  v_applied := apply_delivery_event.status is not null
    and herald_hidden.delivery_status_rank(apply_delivery_event.status) > coalesce(herald_hidden.delivery_status_rank(v_delivery.status), 99)
    and (v_delivery.provider_message_id is null or apply_delivery_event.provider_message_id is null
         or v_delivery.provider_message_id = apply_delivery_event.provider_message_id);

  insert into herald_public.delivery_events (delivery_id, provider, event, dedupe_key, error_code, applied, status, occurred_at)
  values (v_delivery.id, apply_delivery_event.provider, apply_delivery_event.event, apply_delivery_event.dedupe_key,
          apply_delivery_event.error_code, v_applied,
          case when v_applied then apply_delivery_event.status else v_delivery.status end,
          apply_delivery_event.occurred_at)
  on conflict on constraint delivery_events_dedupe_unique do nothing
  returning id into v_event;
  if v_event is null then
    outcome := 'duplicate';
    delivery_status := v_delivery.status;
    return;
  end if;

  if v_applied then
    update herald_public.deliveries d
       set status = apply_delivery_event.status,
           provider_message_id = coalesce(d.provider_message_id, apply_delivery_event.provider_message_id),
           error_code = coalesce(apply_delivery_event.error_code, d.error_code),
           reason = case when apply_delivery_event.status in ('failed', 'undelivered')
                         then 'reported by ' || apply_delivery_event.provider || ': ' || apply_delivery_event.event
                              || coalesce(' ' || apply_delivery_event.error_code, '')
                         when d.status in ('sending', 'unknown') then null
                         else d.reason end,
           sent_at = coalesce(d.sent_at, now()),
           completed_at = case when herald_hidden.delivery_status_rank(apply_delivery_event.status) = 3 then now() else d.completed_at end
     where d.tenant_id = v_tenant and d.id = v_delivery.id;
    outcome := 'applied';
    delivery_status := apply_delivery_event.status;
  else
    outcome := case when v_delivery.provider_message_id is not null and apply_delivery_event.provider_message_id is not null
                         and v_delivery.provider_message_id <> apply_delivery_event.provider_message_id
                    then 'mismatch' else 'recorded' end;
    delivery_status := v_delivery.status;
  end if;
end;
$$;
grant execute on function herald_hidden.apply_delivery_event(uuid, text, text, text, text, text, text, timestamptz) to :DATABASE_WORKER;

-------------------------------------------------------------------------------
-- Conversations: a contact's messages both ways, as one thread
-------------------------------------------------------------------------------

create type herald_public.conversation_entry as (
  direction text,
  channel text,
  at timestamptz,
  body text,
  -- Outbound: the delivery's status; inbound: null.
  status text,
  -- Inbound: the keyword it was, if any.
  keyword text,
  -- The tenant's number (or address) on this message: received at, or sent from.
  tenant_address text,
  message_id uuid,
  delivery_id uuid,
  inbound_message_id uuid
);
comment on type herald_public.conversation_entry is
  E'One message of a conversation: `inbound` (the contact wrote), or `outbound` (a delivery, or Herald''s automatic keyword reply).';

-- Newest first (`first: 20` is the latest, `after:` pages back). Deliveries that
-- never reached the person (skipped, canceled) are not part of it. Deliveries
-- claimed before their text was kept show the message as written.
create function herald_public.contacts_conversation(contact herald_public.contacts, channel text default null)
  returns setof herald_public.conversation_entry
  language sql stable
  set search_path = ''
as $$
  select e.* from (
    select 'inbound'::text, i.channel, i.received_at, herald_hidden.decrypt_pii(i.body_encrypted, i.key_version),
           null::text, i.keyword, i.to_number, null::uuid, null::uuid, i.id
      from herald_public.inbound_messages i
     where i.tenant_id = contact.tenant_id and i.contact_id = contact.id
       and (contacts_conversation.channel is null or i.channel = contacts_conversation.channel)
    union all
    -- The keyword reply went back at once, in Twilio's answer to the webhook.
    select 'outbound', i.channel, i.received_at, i.auto_reply, 'sent', null, i.to_number, null, null, i.id
      from herald_public.inbound_messages i
     where i.tenant_id = contact.tenant_id and i.contact_id = contact.id and i.auto_reply is not null
       and (contacts_conversation.channel is null or i.channel = contacts_conversation.channel)
    union all
    select 'outbound', d.channel, coalesce(d.sent_at, d.created_at),
           coalesce(herald_hidden.decrypt_pii(d.content_encrypted, d.content_key_version),
                    case when d.channel = 'email' then coalesce(m.subject, t.subject) else coalesce(m.body, t.body) end),
           d.status, null, d.from_address, d.message_id, d.id, null
      from herald_public.deliveries d
      join herald_public.messages m on m.tenant_id = d.tenant_id and m.id = d.message_id
      left join herald_public.templates t on t.tenant_id = m.tenant_id and t.id = m.template_id
     where d.tenant_id = contact.tenant_id and d.contact_id = contact.id
       and d.status not in ('skipped', 'canceled')
       and (contacts_conversation.channel is null or d.channel = contacts_conversation.channel)
  ) e (direction, channel, at, body, status, keyword, tenant_address, message_id, delivery_id, inbound_message_id)
  -- A keyword reply shares its message's instant: it comes after it (before it, newest first).
  order by e.at desc, e.direction desc, coalesce(e.delivery_id, e.inbound_message_id);
$$;
comment on function herald_public.contacts_conversation(herald_public.contacts, text) is
  E'This contact''s messages both ways, newest first (`first: 20` for the latest): what they wrote, what was sent to them, and automatic keyword replies. `channel` narrows it to sms, whatsapp or email.';
grant execute on function herald_public.contacts_conversation(herald_public.contacts, text)
  to :DATABASE_MEMBER, :DATABASE_ADMIN;

-- A reply goes out from the number the contact last wrote to (while it is
-- still the tenant's), through the normal pipeline: consent, suppressions and
-- pacing apply; quiet hours do not while the contact wrote in the last 24 hours.
create function herald_public.reply_to_contact(contact_id uuid, body text, channel text default 'sms', idempotency_key text default null)
  returns herald_public.messages
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_channel text := coalesce(reply_to_contact.channel, 'sms');
  v_last herald_public.inbound_messages;
  v_metadata jsonb := '{}';
begin
  if v_channel not in ('sms', 'whatsapp') then
    raise exception 'channel must be sms or whatsapp' using errcode = '22023', column = 'channel';
  end if;
  if not exists (select 1 from herald_public.contacts c
                  where c.tenant_id = herald_public.current_tenant_id() and c.id = reply_to_contact.contact_id) then
    raise exception 'contact not found' using errcode = 'NTFND', column = 'contactId';
  end if;
  select * into v_last from herald_public.inbound_messages i
   where i.tenant_id = herald_public.current_tenant_id() and i.contact_id = reply_to_contact.contact_id and i.channel = v_channel
   order by i.received_at desc limit 1;
  if found then
    v_metadata := pg_catalog.jsonb_build_object('in_reply_to', v_last.id);
    if exists (select 1 from herald_public.sender_numbers n
                where n.tenant_id = herald_public.current_tenant_id() and n.phone_number = v_last.to_number and n.channel = v_channel) then
      v_metadata := v_metadata || pg_catalog.jsonb_build_object('from', v_last.to_number);
    end if;
  end if;
  return herald_public.send_message(v_channel, body => reply_to_contact.body, contact_ids => array[reply_to_contact.contact_id],
                                    idempotency_key => reply_to_contact.idempotency_key, metadata => v_metadata);
end;
$$;
comment on function herald_public.reply_to_contact(uuid, text, text, text) is
  E'@resultFieldName message\nReply to a contact in its conversation: from the number they last wrote to, now (quiet hours do not hold a reply to someone who wrote in the last 24 hours).';
grant execute on function herald_public.reply_to_contact(uuid, text, text, text) to :DATABASE_MEMBER;

-------------------------------------------------------------------------------
-- Key rotation: the new encrypted columns move with the contacts
-------------------------------------------------------------------------------

-- One batch (in id order, after `after`) of the session tenant's inbound
-- messages / delivery contents still on an older data key, re-encrypted under
-- the current one. Like rekey_contacts: rows already current are skipped.
create function herald_hidden.rekey_inbound_messages(after uuid, batch_size integer)
  returns table (last_id uuid, scanned integer, moved integer)
  language sql volatile
  set search_path = ''
as $$
  with target as materialized (select herald_hidden.current_data_key_version() as version),
  batch as (
    select i.id, i.key_version, i.from_encrypted, i.body_encrypted from herald_public.inbound_messages i
     where i.tenant_id = herald_public.current_tenant_id() and i.id > rekey_inbound_messages.after
       and i.key_version <> (select t.version from target t)
     order by i.id limit rekey_inbound_messages.batch_size
     for update
  ),
  moved as (
    update herald_public.inbound_messages i
       set from_encrypted = herald_hidden.encrypt_pii(herald_hidden.decrypt_pii(b.from_encrypted, b.key_version), herald_hidden.data_key(t.version)),
           body_encrypted = herald_hidden.encrypt_pii(herald_hidden.decrypt_pii(b.body_encrypted, b.key_version), herald_hidden.data_key(t.version)),
           key_version = t.version
      from batch b, target t
     where i.tenant_id = herald_public.current_tenant_id() and i.id = b.id and b.key_version <> t.version
    returning 1
  )
  select (select b.id from batch b order by b.id desc limit 1), (select count(*)::integer from batch), (select count(*)::integer from moved);
$$;

create function herald_hidden.rekey_delivery_contents(after uuid, batch_size integer)
  returns table (last_id uuid, scanned integer, moved integer)
  language sql volatile
  set search_path = ''
as $$
  with target as materialized (select herald_hidden.current_data_key_version() as version),
  batch as (
    select d.id, d.content_key_version, d.content_encrypted from herald_public.deliveries d
     where d.tenant_id = herald_public.current_tenant_id() and d.id > rekey_delivery_contents.after
       -- Only what is on an old key: a lock on any other would stand in the senders' way.
       and d.content_key_version <> (select t.version from target t)
     order by d.id limit rekey_delivery_contents.batch_size
     for update
  ),
  moved as (
    update herald_public.deliveries d
       set content_encrypted = herald_hidden.encrypt_pii(herald_hidden.decrypt_pii(b.content_encrypted, b.content_key_version), herald_hidden.data_key(t.version)),
           content_key_version = t.version
      from batch b, target t
     where d.tenant_id = herald_public.current_tenant_id() and d.id = b.id and b.content_key_version <> t.version
    returning 1
  )
  select (select b.id from batch b order by b.id desc limit 1), (select count(*)::integer from batch), (select count(*)::integer from moved);
$$;
grant execute on function herald_hidden.rekey_inbound_messages(uuid, integer), herald_hidden.rekey_delivery_contents(uuid, integer)
  to :DATABASE_WORKER;

-- Several inbound messages of one tenant in one transaction: under load the
-- webhook groups the requests that arrive while a transaction is under way
-- (src/webhooks/inbound-batches.ts), so one round of BEGIN, settings and
-- COMMIT serves many. Each message is received in a subtransaction of its
-- own: one that fails (its number changed hands) reports its SQLSTATE and
-- takes no other with it. `messages`: a JSON array of receive_inbound's
-- arguments; one row per element, in order. At most 50: past 64
-- subtransactions in one transaction, PostgreSQL's subtransaction cache
-- overflows and every session's snapshots slow down.
create function herald_hidden.receive_inbound_batch(messages jsonb)
  returns table (ordinal integer, inbound_message_id uuid, contact_id uuid, duplicate boolean, keyword text, reply text, error_code text)
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_message jsonb;
  v_result herald_hidden.inbound_result;
begin
  if pg_catalog.jsonb_array_length(messages) > 50 then
    raise exception 'at most 50 messages in one batch' using errcode = '22023';
  end if;
  ordinal := 0;
  for v_message in select m from pg_catalog.jsonb_array_elements(messages) m loop
    begin
      v_result := herald_hidden.receive_inbound(v_message ->> 'channel', v_message ->> 'to_number', v_message ->> 'from_phone',
                                                v_message ->> 'body', v_message ->> 'provider_message_id',
                                                (v_message ->> 'media_count')::integer, v_message ->> 'keyword',
                                                v_message ->> 'keyword_word');
      inbound_message_id := v_result.inbound_message_id;
      contact_id := v_result.contact_id;
      duplicate := v_result.duplicate;
      keyword := v_result.keyword;
      reply := v_result.reply;
      error_code := null;
    exception when others then
      inbound_message_id := null;
      contact_id := null;
      duplicate := null;
      keyword := null;
      reply := null;
      error_code := sqlstate;
    end;
    return next;
    ordinal := ordinal + 1;
  end loop;
end;
$$;
grant execute on function herald_hidden.receive_inbound_batch(jsonb) to :DATABASE_WORKER;
