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
