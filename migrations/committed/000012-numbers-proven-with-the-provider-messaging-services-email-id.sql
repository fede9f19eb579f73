--! Previous: sha1:2c598a8fd39c0324b1bdc7d925f224d4955b2cca
--! Hash: sha1:55a5a6add76df7cdfb983d170489ec0d6a78168c
--! Message: Numbers proven with the provider, Messaging Services, email identity and one-click unsubscribe, engagement, WhatsApp media, templates, window and read receipts, Meta Cloud API, segments, sends to an address, transactional traffic, consent sources

--! split: 001-message-options.sql
-- What a message carries beyond its content and audience: its purpose
-- (marketing or transactional), media, saved segments and a one-off address.
-- Each has one column here and, where it needs rules of its own, one helper
-- function that send_message calls, so the rules live beside their concern.

alter table herald_public.messages
  add column if not exists purpose text not null default 'marketing',
  add column if not exists media_urls text[] not null default '{}',
  add column if not exists segment_ids uuid[] not null default '{}';

alter table herald_public.messages drop constraint if exists messages_purpose;
alter table herald_public.messages add constraint messages_purpose
  check (purpose in ('marketing', 'transactional'));
alter table herald_public.messages drop constraint if exists messages_media_count;
alter table herald_public.messages add constraint messages_media_count
  check (cardinality(media_urls) <= 10);

-- sendMessage writes them; nothing else does.
grant insert (purpose, media_urls, segment_ids) on herald_public.messages to :DATABASE_MEMBER;

comment on column herald_public.messages.purpose is
  E'`marketing` (the default: needs the channel subscription, honours unsubscribes) or `transactional` (codes, receipts, reminders the contact asked for).';
comment on column herald_public.messages.media_urls is E'https URLs of media sent with an MMS or WhatsApp message.';
comment on column herald_public.messages.segment_ids is E'Saved segments whose matching contacts, evaluated when fan-out starts, receive the message.';

-- Media a channel may carry (null: these may go). Refined where media are built.
create or replace function herald_hidden.media_refusal(channel text, media_urls text[])
  returns text
  language sql stable
  set search_path = ''
as $$
  select case when pg_catalog.cardinality(media_urls) > 0 then 'media are not supported on this channel' end;
$$;
grant execute on function herald_hidden.media_refusal(text, text[]) to :DATABASE_MEMBER, :DATABASE_WORKER;

-- How many of `segment_ids` are not the session tenant's segments. Refined where segments are built.
create or replace function herald_hidden.missing_segments(segment_ids uuid[])
  returns integer
  language sql stable
  set search_path = ''
as $$
  select pg_catalog.cardinality(segment_ids);
$$;
grant execute on function herald_hidden.missing_segments(uuid[]) to :DATABASE_MEMBER, :DATABASE_WORKER;

-- The contact a one-off `to` address names, found by keyed hash or created. Refined where sends to an address are built.
create or replace function herald_hidden.contact_for_address(channel text, address text)
  returns uuid
  language plpgsql volatile
  set search_path = ''
as $$
begin
  raise exception 'sending to an address is not available yet' using errcode = '0A000', column = 'to';
end;
$$;
grant execute on function herald_hidden.contact_for_address(text, text) to :DATABASE_MEMBER;

-- send_message as in 000010, with purpose, media, segments and a one-off address.
drop function if exists herald_public.send_message(text, uuid, text, text, text, uuid[], uuid[], uuid[], boolean, timestamptz, text, jsonb);

create or replace function herald_public.send_message(
  channel text,
  template_id uuid default null,
  body text default null,
  subject text default null,
  html_body text default null,
  contact_ids uuid[] default null,
  list_ids uuid[] default null,
  tag_ids uuid[] default null,
  all_contacts boolean default false,
  scheduled_at timestamptz default null,
  idempotency_key text default null,
  metadata jsonb default null,
  purpose text default null,
  media_urls text[] default null,
  segment_ids uuid[] default null,
  "to" text default null
) returns herald_public.messages
  language plpgsql volatile
  set search_path = ''
as $$
#variable_conflict use_column
declare
  v_contact_ids uuid[] := array(select distinct x from pg_catalog.unnest(coalesce(contact_ids, '{}')) x);
  v_list_ids uuid[] := array(select distinct x from pg_catalog.unnest(coalesce(list_ids, '{}')) x);
  v_tag_ids uuid[] := array(select distinct x from pg_catalog.unnest(coalesce(tag_ids, '{}')) x);
  v_segment_ids uuid[] := array(select distinct x from pg_catalog.unnest(coalesce(segment_ids, '{}')) x);
  v_media_urls text[] := coalesce(media_urls, '{}');
  v_purpose text := coalesce(purpose, 'marketing');
  v_metadata jsonb := coalesce(metadata, '{}');
  v_from text := v_metadata ->> 'from';
  v_template herald_public.templates;
  v_fingerprint text;
  v_missing integer;
  v_message herald_public.messages;
  v_refusal text;
begin
  if herald_public.current_tenant_id() is null then
    raise exception 'no tenant in this session' using errcode = 'NOTNT';
  end if;
  if channel is null or channel not in ('sms', 'whatsapp', 'email') then
    raise exception 'channel must be sms, whatsapp or email' using errcode = '22023', column = 'channel';
  end if;
  if pg_catalog.jsonb_typeof(v_metadata) <> 'object' then
    raise exception 'metadata must be a JSON object' using errcode = '22023', column = 'metadata';
  end if;

  if v_purpose not in ('marketing', 'transactional') then
    raise exception 'purpose must be marketing or transactional' using errcode = '22023', column = 'purpose';
  end if;

  -- The same key again is the same request: return the original, send nothing.
  -- A different request under a used key is a client bug worth hearing about.
  v_fingerprint := pg_catalog.md5(pg_catalog.jsonb_build_array(channel, template_id, body, subject, html_body,
    v_contact_ids, v_list_ids, v_tag_ids, coalesce(all_contacts, false), scheduled_at, v_metadata,
    v_purpose, v_media_urls, v_segment_ids, "to")::text);
  if idempotency_key is not null then
    select * into v_message from herald_public.messages m
     where m.tenant_id = herald_public.current_tenant_id() and m.idempotency_key = send_message.idempotency_key;
    if found then
      if v_message.request_fingerprint is distinct from v_fingerprint then
        raise exception 'idempotencyKey "%" was already used for a different message', idempotency_key
          using errcode = '22023', column = 'idempotencyKey';
      end if;
      return v_message;
    end if;
  end if;

  -- Content: a template of this channel, or inline text.
  if template_id is not null then
    if body is not null or subject is not null or html_body is not null then
      raise exception 'give either templateId or inline content, not both' using errcode = '22023', column = 'templateId';
    end if;
    select * into v_template from herald_public.templates t
     where t.tenant_id = herald_public.current_tenant_id() and t.id = send_message.template_id;
    if not found then
      raise exception 'template not found' using errcode = 'NTFND', column = 'templateId';
    elsif v_template.channel <> send_message.channel then
      raise exception 'template "%" is for %, not %', v_template.name, v_template.channel, channel
        using errcode = '22023', column = 'templateId';
    end if;
  else
    if channel = 'email' and pg_catalog.btrim(coalesce(html_body, '')) <> '' and coalesce(pg_catalog.btrim(body), '') = '' then
      -- An email given only HTML: its text part is derived from the HTML when it is sent.
      body := '';
    elsif body is null or pg_catalog.btrim(body) = '' then
      raise exception 'body is required (or give templateId, or htmlBody for email)' using errcode = '22023', column = 'body';
    end if;
    if channel <> 'email' and pg_catalog.length(body) > 1600 then
      raise exception 'body is longer than 1600 characters' using errcode = '22023', column = 'body';
    end if;
    if (channel = 'email') <> (subject is not null) then
      raise exception 'subject is required for email, and only for email' using errcode = '22023', column = 'subject';
    end if;
    if html_body is not null and channel <> 'email' then
      raise exception 'htmlBody is for email only' using errcode = '22023', column = 'htmlBody';
    end if;
    perform herald_hidden.template_variables(body, 'body'), herald_hidden.template_variables(subject, 'subject'),
            herald_hidden.template_variables(html_body, 'htmlBody');
  end if;

  -- Audience: ids must be this tenant's (another tenant's do not exist here).
  -- A one-off address becomes (or finds) a contact, then goes the normal way.
  if "to" is not null then
    v_contact_ids := array(select distinct x from pg_catalog.unnest(
      v_contact_ids || herald_hidden.contact_for_address(send_message.channel, "to")) x);
  end if;
  if pg_catalog.cardinality(v_contact_ids) + pg_catalog.cardinality(v_list_ids) + pg_catalog.cardinality(v_tag_ids)
     + pg_catalog.cardinality(v_segment_ids) = 0
     and not coalesce(all_contacts, false) then
    raise exception 'no audience: give to, contactIds, listIds, tagIds, segmentIds or allContacts'
      using errcode = '22023', column = 'contactIds';
  end if;
  select pg_catalog.cardinality(v_contact_ids) - count(*) into v_missing from herald_public.contacts c
   where c.tenant_id = herald_public.current_tenant_id() and c.id = any (v_contact_ids);
  if v_missing > 0 then
    raise exception '% of contactIds not found', v_missing using errcode = 'NTFND', column = 'contactIds';
  end if;
  select pg_catalog.cardinality(v_list_ids) - count(*) into v_missing from herald_public.lists l
   where l.tenant_id = herald_public.current_tenant_id() and l.id = any (v_list_ids);
  if v_missing > 0 then
    raise exception '% of listIds not found', v_missing using errcode = 'NTFND', column = 'listIds';
  end if;
  select pg_catalog.cardinality(v_tag_ids) - count(*) into v_missing from herald_public.tags t
   where t.tenant_id = herald_public.current_tenant_id() and t.id = any (v_tag_ids);
  if v_missing > 0 then
    raise exception '% of tagIds not found', v_missing using errcode = 'NTFND', column = 'tagIds';
  end if;
  v_missing := herald_hidden.missing_segments(v_segment_ids);
  if v_missing > 0 then
    raise exception '% of segmentIds not found', v_missing using errcode = 'NTFND', column = 'segmentIds';
  end if;
  v_refusal := herald_hidden.media_refusal(send_message.channel, v_media_urls);
  if v_refusal is not null then
    raise exception '%', v_refusal using errcode = '22023', column = 'mediaUrls';
  end if;

  -- A `from` override must be one of the tenant's own senders (the shared rule).
  v_refusal := herald_hidden.sender_refusal(send_message.channel, v_from);
  if v_refusal is not null then
    raise exception '%', v_refusal using errcode = 'NOSND', column = 'metadata';
  end if;

  if scheduled_at is not null and scheduled_at > now() + interval '1 year' then
    raise exception 'scheduledAt is more than a year ahead' using errcode = '22023', column = 'scheduledAt';
  end if;

  insert into herald_public.messages (channel, template_id, body, subject, html_body, contact_ids, list_ids, tag_ids,
                                      segment_ids, all_contacts, scheduled_at, idempotency_key, request_fingerprint,
                                      metadata, purpose, media_urls, created_by)
  values (channel, template_id, body, subject, html_body, v_contact_ids, v_list_ids, v_tag_ids,
          v_segment_ids, coalesce(all_contacts, false), scheduled_at, idempotency_key, v_fingerprint,
          v_metadata, v_purpose, v_media_urls, herald_public.current_user_id())
  -- Two concurrent requests with one key: the loser returns the winner's row.
  on conflict (tenant_id, idempotency_key) do nothing
  returning * into v_message;
  if v_message.id is null then
    select * into v_message from herald_public.messages m
     where m.tenant_id = herald_public.current_tenant_id() and m.idempotency_key = send_message.idempotency_key;
  end if;
  return v_message;
end;
$$;

comment on function herald_public.send_message(text, uuid, text, text, text, uuid[], uuid[], uuid[], boolean, timestamptz, text, jsonb, text, text[], uuid[], text) is
  E'@resultFieldName message\nSend a message (template or inline) to an address, contacts, lists, tags, segments, or every subscribed contact; now or at `scheduledAt`. '
  'The same `idempotencyKey` again returns the original message and sends nothing new. `metadata.from` picks one of your senders.';
grant execute on function herald_public.send_message(text, uuid, text, text, text, uuid[], uuid[], uuid[], boolean, timestamptz, text, jsonb, text, text[], uuid[], text)
  to :DATABASE_MEMBER;

--! split: 100-number-ownership.sql
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

--! split: 101-number-requests.sql
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

--! split: 120-messaging-services.sql
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

--! split: 130-email-identity.sql
-- Email sender identity: a reply-to per sender, and per-message overrides of
-- the from name and reply-to (`metadata.fromName`, `metadata.replyTo`),
-- checked here when the message is written (send_message stays as it is: a
-- trigger on messages calls herald_hidden.email_identity_refusal).
-- Which sender a tenant's email goes from: src/providers/routing.ts
-- (emailIdentity) and docs/email.md.

alter table herald_public.email_senders add column if not exists reply_to text;
alter table herald_public.email_senders drop constraint if exists email_senders_reply_to;
alter table herald_public.email_senders add constraint email_senders_reply_to
  check (reply_to operator(pg_catalog.~) '^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$' and length(reply_to) <= 254);
comment on column herald_public.email_senders.reply_to is
  E'Where replies to this sender''s email go (the Reply-To header); none: to the sender itself.';
grant insert (reply_to) on herald_public.email_senders to :DATABASE_MEMBER;

-- Why a message's identity overrides are refused (null: they may go).
create or replace function herald_hidden.email_identity_refusal(channel text, metadata jsonb)
  returns text
  language sql immutable
  set search_path = ''
as $$
  select case
    when metadata is null or pg_catalog.jsonb_typeof(metadata) <> 'object'
         or not (metadata ?| array['fromName', 'replyTo']) then null
    when channel <> 'email' then 'metadata.fromName and metadata.replyTo are for email only'
    when metadata ? 'fromName' and (pg_catalog.jsonb_typeof(metadata -> 'fromName') <> 'string'
         or pg_catalog.length(metadata ->> 'fromName') not between 1 and 100
         or (metadata ->> 'fromName') operator(pg_catalog.~) '[[:cntrl:]]')
      then 'metadata.fromName must be a name of 1 to 100 characters, on one line'
    when metadata ? 'replyTo' and (pg_catalog.jsonb_typeof(metadata -> 'replyTo') <> 'string'
         or pg_catalog.length(metadata ->> 'replyTo') > 254
         or (metadata ->> 'replyTo') operator(pg_catalog.!~) '^[^@[:space:][:cntrl:]<>,;]+@[^@[:space:][:cntrl:]<>,;]+\.[^@[:space:][:cntrl:]<>,;]+$')
      then 'metadata.replyTo must be one email address'
  end;
$$;
comment on function herald_hidden.email_identity_refusal(text, jsonb) is
  E'Why `metadata.fromName` / `metadata.replyTo` of a message are refused (null: they are fine). Called by the messages trigger _130_email_identity.';
grant execute on function herald_hidden.email_identity_refusal(text, jsonb) to :DATABASE_MEMBER, :DATABASE_WORKER;

