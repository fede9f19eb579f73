--
-- Inbound messages received in sets.
--
-- The webhook groups the messages of one tenant that arrive together
-- (src/webhooks/inbound-batches.ts). receive_inbound_batch used to receive
-- them one by one, each in a subtransaction running receive_inbound's ten or
-- so statements: PostgreSQL spent most of a message's time starting up
-- executors. Now a batch costs the same few statements whatever its size:
-- one that finds unknown senders (and, if there are any, one INSERT of their
-- contacts); one that stores every message (one INSERT); the answers; and,
-- only when the batch holds keywords, the tenant's replies and one statement
-- each for consent events, flags and suppressions, applied as sets.
--
-- Same rules as receive_inbound, which stays for single messages. Within one
-- batch, a contact's keywords take effect in the order received (the last
-- STOP or START of a channel sets its flag; of a phone, whether its opt-out
-- suppression stays); whether YES is an answer rather than an opt-in is
-- judged on the contact as it was before the batch. A statement that fails
-- fails the batch, and the webhook receives its messages again one at a time,
-- so that one bad message takes no other with it.
--
-- Idempotent: graphile-migrate re-runs it in watch mode.

create or replace function herald_hidden.receive_inbound_batch(messages jsonb)
  returns table (ordinal integer, inbound_message_id uuid, contact_id uuid, duplicate boolean, keyword text, reply text, error_code text)
  language plpgsql volatile
  set search_path = ''
  -- Its statements' plans depend on no argument's value: planned once per session, not five times first.
  set plan_cache_mode = force_generic_plan
as $$
declare
  v_tenant uuid := herald_public.current_tenant_id();
  v_key_version smallint := herald_hidden.current_data_key_version();
  v_key text := herald_hidden.data_key(v_key_version);
  v_hash_version smallint := herald_hidden.current_hash_key_version();
  v_replies herald_public.keyword_replies;
  v_inserted uuid[];
  v_unknown jsonb;
  v_keywords jsonb;
  v_phones jsonb;
