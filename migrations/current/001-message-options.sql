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