create or replace function herald_private.tg_messages__email_identity() returns trigger
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_refusal text := herald_hidden.email_identity_refusal(new.channel, new.metadata);
begin
  if v_refusal is not null then
    raise exception '%', v_refusal using errcode = '22023', column = 'metadata';
  end if;
  return new;
end;
$$;
drop trigger if exists _130_email_identity on herald_public.messages;
create trigger _130_email_identity before insert on herald_public.messages
  for each row when (new.metadata ?| array['fromName', 'replyTo'])
  execute function herald_private.tg_messages__email_identity();

--! split: 131-unsubscribe.sql
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

--! split: 132-transactional-email.sql
-- Transactional email (receipts, password resets: `messages.purpose`) is not
-- stopped by a marketing unsubscribe — the email subscription flag, or an
-- `unsubscribe` suppression — but is by a bounce, a spam report or an
-- operator's suppression. SMS and WhatsApp keep one rule for both purposes:
-- STOP stops everything (carriers require it).
--
-- The send-time decision applies this (src/messages/decide.ts). Fan-out
-- (herald_hidden.fan_out_batch, not redefined here) skips unsubscribed and
-- suppressed contacts for every purpose; this trigger takes back, as it is
-- written, such a skip of a transactional email when only a marketing
-- unsubscribe stood in the way, so the decision at send time sees it.
-- (A message to allContacts never lists the unsubscribed at all: send
-- transactional email to contacts, lists or tags.)

create or replace function herald_private.tg_deliveries__transactional_email() returns trigger
  language plpgsql volatile
  set search_path = ''
as $$
begin
  if exists (select 1 from herald_public.messages m
              where m.tenant_id = new.tenant_id and m.id = new.message_id and m.purpose = 'transactional')
     and exists (select 1 from herald_public.contacts c
                  where c.tenant_id = new.tenant_id and c.id = new.contact_id and c.email_hash is not null
                    and not exists (select 1 from herald_public.suppressions s
                                     where s.tenant_id = c.tenant_id and s.kind = 'email'
                                       and s.address_hash = c.email_hash and s.reason <> 'unsubscribe')) then
    new.status := 'queued';
    new.reason := null;
    new.run_at := now();
  end if;
  return new;
end;
$$;
comment on function herald_private.tg_deliveries__transactional_email() is
  E'A transactional email that fan-out skipped only for a marketing unsubscribe is queued after all (the send-time decision checks it again).';
drop trigger if exists _130_transactional_email on herald_public.deliveries;
create trigger _130_transactional_email before insert on herald_public.deliveries
  for each row when (new.channel = 'email' and new.status = 'skipped' and new.reason in ('unsubscribed', 'suppressed'))
  execute function herald_private.tg_deliveries__transactional_email();

--! split: 133-unsubscribe-variable.sql
-- `{{unsubscribe_url}}` in a template: the contact's own unsubscribe link
-- (src/messages/unsubscribe.ts); in a marketing email where the template has
-- none, a footer carries it. The grammar as in 000010, with that one name
-- more; src/messages/render.ts parses the same (test/fixtures/template-grammar.json).

create or replace function herald_hidden.template_variables(body text, field text) returns text[]
  language plpgsql immutable parallel safe
  set search_path = ''
as $$
declare
  v_token text;
  v_names text[] := '{}';
begin
  if body is null then
    return v_names;
  end if;
  for v_token in select m[1] from pg_catalog.regexp_matches(body, '\{\{(.*?)\}\}', 'g') as m loop
    if v_token !~ '^[ \t\r\n]*(first_name|last_name|phone|email|external_id|unsubscribe_url|attributes\.[A-Za-z_][A-Za-z0-9_]*)[ \t\r\n]*(\|[^{}|]*)?$' then
      raise exception 'Unknown template variable "{{%}}" in %: use first_name, last_name, phone, email, external_id, unsubscribe_url or attributes.<name>, optionally with |default', v_token, field
        using errcode = '22023', column = field;
    end if;
    v_names := v_names || pg_catalog.btrim(pg_catalog.split_part(v_token, '|', 1), E' \t\r\n');
  end loop;
  if pg_catalog.regexp_replace(body, '\{\{.*?\}\}', '', 'g') ~ '\{\{|\}\}' then
    raise exception 'Unclosed "{{" or stray "}}" in %', field using errcode = '22023', column = field;
  end if;
  return array(select distinct n from pg_catalog.unnest(v_names) n order by n);
end;
$$;
comment on function herald_hidden.template_variables(text, text) is
  E'The variables a template text uses, sorted; raises 22023 naming `field` for an unknown variable or a stray brace pair. Its cases, shared with src/messages/render.ts: test/fixtures/template-grammar.json.';

--! split: 140-engagement.sql
-- Engagement (issue 15, item 5): SendGrid's `open` and `click` events,
-- recorded per delivery (first and last time, how many, the URLs clicked), in
-- usage, and told to the tenant's app as `delivery.opened` / `delivery.clicked`.
--
-- The events already arrive signed and journaled (herald_hidden.provider_reports)
-- and are applied by herald_hidden.apply_provider_reports, which writes each
-- once (by sg_event_id) to delivery_events and never moves a delivery back
-- (an open after `delivered` leaves it delivered; one before it makes it so).
-- Here: the clicked URL rides along (a column of the journal and of
-- delivery_events), and a statement trigger on delivery_events folds the
-- open/click rows that were really inserted, so duplicates count once,
-- into delivery_engagement and queues the outbound webhook events.
--
-- Idempotent: graphile-migrate re-runs it in watch mode.

-------------------------------------------------------------------------------
-- The clicked URL, from the journal to the event
-------------------------------------------------------------------------------

alter table herald_hidden.provider_reports add column if not exists url text;
alter table herald_hidden.provider_reports drop constraint if exists provider_reports_url_length;
alter table herald_hidden.provider_reports add constraint provider_reports_url_length check (length(url) <= 2048);
comment on column herald_hidden.provider_reports.url is E'The link a `click` event is about.';
grant insert (url) on herald_hidden.provider_reports to :DATABASE_WORKER;

alter table herald_public.delivery_events add column if not exists url text;
alter table herald_public.delivery_events drop constraint if exists delivery_events_url_length;
alter table herald_public.delivery_events add constraint delivery_events_url_length check (length(url) <= 2048);
comment on column herald_public.delivery_events.url is E'For a `click`: the link the recipient followed.';
grant insert (url) on herald_public.delivery_events to :DATABASE_WORKER;

-- Usage counts opens and clicks per day.
create index if not exists delivery_events_engagement on herald_public.delivery_events (tenant_id, received_at)
  where event in ('open', 'click');

-- Migration 000009's function, the clicked URL carried to delivery_events (the only change).
create or replace function herald_hidden.apply_provider_reports(max_reports integer default 1000)
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
           r.received_at, r.opt_out, r.url, v_deliveries[r.ordinality] as delivery_id,
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
    insert into herald_public.delivery_events (delivery_id, provider, event, dedupe_key, error_code, applied, status, occurred_at, received_at, url)
    select t.delivery_id, t.provider, t.event, t.dedupe_key, t.error_code, t.applied,
           coalesce(t.applied_so_far[pg_catalog.cardinality(t.applied_so_far)], t.initial_status), t.occurred_at, t.received_at, t.url
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

-------------------------------------------------------------------------------
-- delivery_engagement: one row per delivery that was opened or clicked
-------------------------------------------------------------------------------

drop trigger if exists _500_engagement on herald_public.delivery_events;
drop function if exists herald_private.tg_delivery_events__engagement();
drop table if exists herald_public.delivery_engagement cascade;

create table herald_public.delivery_engagement (
  -- The delivery's composite key implies the tenant (and cascades with it).
  tenant_id uuid not null,
  delivery_id uuid not null,
  opens integer not null default 0 constraint delivery_engagement_opens check (opens >= 0),
  first_opened_at timestamptz,
  last_opened_at timestamptz,
  clicks integer not null default 0 constraint delivery_engagement_clicks check (clicks >= 0),
  first_clicked_at timestamptz,
  last_clicked_at timestamptz,
  -- Bounded: the last ten distinct links clicked, the latest first.
  clicked_urls text[] not null default '{}'
    constraint delivery_engagement_clicked_urls check (pg_catalog.cardinality(clicked_urls) <= 10),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (tenant_id, delivery_id),
  constraint delivery_engagement_delivery_fkey foreign key (tenant_id, delivery_id)
    references herald_public.deliveries (tenant_id, id) on delete cascade
);
comment on table herald_public.delivery_engagement is
  E'@behavior -insert -update -delete\nOpens and clicks of an email delivery, from SendGrid''s signed events (each event counted once).';
comment on constraint delivery_engagement_delivery_fkey on herald_public.delivery_engagement is
  E'@fieldName delivery\n@foreignFieldName engagement';
comment on column herald_public.delivery_engagement.opens is E'Open events (a mail client loading the tracking pixel: a lower bound, and inflated by privacy proxies).';
comment on column herald_public.delivery_engagement.first_opened_at is E'When the first open happened (SendGrid''s timestamp).';
comment on column herald_public.delivery_engagement.last_opened_at is E'When the latest open happened.';
comment on column herald_public.delivery_engagement.clicks is E'Click events (links followed).';
comment on column herald_public.delivery_engagement.first_clicked_at is E'When the first click happened.';
comment on column herald_public.delivery_engagement.last_clicked_at is E'When the latest click happened.';
comment on column herald_public.delivery_engagement.clicked_urls is E'The last ten distinct links clicked, the latest first.';

create trigger _100_timestamps before insert or update on herald_public.delivery_engagement
  for each row execute function herald_private.tg__timestamps();

alter table herald_public.delivery_engagement enable row level security;
alter table herald_public.delivery_engagement force row level security;
create policy select_member on herald_public.delivery_engagement for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
comment on policy select_member on herald_public.delivery_engagement is E'Members (and the worker) read their own tenant''s engagement.';
create policy select_admin on herald_public.delivery_engagement for select to :DATABASE_ADMIN using (true);
comment on policy select_admin on herald_public.delivery_engagement is E'Operators read every tenant''s engagement.';
-- Only the trigger below (a definer, as the owner) writes it.
create policy select_definer on herald_public.delivery_engagement for select to :DATABASE_OWNER using (true);
create policy insert_definer on herald_public.delivery_engagement for insert to :DATABASE_OWNER with check (true);
create policy update_definer on herald_public.delivery_engagement for update to :DATABASE_OWNER using (true) with check (true);
grant select on herald_public.delivery_engagement to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;

-- The trigger reads the delivery an event is about (for the webhook payload).
drop policy if exists select_definer on herald_public.deliveries;
create policy select_definer on herald_public.deliveries for select to :DATABASE_OWNER using (true);

-------------------------------------------------------------------------------
-- Outbound webhook event types, in one place
-------------------------------------------------------------------------------

create or replace function herald_hidden.webhook_event_types() returns text[]
  language sql immutable parallel safe
  set search_path = ''
as $$
  select array['delivery.updated', 'inbound.received', 'consent.changed', 'delivery.opened', 'delivery.clicked', 'delivery.read'];
$$;
comment on function herald_hidden.webhook_event_types() is E'The events a webhook endpoint may listen to.';
grant execute on function herald_hidden.webhook_event_types() to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;

alter table herald_public.webhook_endpoints drop constraint if exists webhook_endpoints_event_types;
alter table herald_public.webhook_endpoints add constraint webhook_endpoints_event_types check (
  pg_catalog.cardinality(event_types) > 0 and event_types <@ herald_hidden.webhook_event_types());
comment on column herald_public.webhook_endpoints.event_types is
  E'Any of `delivery.updated`, `inbound.received`, `consent.changed`, `delivery.opened`, `delivery.clicked`, `delivery.read`.';
alter table herald_public.webhook_deliveries drop constraint if exists webhook_deliveries_event_type;
alter table herald_public.webhook_deliveries add constraint webhook_deliveries_event_type check (
  event_type = any (herald_hidden.webhook_event_types()));

-- Migration 000008's function, the event types read from herald_hidden.webhook_event_types() (the only change).
create or replace function herald_public.create_webhook_endpoint(url text, event_types text[], description text default null)
  returns herald_public.created_webhook_endpoint
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_secret text := 'whsec_' || pg_catalog.encode(public.gen_random_bytes(24), 'hex');
  v_version smallint := herald_hidden.current_data_key_version();
  v_id uuid;
begin
  if not herald_hidden.current_user_is_tenant_admin() then
    raise exception 'only the tenant''s owners and admins manage webhook endpoints' using errcode = '42501';
  end if;
  if create_webhook_endpoint.url !~ '^https?://[^\s/?#@]+(/[^\s]*)?$' then
    raise exception 'url must be an http(s) URL without credentials in it' using errcode = '22023', column = 'url';
  end if;
  if event_types is null or pg_catalog.cardinality(event_types) = 0
     or not (event_types <@ herald_hidden.webhook_event_types()) then
    raise exception 'eventTypes must be some of %', pg_catalog.array_to_string(herald_hidden.webhook_event_types(), ', ')
      using errcode = '22023', column = 'eventTypes';
  end if;
  -- Each endpoint is worker time: a tenant has a handful, not hundreds.
  if (select count(*) from herald_public.webhook_endpoints e where e.tenant_id = herald_public.current_tenant_id()) >= 20 then
    raise exception 'a tenant may have at most 20 webhook endpoints' using errcode = '22023', column = 'url';
  end if;
  insert into herald_public.webhook_endpoints (url, description, event_types, secret_encrypted, secret_hint, key_version)
  values (create_webhook_endpoint.url, create_webhook_endpoint.description,
          array(select distinct e from pg_catalog.unnest(create_webhook_endpoint.event_types) e order by e),
          herald_hidden.encrypt_pii(v_secret, herald_hidden.data_key(v_version)), pg_catalog.right(v_secret, 4), v_version)
  returning id into v_id;
  return row(v_id, create_webhook_endpoint.url, v_secret)::herald_public.created_webhook_endpoint;
end;
$$;
comment on function herald_public.create_webhook_endpoint(text, text[], text) is
  E'@resultFieldName endpoint\nPost these events to your app''s URL (owners and admins). The signing secret is returned once.';

-- The last ten distinct links of a list, in its order (the latest first).
create or replace function herald_hidden.recent_urls(urls text[]) returns text[]
  language sql immutable parallel safe
  set search_path = ''
as $$
  select coalesce(pg_catalog.array_agg(u.url order by u.n), '{}')
    from (select x.url, min(x.n) as n from pg_catalog.unnest(urls) with ordinality x(url, n)
           where x.url is not null group by x.url order by 2 limit 10) u;
$$;

-------------------------------------------------------------------------------
-- Folding open/click events into delivery_engagement, and telling the tenant
-------------------------------------------------------------------------------

