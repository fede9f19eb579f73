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
