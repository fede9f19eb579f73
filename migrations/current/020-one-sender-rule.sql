-- One rule for whose sender a send may use, in one function that every path
-- calls: send_message and reply_to_contact here (the GraphQL path), and the
-- worker before any provider is called (assertOwnSender in
-- src/providers/routing.ts). A number must be one of the tenant's sender numbers for
-- the channel (registered on its own account, or assigned by an operator);
-- an address must be on one of the tenant's verified email domains. The
-- system's sender (HERALD_SMS_FROM / HERALD_EMAIL_FROM) is known only to the
-- process, which passes it as `system_sender`; the API passes none, so a
-- tenant cannot ask for the system's sender by name.
--
-- The refusal raises SQLSTATE NOSND, which the API reports as NOT_OWN_SENDER
-- (src/api/errors.ts) and the worker as a SendError of the same code and text.
--
-- Idempotent: re-applied on every `db watch` save.

-- The refusal's text (null: the sender may be used). Security invoker: the
-- caller's row-level security decides what "this tenant's" means.
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
                    and n.channel = sender_refusal.channel)
      then null
    else pg_catalog.format('%s is not one of this tenant''s %s sender numbers', sender_refusal.sender, sender_refusal.channel)
  end;
$$;
comment on function herald_hidden.sender_refusal(text, text, text) is
  E'Why `sender` may not send for the session''s tenant on `channel` (null: it may). The one sender-ownership rule.';
grant execute on function herald_hidden.sender_refusal(text, text, text) to :DATABASE_MEMBER, :DATABASE_WORKER;

-- send_message as in 000006, its `from` check now the shared rule.
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
  metadata jsonb default null
) returns herald_public.messages
  language plpgsql volatile
  set search_path = ''
as $$
#variable_conflict use_column
declare
  v_contact_ids uuid[] := array(select distinct x from pg_catalog.unnest(coalesce(contact_ids, '{}')) x);
  v_list_ids uuid[] := array(select distinct x from pg_catalog.unnest(coalesce(list_ids, '{}')) x);
  v_tag_ids uuid[] := array(select distinct x from pg_catalog.unnest(coalesce(tag_ids, '{}')) x);
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

  -- The same key again is the same request: return the original, send nothing.
  -- A different request under a used key is a client bug worth hearing about.
  v_fingerprint := pg_catalog.md5(pg_catalog.jsonb_build_array(channel, template_id, body, subject, html_body,
    v_contact_ids, v_list_ids, v_tag_ids, coalesce(all_contacts, false), scheduled_at, v_metadata)::text);
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
    if body is null or pg_catalog.btrim(body) = '' then
      raise exception 'body is required (or give templateId)' using errcode = '22023', column = 'body';
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
  if pg_catalog.cardinality(v_contact_ids) + pg_catalog.cardinality(v_list_ids) + pg_catalog.cardinality(v_tag_ids) = 0
     and not coalesce(all_contacts, false) then
    raise exception 'no audience: give contactIds, listIds, tagIds or allContacts' using errcode = '22023', column = 'contactIds';
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

  -- A `from` override must be one of the tenant's own senders (the shared rule).
  v_refusal := herald_hidden.sender_refusal(send_message.channel, v_from);
  if v_refusal is not null then
    raise exception '%', v_refusal using errcode = 'NOSND', column = 'metadata';
  end if;

  if scheduled_at is not null and scheduled_at > now() + interval '1 year' then
    raise exception 'scheduledAt is more than a year ahead' using errcode = '22023', column = 'scheduledAt';
  end if;

  insert into herald_public.messages (channel, template_id, body, subject, html_body, contact_ids, list_ids, tag_ids,
                                      all_contacts, scheduled_at, idempotency_key, request_fingerprint, metadata, created_by)
  values (channel, template_id, body, subject, html_body, v_contact_ids, v_list_ids, v_tag_ids,
          coalesce(all_contacts, false), scheduled_at, idempotency_key, v_fingerprint, v_metadata,
          herald_public.current_user_id())
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
comment on function herald_public.send_message(text, uuid, text, text, text, uuid[], uuid[], uuid[], boolean, timestamptz, text, jsonb) is
  E'@resultFieldName message\nSend a message (template or inline) to contacts, lists, tags, or every subscribed contact; now or at `scheduledAt`. '
  'The same `idempotencyKey` again returns the original message and sends nothing new. `metadata.from` picks one of your senders.';
grant execute on function herald_public.send_message(text, uuid, text, text, text, uuid[], uuid[], uuid[], boolean, timestamptz, text, jsonb)
  to :DATABASE_MEMBER;


-- reply_to_contact as in 000007, replying from the number written to only when the shared rule allows it.
create or replace function herald_public.reply_to_contact(contact_id uuid, body text, channel text default 'sms', idempotency_key text default null)
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
    if herald_hidden.sender_refusal(v_channel, v_last.to_number) is null then
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