-- A statement trigger: the events apply_provider_reports really inserted (a
-- repeated sg_event_id is not among them), all at once. A definer (the owner),
-- as whoever records the events (the worker) does not write engagement or
-- webhook deliveries itself; every row it writes carries the event's tenant.
create function herald_private.tg_delivery_events__engagement() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
begin
  if not exists (select 1 from new_events e where e.event in ('open', 'click')) then
    return null;
  end if;

  insert into herald_public.delivery_engagement as g
         (tenant_id, delivery_id, opens, first_opened_at, last_opened_at, clicks, first_clicked_at, last_clicked_at, clicked_urls)
  select e.tenant_id, e.delivery_id,
         count(*) filter (where e.event = 'open'),
         min(coalesce(e.occurred_at, e.received_at)) filter (where e.event = 'open'),
         max(coalesce(e.occurred_at, e.received_at)) filter (where e.event = 'open'),
         count(*) filter (where e.event = 'click'),
         min(coalesce(e.occurred_at, e.received_at)) filter (where e.event = 'click'),
         max(coalesce(e.occurred_at, e.received_at)) filter (where e.event = 'click'),
         herald_hidden.recent_urls(coalesce(pg_catalog.array_agg(e.url order by coalesce(e.occurred_at, e.received_at) desc, e.received_at desc)
                                              filter (where e.event = 'click' and e.url is not null), '{}'))
    from new_events e
   where e.event in ('open', 'click')
   group by e.tenant_id, e.delivery_id
  on conflict (tenant_id, delivery_id) do update
     set opens = g.opens + excluded.opens,
         first_opened_at = least(g.first_opened_at, excluded.first_opened_at),
         last_opened_at = greatest(g.last_opened_at, excluded.last_opened_at),
         clicks = g.clicks + excluded.clicks,
         first_clicked_at = least(g.first_clicked_at, excluded.first_clicked_at),
         last_clicked_at = greatest(g.last_clicked_at, excluded.last_clicked_at),
         clicked_urls = herald_hidden.recent_urls(excluded.clicked_urls || g.clicked_urls);

  -- One outbound event per open or click, to each active endpoint listening
  -- (the event id the same for every endpoint). Ids, times and the link only.
  insert into herald_public.webhook_deliveries (tenant_id, endpoint_id, event_id, event_type, payload)
  select x.tenant_id, w.id, x.event_id, x.event_type, x.payload
    from (select e.tenant_id, gen_random_uuid() as event_id,
                 case e.event when 'open' then 'delivery.opened' else 'delivery.clicked' end as event_type,
                 pg_catalog.jsonb_build_object(
                   'delivery_id', e.delivery_id, 'message_id', d.message_id, 'contact_id', d.contact_id,
                   'channel', d.channel, 'status', d.status, 'event', e.event,
                   'url', case when e.event = 'click' then e.url end,
                   'at', coalesce(e.occurred_at, e.received_at),
                   'opens', g.opens, 'clicks', g.clicks) as payload
            from new_events e
            join herald_public.deliveries d on d.tenant_id = e.tenant_id and d.id = e.delivery_id
            join herald_public.delivery_engagement g on g.tenant_id = e.tenant_id and g.delivery_id = e.delivery_id
           where e.event in ('open', 'click')
             and exists (select 1 from herald_public.webhook_endpoints w
                          where w.tenant_id = e.tenant_id and w.status = 'active'
                            and (case e.event when 'open' then 'delivery.opened' else 'delivery.clicked' end) = any (w.event_types))
           offset 0) x
    join herald_public.webhook_endpoints w
      on w.tenant_id = x.tenant_id and w.status = 'active' and x.event_type = any (w.event_types);
  return null;
end;
$$;
create trigger _500_engagement after insert on herald_public.delivery_events
  referencing new table as new_events
  for each statement execute function herald_private.tg_delivery_events__engagement();

-------------------------------------------------------------------------------
-- Usage: opens and clicks per UTC day
-------------------------------------------------------------------------------

drop function if exists herald_public.engagement_usage(date, date);
drop type if exists herald_public.engagement_day;
create type herald_public.engagement_day as (day date, opens integer, clicks integer, opened integer, clicked integer);
comment on type herald_public.engagement_day is
  E'One UTC day of email engagement: open and click events, and the deliveries opened and clicked that day.';

create function herald_public.engagement_usage(from_day date, to_day date) returns setof herald_public.engagement_day
  language plpgsql stable
  set search_path = ''
as $$
begin
  if from_day is null or to_day is null or to_day < from_day or to_day - from_day > 366 then
    raise exception 'give fromDay and toDay, at most 366 days apart' using errcode = '22023', column = 'toDay';
  end if;
  return query
  select (e.received_at at time zone 'UTC')::date,
         (count(*) filter (where e.event = 'open'))::integer,
         (count(*) filter (where e.event = 'click'))::integer,
         (count(distinct e.delivery_id) filter (where e.event = 'open'))::integer,
         (count(distinct e.delivery_id) filter (where e.event = 'click'))::integer
    from herald_public.delivery_events e
   where e.tenant_id = herald_public.current_tenant_id()
     and e.event in ('open', 'click')
     and e.received_at >= (from_day::timestamp) at time zone 'UTC'
     and e.received_at < ((to_day + 1)::timestamp) at time zone 'UTC'
   group by 1
   order by 1;
end;
$$;
comment on function herald_public.engagement_usage(date, date) is
  E'The tenant''s email opens and clicks per UTC day (`fromDay` to `toDay`, at most 366 days), each event counted once, on the day it was received.';
grant execute on function herald_public.engagement_usage(date, date) to :DATABASE_MEMBER, :DATABASE_ADMIN;

--! split: 141-email-content.sql
-- Safe HTML (issue 15, item 4): an email template's text part may be left
-- empty when it has an HTML part: the text is then derived from the HTML
-- rendered for each contact (src/messages/html-text.ts). With neither, there
-- is nothing to send: refused when saved, naming `body`. NOT VALID: rows
-- saved before this rule are not rechecked (they fail at send time as before).
--
-- Idempotent: graphile-migrate re-runs it in watch mode.

alter table herald_public.templates drop constraint if exists templates_email_content;
alter table herald_public.templates add constraint templates_email_content
  check (channel <> 'email' or length(body) > 0 or html_body is not null) not valid;
comment on column herald_public.templates.body is
  E'The SMS/WhatsApp text, or the email''s text part (for email, empty: derived from `htmlBody` for each contact).';
comment on column herald_public.templates.html_body is
  E'Email only: the HTML part, stored as given. Contact values are HTML-escaped in it when sent.';

--! split: 150-whatsapp-media.sql
-- Media on MMS and WhatsApp: the rules for outbound media URLs (on messages
-- and templates), and inbound media kept with the inbound message.
-- Idempotent: re-applied on every `db watch` save.

-- Why these media may not go on `channel` (null: they may). Provider-independent:
-- every WhatsApp message obeys it, whichever provider sends it.
--   sms (MMS): up to 10; whatsapp: 1 per message; email: none.
--   Each an https URL (no credentials in it, at most 2,000 characters); a file
--   extension, when the path has one, must be a type the channel carries.
create or replace function herald_hidden.media_refusal(channel text, media_urls text[])
  returns text
  language plpgsql immutable
  set search_path = ''
as $$
declare
  v_url text;
  v_ext text;
  v_max integer := case media_refusal.channel when 'sms' then 10 when 'whatsapp' then 1 else 0 end;
  v_types text[] := case media_refusal.channel
    -- Twilio MMS: images (fully supported), audio, video, vCard, PDF, text.
    when 'sms' then array['jpg', 'jpeg', 'png', 'gif', 'bmp', 'webp', 'mp3', 'm4a', 'ogg', 'amr', 'wav', 'mp4', '3gp',
                          'mov', 'vcf', 'pdf', 'txt', 'csv', 'ics']
    -- WhatsApp: image (jpeg, png), audio, video (mp4, 3gpp), documents.
    when 'whatsapp' then array['jpg', 'jpeg', 'png', 'mp3', 'm4a', 'ogg', 'amr', 'aac', 'opus', 'mp4', '3gp', 'pdf',
                               'doc', 'docx', 'xls', 'xlsx', 'ppt', 'pptx', 'txt']
    else array[]::text[] end;
begin
  if media_urls is null or pg_catalog.cardinality(media_urls) = 0 then
    return null;
  end if;
  if v_max = 0 then
    return pg_catalog.format('media are not supported on %s', coalesce(media_refusal.channel, 'this channel'));
  end if;
  if pg_catalog.cardinality(media_urls) > v_max then
    return pg_catalog.format('at most %s media on %s, not %s', v_max, media_refusal.channel, pg_catalog.cardinality(media_urls));
  end if;
  foreach v_url in array media_urls loop
    if v_url is null or pg_catalog.length(v_url) > 2000 or v_url !~ '^https://[^\s/?#@]+/[^\s]*$' then
      return 'each media URL must be an https URL (no credentials, at most 2000 characters)';
    end if;
    v_ext := pg_catalog.lower((pg_catalog.regexp_match(pg_catalog.split_part(pg_catalog.split_part(v_url, '?', 1), '#', 1),
                                                       '/[^/]*\.([A-Za-z0-9]{1,5})$'))[1]);
    if v_ext is not null and not (v_ext = any (v_types)) then
      return pg_catalog.format('.%s files cannot be sent on %s', v_ext, media_refusal.channel);
    end if;
  end loop;
  return null;
end;
$$;
grant execute on function herald_hidden.media_refusal(text, text[]) to :DATABASE_MEMBER, :DATABASE_WORKER;

-------------------------------------------------------------------------------
-- Templates: media, and a provider's approved template (Twilio Content API)
-------------------------------------------------------------------------------

alter table herald_public.templates
  add column if not exists media_urls text[] not null default '{}',
  add column if not exists content_sid text,
  add column if not exists content_variables jsonb;

alter table herald_public.templates drop constraint if exists templates_media_count;
alter table herald_public.templates add constraint templates_media_count check (cardinality(media_urls) <= 10);
alter table herald_public.templates drop constraint if exists templates_content_sid;
alter table herald_public.templates add constraint templates_content_sid
  check (content_sid is null or (channel = 'whatsapp' and content_sid ~ '^HX[0-9a-f]{32}$'));
alter table herald_public.templates drop constraint if exists templates_content_variables;
alter table herald_public.templates add constraint templates_content_variables
  check (content_variables is null or (content_sid is not null and jsonb_typeof(content_variables) = 'object'
                                       and length(content_variables::text) <= 10000));

comment on column herald_public.templates.media_urls is
  E'https URLs of media sent with the message: up to 10 on SMS (MMS), 1 on WhatsApp.';
comment on column herald_public.templates.content_sid is
  E'WhatsApp only: the provider''s approved template (a Twilio Content SID, `HX…`). Sent as that template, it may go outside the 24-hour session window; `body` is what the conversation shows.';
comment on column herald_public.templates.content_variables is
  E'The approved template''s variables by number, each a text with Herald''s own variables, e.g. `{"1": "{{first_name|there}}"}`.';

grant insert (media_urls, content_sid, content_variables), update (media_urls, content_sid, content_variables)
  on herald_public.templates to :DATABASE_MEMBER;

-- The media rule and the variables' grammar, where a template is saved.
create or replace function herald_private.tg_templates__whatsapp() returns trigger
  language plpgsql
  set search_path = ''
as $$
declare
  v_refusal text := herald_hidden.media_refusal(new.channel, new.media_urls);
  v_key text;
  v_value jsonb;