begin
  if pg_catalog.jsonb_array_length(messages) > 500 then
    raise exception 'at most 500 messages in one batch' using errcode = '22023';
  end if;

  if exists (select 1 from pg_catalog.jsonb_array_elements(messages) m where m ->> 'keyword' is not null) then
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
  end if;

  -- Unknown senders become contacts, flagged as created by their message (a
  -- message already received, or to a number not the tenant's, creates none).
  -- Two batches creating one at once: one insert wins, the other finds it below.
  -- (Only when there is one: the contacts' audit trigger runs for every INSERT statement.)
  -- (Materialized, with the hashes computed once: inlined, the hash would be
  -- an expression of the outer row, and each contact hashed to compare.)
  with candidates as materialized (
    select distinct on (m.from_phone) m.from_phone, m.channel, herald_hidden.pii_hashes('phone', m.from_phone) as hashes
      from rows from (pg_catalog.jsonb_to_recordset(messages) as (channel text, to_number text, from_phone text, provider_message_id text)) with ordinality as m(channel, to_number, from_phone, provider_message_id, n)
     where m.from_phone is not null
       and exists (select 1 from herald_public.sender_numbers s
                    where s.tenant_id = v_tenant and s.phone_number = m.to_number and s.channel = m.channel)
       and not exists (select 1 from herald_public.inbound_messages i
                        where i.tenant_id = v_tenant and i.provider_message_id = m.provider_message_id)
     order by m.from_phone, m.n
  )
  select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('from_phone', c.from_phone, 'channel', c.channel)) into v_unknown
    from candidates c
   where not exists (select 1 from herald_public.contacts x
                      where x.tenant_id = v_tenant and x.phone_hash = any (c.hashes));
  if v_unknown is not null then
    insert into herald_public.contacts (phone_encrypted, phone_hash, key_version, hash_version, created_by_inbound, whatsapp_subscribed)
    select herald_hidden.encrypt_pii(p.from_phone, v_key), herald_hidden.pii_hash('phone', p.from_phone, v_hash_version),
           v_key_version, v_hash_version, true,
           -- Someone who writes on WhatsApp has opened that conversation.
           p.channel = 'whatsapp'
      from pg_catalog.jsonb_to_recordset(v_unknown) as p(from_phone text, channel text)
    on conflict (tenant_id, phone_hash) do nothing;
  end if;

  with m as (
    select m.*
      from rows from (pg_catalog.jsonb_to_recordset(messages) as (channel text, to_number text, from_phone text, body text, provider_message_id text, media_count integer, keyword text, keyword_word text)) with ordinality as m(channel, to_number, from_phone, body, provider_message_id, media_count, keyword, keyword_word, n)
  ),
  fresh as materialized (
    -- (Materialized: the hashes are values the contact and suppression indexes are probed with.)
    -- To one of the tenant's numbers, not received before, the first of its MessageSid in the batch.
    select m.*, s.id as sender_number_id, s.provider_account_id,
           case when m.from_phone is not null then herald_hidden.pii_hashes('phone', m.from_phone) end as hashes
      from m
      join herald_public.sender_numbers s on s.tenant_id = v_tenant and s.phone_number = m.to_number and s.channel = m.channel
     where not exists (select 1 from herald_public.inbound_messages i
                        where i.tenant_id = v_tenant and i.provider_message_id = m.provider_message_id)
       and m.n = (select pg_catalog.min(o.n) from m o where o.provider_message_id = m.provider_message_id)
  ),
  senders as (
    select f.*, c.id as contact, c.subscribed
      from fresh f
      left join lateral (
        select c.id, case f.channel when 'sms' then c.sms_subscribed else c.whatsapp_subscribed end as subscribed
          from herald_public.contacts c
         where c.tenant_id = v_tenant and c.phone_hash = any (f.hashes)
         limit 1
      ) c on true
  ),
  decided as (
    select s.*,
           case
             -- Keywords need someone to apply to.
             when s.contact is null then null
             -- "YES" answers questions ("Reply YES to confirm"): from a contact
             -- who is subscribed and not suppressed it is an ordinary message.
             when s.keyword = 'start' and s.keyword_word = 'YES' and s.subscribed
                  and not exists (select 1 from herald_public.suppressions x
                                   where x.tenant_id = v_tenant and x.kind = 'phone' and x.address_hash = any (s.hashes))
               then null
             else s.keyword
           end as applied_keyword
      from senders s
  ),
  stored as (
    insert into herald_public.inbound_messages (channel, sender_number_id, to_number, contact_id, from_encrypted, body_encrypted,
                                                key_version, media_count, keyword, auto_reply, provider_message_id, provider_account_id, account)
    select d.channel, d.sender_number_id, d.to_number, d.contact,
           herald_hidden.encrypt_pii(coalesce(d.from_phone, '(unknown)'), v_key), herald_hidden.encrypt_pii(coalesce(d.body, ''), v_key),
           v_key_version, coalesce(d.media_count, 0), d.applied_keyword,
           case d.applied_keyword when 'stop' then v_replies.stop when 'start' then v_replies.start when 'help' then v_replies.help end,
           d.provider_message_id, d.provider_account_id,
           case when d.provider_account_id is null then 'system' else 'tenant' end
      from decided d
     order by d.n
    -- The same message in a concurrent batch: the other one received it.
    on conflict on constraint inbound_messages_provider_message_unique do nothing
    returning id, provider_message_id
  ),
  keywords as (
    -- The keywords of the messages stored now, in the order received.
    select d.n, d.contact, d.channel, d.from_phone, d.applied_keyword, d.keyword_word, s.id as inbound_id
      from decided d join stored s on s.provider_message_id = d.provider_message_id
     where d.applied_keyword is not null
  ),
  keyword_rows as (
    select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
             'n', k.n, 'contact', k.contact, 'channel', k.channel, 'from_phone', k.from_phone,
             'applied_keyword', k.applied_keyword, 'keyword_word', k.keyword_word, 'inbound_id', k.inbound_id)) as rows
      from keywords k
  )
  select (select pg_catalog.array_agg(s.id) from stored s), (select r.rows from keyword_rows r) into v_inserted, v_keywords;

  -- The keywords, as sets (each statement only when there is something for it:
  -- the audit triggers of contacts and suppressions run for every statement).
  if v_keywords is not null then
    insert into herald_public.consent_events (contact_id, channel, action, source, detail, inbound_message_id)
    select k.contact, k.channel,
           case k.applied_keyword when 'stop' then 'opt_out' when 'start' then 'opt_in' else 'help' end,
           'keyword', pg_catalog.left(k.keyword_word, 100), k.inbound_id
      from pg_catalog.jsonb_to_recordset(v_keywords) as k(n bigint, contact uuid, channel text, applied_keyword text, keyword_word text, inbound_id uuid)
     order by k.n;

  end if;
  if v_keywords is not null and pg_catalog.jsonb_path_exists(v_keywords, '$[*] ? (@.applied_keyword == "stop" || @.applied_keyword == "start")') then
    -- The channel's flag covers every number of the tenant: the last STOP or START of each contact and channel sets it.
    with flags as (
      select distinct on (k.contact, k.channel) k.contact, k.channel, k.applied_keyword = 'start' as subscribed
        from pg_catalog.jsonb_to_recordset(v_keywords) as k(n bigint, contact uuid, channel text, applied_keyword text)
       where k.applied_keyword in ('stop', 'start')
       order by k.contact, k.channel, k.n desc
    )
    update herald_public.contacts c
       set sms_subscribed = coalesce((select f.subscribed from flags f where f.contact = c.id and f.channel = 'sms'), c.sms_subscribed),
           whatsapp_subscribed = coalesce((select f.subscribed from flags f where f.contact = c.id and f.channel = 'whatsapp'), c.whatsapp_subscribed)
     where c.tenant_id = v_tenant and c.id in (select f.contact from flags f);

    -- An SMS STOP also suppresses the phone (it outlives the contact and
    -- blocks WhatsApp too); a START (either channel) lifts what the contact's
    -- own opt-outs put there. The last of them for each phone decides.
    select pg_catalog.jsonb_agg(pg_catalog.to_jsonb(p)) into v_phones
      from (select distinct on (k.contact) k.from_phone, k.keyword_word, k.applied_keyword = 'stop' as suppress
              from pg_catalog.jsonb_to_recordset(v_keywords) as k(n bigint, contact uuid, channel text, from_phone text, applied_keyword text, keyword_word text)
             where (k.applied_keyword = 'stop' and k.channel = 'sms') or k.applied_keyword = 'start'
             order by k.contact, k.n desc) p;
    if exists (select 1 from pg_catalog.jsonb_to_recordset(v_phones) as p(suppress boolean) where p.suppress) then
      insert into herald_public.suppressions (kind, address_encrypted, address_hash, key_version, hash_version, reason, note)
      select 'phone', herald_hidden.encrypt_pii(p.from_phone, v_key), herald_hidden.pii_hash('phone', p.from_phone, v_hash_version),
             v_key_version, v_hash_version, 'unsubscribe', 'keyword: ' || p.keyword_word
        from pg_catalog.jsonb_to_recordset(v_phones) as p(from_phone text, keyword_word text, suppress boolean)
       where p.suppress
      on conflict (tenant_id, kind, address_hash) do nothing;
    end if;
    if exists (select 1 from pg_catalog.jsonb_to_recordset(v_phones) as p(suppress boolean) where not p.suppress) then
      delete from herald_public.suppressions x
       using pg_catalog.jsonb_to_recordset(v_phones) as p(from_phone text, suppress boolean)
       where not p.suppress and x.tenant_id = v_tenant and x.kind = 'phone'
         and x.address_hash = any (herald_hidden.pii_hashes('phone', p.from_phone)) and x.reason in ('unsubscribe', 'carrier_opt_out');
    end if;
  end if;

  -- The answers, from what is stored now (a fresh snapshot: a concurrent
  -- batch's copy of a message is visible here). Ordinals from 0, as given.
  return query
  select (m.n - 1)::integer, i.id, i.contact_id,
         case when i.id is null then null else not (i.id = any (coalesce(v_inserted, '{}'))
              and m.n = (select pg_catalog.min(o.n) from rows from (pg_catalog.jsonb_to_recordset(messages) as (provider_message_id text)) with ordinality as o(provider_message_id, n)
                          where o.provider_message_id = m.provider_message_id)) end,
         i.keyword, i.auto_reply,
         case when s.id is null then 'NTFND' end
    from rows from (pg_catalog.jsonb_to_recordset(messages) as (channel text, to_number text, provider_message_id text)) with ordinality as m(channel, to_number, provider_message_id, n)
    left join herald_public.sender_numbers s on s.tenant_id = v_tenant and s.phone_number = m.to_number and s.channel = m.channel
    left join herald_public.inbound_messages i on s.id is not null and i.tenant_id = v_tenant and i.provider_message_id = m.provider_message_id
   order by m.n;
end;
$$;
comment on function herald_hidden.receive_inbound_batch(jsonb) is
  E'Stores a batch of inbound messages for the session''s tenant (one INSERT), applies their keywords as sets, and returns each one''s reply (or NTFND when its number is not the tenant''s).';
grant execute on function herald_hidden.receive_inbound_batch(jsonb) to :DATABASE_WORKER;