begin
  if v_refusal is not null then
    raise exception '%', v_refusal using errcode = '22023', column = 'mediaUrls';
  end if;
  if new.content_sid is not null and new.channel <> 'whatsapp' then
    raise exception 'contentSid is for WhatsApp templates only' using errcode = '22023', column = 'contentSid';
  end if;
  if new.content_sid is not null and new.content_sid !~ '^HX[0-9a-f]{32}$' then
    raise exception 'contentSid must be a Content SID (HX and 32 hex digits)' using errcode = '22023', column = 'contentSid';
  end if;
  if new.content_variables is not null then
    if new.content_sid is null then
      raise exception 'contentVariables need a contentSid' using errcode = '22023', column = 'contentVariables';
    end if;
    if pg_catalog.jsonb_typeof(new.content_variables) <> 'object' or pg_catalog.length(new.content_variables::text) > 10000 then
      raise exception 'contentVariables must be a JSON object of texts (at most 10000 characters)'
        using errcode = '22023', column = 'contentVariables';
    end if;
    for v_key, v_value in select k, v from pg_catalog.jsonb_each(new.content_variables) as e(k, v) loop
      if v_key !~ '^[A-Za-z0-9_]{1,40}$' or pg_catalog.jsonb_typeof(v_value) <> 'string' then
        raise exception 'contentVariables must map names (letters, digits, _) to texts' using errcode = '22023', column = 'contentVariables';
      end if;
      perform herald_hidden.template_variables(v_value #>> '{}', 'contentVariables');
    end loop;
  end if;
  return new;
end;
$$;
drop trigger if exists _210_whatsapp on herald_public.templates;
create trigger _210_whatsapp before insert or update on herald_public.templates
  for each row execute function herald_private.tg_templates__whatsapp();

-------------------------------------------------------------------------------
-- Inbound media: the provider's URLs and content types, with the message
-------------------------------------------------------------------------------

alter table herald_public.inbound_messages
  add column if not exists media_urls text[] not null default '{}',
  add column if not exists media_types text[] not null default '{}';
alter table herald_public.inbound_messages drop constraint if exists inbound_messages_media_shape;
alter table herald_public.inbound_messages add constraint inbound_messages_media_shape
  check (cardinality(media_urls) <= 10 and cardinality(media_types) = cardinality(media_urls));
-- The provider's URLs need the account's credentials: members fetch media through Herald (GET /media/inbound/:id/:n).
comment on column herald_public.inbound_messages.media_urls is E'@behavior -*';
comment on column herald_public.inbound_messages.media_types is E'The content types of the media received (`mediaCount` of them), in order: fetch each at `/media/inbound/<rowId>/<n>` (n from 0).';
grant update (media_urls, media_types) on herald_public.inbound_messages to :DATABASE_WORKER;

-- The inbound webhook stores the media after the message (each call once per MessageSid: a retry finds them there).
create or replace function herald_hidden.store_inbound_media(inbound_message_id uuid, urls text[], types text[])
  returns void
  language sql volatile
  set search_path = ''
as $$
  update herald_public.inbound_messages i
     set media_urls = urls[1:10], media_types = types[1:10]
   where i.tenant_id = herald_public.current_tenant_id() and i.id = store_inbound_media.inbound_message_id
     and pg_catalog.cardinality(i.media_urls) = 0 and pg_catalog.cardinality(urls) = pg_catalog.cardinality(types);
$$;
grant execute on function herald_hidden.store_inbound_media(uuid, text[], text[]) to :DATABASE_WORKER;

--! split: 152-whatsapp-conversation-media.sql
-- A conversation shows each inbound message's media: their content types, in
-- order (each is fetched through Herald at /media/inbound/<inboundMessageId>/<n>).
-- Idempotent: the attribute is added once; the function is replaced.

do $$
begin
  if not exists (select 1 from pg_catalog.pg_attribute a
                  where a.attrelid = 'herald_public.conversation_entry'::regclass and a.attname = 'media_types' and not a.attisdropped) then
    alter type herald_public.conversation_entry add attribute media_types text[];
  end if;
end;
$$;
comment on column herald_public.conversation_entry.media_types is
  E'Inbound: the content types of its media, in order (fetch media n at `/media/inbound/<inboundMessageId>/<n>`); null otherwise.';

-- As in 000007, with the inbound media's types.
create or replace function herald_public.contacts_conversation(contact herald_public.contacts, channel text default null)
  returns setof herald_public.conversation_entry
  language sql stable
  set search_path = ''
as $$
  select e.* from (
    select 'inbound'::text, i.channel, i.received_at, herald_hidden.decrypt_pii(i.body_encrypted, i.key_version),
           null::text, i.keyword, i.to_number, null::uuid, null::uuid, i.id, i.media_types
      from herald_public.inbound_messages i
     where i.tenant_id = contact.tenant_id and i.contact_id = contact.id
       and (contacts_conversation.channel is null or i.channel = contacts_conversation.channel)
    union all
    -- The keyword reply went back at once, in Twilio's answer to the webhook.
    select 'outbound', i.channel, i.received_at, i.auto_reply, 'sent', null, i.to_number, null, null, i.id, null::text[]
      from herald_public.inbound_messages i
     where i.tenant_id = contact.tenant_id and i.contact_id = contact.id and i.auto_reply is not null
       and (contacts_conversation.channel is null or i.channel = contacts_conversation.channel)
    union all
    select 'outbound', d.channel, coalesce(d.sent_at, d.created_at),
           coalesce(herald_hidden.decrypt_pii(d.content_encrypted, d.content_key_version),
                    case when d.channel = 'email' then coalesce(m.subject, t.subject) else coalesce(m.body, t.body) end),
           d.status, null, d.from_address, d.message_id, d.id, null, null::text[]
      from herald_public.deliveries d
      join herald_public.messages m on m.tenant_id = d.tenant_id and m.id = d.message_id
      left join herald_public.templates t on t.tenant_id = m.tenant_id and t.id = m.template_id
     where d.tenant_id = contact.tenant_id and d.contact_id = contact.id
       and d.status not in ('skipped', 'canceled')
       and (contacts_conversation.channel is null or d.channel = contacts_conversation.channel)
  ) e (direction, channel, at, body, status, keyword, tenant_address, message_id, delivery_id, inbound_message_id, media_types)
  -- A keyword reply shares its message's instant: it comes after it (before it, newest first).
  order by e.at desc, e.direction desc, coalesce(e.delivery_id, e.inbound_message_id);
$$;

--! split: 155-whatsapp-window-read.sql
-- WhatsApp's 24-hour customer-service window, and read receipts.
-- Idempotent: re-applied on every `db watch` save.

-------------------------------------------------------------------------------
-- The window
-------------------------------------------------------------------------------

-- Whether the contact wrote to the tenant on WhatsApp in the last 24 hours:
-- only then may a free-form WhatsApp message go (an approved template may go
-- any time). Read by the delivery claim (src/messages/claim.ts) for every
-- WhatsApp delivery, whatever the provider; the index inbound_messages_by_contact
-- (tenant_id, contact_id, received_at) answers it.
create or replace function herald_hidden.whatsapp_session_open(contact_id uuid)
  returns boolean
  language sql stable
  set search_path = ''
as $$
  select exists (select 1 from herald_public.inbound_messages i
                  where i.tenant_id = herald_public.current_tenant_id() and i.contact_id = whatsapp_session_open.contact_id
                    and i.channel = 'whatsapp' and i.received_at > now() - interval '24 hours');
$$;
grant execute on function herald_hidden.whatsapp_session_open(uuid) to :DATABASE_MEMBER, :DATABASE_WORKER;

-- The provider refused a free-form message outside the window (Twilio 63016,
-- Meta's Cloud API 131047): the delivery's reason says so, in the same words
-- the claim uses when it skips one, whichever path recorded the failure (the
-- send's answer, or a status callback).
create or replace function herald_private.tg_deliveries__session_window_reason() returns trigger
  language plpgsql
  set search_path = ''
as $$
begin
  new.reason := 'outside_session_window';
  return new;
end;
$$;
drop trigger if exists _020_session_window_reason on herald_public.deliveries;
create trigger _020_session_window_reason before update on herald_public.deliveries
  for each row when (new.error_code in ('63016', '131047') and new.status in ('failed', 'undelivered'))
  execute function herald_private.tg_deliveries__session_window_reason();

-------------------------------------------------------------------------------
-- Read receipts
-------------------------------------------------------------------------------

alter table herald_public.deliveries add column if not exists read_at timestamptz;
comment on column herald_public.deliveries.read_at is
  E'When the recipient read it (WhatsApp read receipts): set once, after (or implying) `delivered`, never cleared.';
grant update (read_at) on herald_public.deliveries to :DATABASE_WORKER;

-- A `read` report: the delivery is delivered (an early `read` made it so:
-- read implies delivered) and is read from then on. Set once; a repeated or
-- late report changes nothing, and nothing moves it back. Runs after the
-- statement that recorded the event, so it sees the status that statement set.
create or replace function herald_private.tg_delivery_events__read() returns trigger
  language plpgsql
  set search_path = ''
as $$
begin
  update herald_public.deliveries d
     set read_at = coalesce(new.occurred_at, new.received_at)
   where d.tenant_id = new.tenant_id and d.id = new.delivery_id and d.status = 'delivered' and d.read_at is null;
  return null;
end;
$$;
drop trigger if exists _300_read on herald_public.delivery_events;
create trigger _300_read after insert on herald_public.delivery_events
  for each row when (new.event = 'read')
  execute function herald_private.tg_delivery_events__read();

-- Read deliveries per message (the stats' companion: `readCount`).
create or replace function herald_public.messages_read_count(message herald_public.messages) returns integer
  language sql stable parallel safe
  set search_path = ''
as $$
  select count(*)::integer from herald_public.deliveries d
   where d.tenant_id = message.tenant_id and d.message_id = message.id and d.read_at is not null;
$$;
comment on function herald_public.messages_read_count(herald_public.messages) is
  E'Deliveries the recipient has read (WhatsApp read receipts); each also counts as delivered in `stats`.';
grant execute on function herald_public.messages_read_count(herald_public.messages) to :DATABASE_MEMBER, :DATABASE_ADMIN;

-- Outbound webhooks: `delivery.read`, once per delivery. The event type is
-- listed in herald_hidden.webhook_event_types() (140-engagement), which the
-- endpoint and delivery checks and create_webhook_endpoint read.

-- A definer (the owner), like herald_private.tg__webhook_event: it writes the
-- event for the endpoints listening, whoever marked the delivery read.
create or replace function herald_private.tg_deliveries__webhook_read() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
declare
  v_event_id uuid;
begin
  if not exists (select 1 from herald_public.webhook_endpoints e
                  where e.tenant_id = new.tenant_id and e.status = 'active' and 'delivery.read' = any (e.event_types)) then
    return null;
  end if;
  v_event_id := gen_random_uuid();
  insert into herald_public.webhook_deliveries (tenant_id, endpoint_id, event_id, event_type, payload)
  select new.tenant_id, e.id, v_event_id, 'delivery.read',
         pg_catalog.jsonb_build_object('delivery_id', new.id, 'message_id', new.message_id, 'contact_id', new.contact_id,
                                       'channel', new.channel, 'status', new.status, 'read_at', new.read_at,
                                       'provider_message_id', new.provider_message_id)
    from herald_public.webhook_endpoints e
   where e.tenant_id = new.tenant_id and e.status = 'active' and 'delivery.read' = any (e.event_types);
  return null;
end;
$$;
drop trigger if exists _810_webhook_read on herald_public.deliveries;
create trigger _810_webhook_read after update of read_at on herald_public.deliveries
  for each row when (old.read_at is null and new.read_at is not null)
  execute function herald_private.tg_deliveries__webhook_read();

--! split: 158-whatsapp-content-templates.sql
-- Approved templates: a Twilio account's Content API templates with their
-- WhatsApp approval status, synced onto the account (provider_accounts), and
-- shown on each template that references one (`templates.approvalStatus`).
-- Idempotent: re-applied on every `db watch` save.

alter table herald_public.provider_accounts
  add column if not exists content_templates jsonb not null default '[]',
  add column if not exists content_synced_at timestamptz,
  add column if not exists content_sync_requested_at timestamptz;
alter table herald_public.provider_accounts drop constraint if exists provider_accounts_content_templates;
alter table herald_public.provider_accounts add constraint provider_accounts_content_templates
  check (jsonb_typeof(content_templates) = 'array' and octet_length(content_templates::text) <= 2000000);
comment on column herald_public.provider_accounts.content_templates is
  E'Twilio accounts: the account''s Content API templates as last synced (`syncContentTemplates`): `sid`, `friendlyName`, `language`, `body`, `variables`, `approvalStatus` (WhatsApp), at most 1,000.';
comment on column herald_public.provider_accounts.content_synced_at is E'When `contentTemplates` was last synced.';
comment on column herald_public.provider_accounts.content_sync_requested_at is E'When a sync was last asked for (`syncContentTemplates`).';

grant select (content_templates, content_synced_at, content_sync_requested_at)
  on herald_public.provider_accounts to :DATABASE_MEMBER, :DATABASE_ADMIN;
grant update (content_templates, content_synced_at) on herald_public.provider_accounts to :DATABASE_WORKER;
grant update (content_sync_requested_at) on herald_public.provider_accounts to :DATABASE_MEMBER;

-- A sync asked for: the provider_accounts__sync_content task lists the account's templates.
drop trigger if exists _500_sync_content on herald_public.provider_accounts;
create trigger _500_sync_content after update of content_sync_requested_at on herald_public.provider_accounts
  for each row when (new.content_sync_requested_at is distinct from old.content_sync_requested_at and new.kind = 'twilio')
  execute function herald_private.tg__add_job('provider_accounts__sync_content');

create or replace function herald_public.sync_content_templates(provider_account_id uuid)
  returns herald_public.provider_accounts
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_account herald_public.provider_accounts;
begin
  if not herald_hidden.current_user_is_tenant_admin() then
    raise exception 'only the tenant''s owners and admins sync provider templates' using errcode = '42501';
  end if;
  update herald_public.provider_accounts a set content_sync_requested_at = now()
   where a.tenant_id = herald_public.current_tenant_id() and a.id = sync_content_templates.provider_account_id
     and a.kind = 'twilio'
  -- Not RETURNING *: members may not select the ciphertext.
  returning tenant_id, id, kind, name, twilio_account_sid, twilio_api_key_sid, secret_hint, status, last_tested_at, last_error,
            created_at, updated_at, content_templates, content_synced_at, content_sync_requested_at
       into v_account.tenant_id, v_account.id, v_account.kind, v_account.name, v_account.twilio_account_sid,
            v_account.twilio_api_key_sid, v_account.secret_hint, v_account.status, v_account.last_tested_at,
            v_account.last_error, v_account.created_at, v_account.updated_at, v_account.content_templates,
            v_account.content_synced_at, v_account.content_sync_requested_at;
  if v_account.id is null then
    raise exception 'Twilio account not found' using errcode = 'NTFND', column = 'providerAccountId';
  end if;
  return v_account;
end;
$$;
comment on function herald_public.sync_content_templates(uuid) is
  E'@resultFieldName providerAccount\nList the Twilio account''s approved templates (Content API) with their WhatsApp approval status, in the background: `contentTemplates` shows them once synced (owners and admins).';
grant execute on function herald_public.sync_content_templates(uuid) to :DATABASE_MEMBER;

-- A template's approval status at the provider, as last synced (null: never synced, or no contentSid).
create or replace function herald_public.templates_approval_status(template herald_public.templates) returns text
  language sql stable
  set search_path = ''
as $$
  select c ->> 'approvalStatus'
    from herald_public.provider_accounts a, pg_catalog.jsonb_array_elements(a.content_templates) c
   where template.content_sid is not null and a.tenant_id = template.tenant_id and a.kind = 'twilio'
     and c ->> 'sid' = template.content_sid
   order by a.status = 'active' desc, a.content_synced_at desc nulls last
   limit 1;
$$;
comment on function herald_public.templates_approval_status(herald_public.templates) is
  E'WhatsApp approval of the provider template `contentSid` names (`approved`, `pending`, `rejected`, `unsubmitted` …), as last synced by `syncContentTemplates`; null if never synced.';
grant execute on function herald_public.templates_approval_status(herald_public.templates) to :DATABASE_MEMBER, :DATABASE_ADMIN;

--! split: 159-whatsapp-read-usage.sql
-- Usage counts read deliveries (WhatsApp read receipts): `read`, after the
-- other columns. As in 000008, with that one column more; the view and the
-- GraphQL type follow. Idempotent: the view and function are dropped and
-- made again, the type's attribute added once.

drop view if exists herald_public.daily_usage;
drop function if exists herald_hidden.usage_between(timestamptz, timestamptz);

create function herald_hidden.usage_between(from_at timestamptz, to_at timestamptz)
  returns table (tenant_id uuid, day date, channel text, account text, provider text, messages integer, deliveries integer,
                 queued integer, sending integer, sent integer, delivered integer, undelivered integer, failed integer,
                 skipped integer, canceled integer, unknown integer, segments integer, inbound integer, opt_outs integer,
                 read integer)
  language sql stable
as $$
  select u.tenant_id, u.day, u.channel, u.account,
         case when u.channel = 'email' then 'sendgrid' else 'twilio' end,
         sum(u.messages)::integer, sum(u.deliveries)::integer, sum(u.queued)::integer, sum(u.sending)::integer,
         sum(u.sent)::integer, sum(u.delivered)::integer, sum(u.undelivered)::integer, sum(u.failed)::integer,
         sum(u.skipped)::integer, sum(u.canceled)::integer, sum(u.unknown)::integer, sum(u.segments)::integer,
         sum(u.inbound)::integer, sum(u.opt_outs)::integer, sum(u.read)::integer
    from (
      select m.tenant_id, (m.created_at at time zone 'UTC')::date as day, d.channel, d.provider as account,
             count(distinct d.message_id) as messages, count(*) as deliveries,
             count(*) filter (where d.status = 'queued') as queued,
             count(*) filter (where d.status = 'sending') as sending,
             count(*) filter (where d.status = 'sent') as sent,
             count(*) filter (where d.status = 'delivered') as delivered,
             count(*) filter (where d.status = 'undelivered') as undelivered,
             count(*) filter (where d.status = 'failed') as failed,
             count(*) filter (where d.status = 'skipped') as skipped,
             count(*) filter (where d.status = 'canceled') as canceled,
             count(*) filter (where d.status = 'unknown') as unknown,
             coalesce(sum(d.segments), 0) as segments, 0 as inbound, 0 as opt_outs,
             count(*) filter (where d.read_at is not null) as read
        from herald_public.messages m
        join herald_public.deliveries d on d.tenant_id = m.tenant_id and d.message_id = m.id
       where m.created_at >= usage_between.from_at and m.created_at < usage_between.to_at
       group by 1, 2, 3, 4
      union all
      select i.tenant_id, (i.received_at at time zone 'UTC')::date, i.channel, i.account,
             0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, count(*), 0, 0
        from herald_public.inbound_messages i
       where i.received_at >= usage_between.from_at and i.received_at < usage_between.to_at
       group by 1, 2, 3, 4
      union all
      select e.tenant_id, (e.created_at at time zone 'UTC')::date, e.channel, null,
             0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, count(*), 0
        from herald_public.consent_events e
       where e.action = 'opt_out' and e.created_at >= usage_between.from_at and e.created_at < usage_between.to_at
       group by 1, 2, 3
    ) u
   group by u.tenant_id, u.day, u.channel, u.account;
$$;
grant execute on function herald_hidden.usage_between(timestamptz, timestamptz) to :DATABASE_MEMBER, :DATABASE_ADMIN;

create view herald_public.daily_usage with (security_invoker = true) as
select * from herald_hidden.usage_between('-infinity', 'infinity');
comment on view herald_public.daily_usage is
  E'@behavior -*\nWhat the tenant sent and received per UTC day, channel and account (`tenant` or `system`; none for deliveries never handed to a provider): messages, deliveries by status, SMS segments, inbound messages, opt-outs, deliveries read. A delivery counts on its message''s day.';
comment on column herald_public.daily_usage.account is E'`tenant` (its own provider account), `system`, or null (never handed to a provider: skipped, canceled, still queued).';
grant select on herald_public.daily_usage to :DATABASE_MEMBER, :DATABASE_ADMIN;

do $$
begin
  if not exists (select 1 from pg_catalog.pg_attribute a
                  where a.attrelid = 'herald_public.usage_day'::regclass and a.attname = 'read' and not a.attisdropped) then
    alter type herald_public.usage_day add attribute read integer;
  end if;
end;
$$;
comment on column herald_public.usage_day.read is E'Deliveries the recipient read (WhatsApp read receipts); each counts as delivered too.';

create or replace function herald_public.usage(from_day date, to_day date) returns setof herald_public.usage_day
  language plpgsql stable
  set search_path = ''
as $$
begin
  if from_day is null or to_day is null or to_day < from_day or to_day - from_day > 366 then
    raise exception 'give fromDay and toDay, at most 366 days apart' using errcode = '22023', column = 'toDay';
  end if;
  return query
  select u.day, u.channel, u.account, u.provider, u.messages, u.deliveries, u.queued, u.sending, u.sent, u.delivered,
         u.undelivered, u.failed, u.skipped, u.canceled, u.unknown, u.segments, u.inbound, u.opt_outs, u.read
    from herald_hidden.usage_between((from_day::timestamp) at time zone 'UTC', ((to_day + 1)::timestamp) at time zone 'UTC') u
   where u.tenant_id = herald_public.current_tenant_id()
   order by u.day, u.channel, u.account nulls last;
end;
$$;

--! split: 170-meta-cloud-api.sql
-- Meta's WhatsApp Cloud API as a provider kind (docs/whatsapp-cloud-api.md).
--
-- A `meta` provider account holds the WhatsApp Business phone number id and
-- account (WABA) id, the access token (in `secret_encrypted`, like every
-- account's credential) and the app secret that signs Meta's webhooks (in
-- `meta_app_secret_encrypted`), both encrypted under the tenant's data key and
-- write-only through the API; and the hash of the webhook verify token,
-- a random value Herald generates and shows once.
-- Templates may name an approved Meta template, its language and the body
-- parameters (each a Herald template text, filled from the contact).

-- The account -----------------------------------------------------------------

alter table herald_public.provider_accounts
  add column if not exists meta_phone_number_id text,
  add column if not exists meta_waba_id text,
  add column if not exists meta_app_secret_encrypted bytea,
  -- Its own key version: the app secret and the access token are replaced apart.
  add column if not exists meta_key_version smallint,
  add column if not exists meta_verify_token_hash bytea;

alter table herald_public.provider_accounts drop constraint if exists provider_accounts_meta_key_version_fkey;
alter table herald_public.provider_accounts add constraint provider_accounts_meta_key_version_fkey
  foreign key (tenant_id, meta_key_version) references herald_private.tenant_data_keys (tenant_id, version);
comment on constraint provider_accounts_meta_key_version_fkey on herald_public.provider_accounts is E'@behavior -*';

alter table herald_public.provider_accounts drop constraint if exists provider_accounts_kind;
alter table herald_public.provider_accounts add constraint provider_accounts_kind
  check (kind in ('twilio', 'sendgrid', 'meta'));
alter table herald_public.provider_accounts drop constraint if exists provider_accounts_meta_fields;
alter table herald_public.provider_accounts add constraint provider_accounts_meta_fields
  check ((kind = 'meta') = (meta_phone_number_id is not null)
     and (kind = 'meta') = (meta_waba_id is not null)
     and (kind = 'meta') = (meta_app_secret_encrypted is not null)
     and (kind = 'meta') = (meta_key_version is not null)
     and (kind = 'meta') = (meta_verify_token_hash is not null));
alter table herald_public.provider_accounts drop constraint if exists provider_accounts_meta_phone_number_id;
alter table herald_public.provider_accounts add constraint provider_accounts_meta_phone_number_id
  check (meta_phone_number_id ~ '^[0-9]{1,32}$');
alter table herald_public.provider_accounts drop constraint if exists provider_accounts_meta_waba_id;
alter table herald_public.provider_accounts add constraint provider_accounts_meta_waba_id
  check (meta_waba_id ~ '^[0-9]{1,32}$');

comment on column herald_public.provider_accounts.meta_phone_number_id is
  E'Meta (WhatsApp Cloud API): the business phone number id messages are sent from and webhooks name.';
comment on column herald_public.provider_accounts.meta_waba_id is
  E'Meta (WhatsApp Cloud API): the WhatsApp Business Account id.';
comment on column herald_public.provider_accounts.meta_app_secret_encrypted is E'@behavior -*';
comment on column herald_public.provider_accounts.meta_verify_token_hash is E'@behavior -*';
comment on column herald_public.provider_accounts.meta_key_version is E'@behavior -*';

-- Members read the ids (never the secrets); the functions below write them.
grant select (meta_phone_number_id, meta_waba_id) on herald_public.provider_accounts to :DATABASE_MEMBER, :DATABASE_ADMIN;
grant insert (meta_phone_number_id, meta_waba_id, meta_app_secret_encrypted, meta_key_version, meta_verify_token_hash)
  on herald_public.provider_accounts to :DATABASE_MEMBER;
grant update (meta_app_secret_encrypted, meta_key_version, meta_verify_token_hash) on herald_public.provider_accounts to :DATABASE_MEMBER;
-- Key rotation re-encrypts the app secret too.
grant update (meta_app_secret_encrypted, meta_key_version) on herald_public.provider_accounts to :DATABASE_WORKER;

-- The webhook finds a Meta account by the id its URL names before it knows
-- the tenant (herald_private.meta_account_owner, a definer function). Like
-- sender_numbers (a number -> its tenant), this mapping reveals no tenant
-- data: only which tenant an account id (a random uuid) belongs to, and its
-- phone number id. Only Meta accounts; definer functions select no secret.
drop policy if exists select_definer on herald_public.provider_accounts;
create policy select_definer on herald_public.provider_accounts for select to :DATABASE_OWNER using (kind = 'meta');
comment on policy select_definer on herald_public.provider_accounts is
  E'Definer functions (the Meta webhook''s account lookup and verify-token check) read Meta accounts of any tenant.';

drop function if exists herald_public.create_meta_account(text, text, text, text, text);
drop type if exists herald_public.created_meta_account;
create type herald_public.created_meta_account as (
  provider_account_id uuid,
  name text,
  phone_number_id text,
  verify_token text
);
comment on type herald_public.created_meta_account is
  E'A new Meta account, with its webhook verify token: shown this once (Herald keeps only its hash).';

-- A verify token: random, shown once, kept as its SHA-256 (a random 192-bit
-- value needs no key stretching, nor a keyed hash).
create or replace function herald_hidden.new_meta_verify_token()
  returns text
  language sql volatile
  set search_path = ''
as $$
  select 'hvt_' || pg_catalog.encode(public.gen_random_bytes(24), 'hex');
$$;
grant execute on function herald_hidden.new_meta_verify_token() to :DATABASE_MEMBER;

create or replace function herald_public.create_meta_account(
  name text,
  phone_number_id text,
  waba_id text,
  access_token text,
  app_secret text
)
  returns herald_public.created_meta_account
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_version smallint := herald_hidden.current_data_key_version();
  v_key text := herald_hidden.data_key(v_version);
  v_token text := herald_hidden.new_meta_verify_token();
  v_id uuid;
begin
  if access_token is null or length(access_token) < 8 or length(access_token) > 1000 then
    raise exception 'accessToken must be the Graph API access token (8 to 1000 characters)' using errcode = '22023', column = 'accessToken';
  end if;
  if app_secret is null or length(app_secret) < 8 or length(app_secret) > 200 then
    raise exception 'appSecret must be the Meta app secret (8 to 200 characters)' using errcode = '22023', column = 'appSecret';
  end if;
  insert into herald_public.provider_accounts (kind, name, secret_encrypted, secret_hint, key_version,
                                                meta_phone_number_id, meta_waba_id, meta_app_secret_encrypted, meta_key_version, meta_verify_token_hash)
  values ('meta', create_meta_account.name, herald_hidden.encrypt_pii(access_token, v_key), pg_catalog.right(access_token, 4), v_version,
          phone_number_id, waba_id, herald_hidden.encrypt_pii(app_secret, v_key), v_version,
          public.digest(v_token, 'sha256'))
  returning id into v_id;
  return row(v_id, create_meta_account.name, phone_number_id, v_token)::herald_public.created_meta_account;
end;
$$;
comment on function herald_public.create_meta_account(text, text, text, text, text) is
  E'Add a Meta WhatsApp Cloud API account (owners and admins). The access token and app secret are stored encrypted and never returned; `verifyToken` is shown this once: give it to Meta with the webhook URL `/webhooks/meta/<providerAccountId>`. Replace the access token with `setProviderAccountSecret`.';
grant execute on function herald_public.create_meta_account(text, text, text, text, text) to :DATABASE_MEMBER;

create or replace function herald_public.set_meta_app_secret(provider_account_id uuid, app_secret text)
  returns herald_public.provider_accounts
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_version smallint := herald_hidden.current_data_key_version();
  v_account herald_public.provider_accounts;
begin
  if app_secret is null or length(app_secret) < 8 or length(app_secret) > 200 then
    raise exception 'appSecret must be the Meta app secret (8 to 200 characters)' using errcode = '22023', column = 'appSecret';
  end if;
  update herald_public.provider_accounts a
     set meta_app_secret_encrypted = herald_hidden.encrypt_pii(app_secret, herald_hidden.data_key(v_version)),
         meta_key_version = v_version
   where a.tenant_id = herald_public.current_tenant_id() and a.id = provider_account_id and a.kind = 'meta'
  returning a.tenant_id, a.id, a.kind, a.name, a.secret_hint, a.status, a.last_tested_at, a.last_error, a.created_at, a.updated_at,
            a.meta_phone_number_id, a.meta_waba_id
       into v_account.tenant_id, v_account.id, v_account.kind, v_account.name, v_account.secret_hint, v_account.status,
            v_account.last_tested_at, v_account.last_error, v_account.created_at, v_account.updated_at,
            v_account.meta_phone_number_id, v_account.meta_waba_id;
  if v_account.id is null then
    raise exception 'No such Meta account' using errcode = 'NTFND';
  end if;
  return v_account;
end;
$$;
comment on function herald_public.set_meta_app_secret(uuid, text) is
  E'Replace a Meta account''s app secret (write-only), which verifies the signature of Meta''s webhooks.';
grant execute on function herald_public.set_meta_app_secret(uuid, text) to :DATABASE_MEMBER;

create or replace function herald_public.reset_meta_verify_token(provider_account_id uuid)
  returns text
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_token text := herald_hidden.new_meta_verify_token();
  v_id uuid;
begin
  update herald_public.provider_accounts a
     set meta_verify_token_hash = public.digest(v_token, 'sha256')
   where a.tenant_id = herald_public.current_tenant_id() and a.id = provider_account_id and a.kind = 'meta'
  returning a.id into v_id;
  if v_id is null then
    raise exception 'No such Meta account' using errcode = 'NTFND';
  end if;
  return v_token;
end;
$$;
comment on function herald_public.reset_meta_verify_token(uuid) is
  E'A new webhook verify token for a Meta account, shown this once (the old one stops working).';
grant execute on function herald_public.reset_meta_verify_token(uuid) to :DATABASE_MEMBER;

-- The webhook, before it knows anything: which tenant an account belongs to
-- and its phone number id (the signature is then checked inside the tenant).
create or replace function herald_private.meta_account_owner(provider_account_id uuid)
  returns table (tenant_id uuid, phone_number_id text)
  language sql stable security definer
  set search_path = ''
as $$
  select a.tenant_id, a.meta_phone_number_id
    from herald_public.provider_accounts a
   where a.id = meta_account_owner.provider_account_id and a.kind = 'meta';
$$;
comment on function herald_private.meta_account_owner(uuid) is
  E'The tenant and phone number id of a Meta account, for the webhook that names it.';
revoke all on function herald_private.meta_account_owner(uuid) from public;
grant execute on function herald_private.meta_account_owner(uuid) to :DATABASE_AUTHENTICATOR;

-- The subscription handshake: whether a verify token is the account's (compares hashes; no key needed).
create or replace function herald_private.meta_verify_token_matches(provider_account_id uuid, verify_token text)
  returns boolean
  language sql stable security definer
  set search_path = ''
as $$
  select coalesce((select a.meta_verify_token_hash = public.digest(meta_verify_token_matches.verify_token, 'sha256')
                     from herald_public.provider_accounts a
                    where a.id = meta_verify_token_matches.provider_account_id and a.kind = 'meta'), false);
$$;
comment on function herald_private.meta_verify_token_matches(uuid, text) is
  E'Whether `verify_token` is the Meta account''s webhook verify token.';
revoke all on function herald_private.meta_verify_token_matches(uuid, text) from public;
grant execute on function herald_private.meta_verify_token_matches(uuid, text) to :DATABASE_AUTHENTICATOR;

-- The worker's (and the verified webhook's) view of a Meta account: decrypted, in the session's tenant only.
create or replace function herald_hidden.meta_account_credentials(provider_account_id uuid)
  returns table (access_token text, app_secret text, phone_number_id text, waba_id text)
  language sql stable
  set search_path = ''
as $$
  select herald_hidden.decrypt_pii(a.secret_encrypted, a.key_version),
         herald_hidden.decrypt_pii(a.meta_app_secret_encrypted, a.meta_key_version),
         a.meta_phone_number_id, a.meta_waba_id
    from herald_public.provider_accounts a
   where a.tenant_id = herald_public.current_tenant_id() and a.id = meta_account_credentials.provider_account_id
     and a.kind = 'meta';
$$;
revoke all on function herald_hidden.meta_account_credentials(uuid) from public;
grant execute on function herald_hidden.meta_account_credentials(uuid) to :DATABASE_WORKER;

-- Key rotation: the app secret moves to the new data key with the row's other secrets.
create or replace function herald_hidden.rekey_provider_accounts()
  returns integer
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
           meta_app_secret_encrypted = herald_hidden.encrypt_pii(
             herald_hidden.decrypt_pii(a.meta_app_secret_encrypted, a.meta_key_version), herald_hidden.data_key(t.version)),
           meta_key_version = case when a.meta_key_version is not null then t.version end,
           key_version = t.version
      from target t
     where a.tenant_id = herald_public.current_tenant_id()
       and (a.key_version <> t.version or a.meta_key_version <> t.version)
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

-- Reports and events from Meta -------------------------------------------------

alter table herald_hidden.provider_reports drop constraint if exists provider_reports_provider;
alter table herald_hidden.provider_reports add constraint provider_reports_provider
  check (provider in ('twilio', 'sendgrid', 'meta'));
alter table herald_public.delivery_events drop constraint if exists delivery_events_provider;
alter table herald_public.delivery_events add constraint delivery_events_provider
  check (provider in ('twilio', 'sendgrid', 'meta'));

-- Templates that name an approved Meta template ---------------------------------

alter table herald_public.templates
  add column if not exists whatsapp_template_name text,
  add column if not exists whatsapp_template_language text,
  add column if not exists whatsapp_template_parameters text[] not null default '{}';

alter table herald_public.templates drop constraint if exists templates_whatsapp_template;
alter table herald_public.templates add constraint templates_whatsapp_template
  check ((whatsapp_template_name is null) = (whatsapp_template_language is null)
     and (whatsapp_template_name is null or channel = 'whatsapp')
     and (whatsapp_template_name is not null or pg_catalog.cardinality(whatsapp_template_parameters) = 0));
alter table herald_public.templates drop constraint if exists templates_whatsapp_template_name;
alter table herald_public.templates add constraint templates_whatsapp_template_name
  check (whatsapp_template_name ~ '^[a-z0-9_]+$' and length(whatsapp_template_name) <= 512);
alter table herald_public.templates drop constraint if exists templates_whatsapp_template_language;
alter table herald_public.templates add constraint templates_whatsapp_template_language
  check (whatsapp_template_language ~ '^[a-z]{2,3}(_[A-Z]{2})?$');
alter table herald_public.templates drop constraint if exists templates_whatsapp_template_parameters;
alter table herald_public.templates add constraint templates_whatsapp_template_parameters
  check (pg_catalog.cardinality(whatsapp_template_parameters) <= 20
     and pg_catalog.length(pg_catalog.array_to_string(whatsapp_template_parameters, '')) <= 4000
     and pg_catalog.array_position(whatsapp_template_parameters, null) is null);

comment on column herald_public.templates.whatsapp_template_name is
  E'WhatsApp through a Meta account: the approved Meta template sent instead of the body (e.g. `order_update`).';
comment on column herald_public.templates.whatsapp_template_language is
  E'The Meta template''s language code (e.g. `en_US`).';
comment on column herald_public.templates.whatsapp_template_parameters is
  E'The Meta template''s body parameters in order ({{1}}, {{2}}, …), each a text with Herald variables such as `{{first_name|there}}`.';

grant insert (whatsapp_template_name, whatsapp_template_language, whatsapp_template_parameters)
  on herald_public.templates to :DATABASE_MEMBER;
grant update (whatsapp_template_name, whatsapp_template_language, whatsapp_template_parameters)
  on herald_public.templates to :DATABASE_MEMBER;

--! split: 190-segments.sql
-- Segments: a tenant's saved, named filters over contact fields (docs/audiences.md).
--
-- One grammar, one validator, one compiler, all here: herald_hidden.segment_filter_sql
-- turns a filter (jsonb) into a WHERE clause over `herald_public.contacts c` and
-- its parameters. The clause's text is built only from this file's own
-- fragments (whitelisted columns, operators and casts); every value and every
-- attribute key from the filter is a parameter (`$1[n]`, an element of one
-- text[] bound with EXECUTE … USING). Storing a segment, searching contacts and
-- a broadcast's fan-out all go through it, so what is stored is what compiles,
-- and what runs is what was validated. The query runs as the caller (security
-- invoker) under row-level security.

-------------------------------------------------------------------------------
-- The compiler
-------------------------------------------------------------------------------

-- Limits: a filter is small and shallow (bounded compile and plan time).
create or replace function herald_hidden.segment_limits(out max_depth integer, out max_conditions integer,
  out max_items integer, out max_chars integer)
  language sql immutable parallel safe
  set search_path = ''
as $$
  select 6, 100, 500, 65536;
$$;

-- An attribute's value as a timestamp, or null when it is not a date string.
create or replace function herald_hidden.jsonb_timestamptz(value jsonb) returns timestamptz
  language plpgsql stable parallel safe
  set search_path = ''
as $$
begin
  if pg_catalog.jsonb_typeof(value) is distinct from 'string' or pg_catalog.length(value #>> '{}') > 64 then
    return null;
  end if;
  return (value #>> '{}')::timestamptz;
exception when data_exception then
  return null;
end;
$$;

-- Refuse a filter, naming the path of what is wrong (`filter.all[1].attribute.gte`).
create or replace function herald_hidden.segment_filter_refuse(path text, message text) returns void
  language plpgsql volatile
  set search_path = ''
as $$
begin
  raise exception '%: %', path, message using errcode = '22023', column = path;
end;
$$;

-- A comparison value: a date (ISO 8601) or {"ago": "<interval>"}; or, where
-- numbers are allowed, a number. Adds the parameter and returns the SQL of the
-- right-hand side, and the value's kind.
create or replace function herald_hidden.segment_filter_bound(value jsonb, path text, numbers_allowed boolean,
  inout params text[], out sql text, out kind text)
  language plpgsql stable
  set search_path = ''
as $$
declare
  v_text text;
begin
  if pg_catalog.jsonb_typeof(value) = 'number' and numbers_allowed then
    params := params || (value #>> '{}');
    sql := pg_catalog.format('$1[%s]::numeric', pg_catalog.cardinality(params));
    kind := 'number';
    return;
  end if;
  if pg_catalog.jsonb_typeof(value) = 'object' and (select pg_catalog.array_agg(k) from pg_catalog.jsonb_object_keys(value) k) = array['ago']
     and pg_catalog.jsonb_typeof(value -> 'ago') = 'string' then
    v_text := value ->> 'ago';
    begin
      if pg_catalog.length(v_text) > 64 or v_text::interval is null then
        raise invalid_datetime_format;
      end if;
    exception when data_exception then
      perform herald_hidden.segment_filter_refuse(path || '.ago', 'must be an interval such as "30 days"');
    end;
    params := params || v_text;
    sql := pg_catalog.format('(pg_catalog.now() - $1[%s]::interval)', pg_catalog.cardinality(params));
    kind := 'date';
    return;
  end if;
  if pg_catalog.jsonb_typeof(value) = 'string' then
    v_text := value #>> '{}';
    begin
      if pg_catalog.length(v_text) > 64 or v_text::timestamptz is null then
        raise invalid_datetime_format;
      end if;
    exception when data_exception then
      perform herald_hidden.segment_filter_refuse(path, 'must be a date such as "2026-01-31" or "2026-01-31T09:00:00Z"');
    end;
    params := params || v_text;
    sql := pg_catalog.format('$1[%s]::timestamptz', pg_catalog.cardinality(params));
    kind := 'date';
    return;
  end if;
  perform herald_hidden.segment_filter_refuse(path,
    case when numbers_allowed then 'must be a number, a date, or {"ago": "30 days"}'
         else 'must be a date, or {"ago": "30 days"}' end);
end;
$$;

-- `expression` compared with gt/gte/lt/lte (and, when `existence` is given,
-- `exists`) from the object `spec`; every key of spec must be one of those.
create or replace function herald_hidden.segment_filter_range(spec jsonb, path text, expression text, existence text,
  numbers_allowed boolean, inout params text[], out sql text)
  language plpgsql stable
  set search_path = ''
as $$
declare
  v_key text;
  v_parts text[] := '{}';
  v_bound record;
  v_kind text;
  v_operator text;
begin
  if pg_catalog.jsonb_typeof(spec) is distinct from 'object' or spec = '{}' then
    perform herald_hidden.segment_filter_refuse(path,
      case when existence is null then 'must be an object with gt, gte, lt or lte'
           else 'must be an object with gt, gte, lt, lte or exists' end);
  end if;
  for v_key in select k from pg_catalog.jsonb_object_keys(spec) k order by k loop
    if v_key = 'exists' and existence is not null then
      if pg_catalog.jsonb_typeof(spec -> v_key) is distinct from 'boolean' then
        perform herald_hidden.segment_filter_refuse(path || '.exists', 'must be true or false');
      end if;
      v_parts := v_parts || case when (spec ->> v_key)::boolean then existence else '(not ' || existence || ')' end;
      continue;
    end if;
    v_operator := case v_key when 'gt' then '>' when 'gte' then '>=' when 'lt' then '<' when 'lte' then '<=' end;
    if v_operator is null then
      perform herald_hidden.segment_filter_refuse(path || '.' || v_key,
        case when existence is null then 'is not a comparison (gt, gte, lt, lte)'
             else 'is not a comparison (gt, gte, lt, lte, exists)' end);
    end if;
    select * into v_bound from herald_hidden.segment_filter_bound(spec -> v_key, path || '.' || v_key, numbers_allowed, params);
    params := v_bound.params;
    if v_kind is not null and v_kind <> v_bound.kind then
      perform herald_hidden.segment_filter_refuse(path || '.' || v_key, 'compares a ' || v_bound.kind || ' where another bound is a ' || v_kind);
    end if;
    v_kind := v_bound.kind;
    v_parts := v_parts || pg_catalog.format('%s %s %s',
      case when v_kind = 'number' then pg_catalog.replace(expression, '%TYPE%', 'number') else pg_catalog.replace(expression, '%TYPE%', 'date') end,
      v_operator, v_bound.sql);
  end loop;
  sql := '(' || pg_catalog.array_to_string(v_parts, ' and ') || ')';
end;
$$;

-- A list of 1..max_items uuids (tag or list ids) as a uuid[] parameter.
create or replace function herald_hidden.segment_filter_ids(value jsonb, path text, inout params text[], out sql text, out how_many integer)
  language plpgsql stable
  set search_path = ''
as $$
declare
  v_ids uuid[];
  v_item jsonb;
  v_index integer := 0;
begin
  if pg_catalog.jsonb_typeof(value) is distinct from 'array' or pg_catalog.jsonb_array_length(value) = 0
     or pg_catalog.jsonb_array_length(value) > (select max_items from herald_hidden.segment_limits()) then
    perform herald_hidden.segment_filter_refuse(path, pg_catalog.format('must be a list of 1 to %s ids',
      (select max_items from herald_hidden.segment_limits())));
  end if;
  for v_item in select e from pg_catalog.jsonb_array_elements(value) e loop
    if pg_catalog.jsonb_typeof(v_item) <> 'string' or (v_item #>> '{}') !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
      perform herald_hidden.segment_filter_refuse(path || '[' || v_index || ']', 'must be an id (a UUID)');
    end if;
    v_index := v_index + 1;
  end loop;
  v_ids := array(select distinct (e #>> '{}')::uuid from pg_catalog.jsonb_array_elements(value) e);
  params := params || v_ids::text;
  sql := pg_catalog.format('$1[%s]::uuid[]', pg_catalog.cardinality(params));
  how_many := pg_catalog.cardinality(v_ids);
end;
$$;

-- A text column compared with equals / in / exists (exactly one).
create or replace function herald_hidden.segment_filter_text(spec jsonb, path text, column_sql text, inout params text[], out sql text)
  language plpgsql stable
  set search_path = ''
as $$
declare
  v_key text;
  v_index integer := 0;
  v_item jsonb;
begin
  if pg_catalog.jsonb_typeof(spec) is distinct from 'object' or (select count(*) from pg_catalog.jsonb_object_keys(spec)) <> 1 then
    perform herald_hidden.segment_filter_refuse(path, 'must be an object with exactly one of equals, in, exists');
  end if;
  v_key := (select k from pg_catalog.jsonb_object_keys(spec) k);
  if v_key = 'equals' then
    if pg_catalog.jsonb_typeof(spec -> v_key) <> 'string' or pg_catalog.length(spec ->> v_key) > 200 then
      perform herald_hidden.segment_filter_refuse(path || '.equals', 'must be a string of at most 200 characters');
    end if;
    params := params || (spec ->> v_key);
    sql := pg_catalog.format('%s = $1[%s]', column_sql, pg_catalog.cardinality(params));
  elsif v_key = 'in' then
    if pg_catalog.jsonb_typeof(spec -> v_key) <> 'array' or pg_catalog.jsonb_array_length(spec -> v_key) = 0
       or pg_catalog.jsonb_array_length(spec -> v_key) > (select max_items from herald_hidden.segment_limits()) then
      perform herald_hidden.segment_filter_refuse(path || '.in', pg_catalog.format('must be a list of 1 to %s strings',
        (select max_items from herald_hidden.segment_limits())));
    end if;
    for v_item in select e from pg_catalog.jsonb_array_elements(spec -> v_key) e loop
      if pg_catalog.jsonb_typeof(v_item) <> 'string' or pg_catalog.length(v_item #>> '{}') > 200 then
        perform herald_hidden.segment_filter_refuse(path || '.in[' || v_index || ']', 'must be a string of at most 200 characters');
      end if;
      v_index := v_index + 1;
    end loop;
    -- PostgreSQL's own array literal of the strings; the query casts it back.
    params := params || array(select e #>> '{}' from pg_catalog.jsonb_array_elements(spec -> v_key) e)::text;
    sql := pg_catalog.format('%s = any ($1[%s]::text[])', column_sql, pg_catalog.cardinality(params));
  elsif v_key = 'exists' then
    if pg_catalog.jsonb_typeof(spec -> v_key) <> 'boolean' then
      perform herald_hidden.segment_filter_refuse(path || '.exists', 'must be true or false');
    end if;
    sql := pg_catalog.format(case when (spec ->> v_key)::boolean then '(%s is not null)' else '(%s is null)' end, column_sql);
  else
    perform herald_hidden.segment_filter_refuse(path || '.' || v_key, 'is not one of equals, in, exists');
  end if;
end;
$$;

-- One node of a filter (an object with exactly one key), compiled.
create or replace function herald_hidden.segment_filter_node(node jsonb, path text, depth integer,
  inout params text[], inout conditions integer, out sql text)
  language plpgsql stable
  set search_path = ''
as $$
declare
  v_limits record := herald_hidden.segment_limits();
  v_key text;
  v_spec jsonb;
  v_child record;
  v_parts text[] := '{}';
  v_index integer := 0;
  v_item jsonb;
  v_ids record;
  v_join text;
  v_channel text;
  v_attr text;
  v_ops text[];
begin
  if depth > v_limits.max_depth then
    perform herald_hidden.segment_filter_refuse(path, pg_catalog.format('is nested deeper than %s levels', v_limits.max_depth));
  end if;
  conditions := conditions + 1;
  if conditions > v_limits.max_conditions then
    perform herald_hidden.segment_filter_refuse(path, pg_catalog.format('makes the filter longer than %s conditions', v_limits.max_conditions));
  end if;
  if pg_catalog.jsonb_typeof(node) is distinct from 'object' or (select count(*) from pg_catalog.jsonb_object_keys(node)) <> 1 then
    perform herald_hidden.segment_filter_refuse(path, 'must be an object with exactly one condition');
  end if;
  v_key := (select k from pg_catalog.jsonb_object_keys(node) k);
  v_spec := node -> v_key;
  path := path || '.' || v_key;

  case v_key
  when 'all', 'any' then
    if pg_catalog.jsonb_typeof(v_spec) <> 'array' or pg_catalog.jsonb_array_length(v_spec) = 0
       or pg_catalog.jsonb_array_length(v_spec) > v_limits.max_conditions then
      perform herald_hidden.segment_filter_refuse(path, 'must be a non-empty list of conditions');
    end if;
    for v_item in select e from pg_catalog.jsonb_array_elements(v_spec) e loop
      select * into v_child from herald_hidden.segment_filter_node(v_item, path || '[' || v_index || ']', depth + 1, params, conditions);
      params := v_child.params;
      conditions := v_child.conditions;
      v_parts := v_parts || v_child.sql;
      v_index := v_index + 1;
    end loop;
    sql := '(' || pg_catalog.array_to_string(v_parts, case when v_key = 'all' then ' and ' else ' or ' end) || ')';

  when 'not' then
    select * into v_child from herald_hidden.segment_filter_node(v_spec, path, depth + 1, params, conditions);
    params := v_child.params;
    conditions := v_child.conditions;
    sql := '(not ' || v_child.sql || ')';

  when 'subscribed' then
    if pg_catalog.jsonb_typeof(v_spec) <> 'object' or v_spec = '{}' then
      perform herald_hidden.segment_filter_refuse(path, 'must be an object such as {"sms": true}');
    end if;
    for v_channel in select k from pg_catalog.jsonb_object_keys(v_spec) k order by k loop
      if v_channel not in ('sms', 'email', 'whatsapp') then
        perform herald_hidden.segment_filter_refuse(path || '.' || v_channel, 'is not a channel (sms, email, whatsapp)');
      end if;
      if pg_catalog.jsonb_typeof(v_spec -> v_channel) <> 'boolean' then
        perform herald_hidden.segment_filter_refuse(path || '.' || v_channel, 'must be true or false');
      end if;
      params := params || (v_spec ->> v_channel);
      v_parts := v_parts || pg_catalog.format('c.%s = $1[%s]::boolean',
        case v_channel when 'sms' then 'sms_subscribed' when 'email' then 'email_subscribed' else 'whatsapp_subscribed' end,
        pg_catalog.cardinality(params));
    end loop;
    sql := '(' || pg_catalog.array_to_string(v_parts, ' and ') || ')';

  when 'tags', 'lists' then
    if pg_catalog.jsonb_typeof(v_spec) <> 'object' or v_spec = '{}' then
      perform herald_hidden.segment_filter_refuse(path, 'must be an object with any, all and/or none');
    end if;
    v_join := case v_key
      when 'tags' then 'from herald_public.contact_tags x where x.tenant_id = c.tenant_id and x.contact_id = c.id and x.tag_id = any (%s)'
      else 'from herald_public.list_members x where x.tenant_id = c.tenant_id and x.contact_id = c.id and x.list_id = any (%s)' end;
    for v_attr in select k from pg_catalog.jsonb_object_keys(v_spec) k order by k loop
      if v_attr not in ('any', 'all', 'none') then
        perform herald_hidden.segment_filter_refuse(path || '.' || v_attr, 'is not one of any, all, none');
      end if;
      select * into v_ids from herald_hidden.segment_filter_ids(v_spec -> v_attr, path || '.' || v_attr, params);
      params := v_ids.params;
      if v_attr = 'any' then
        v_parts := v_parts || pg_catalog.format('exists (select 1 ' || v_join || ')', v_ids.sql);
      elsif v_attr = 'none' then
        v_parts := v_parts || pg_catalog.format('not exists (select 1 ' || v_join || ')', v_ids.sql);
      else
        params := params || v_ids.how_many::text;
        v_parts := v_parts || pg_catalog.format('(select count(*) ' || v_join || ') = $1[%s]::bigint', v_ids.sql,
          pg_catalog.cardinality(params));
      end if;
    end loop;
    sql := '(' || pg_catalog.array_to_string(v_parts, ' and ') || ')';

  when 'attribute' then
    if pg_catalog.jsonb_typeof(v_spec) <> 'object' then
      perform herald_hidden.segment_filter_refuse(path, 'must be an object with key and one of equals, in, exists, or gt/gte/lt/lte');
    end if;
    if pg_catalog.jsonb_typeof(v_spec -> 'key') is distinct from 'string'
       or pg_catalog.length(v_spec ->> 'key') not between 1 and 200 then
      perform herald_hidden.segment_filter_refuse(path || '.key', 'must be the name of an attribute (1 to 200 characters)');
    end if;
    params := params || (v_spec ->> 'key');
    v_attr := pg_catalog.format('$1[%s]', pg_catalog.cardinality(params));
    v_ops := array(select k from pg_catalog.jsonb_object_keys(v_spec) k where k <> 'key' order by k);
    if pg_catalog.cardinality(v_ops) = 0 then
      perform herald_hidden.segment_filter_refuse(path, 'needs one of equals, in, exists, or gt/gte/lt/lte');
    end if;
    if v_ops && array['equals', 'in', 'exists'] and pg_catalog.cardinality(v_ops) > 1 then
      perform herald_hidden.segment_filter_refuse(path || '.' || v_ops[2], 'cannot be combined with another test on one attribute');
    end if;
    if v_ops[1] = 'equals' then
      if pg_catalog.jsonb_typeof(v_spec -> 'equals') not in ('string', 'number', 'boolean')
         or pg_catalog.length((v_spec -> 'equals')::text) > 1000 then
        perform herald_hidden.segment_filter_refuse(path || '.equals', 'must be a string, number or boolean');
      end if;
      -- Containment of {key: value}: an exact match of a scalar, and the shape a GIN index on attributes serves.
      params := params || pg_catalog.jsonb_build_object(v_spec ->> 'key', v_spec -> 'equals')::text;
      sql := pg_catalog.format('c.attributes @> $1[%s]::jsonb', pg_catalog.cardinality(params));
    elsif v_ops[1] = 'in' then
      if pg_catalog.jsonb_typeof(v_spec -> 'in') <> 'array' or pg_catalog.jsonb_array_length(v_spec -> 'in') = 0
         or pg_catalog.jsonb_array_length(v_spec -> 'in') > v_limits.max_items then
        perform herald_hidden.segment_filter_refuse(path || '.in', pg_catalog.format('must be a list of 1 to %s values', v_limits.max_items));
      end if;
      for v_item in select e from pg_catalog.jsonb_array_elements(v_spec -> 'in') e loop
        if pg_catalog.jsonb_typeof(v_item) not in ('string', 'number', 'boolean') or pg_catalog.length(v_item::text) > 1000 then
          perform herald_hidden.segment_filter_refuse(path || '.in[' || v_index || ']', 'must be a string, number or boolean');
        end if;
        v_index := v_index + 1;
      end loop;
      params := params || (v_spec -> 'in')::text;
      sql := pg_catalog.format('c.attributes -> %s = any (array(select pg_catalog.jsonb_array_elements($1[%s]::jsonb)))',
        v_attr, pg_catalog.cardinality(params));
    elsif v_ops[1] = 'exists' then
      if pg_catalog.jsonb_typeof(v_spec -> 'exists') <> 'boolean' then
        perform herald_hidden.segment_filter_refuse(path || '.exists', 'must be true or false');
      end if;
      sql := pg_catalog.format(case when (v_spec ->> 'exists')::boolean then '(c.attributes ? %s)' else '(not c.attributes ? %s)' end, v_attr);
    else
      -- Numbers compare with numbers, dates with date strings; anything else in the attribute matches no bound.
      select r.sql, r.params into sql, params from herald_hidden.segment_filter_range(v_spec - 'key', path,
        pg_catalog.format('herald_hidden.segment_attribute_%%TYPE%%(c.attributes -> %s)', v_attr), null, true, params) r;
    end if;

  when 'timezone', 'locale' then
    select r.sql, r.params into sql, params
      from herald_hidden.segment_filter_text(v_spec, path, case v_key when 'timezone' then 'c.timezone' else 'c.locale' end, params) r;

  when 'createdAt', 'updatedAt' then
    select r.sql, r.params into sql, params from herald_hidden.segment_filter_range(v_spec, path,
      case v_key when 'createdAt' then 'c.created_at' else 'c.updated_at' end, null, false, params) r;

  when 'lastInboundAt' then
    select r.sql, r.params into sql, params from herald_hidden.segment_filter_range(v_spec, path,
      '(select max(i.received_at) from herald_public.inbound_messages i where i.tenant_id = c.tenant_id and i.contact_id = c.id)',
      'exists (select 1 from herald_public.inbound_messages i where i.tenant_id = c.tenant_id and i.contact_id = c.id)',
      false, params) r;

  when 'lastDeliveredAt' then
    select r.sql, r.params into sql, params from herald_hidden.segment_filter_range(v_spec, path,
      '(select max(d.completed_at) from herald_public.deliveries d where d.tenant_id = c.tenant_id and d.contact_id = c.id and d.status = ''delivered'')',
      'exists (select 1 from herald_public.deliveries d where d.tenant_id = c.tenant_id and d.contact_id = c.id and d.status = ''delivered'')',
      false, params) r;

  else
    perform herald_hidden.segment_filter_refuse(path,
      'is not a condition (all, any, not, subscribed, tags, lists, attribute, timezone, locale, createdAt, updatedAt, lastInboundAt, lastDeliveredAt)');
  end case;
end;
$$;

create or replace function herald_hidden.segment_attribute_number(value jsonb) returns numeric
  language sql immutable parallel safe
  set search_path = ''
as $$
  select case when pg_catalog.jsonb_typeof(value) = 'number' then value::numeric end;
$$;

create or replace function herald_hidden.segment_attribute_date(value jsonb) returns timestamptz
  language sql stable parallel safe
  set search_path = ''
as $$
  select herald_hidden.jsonb_timestamptz(value);
$$;

-- A filter, validated and compiled: `sql` is a boolean expression over
-- `herald_public.contacts c` whose every input is an element of `params`
-- (referenced as `$1[n]`). Raises 22023 naming the offending path.
create or replace function herald_hidden.segment_filter_sql(filter jsonb, path text default 'filter',
  out sql text, out params text[])
  language plpgsql stable
  set search_path = ''
as $$
declare
  v_node record;
begin
  if filter is null then
    perform herald_hidden.segment_filter_refuse(path, 'is required');
  end if;
  if pg_catalog.length(filter::text) > (select max_chars from herald_hidden.segment_limits()) then
    perform herald_hidden.segment_filter_refuse(path, pg_catalog.format('is longer than %s characters',
      (select max_chars from herald_hidden.segment_limits())));
  end if;
  select * into v_node from herald_hidden.segment_filter_node(filter, path, 1, '{}', 0);
  sql := v_node.sql;
  params := v_node.params;
end;
$$;

-- True, or an error naming the offending path: the check on segments.filter.
-- (Declared immutable for the check: a filter's validity depends on nothing else.)
create or replace function herald_hidden.segment_filter_valid(filter jsonb) returns boolean
  language plpgsql immutable
  set search_path = ''
as $$
begin
  perform herald_hidden.segment_filter_sql(filter, 'filter');
  return true;
end;
$$;

-------------------------------------------------------------------------------
-- segments (tenant-owned)
-------------------------------------------------------------------------------

drop table if exists herald_public.segments cascade;
drop function if exists herald_private.tg_segments__validate_filter();

create table herald_public.segments (
  tenant_id uuid not null default herald_public.current_tenant_id()
    references herald_public.tenants on delete cascade,
  id uuid not null default gen_random_uuid(),
  name public.citext not null constraint segments_name_length check (length(name) between 1 and 200),
  description text constraint segments_description_length check (length(description) <= 2000),
  -- Only a valid filter is stored. A check (not a trigger) so that row-level
  -- security refuses another tenant's row before the filter is even read.
  filter jsonb not null constraint segments_filter_valid check (herald_hidden.segment_filter_valid(filter)),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (tenant_id, id),
  constraint segments_name_unique unique (tenant_id, name)
);
comment on table herald_public.segments is
  E'A saved, named filter over contacts: a broadcast audience (`sendMessage(segmentIds:)`) and a search (`searchContacts(segmentId:)`). '
  'The filter grammar is in docs/audiences.md.';
comment on column herald_public.segments.filter is
  E'The filter, e.g. `{"all": [{"attribute": {"key": "plan", "equals": "gold"}}, {"tags": {"any": ["<tag id>"]}}]}`. '
  'Validated when written: an invalid one is refused with the path of what is wrong.';

create trigger _100_timestamps before insert or update on herald_public.segments
  for each row execute function herald_private.tg__timestamps();
create trigger _900_audit_insert after insert on herald_public.segments referencing new table as new_rows
  for each statement execute function herald_private.tg__audit('id', '');
create trigger _900_audit_update after update on herald_public.segments referencing old table as old_rows new table as new_rows
  for each statement execute function herald_private.tg__audit('id', '');
create trigger _900_audit_delete after delete on herald_public.segments referencing old table as old_rows
  for each statement execute function herald_private.tg__audit('id', '');

alter table herald_public.segments enable row level security;
alter table herald_public.segments force row level security;

create policy select_member on herald_public.segments for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
comment on policy select_member on herald_public.segments is E'Members (and the worker, at fan-out) read their own tenant''s segments.';
create policy insert_member on herald_public.segments for insert to :DATABASE_MEMBER
  with check (tenant_id = (select herald_public.current_tenant_id()));
comment on policy insert_member on herald_public.segments is E'Members add segments to their own tenant only.';
create policy update_member on herald_public.segments for update to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
comment on policy update_member on herald_public.segments is E'Members edit their own tenant''s segments, and cannot move one to another tenant.';
create policy delete_member on herald_public.segments for delete to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()));
comment on policy delete_member on herald_public.segments is E'Members delete their own tenant''s segments.';
create policy select_admin on herald_public.segments for select to :DATABASE_ADMIN using (true);
comment on policy select_admin on herald_public.segments is E'Operators read every tenant''s segments.';
create policy delete_admin on herald_public.segments for delete to :DATABASE_ADMIN using (true);
comment on policy delete_admin on herald_public.segments is E'Operators delete any segment.';

grant select on herald_public.segments to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;
grant insert (tenant_id, name, description, filter), update (name, description, filter) on herald_public.segments to :DATABASE_MEMBER;
grant delete on herald_public.segments to :DATABASE_MEMBER, :DATABASE_ADMIN;

grant execute on function
  herald_hidden.segment_limits(),
  herald_hidden.jsonb_timestamptz(jsonb),
  herald_hidden.segment_filter_refuse(text, text),
  herald_hidden.segment_filter_bound(jsonb, text, boolean, text[]),
  herald_hidden.segment_filter_range(jsonb, text, text, text, boolean, text[]),
  herald_hidden.segment_filter_ids(jsonb, text, text[]),
  herald_hidden.segment_filter_text(jsonb, text, text, text[]),
  herald_hidden.segment_filter_node(jsonb, text, integer, text[], integer),
  herald_hidden.segment_attribute_number(jsonb),
  herald_hidden.segment_attribute_date(jsonb),
  herald_hidden.segment_filter_sql(jsonb, text),
  herald_hidden.segment_filter_valid(jsonb)
  to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;

-- How many of `segment_ids` are not the session tenant's segments (another
-- tenant's are as missing as ones that never existed). Called by send_message.
create or replace function herald_hidden.missing_segments(segment_ids uuid[])
  returns integer
  language sql stable
  set search_path = ''
as $$
  select pg_catalog.cardinality(segment_ids) - (
    select count(*)::integer from herald_public.segments s
     where s.tenant_id = herald_public.current_tenant_id()
       and s.id = any (segment_ids));
$$;
grant execute on function herald_hidden.missing_segments(uuid[]) to :DATABASE_MEMBER, :DATABASE_WORKER;

-------------------------------------------------------------------------------
-- Evaluating a filter
-------------------------------------------------------------------------------

-- The ids of the session tenant's contacts matching a filter (and optional
-- further segment), as the caller, under row-level security.
create or replace function herald_hidden.segment_filter_where(filter jsonb, segment_id uuid, path text,
  out sql text, out params text[])
  language plpgsql stable
  set search_path = ''
as $$
declare
  v_filter jsonb := filter;
  v_compiled record;
begin
  if segment_id is not null then
    select s.filter into v_filter from herald_public.segments s
     where s.tenant_id = herald_public.current_tenant_id() and s.id = segment_filter_where.segment_id;
    if not found then
      raise exception 'segment not found' using errcode = 'NTFND', column = 'segmentId';
    end if;
    if filter is not null then
      v_filter := pg_catalog.jsonb_build_object('all', pg_catalog.jsonb_build_array(v_filter, filter));
    end if;
  end if;
  if v_filter is null then
    sql := 'true';
    params := '{}';
    return;
  end if;
  select * into v_compiled from herald_hidden.segment_filter_sql(v_filter, path);
  sql := v_compiled.sql;
  params := v_compiled.params;
end;
$$;
grant execute on function herald_hidden.segment_filter_where(jsonb, uuid, text) to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;

-- searchContacts: by tag, list, filter and/or saved segment (all given must hold).
drop function if exists herald_public.search_contacts(uuid, uuid);
drop function if exists herald_public.search_contacts(uuid, uuid, jsonb, uuid);
create function herald_public.search_contacts(tag_id uuid default null, list_id uuid default null,
  filter jsonb default null, segment_id uuid default null)
  returns setof herald_public.contacts
  language plpgsql stable
  rows 1000
  set search_path = ''
as $$
declare
  v_where record;
begin
  select * into v_where from herald_hidden.segment_filter_where(filter, segment_id, 'filter');
  return query execute
    'select c.* from herald_public.contacts c
      where c.tenant_id = (select herald_public.current_tenant_id())
        and ($2 is null or exists (
              select 1 from herald_public.contact_tags ct
               where ct.tenant_id = c.tenant_id and ct.contact_id = c.id and ct.tag_id = $2))
        and ($3 is null or exists (
              select 1 from herald_public.list_members lm
               where lm.tenant_id = c.tenant_id and lm.contact_id = c.id and lm.list_id = $3))
        and ' || v_where.sql || '
      order by c.created_at, c.id'
    using v_where.params, tag_id, list_id;
end;
$$;
comment on function herald_public.search_contacts(uuid, uuid, jsonb, uuid) is
  E'Contacts with the given tag, on the given list, matching `filter` (the segment grammar, docs/audiences.md) and/or the saved segment `segmentId`; oldest first. '
  'With `first` and `totalCount` this is a preview: the count and the first page.';
grant execute on function herald_public.search_contacts(uuid, uuid, jsonb, uuid)
  to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;

-- How many contacts match a segment now (one count statement, no rows fetched).
create or replace function herald_public.segments_contact_count(segment herald_public.segments) returns integer
  language plpgsql stable
  set search_path = ''
as $$
declare
  v_compiled record;
  v_count integer;
begin
  select * into v_compiled from herald_hidden.segment_filter_sql(segment.filter, 'filter');
  execute 'select count(*)::integer from herald_public.contacts c
            where c.tenant_id = (select herald_public.current_tenant_id()) and ' || v_compiled.sql
    into v_count using v_compiled.params;
  return v_count;
end;
$$;
comment on function herald_public.segments_contact_count(herald_public.segments) is E'How many contacts match this segment now.';
grant execute on function herald_public.segments_contact_count(herald_public.segments) to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;

-- Last delivered: the latest delivered delivery of a contact, from an index.
create index if not exists deliveries_delivered_by_contact on herald_public.deliveries (tenant_id, contact_id, completed_at)
  where status = 'delivered';

--! split: 195-segment-fan-out.sql
-- A broadcast to segments: the matching contacts are taken once, when fan-out
-- starts (herald_hidden.snapshot_segment_audience, called by
-- src/messages/fan-out.ts before the first batch), into a per-message table;
-- the batches then read that table like a list, and forget_segment_audience
-- empties it when fan-out is over. A contact changed after the start is
-- neither added nor removed mid-way.

drop table if exists herald_hidden.message_segment_members cascade;

create table herald_hidden.message_segment_members (
  tenant_id uuid not null references herald_public.tenants on delete cascade,
  message_id uuid not null,
  contact_id uuid not null,
  primary key (tenant_id, message_id, contact_id),
  constraint message_segment_members_message_fkey foreign key (tenant_id, message_id)
    references herald_public.messages (tenant_id, id) on delete cascade,
  constraint message_segment_members_contact_fkey foreign key (tenant_id, contact_id)
    references herald_public.contacts (tenant_id, id) on delete cascade
);
comment on table herald_hidden.message_segment_members is
  E'The contacts a message''s segments matched when its fan-out started; emptied when fan-out is done.';
create index message_segment_members_by_contact on herald_hidden.message_segment_members (tenant_id, contact_id);

alter table herald_hidden.message_segment_members enable row level security;
alter table herald_hidden.message_segment_members force row level security;

create policy select_worker on herald_hidden.message_segment_members for select to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
comment on policy select_worker on herald_hidden.message_segment_members is E'The worker reads its tenant''s snapshots.';
create policy insert_worker on herald_hidden.message_segment_members for insert to :DATABASE_WORKER
  with check (tenant_id = (select herald_public.current_tenant_id()));
comment on policy insert_worker on herald_hidden.message_segment_members is E'The worker snapshots its tenant''s segments only.';
create policy delete_worker on herald_hidden.message_segment_members for delete to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
comment on policy delete_worker on herald_hidden.message_segment_members is E'The worker empties its tenant''s snapshots.';
create policy select_admin on herald_hidden.message_segment_members for select to :DATABASE_ADMIN using (true);
comment on policy select_admin on herald_hidden.message_segment_members is E'Operators read every snapshot.';

grant select, delete on herald_hidden.message_segment_members to :DATABASE_WORKER;
grant insert (tenant_id, message_id, contact_id) on herald_hidden.message_segment_members to :DATABASE_WORKER;
grant select on herald_hidden.message_segment_members to :DATABASE_ADMIN;

-- Takes the snapshot, once: only before the first batch (no cursor yet). A
-- run that died between the snapshot and its first batch takes it again
-- (no delivery exists yet, so this is still the start). Returns how many
-- contacts matched, or null when there was nothing to take.
create or replace function herald_hidden.snapshot_segment_audience(message_id uuid) returns integer
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_tenant uuid := herald_public.current_tenant_id();
  v_message herald_public.messages;
  v_segment record;
  v_compiled record;
  v_count integer;
begin
  select * into v_message from herald_public.messages m
   where m.tenant_id = v_tenant and m.id = snapshot_segment_audience.message_id for update;
  if not found or v_message.status in ('canceled', 'fanned_out') or v_message.fan_out_cursor is not null
     or pg_catalog.cardinality(v_message.segment_ids) = 0 then
    return null;
  end if;
  delete from herald_hidden.message_segment_members sm
   where sm.tenant_id = v_tenant and sm.message_id = v_message.id;
  for v_segment in select s.id, s.filter from herald_public.segments s
                    where s.tenant_id = v_tenant and s.id = any (v_message.segment_ids) loop
    select * into v_compiled from herald_hidden.segment_filter_sql(v_segment.filter, 'filter');
    execute 'insert into herald_hidden.message_segment_members (tenant_id, message_id, contact_id)
             select c.tenant_id, $2, c.id from herald_public.contacts c
              where c.tenant_id = (select herald_public.current_tenant_id()) and ' || v_compiled.sql || '
             on conflict do nothing'
      using v_compiled.params, v_message.id;
  end loop;
  select count(*)::integer into v_count from herald_hidden.message_segment_members sm
   where sm.tenant_id = v_tenant and sm.message_id = v_message.id;
  return v_count;
end;
$$;
grant execute on function herald_hidden.snapshot_segment_audience(uuid) to :DATABASE_WORKER;

-- Once fan-out is over (done or canceled), the snapshot has served: every
-- member has a delivery, or none will. Returns how many rows went.
create or replace function herald_hidden.forget_segment_audience(message_id uuid) returns integer
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_count integer;
begin
  delete from herald_hidden.message_segment_members sm
   using herald_public.messages m
   where m.tenant_id = herald_public.current_tenant_id() and m.id = forget_segment_audience.message_id
     and m.status in ('fanned_out', 'canceled')
     and sm.tenant_id = m.tenant_id and sm.message_id = m.id;
  get diagnostics v_count = row_count;
  return v_count;
end;
$$;
grant execute on function herald_hidden.forget_segment_audience(uuid) to :DATABASE_WORKER;

-- Fan-out as in 000009, reading the snapshot as one more source, pacing a
-- Messaging Service's pool at the service's rate, and taking every contact of
-- `allContacts` for a transactional message.
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
  -- A Twilio Messaging Service (the message's, or the tenant's default) paces
  -- its whole pool as one sender, as src/services/route.ts sends through it.
  if v_message.channel = 'sms' and v_message.metadata ->> 'from' is null then
    select s.service_sid, s.messages_per_second into v_sender, v_sender_mps
      from herald_public.messaging_services s
     where s.tenant_id = v_tenant
       and case when v_message.metadata ? 'messaging_service'
                then s.service_sid = v_message.metadata ->> 'messaging_service' else s.is_default end;
  end if;
  if v_message.channel <> 'email' and v_sender is null then
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
          -- Transactional messages reach the unsubscribed too: the claim decides
          -- (a STOP still stops a text; a marketing unsubscribe does not stop a receipt).
          and (v_message.purpose = 'transactional'
               or case v_message.channel when 'sms' then c.sms_subscribed
                                         when 'whatsapp' then c.whatsapp_subscribed
                                         else c.email_subscribed end)
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
      union
      -- Segments: the members snapshotted when fan-out started (190-segments.sql).
      (select sm.contact_id from herald_hidden.message_segment_members sm
        where pg_catalog.cardinality(v_message.segment_ids) > 0
          and sm.tenant_id = v_tenant and sm.message_id = v_message.id and sm.contact_id > v_cursor
        order by sm.contact_id
        limit batch_size)
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

--! split: 210-send-to-address.sql
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

--! split: 215-transactional-pacing.sql
-- Transactional messages (codes, receipts, reminders the contact asked for)
-- are paced ahead of marketing traffic on the same sender.
--
-- Two places decide when a text goes. Fan-out plans each delivery's run_at
-- at the tenant's and the sender's pace (plan_send_slots, herald_hidden.send_plans),
-- after everything planned before it; the claim then reserves the actual
-- slot (herald_private.reserve_send_slots, at most a second ahead). A
-- transactional message planned after a queued broadcast would wait for the
-- whole broadcast. So transactional fan-outs are planned on plans of their
-- own (scopes prefixed `transactional:`), starting now, and their jobs run at
-- a higher graphile-worker priority: the delivery reaches the claim at once and
-- takes the next free slot, before the marketing deliveries still queued
-- (the marketing deliveries whose slot it took wait one step more). The
-- claim's gate still holds both to the tenant's and the number's rate.
--
-- The fan-out (src/messages/fan-out.ts) says which kind of message it is
-- planning in the transaction-local setting `herald.fan_out_purpose`.

create or replace function herald_hidden.plan_send_slots(count integer, not_before timestamptz, sender text, sender_mps numeric,
  out first_at timestamptz, out step interval)
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_tenant uuid := herald_public.current_tenant_id();
  v_prefix text := case when pg_catalog.current_setting('herald.fan_out_purpose', true) = 'transactional'
                        then 'transactional:' else '' end;
  v_scopes text[] := array[v_prefix || 'tenant'] || case when sender is not null then array[v_prefix || 'sender:' || sender] else '{}' end;
begin
  select make_interval(secs => s.rate_batch_interval_seconds::double precision / s.rate_batch_size) into step
    from herald_public.tenant_settings s where s.tenant_id = v_tenant;
  if step is null then
    raise exception 'no tenant in this session' using errcode = 'NOTNT';
  end if;
  if sender is not null then
    step := greatest(step, make_interval(secs => 1 / sender_mps::double precision));
  end if;
  insert into herald_hidden.send_plans (tenant_id, scope, next_at)
  select v_tenant, x, '-infinity' from pg_catalog.unnest(v_scopes) x
  on conflict do nothing;
  -- Locked in scope order, the same in every call: two fan-outs never deadlock.
  select greatest(max(p.next_at), not_before, now()) into first_at
    from (select p.next_at from herald_hidden.send_plans p
           where p.tenant_id = v_tenant and p.scope = any (v_scopes)
           order by p.scope for update) p;
  update herald_hidden.send_plans p set next_at = first_at + step * count
   where p.tenant_id = v_tenant and p.scope = any (v_scopes);
end;
$$;
grant execute on function herald_hidden.plan_send_slots(integer, timestamptz, text, numeric) to :DATABASE_WORKER;

-- As in 000009, with the job's priority: a transactional fan-out's runs go
-- before every run on time (graphile-worker runs lower priorities first;
-- src/messages/fairness.ts moves lagging broadcast runs from 0 to 10).
create or replace function herald_private.tg_deliveries__enqueue() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
declare
  v_priority integer := case when pg_catalog.current_setting('herald.fan_out_purpose', true) = 'transactional'
                             then -5 else 0 end;
begin
  perform graphile_worker.add_jobs(array(
    select pg_catalog.json_populate_record(null::graphile_worker.job_spec, pg_catalog.json_build_object(
             'identifier', 'delivery__send',
             'payload', pg_catalog.json_build_object('tenant_id', c.tenant_id, 'ids', c.ids),
             'run_at', c.run_at,
             'priority', v_priority,
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

--! split: 220-consent-sources.sql
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
