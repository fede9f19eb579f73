--! Previous: sha1:08d6aeedc08a2782c595f8e9a0c7e1ce1dbcb75b
--! Hash: sha1:76a52585018527393e8d803781fb2dfcdd162e13
--! Message: Delivery lifecycle, one sender rule and template grammar, cheaper audit and upserts, self-service, cancel stats

--! split: 010-delivery-lifecycle.sql
-- current/010-delivery-lifecycle.sql: a delivery's life in one place.
--
-- Why a queued delivery waits is a constrained `hold_reason` (not the free
-- text `reason`, which stays a detail for people); which status may follow
-- which is one function, `herald_hidden.delivery_transition_allowed`, that a
-- BEFORE UPDATE trigger enforces for every role, the owner included; "final"
-- is one function, `herald_hidden.delivery_is_final`; and a change of a
-- tenant's send window, time zone or cap re-plans what those held back.

-------------------------------------------------------------------------------
-- The statuses, named once
-------------------------------------------------------------------------------

-- Final: nothing will change the status any more (a provider's answer that
-- arrives after a callback leaves it as it is). No search_path of its own, so
-- that it is inlined into the statements that call it per row.
create or replace function herald_hidden.delivery_is_final(status text) returns boolean
  language sql immutable parallel safe
as $$
  select status in ('delivered', 'undelivered', 'failed', 'skipped', 'canceled');
$$;
grant execute on function herald_hidden.delivery_is_final(text) to :DATABASE_WORKER;

-- Every move a delivery may make (staying put is always allowed):
--   queued  → sending (claimed), skipped | canceled | failed (ended before any
--             provider call), sent | delivered | undelivered | failed (a
--             provider's report for one queued again after an uncertain send)
--   sending → queued (not sent: paced, retried, reconciled absent), unknown
--             (the answer was lost, or the worker stopped), sent, or a final
--             status a callback set before the answer came
--   unknown → queued (looked up, not found), sent, delivered | undelivered | failed
--   sent    → delivered | undelivered | failed
-- Nothing leaves delivered, undelivered, failed, skipped or canceled.
create or replace function herald_hidden.delivery_transition_allowed(from_status text, to_status text) returns boolean
  language sql immutable parallel safe
as $$
  select from_status = to_status or coalesce(case from_status
    when 'queued' then to_status in ('sending', 'skipped', 'canceled', 'failed', 'sent', 'delivered', 'undelivered')
    when 'sending' then to_status in ('queued', 'unknown', 'sent', 'delivered', 'undelivered', 'failed')
    when 'unknown' then to_status in ('queued', 'sent', 'delivered', 'undelivered', 'failed')
    when 'sent' then to_status in ('delivered', 'undelivered', 'failed')
    else false end, false);
$$;
grant execute on function herald_hidden.delivery_transition_allowed(text, text) to :DATABASE_WORKER;

-------------------------------------------------------------------------------
-- Why a queued delivery waits
-------------------------------------------------------------------------------

alter table herald_public.deliveries add column if not exists hold_reason text;
alter table herald_public.deliveries drop constraint if exists deliveries_hold_reason;
-- quiet_hours: outside the send window; monthly_cap: the month's cap is
-- reached; tenant_suspended: an operator suspended the tenant; retry: a
-- provider refused it for now (backoff), or a lookup found it never sent.
-- (A merely paced delivery has none; one whose send is in doubt is `unknown`,
-- not queued.)
alter table herald_public.deliveries add constraint deliveries_hold_reason
  check (hold_reason in ('quiet_hours', 'monthly_cap', 'tenant_suspended', 'retry'));
alter table herald_public.deliveries drop constraint if exists deliveries_hold_reason_queued;
alter table herald_public.deliveries add constraint deliveries_hold_reason_queued
  check (hold_reason is null or status = 'queued');
comment on column herald_public.deliveries.hold_reason is
  E'Why a queued delivery waits: `quiet_hours`, `monthly_cap`, `tenant_suspended` or `retry` (null: it is not held, or merely paced).';
comment on column herald_public.deliveries.reason is
  E'Why it was skipped or failed, or a detail for people on why it waits (`holdReason` is the kind of hold).';
grant update (hold_reason) on herald_public.deliveries to :DATABASE_WORKER;

-- Held rows written before the column: their kind was the reason's text.
-- Forced RLS shows the owner no tenant rows; lifted for this one statement,
-- inside the migration's transaction.
alter table herald_public.deliveries no force row level security;
update herald_public.deliveries
   set hold_reason = case
         when reason in ('quiet_hours', 'monthly_cap', 'tenant_suspended') then reason
         when reason like 'retrying: %' or reason = 'reconciled: not accepted, sending again' then 'retry'
       end
 where status = 'queued' and hold_reason is null and reason is not null;
alter table herald_public.deliveries force row level security;

-------------------------------------------------------------------------------
-- The guard: only allowed moves, for every role
-------------------------------------------------------------------------------

-- Not a definer: it reads nothing, and runs as whoever updates. A delivery
-- leaving `queued` no longer waits for anything, so its hold_reason goes.
create or replace function herald_private.tg_deliveries__guard_transition() returns trigger
  language plpgsql
  set search_path = ''
as $$
begin
  if not herald_hidden.delivery_transition_allowed(old.status, new.status) then
    raise exception 'delivery % cannot move from % to %', old.id, old.status, new.status
      using errcode = 'DLVST',
            hint = 'allowed moves: herald_hidden.delivery_transition_allowed (docs/sending.md)';
  end if;
  if new.status <> 'queued' then
    new.hold_reason := null;
  end if;
  return new;
end;
$$;
drop trigger if exists _010_guard_transition on herald_public.deliveries;
-- Before every other trigger (name order), and only when the status changes.
create trigger _010_guard_transition before update of status on herald_public.deliveries
  for each row when (old.status is distinct from new.status)
  execute function herald_private.tg_deliveries__guard_transition();

-------------------------------------------------------------------------------
-- Held deliveries re-planned when what held them changes
-------------------------------------------------------------------------------

-- A wider (or narrower) send window, another time zone, a raised or removed
-- cap: tenant__release_held makes the deliveries held for quiet hours or the
-- cap due now, and each is decided again by its send job — sent if it may go,
-- else held until the new opening. (Resuming a suspended tenant does the same
-- for tenant_suspended: 000008.)
drop trigger if exists _500_release_held on herald_public.tenant_settings;
create trigger _500_release_held
  after update of monthly_message_cap, send_window_start, send_window_end, timezone on herald_public.tenant_settings
  for each row
  when (old.send_window_start is distinct from new.send_window_start
        or old.send_window_end is distinct from new.send_window_end
        or old.timezone is distinct from new.timezone
        or (new.monthly_message_cap is null and old.monthly_message_cap is not null)
        or new.monthly_message_cap > coalesce(old.monthly_message_cap, 0))
  execute function herald_private.tg__release_held('tenant_id');

--! split: 011-webhook-holds.sql
-- current/011-webhook-holds.sql: an event held for a tenant's endpoint says
-- so in a constrained column, as a held delivery does (010), instead of a
-- marker string in last_error that the release had to match.

alter table herald_public.webhook_deliveries add column if not exists hold_reason text;
alter table herald_public.webhook_deliveries drop constraint if exists webhook_deliveries_hold_reason;
-- tenant_suspended: an operator suspended the tenant; posted once it is resumed.
alter table herald_public.webhook_deliveries add constraint webhook_deliveries_hold_reason
  check (hold_reason in ('tenant_suspended'));
alter table herald_public.webhook_deliveries drop constraint if exists webhook_deliveries_hold_reason_pending;
alter table herald_public.webhook_deliveries add constraint webhook_deliveries_hold_reason_pending
  check (hold_reason is null or status = 'pending');
comment on column herald_public.webhook_deliveries.hold_reason is
  E'Why a pending event is not being posted: `tenant_suspended` (posted once the tenant is resumed); null otherwise.';
grant update (hold_reason) on herald_public.webhook_deliveries to :DATABASE_WORKER;

-- Events held before the column: the marker the worker wrote. Forced RLS shows
-- the owner no tenant rows; lifted for this one statement, inside the
-- migration's transaction.
alter table herald_public.webhook_deliveries no force row level security;
update herald_public.webhook_deliveries
   set hold_reason = 'tenant_suspended'
 where status = 'pending' and hold_reason is null and last_error = 'held: the tenant is suspended';
alter table herald_public.webhook_deliveries force row level security;

--! split: 020-one-sender-rule.sql
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

--! split: 021-template-grammar.sql
-- The template grammar, stated once for both of its parsers: this function
-- (which decides, when a template or an inline message is saved, whether a
-- text is valid and which variables it uses) and src/messages/render.ts
-- (which fills them in for each contact). test/template-grammar.test.ts runs
-- one table of cases, test/fixtures/template-grammar.json, against both.
--
--   text      := (literal | "{{" variable "}}")*    no other "{{" or "}}"
--   variable  := space* name space* ("|" default)?
--   name      := first_name | last_name | phone | email | external_id
--              | "attributes." [A-Za-z_][A-Za-z0-9_]*
--   default   := any characters but "{", "}" and "|"
--   space     := " " | tab | CR | LF
--
-- A "{{" pairs with the first "}}" after it. What changed from 000006:
-- "space" was `\s`, whose meaning follows the database's locale (a no-break
-- space counted under some, not others) where JavaScript's `\s` always
-- counts it; and the recorded name was trimmed of spaces only, so
-- "{{<tab>first_name}}" recorded "<tab>first_name".
--
-- Idempotent: re-applied on every `db watch` save.

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
    if v_token !~ '^[ \t\r\n]*(first_name|last_name|phone|email|external_id|attributes\.[A-Za-z_][A-Za-z0-9_]*)[ \t\r\n]*(\|[^{}|]*)?$' then
      raise exception 'Unknown template variable "{{%}}" in %: use first_name, last_name, phone, email, external_id or attributes.<name>, optionally with |default', v_token, field
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

--! split: 050-cancel-stats-and-usage-wording.sql
-- cancelMessage returns the message as it is after the cancel, and usage says what the cap counts.
--
-- A canceled message's queued deliveries will never be sent: the send path finishes each one
-- `canceled` when it comes to it, and the message__cancel job marks them all a moment after the
-- cancel commits. Until then they are still `queued` in the table, so the stats and reasons read
-- in the same transaction as the cancel (cancelMessage's own payload) showed the state before it.
-- They count as canceled now, as they will be.

create or replace function herald_public.messages_stats(message herald_public.messages)
returns herald_public.message_stats
language sql stable parallel safe
set search_path = ''
as $$
  select count(*)::integer,
         count(*) filter (where s.status = 'queued')::integer,
         count(*) filter (where s.status = 'sending')::integer,
         count(*) filter (where s.status = 'sent')::integer,
         count(*) filter (where s.status = 'delivered')::integer,
         count(*) filter (where s.status = 'failed')::integer,
         count(*) filter (where s.status = 'undelivered')::integer,
         count(*) filter (where s.status = 'skipped')::integer,
         count(*) filter (where s.status = 'canceled')::integer,
         count(*) filter (where s.status = 'unknown')::integer,
         count(*) filter (where s.status = 'queued' and s.reason is not null)::integer
    from (
      select case when d.status = 'queued' and message.status = 'canceled' then 'canceled' else d.status end as status,
             d.reason
        from herald_public.deliveries d
       where d.tenant_id = message.tenant_id and d.message_id = message.id
    ) s;
$$;
comment on function herald_public.messages_stats(herald_public.messages) is
  E'Deliveries by status. Once the message is canceled, deliveries still queued count as canceled: none of them will be sent.';

create or replace function herald_public.messages_reasons(message herald_public.messages)
returns setof herald_public.message_reason_count
language sql stable parallel safe
set search_path = ''
as $$
  select s.status, s.reason, count(*)::integer
    from (
      select case when d.status = 'queued' and message.status = 'canceled' then 'canceled' else d.status end as status,
             case when d.status = 'queued' and message.status = 'canceled' then 'message canceled' else d.reason end as reason
        from herald_public.deliveries d
       where d.tenant_id = message.tenant_id and d.message_id = message.id
    ) s
   where s.reason is not null
   group by s.status, s.reason
   order by s.status, s.reason;
$$;
comment on function herald_public.messages_reasons(herald_public.messages) is
  E'Why deliveries were skipped, failed or canceled, or why queued ones wait: counts by status and reason.';

comment on function herald_public.cancel_message(uuid) is E'@resultFieldName message\n'
  'Stop a message: every delivery not yet handed to a provider is canceled (scheduled ones never start). '
  'The message returned is the state after the cancel: its `stats` already count those deliveries as canceled; '
  'deliveries already handed to a provider finish as they will.';

comment on function herald_public.tenants_usage_this_month(herald_public.tenants) is
  E'Month to date: deliveries handed to a provider (what the monthly cap counts; `messages` counts these deliveries, not send requests), the monthly cap and what remains of it.';

--! split: 060-audit-without-jsonb.sql
-- The audit trigger (000008's herald_private.tg__audit), cheaper per row:
-- same triggers, arguments and log rows.
--
-- It used to find an insert's set columns, and an update's changed ones, by
-- turning each row into jsonb (to_jsonb(r), then jsonb_each) — for a contact,
-- hex-encoding both encrypted fields and rebuilding its attributes — which was
-- about a quarter of the database's CPU time in a CSV import. Now it reads the
-- table's columns from the catalog once per statement and writes one plain
-- expression per column (`r.col is not null`, `r.col is distinct from o.col`),
-- so the per-row work is a null test or a comparison per column.
--
-- Comparisons keep jsonb's meaning: a column whose type's own equality is not
-- byte-for-byte (citext: 'VIP' = 'vip') is compared as text, so changing only
-- the case of a tag's name is still a change. A jsonb null counts as unset on
-- insert, as it did.
--
-- Idempotent: create or replace (the triggers keep pointing at it).

create or replace function herald_private.tg__audit() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
declare
  v_keys text[] := pg_catalog.string_to_array(tg_argv[0], ',');
  v_ignored text[] := coalesce(pg_catalog.string_to_array(nullif(tg_argv[1], ''), ','), '{}') || array['created_at', 'updated_at'];
  v_tenant text := case when tg_table_name = 'tenants' then 'id' else 'tenant_id' end;
  v_actor record;
  v_record_id text;
  v_columns text;
  v_join text;
begin
  select * into v_actor from herald_private.audit_actor();
  v_record_id := pg_catalog.array_to_string(array(select pg_catalog.format('(r.%I)::text', k) from pg_catalog.unnest(v_keys) k), $s$ || '/' || $s$);
  -- One `case` per audited column, in name order (as the log has always listed
  -- them): the column's name when an insert set it / an update changed it.
  select pg_catalog.string_agg(
           pg_catalog.format('case when %s then %L end',
             case
               when tg_op = 'INSERT' and a.atttypid = 'pg_catalog.jsonb'::pg_catalog.regtype
                 then pg_catalog.format($c$r.%1$I is not null and r.%1$I <> 'null'::jsonb$c$, a.attname)
               when tg_op = 'INSERT' and t.typtype = 'c'
                 then pg_catalog.format('pg_catalog.num_nonnulls(r.%I) > 0', a.attname)
               when tg_op = 'INSERT'
                 then pg_catalog.format('r.%I is not null', a.attname)
               -- Types whose equality is byte-for-byte (or numeric, as jsonb's is): compared as they are.
               when a.atttypid = any ('{bool,int2,int4,int8,numeric,float4,float8,text,varchar,uuid,bytea,jsonb,date,time,timestamp,timestamptz,interval,_text,_uuid,_int2,_int4,_int8}'::pg_catalog.regtype[])
                 then pg_catalog.format('r.%1$I is distinct from o.%1$I', a.attname)
               else pg_catalog.format('r.%1$I::text is distinct from o.%1$I::text', a.attname)
             end,
             a.attname),
           ', ' order by a.attname::text)
    into v_columns
    from pg_catalog.pg_attribute a
    join pg_catalog.pg_type t on t.oid = a.atttypid
   where a.attrelid = tg_relid and a.attnum > 0 and not a.attisdropped
     and a.attname::text <> all (v_ignored);
  v_columns := case when v_columns is null then $e$'{}'::text[]$e$
                    else pg_catalog.format('pg_catalog.array_remove(array[%s]::text[], null)', v_columns) end;

  if tg_op = 'INSERT' then
    -- (The tenant exists: the row's foreign key was checked before this statement trigger runs.)
    execute pg_catalog.format(
      $q$insert into herald_public.audit_log (tenant_id, actor_kind, actor_id, db_user, actor_detail, action, table_name, record_id, changed_columns)
         select r.%1$I, $1, $2, session_user, $3, 'insert', $4, %2$s, %3$s
           from new_rows r$q$,
      v_tenant, v_record_id, v_columns)
    using v_actor.kind, v_actor.actor_id, v_actor.detail, tg_table_name;
  elsif tg_op = 'DELETE' then
    execute pg_catalog.format(
      $q$insert into herald_public.audit_log (tenant_id, actor_kind, actor_id, db_user, actor_detail, action, table_name, record_id, changed_columns)
         select r.%1$I, $1, $2, session_user, $3, 'delete', $4, %2$s, '{}'
           from old_rows r
          -- Deleting a tenant deletes its log with it (and what it owned, by
          -- cascade): nothing is written for a tenant that is gone.
          where exists (select 1 from herald_public.tenants t where t.id = r.%1$I)$q$,
      v_tenant, v_record_id)
    using v_actor.kind, v_actor.actor_id, v_actor.detail, tg_table_name;
  else
    v_join := pg_catalog.array_to_string(array(select pg_catalog.format('o.%1$I = r.%1$I', k) from pg_catalog.unnest(v_keys) k), ' and ');
    execute pg_catalog.format(
      $q$insert into herald_public.audit_log (tenant_id, actor_kind, actor_id, db_user, actor_detail, action, table_name, record_id, changed_columns)
         select c.tenant_id, $1, $2, session_user, $3, 'update', $4, c.record_id, c.changed
           from (select r.%1$I as tenant_id, %2$s as record_id, %3$s as changed
                   from new_rows r join old_rows o on %4$s) c
          where pg_catalog.cardinality(c.changed) > 0$q$,
      v_tenant, v_record_id, v_columns, v_join)
    using v_actor.kind, v_actor.actor_id, v_actor.detail, tg_table_name;
  end if;
  return null;
end;
$$;
comment on function herald_private.tg__audit() is
  E'Writes audit_log rows for a statement: actor, table, row key and changed column names (never values).';

--! split: 061-contacts-upsert-plans.sql
-- Contact upserts keep their index probes whoever the tenant is (replaces
-- 000009's herald_hidden.upsert_contacts: same arguments, results and rows).
--
-- Its statements were planned for the calling tenant's statistics. A tenant
-- that is new since the last ANALYZE — one importing its contacts, typically —
-- is estimated at about one row, and for one row any index that starts with
-- tenant_id looks as good as another: the planner looked each phone and email
-- up by reading all of the tenant's contacts through an unrelated index
-- (filtering on the hash), and joined the batch to them row by row. Each batch
-- then cost time in proportion to the contacts already imported: an import
-- into a new tenant of a database with other tenants grew quadratic (2.2 s for
-- a batch of 1,000 once the tenant had 3,000 contacts, against 0.1 s). Now:
--   - the tenant is compared as `(select v_tenant)`, a value the planner does
--     not see, so it plans for the average tenant (rows / tenants), not for
--     this one's stale estimate — still planned afresh for the first calls of
--     a session, so a table that was nearly empty at the first batch is not
--     scanned whole by the later ones;
--   - each identifier is probed with one equality on its whole unique key
--     (tenant_id, hash), the previous hash version's only while a hash-key
--     rebuild is under way, instead of `hash in (current, previous)`, whose two
--     index searches made a tenant-only scan look cheaper.
--
-- Idempotent: create or replace.

create or replace function herald_hidden.upsert_contacts(contacts jsonb, mode text default 'upsert')
  returns table (ordinal integer, contact_id uuid, action text)
  language plpgsql volatile
  set search_path = ''
as $$
#variable_conflict use_column
declare
  v_tenant uuid := herald_public.current_tenant_id();
  -- The session's keys, read once per call rather than once per row.
  v_key_version smallint := herald_hidden.current_data_key_version();
  v_data_key text := herald_hidden.data_key(v_key_version);
  v_hash_version smallint := herald_hidden.current_hash_key_version();
  v_hash_key bytea := herald_hidden.hash_key(v_hash_version);
  v_previous_hash_version smallint :=
    nullif(pg_catalog.current_setting('herald.hash_key_previous_version', true), '')::smallint;
  v_previous_hash_key bytea := herald_hidden.hash_key(v_previous_hash_version);
begin
  if v_tenant is null then
    raise exception 'No tenant in this session' using errcode = 'NOTNT';
  end if;
  if mode not in ('upsert', 'insert', 'update') then
    raise exception 'mode must be upsert, insert or update' using errcode = '22023';
  end if;
  if jsonb_typeof(contacts) is distinct from 'array' then
    raise exception 'contacts must be a JSON array' using errcode = '22023';
  end if;

  return query
  with input as (
    select (e.ord - 1)::integer as ordinal, e.doc,
           e.doc ->> 'phone' as phone, e.doc ->> 'email' as email, e.doc ->> 'external_id' as external_id,
           (e.doc ->> 'id')::uuid as id
      from jsonb_array_elements(contacts) with ordinality as e(doc, ord)
  ),
  -- MATERIALIZED: computed once per row; inlined, each later reference would
  -- recompute the hashes and index probes.
  hashed as materialized (
    select i.*,
           herald_hidden.keyed_hash('phone', i.phone, v_hash_key) as phone_hash,
           herald_hidden.keyed_hash('email', i.email, v_hash_key) as email_hash,
           herald_hidden.keyed_hash('phone', i.phone, v_previous_hash_key) as phone_hash_previous,
           herald_hidden.keyed_hash('email', i.email, v_previous_hash_key) as email_hash_previous
      from input i
  ),
  owners as materialized (
    -- Who already holds each identifier: one unique-index probe each.
    select h.*,
           case when h.id is not null then
             (select c.id from herald_public.contacts c where c.tenant_id = (select v_tenant) and c.id = h.id) end as id_owner,
           case when h.external_id is not null then
             (select c.id from herald_public.contacts c
               where c.tenant_id = (select v_tenant) and c.external_id = h.external_id) end as external_owner,
           -- One equality probe per hash version, each on the whole unique key.
           coalesce((select c.id from herald_public.contacts c
                      where c.tenant_id = (select v_tenant) and c.phone_hash = h.phone_hash),
                    case when h.phone_hash_previous is not null then
                      (select c.id from herald_public.contacts c
                        where c.tenant_id = (select v_tenant) and c.phone_hash = h.phone_hash_previous) end) as phone_owner,
           coalesce((select c.id from herald_public.contacts c
                      where c.tenant_id = (select v_tenant) and c.email_hash = h.email_hash),
                    case when h.email_hash_previous is not null then
                      (select c.id from herald_public.contacts c
                        where c.tenant_id = (select v_tenant) and c.email_hash = h.email_hash_previous) end) as email_owner
      from hashed h
  ),
  matched as (
    select o.*, coalesce(o.id_owner, o.external_owner, o.phone_owner, o.email_owner) as target_id
      from owners o
  ),
  decided as (
    select m.*,
           case
             -- A later item naming the same contact, or repeating an identifier,
             -- as an earlier one. (least() skips the nulls: an absent identifier
             -- repeats nothing.)
             when m.ordinal > least(
                    case when m.phone_hash is not null then min(m.ordinal) over (partition by m.phone_hash) end,
                    case when m.email_hash is not null then min(m.ordinal) over (partition by m.email_hash) end,
                    case when m.external_id is not null then min(m.ordinal) over (partition by m.external_id) end,
                    case when m.target_id is not null then min(m.ordinal) over (partition by m.target_id) end)
               then 'duplicate'
             -- `update` names its contact by id; another tenant's id is simply not found.
             when mode = 'update' and m.id_owner is null then 'not_found'
             when mode = 'insert' and m.target_id is not null then 'exists'
             -- The identifiers point at two different contacts: merging them is
             -- a decision for a person, not for an import.
             when (m.external_owner is not null and m.external_owner <> m.target_id)
               or (m.phone_owner is not null and m.phone_owner <> m.target_id)
               or (m.email_owner is not null and m.email_owner <> m.target_id)
               then 'conflict'
           end as refusal
      from matched m
  ),
  -- For matched rows: the row as it would be after the upsert. Fields absent
  -- from the input keep their value; present-and-null clears them.
  proposed as (
    select m.ordinal, c.id,
           case when m.doc ? 'first_name' then m.doc ->> 'first_name' else c.first_name end as first_name,
           case when m.doc ? 'last_name' then m.doc ->> 'last_name' else c.last_name end as last_name,
           case when m.doc ? 'timezone' then m.doc ->> 'timezone' else c.timezone end as timezone,
           case when m.doc ? 'locale' then m.doc ->> 'locale' else c.locale end as locale,
           case when m.doc ? 'attributes' then coalesce(nullif(m.doc -> 'attributes', 'null'), '{}') else c.attributes end as attributes,
           case when m.doc ? 'external_id' then m.external_id else c.external_id end as external_id,
           case when m.doc ? 'sms_subscribed' then (m.doc ->> 'sms_subscribed')::boolean else c.sms_subscribed end as sms_subscribed,
           case when m.doc ? 'email_subscribed' then (m.doc ->> 'email_subscribed')::boolean else c.email_subscribed end as email_subscribed,
           case when m.doc ? 'whatsapp_subscribed' then (m.doc ->> 'whatsapp_subscribed')::boolean else c.whatsapp_subscribed end as whatsapp_subscribed,
           -- A given phone/email changes the row when its hash, under the row's
           -- own hash version, differs from the stored one.
           (m.doc ? 'phone' and c.phone_hash is distinct from
              case c.hash_version when v_hash_version then m.phone_hash else m.phone_hash_previous end) as phone_changed,
           (m.doc ? 'email' and c.email_hash is distinct from
              case c.hash_version when v_hash_version then m.email_hash else m.email_hash_previous end) as email_changed,
           m.doc ? 'phone' as phone_given, m.phone,
           m.doc ? 'email' as email_given, m.email,
           c as old
      from decided m
      join herald_public.contacts c on c.tenant_id = (select v_tenant) and c.id = m.target_id
     where m.refusal is null
     -- Lock the targets, in id order (no deadlock between concurrent batches),
     -- and compute from their latest version: fields the input leaves out keep
     -- what a concurrent writer committed instead of this statement's snapshot.
     order by c.id
     for update of c
  ),
  changes as (
    select p.*,
           (p.phone_changed or p.email_changed) as pii_changed,
           (p.phone_changed or p.email_changed
             or (p.first_name, p.last_name, p.timezone, p.locale, p.attributes, p.external_id,
                 p.sms_subscribed, p.email_subscribed, p.whatsapp_subscribed)
                is distinct from
                ((p.old).first_name, (p.old).last_name, (p.old).timezone, (p.old).locale, (p.old).attributes,
                 (p.old).external_id, (p.old).sms_subscribed, (p.old).email_subscribed, (p.old).whatsapp_subscribed)
           ) as changed,
           -- When PII changes, the whole row moves to the current key and hash
           -- versions, so the field not given is decrypted and re-encrypted too.
           case when p.phone_changed or p.email_changed then
             case when p.phone_given then p.phone
                  else herald_hidden.decrypt_pii((p.old).phone_encrypted, (p.old).key_version) end
           end as new_phone,
           case when p.phone_changed or p.email_changed then
             case when p.email_given then p.email
                  else herald_hidden.decrypt_pii((p.old).email_encrypted, (p.old).key_version) end
           end as new_email
      from proposed p
  ),
  updated as (
    update herald_public.contacts c
       set first_name = ch.first_name,
           last_name = ch.last_name,
           timezone = ch.timezone,
           locale = ch.locale,
           attributes = ch.attributes,
           external_id = ch.external_id,
           sms_subscribed = ch.sms_subscribed,
           email_subscribed = ch.email_subscribed,
           whatsapp_subscribed = ch.whatsapp_subscribed,
           phone_encrypted = case when ch.pii_changed then herald_hidden.encrypt_pii(ch.new_phone, v_data_key) else c.phone_encrypted end,
           email_encrypted = case when ch.pii_changed then herald_hidden.encrypt_pii(ch.new_email, v_data_key) else c.email_encrypted end,
           phone_hash = case when ch.pii_changed then herald_hidden.keyed_hash('phone', ch.new_phone, v_hash_key) else c.phone_hash end,
           email_hash = case when ch.pii_changed then herald_hidden.keyed_hash('email', ch.new_email, v_hash_key) else c.email_hash end,
           key_version = case when ch.pii_changed then v_key_version else c.key_version end,
           hash_version = case when ch.pii_changed then v_hash_version else c.hash_version end
      from changes ch
     where c.tenant_id = (select v_tenant) and c.id = ch.id and ch.changed
    returning c.id
  ),
  fresh as (
    select m.*, gen_random_uuid() as new_id
      from decided m
     where m.refusal is null and m.target_id is null
  ),
  inserted as (
    insert into herald_public.contacts (
      id, first_name, last_name, phone_encrypted, phone_hash, email_encrypted, email_hash,
      key_version, hash_version, timezone, locale, attributes, external_id,
      sms_subscribed, email_subscribed, whatsapp_subscribed)
    select f.new_id, f.doc ->> 'first_name', f.doc ->> 'last_name',
           herald_hidden.encrypt_pii(f.phone, v_data_key), f.phone_hash,
           herald_hidden.encrypt_pii(f.email, v_data_key), f.email_hash,
           v_key_version, v_hash_version, f.doc ->> 'timezone', f.doc ->> 'locale',
           coalesce(nullif(f.doc -> 'attributes', 'null'), '{}'), f.external_id,
           coalesce((f.doc ->> 'sms_subscribed')::boolean, true),
           coalesce((f.doc ->> 'email_subscribed')::boolean, true),
           coalesce((f.doc ->> 'whatsapp_subscribed')::boolean, false)
      from fresh f
    returning id
  )
  select f.ordinal, f.new_id, 'inserted'::text from fresh f
  union all
  select ch.ordinal, ch.id, case when ch.changed then 'updated' else 'unchanged' end from changes ch
  union all
  select m.ordinal, m.target_id, m.refusal from decided m where m.refusal is not null
  order by 1;
  -- `inserted` and `updated` run even though the final select does not read
  -- them: data-modifying CTEs always execute to completion.
end;
$$;
comment on function herald_hidden.upsert_contacts(jsonb, text) is
  E'Inserts or updates contacts from normalised JSON objects; one result row per input: inserted, updated, unchanged, or refused (duplicate, conflict, exists, not_found).';
grant execute on function herald_hidden.upsert_contacts(jsonb, text) to :DATABASE_MEMBER, :DATABASE_WORKER;

--! split: 062-timestamps-trigger-without-set.sql
-- The timestamps trigger (000001's herald_private.tg__timestamps), without
-- its SET clause: same behaviour, every name in it qualified instead.
--
-- It runs before every insert and update of almost every table, once per
-- row. A function with a SET clause saves, sets and restores that setting
-- at each call: for this two-line trigger that was most of its cost, about
-- 7 µs per row (some 9% of the database's CPU time in a CSV import of
-- contacts). A trigger that names only pg_catalog's functions, types and
-- operators, explicitly, resolves the same whatever the caller's
-- search_path; it is not SECURITY DEFINER, so it never runs with more
-- rights than its caller anyway.
--
-- Idempotent: create or replace (the triggers keep pointing at it).

create or replace function herald_private.tg__timestamps() returns trigger
  language plpgsql volatile
as $$
begin
  new.created_at := case when tg_op operator(pg_catalog.=) 'INSERT' then pg_catalog.now() else old.created_at end;
  new.updated_at := case when tg_op operator(pg_catalog.=) 'UPDATE' and old.updated_at operator(pg_catalog.>=) pg_catalog.now()
                      then old.updated_at operator(pg_catalog.+) '1 millisecond'::pg_catalog.interval
                      else pg_catalog.now() end;
  return new;
end;
$$;
comment on function herald_private.tg__timestamps() is
  E'Keeps created_at immutable and updated_at increasing.';

--! split: 070-tenant-self-service.sql
-- Tenant self-service: a tenant's owners and admins invite people by email
-- (an invitation token, shown once, accepted by the signed-in user whose email
-- it names), owners change roles and remove members, a user leaves a tenant,
-- and platform operators create tenants, all over GraphQL.
--
-- Security stays in row-level security, as for every request: the functions
-- below run with the caller's rights, and the policies decide. A membership is
-- written by a member only as the tenant's owner (roles, removals) or as
-- itself (leaving). Joining goes through the invitation: the person invited
-- (signed in, to any tenant, with the email it names) marks it accepted,
-- presenting its token, and the invitation's trigger checks the token and
-- writes the membership. Triggers also keep what no policy can see across
-- rows: a tenant always keeps an owner, and a platform operator's user never
-- joins a tenant (000009's rule, now for every way in). Every write lands in the tenant's
-- audit log. Another tenant's invitation or member looks exactly like one that
-- does not exist (NTFND).
--
-- Idempotent: re-applied on every `db watch` save.

drop function if exists herald_public.invite_member(public.citext, text);
drop function if exists herald_public.accept_invitation(text);
drop function if exists herald_public.revoke_invitation(uuid);
drop function if exists herald_public.change_member_role(uuid, text);
drop function if exists herald_public.remove_member(uuid);
drop function if exists herald_public.leave_tenant();
drop function if exists herald_public.create_tenant(public.citext, text);
drop type if exists herald_public.created_invitation;
drop type if exists herald_public.accepted_invitation;
drop policy if exists select_invitee on herald_public.tenants;
drop policy if exists select_joined on herald_public.tenants;
drop policy if exists select_self on herald_public.memberships;
drop policy if exists insert_invitee on herald_public.memberships;
drop policy if exists update_member on herald_public.memberships;
drop policy if exists delete_member on herald_public.memberships;
drop table if exists herald_public.invitations cascade;
drop trigger if exists _300_keep_an_owner on herald_public.memberships;
drop trigger if exists _300_no_operator_members on herald_public.memberships;
drop function if exists herald_private.tg_memberships__keep_an_owner();
drop function if exists herald_private.tg_memberships__no_operator_members();
drop function if exists herald_private.tg_invitations__settle();
drop function if exists herald_hidden.current_user_is_tenant_owner();

-------------------------------------------------------------------------------
-- Helpers (invoker rights: they read through the caller's own policies)
-------------------------------------------------------------------------------

-- Whether the signed-in user is an owner of the current tenant.
create function herald_hidden.current_user_is_tenant_owner() returns boolean
  language sql stable parallel safe
  set search_path = ''
as $$
  select exists (
    select 1 from herald_public.memberships m
    where m.tenant_id = (select herald_public.current_tenant_id())
      and m.user_id = (select herald_public.current_user_id())
      and m.role = 'owner'
  );
$$;

grant execute on function herald_hidden.current_user_is_tenant_owner() to :DATABASE_MEMBER;

-------------------------------------------------------------------------------
-- invitations (tenant-owned; the token is stored only as a SHA-256 hash)
-------------------------------------------------------------------------------

create table herald_public.invitations (
  tenant_id uuid not null default herald_public.current_tenant_id()
    references herald_public.tenants on delete cascade,
  id uuid not null default gen_random_uuid(),
  email public.citext not null
    constraint invitations_email_format check (email ~ '^[^@\s]+@[^@\s]+\.[^@\s]+$'),
  role text not null default 'member'
    constraint invitations_role_valid check (role in ('owner', 'admin', 'member')),
  -- A random 192-bit token needs no slow hash (as API keys). Unique per
  -- tenant like every key of a tenant table; accepting finds it by the index
  -- below.
  token_hash bytea not null,
  invited_by uuid references herald_public.users on delete set null,
  expires_at timestamptz not null default now() + interval '7 days',
  accepted_at timestamptz,
  accepted_by uuid references herald_public.users on delete set null,
  revoked_at timestamptz,
  -- Written by the person accepting, checked and cleared by the trigger below:
  -- never stored.
  presented_token text constraint invitations_token_not_kept check (presented_token is null),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (tenant_id, id),
  constraint invitations_token_hash_key unique (tenant_id, token_hash),
  constraint invitations_used_once check (accepted_at is null or revoked_at is null)
);
comment on table herald_public.invitations is
  E'@behavior -insert -update -delete\nAn invitation to join a tenant with a role, for an email. Created with `inviteMember`, withdrawn with `revokeInvitation`, accepted by the person invited with `acceptInvitation`. A tenant''s owners and admins read its invitations.';
comment on column herald_public.invitations.token_hash is E'@behavior -*';
comment on column herald_public.invitations.presented_token is E'@behavior -*';
comment on constraint invitations_token_hash_key on herald_public.invitations is E'@behavior -*';
comment on column herald_public.invitations.expires_at is E'After this, the invitation can no longer be accepted.';
create index invitations_by_token_hash on herald_public.invitations (token_hash);
create index invitations_by_email on herald_public.invitations (tenant_id, email);

create trigger _100_timestamps before insert or update on herald_public.invitations
  for each row execute function herald_private.tg__timestamps();

-- An invitation is used once: accepted or withdrawn, it stays so. Accepting
-- it (setting accepted_by) is the session's user, whose email it names,
-- presenting its token (another token leaves the row untouched, so the
-- accepting statement may try each of the user's pending invitations without
-- reading any hash); the trigger then writes the membership. Definer: the
-- membership is in a tenant the person invited is not signed in to, and the
-- operators list is private. The token is cleared, never stored.
create function herald_private.tg_invitations__settle() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
begin
  if old.accepted_at is not null or old.revoked_at is not null or old.expires_at <= now() then
    raise exception 'No such invitation for you: it may have expired, been used or been withdrawn'
      using errcode = 'NTFND';
  end if;
  if new.accepted_by is not distinct from old.accepted_by then
    if new.accepted_at is not null or new.presented_token is not null then
      raise exception 'An invitation is accepted by the person invited' using errcode = '42501';
    end if;
    return new;
  end if;
  if new.accepted_by is distinct from herald_public.current_user_id()
     or not exists (select 1 from herald_public.users u
                     where u.id = new.accepted_by and u.email operator(public.=) old.email) then
    raise exception 'No such invitation for you: it may have expired, been used or been withdrawn'
      using errcode = 'NTFND';
  end if;
  -- Another token: the row is left as it was, as if the statement had not matched it.
  if public.digest(coalesce(new.presented_token, ''), 'sha256') <> old.token_hash then
    return null;
  end if;
  new.presented_token := null;
  new.accepted_at := now();
  new.revoked_at := null;
  begin
    insert into herald_public.memberships (tenant_id, user_id, role) values (old.tenant_id, new.accepted_by, old.role);
  exception when unique_violation then
    raise exception 'You already belong to this tenant' using errcode = '23505', constraint = 'memberships_pkey';
  end;
  return new;
end;
$$;
create trigger _200_settle before update on herald_public.invitations
  for each row execute function herald_private.tg_invitations__settle();

create trigger _900_audit_insert after insert on herald_public.invitations referencing new table as new_rows
  for each statement execute function herald_private.tg__audit('id', '');
create trigger _900_audit_update after update on herald_public.invitations referencing old table as old_rows new table as new_rows
  for each statement execute function herald_private.tg__audit('id', '');
create trigger _900_audit_delete after delete on herald_public.invitations referencing old table as old_rows
  for each statement execute function herald_private.tg__audit('id', '');

alter table herald_public.invitations enable row level security;
alter table herald_public.invitations force row level security;

-- Invitations name people's emails: the tenant's owners and admins see them, not plain members or API keys.
create policy select_member on herald_public.invitations for select to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()) and (select herald_hidden.current_user_is_tenant_admin()));
comment on policy select_member on herald_public.invitations is E'A tenant''s owners and admins read its invitations.';
-- The person invited, signed in to any tenant: the invitations for their own
-- email (pending or not: an UPDATE's new row must stay readable).
create policy select_invitee on herald_public.invitations for select to :DATABASE_MEMBER
  using (email = (select u.email from herald_public.users u where u.id = (select herald_public.current_user_id())));
comment on policy select_invitee on herald_public.invitations is
  E'A signed-in user reads the invitations for their own email (accepting one takes its token).';
-- Owners invite anyone, admins invite admins and members; the inviter is the session's user.
create policy insert_member on herald_public.invitations for insert to :DATABASE_MEMBER
  with check (
    tenant_id = (select herald_public.current_tenant_id())
    and (select herald_hidden.current_user_is_tenant_admin())
    and (role <> 'owner' or (select herald_hidden.current_user_is_tenant_owner()))
    and invited_by is not distinct from (select herald_public.current_user_id())
  );
comment on policy insert_member on herald_public.invitations is
  E'Owners invite with any role, admins invite admins and members, naming themselves as the inviter.';
create policy update_member on herald_public.invitations for update to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()) and (select herald_hidden.current_user_is_tenant_admin()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
comment on policy update_member on herald_public.invitations is E'A tenant''s owners and admins withdraw its invitations.';
create policy update_invitee on herald_public.invitations for update to :DATABASE_MEMBER
  using (
    email = (select u.email from herald_public.users u where u.id = (select herald_public.current_user_id()))
    and accepted_at is null and revoked_at is null and expires_at > now()
  )
  with check (accepted_by = (select herald_public.current_user_id()));
comment on policy update_invitee on herald_public.invitations is
  E'The person invited accepts the invitation as themself, presenting its token (checked by the _200_settle trigger).';
create policy select_admin on herald_public.invitations for select to :DATABASE_ADMIN using (true);
comment on policy select_admin on herald_public.invitations is E'Operators read every tenant''s invitations.';
create policy delete_admin on herald_public.invitations for delete to :DATABASE_ADMIN using (true);
comment on policy delete_admin on herald_public.invitations is E'Operators delete any invitation.';

grant select (tenant_id, id, email, role, invited_by, expires_at, accepted_at, accepted_by, revoked_at, created_at, updated_at)
  on herald_public.invitations to :DATABASE_MEMBER, :DATABASE_ADMIN;
grant insert (tenant_id, email, role, token_hash, invited_by), update (revoked_at, accepted_by, presented_token)
  on herald_public.invitations to :DATABASE_MEMBER;
grant delete on herald_public.invitations to :DATABASE_ADMIN;

-- A user reads their own memberships and the tenants they belong to, in
-- every tenant (which tenant to sign in to next, e.g. after accepting).
create policy select_self on herald_public.memberships for select to :DATABASE_MEMBER
  using (user_id = (select herald_public.current_user_id()));
comment on policy select_self on herald_public.memberships is E'A signed-in user reads their own memberships.';
create policy select_joined on herald_public.tenants for select to :DATABASE_MEMBER
  using (id in (select m.tenant_id from herald_public.memberships m where m.user_id = (select herald_public.current_user_id())));
comment on policy select_joined on herald_public.tenants is E'A signed-in user reads the tenants they belong to.';

-------------------------------------------------------------------------------
-- memberships: written by owners and by the user leaving
-------------------------------------------------------------------------------

create policy update_member on herald_public.memberships for update to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()) and (select herald_hidden.current_user_is_tenant_owner()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
comment on policy update_member on herald_public.memberships is E'A tenant''s owners change its members'' roles.';
create policy delete_member on herald_public.memberships for delete to :DATABASE_MEMBER
  using (
    tenant_id = (select herald_public.current_tenant_id())
    and (user_id = (select herald_public.current_user_id()) or (select herald_hidden.current_user_is_tenant_owner()))
  );
comment on policy delete_member on herald_public.memberships is
  E'A tenant''s owners remove its members; every user may leave.';

grant update (role), delete on herald_public.memberships to :DATABASE_MEMBER;

-- A tenant keeps at least one owner, whoever removes or demotes one (an
-- owner, the owner leaving, an operator's `herald membership remove`, the
-- deletion of the user). Deleting the tenant itself takes its owners with it.
-- Definer: it must see and lock every owner row of the tenant. The owner rows
-- are locked first, so two owners demoting each other at once cannot both
-- pass (one waits, or is chosen as a deadlock victim and retries).
create function herald_private.tg_memberships__keep_an_owner() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
begin
  if old.role <> 'owner' or (tg_op = 'UPDATE' and new.role = 'owner') then
    return coalesce(new, old);
  end if;
  if not exists (select 1 from herald_public.tenants t where t.id = old.tenant_id) then
    return old;  -- the tenant is being deleted
  end if;
  perform 1 from herald_public.memberships m where m.tenant_id = old.tenant_id and m.role = 'owner' for update;
  if not exists (select 1 from herald_public.memberships m
                  where m.tenant_id = old.tenant_id and m.role = 'owner' and m.user_id <> old.user_id) then
    raise exception 'A tenant keeps at least one owner: make another member an owner first'
      using errcode = 'LSTOW';
  end if;
  return coalesce(new, old);
end;
$$;
create trigger _300_keep_an_owner before update or delete on herald_public.memberships
  for each row execute function herald_private.tg_memberships__keep_an_owner();

-- 000009: a platform operator's user never belongs to a tenant. grant_membership
-- checked it; accepting an invitation is another way in, so the table checks it.
create function herald_private.tg_memberships__no_operator_members() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
begin
  if exists (select 1 from herald_private.operators o where o.user_id = new.user_id) then
    raise exception 'A platform operator cannot grant itself a membership: a tenant''s owner or admin adds its people'
      using errcode = 'OPSLF';
  end if;
  return new;
end;
$$;
create trigger _300_no_operator_members before insert or update of user_id on herald_public.memberships
  for each row execute function herald_private.tg_memberships__no_operator_members();

revoke execute on function herald_private.tg_memberships__keep_an_owner(),
  herald_private.tg_memberships__no_operator_members(), herald_private.tg_invitations__settle() from public;

-------------------------------------------------------------------------------
-- The API (mutations), with the caller's rights
-------------------------------------------------------------------------------

create type herald_public.created_invitation as (
  invitation_id uuid,
  email public.citext,
  role text,
  expires_at timestamptz,
  token text
);
comment on type herald_public.created_invitation is
  E'A new invitation. `token` is shown this once and never again: give it to the person invited.';

create function herald_public.invite_member(email public.citext, role text default 'member')
  returns herald_public.created_invitation
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_tenant uuid := herald_public.current_tenant_id();
  v_role text := coalesce(invite_member.role, 'member');
  v_token text := 'hi_' || pg_catalog.encode(public.gen_random_bytes(24), 'hex');
  v_id uuid;
  v_expires timestamptz;
begin
  if v_tenant is null then
    raise exception 'No tenant in this request' using errcode = 'NOTNT';
  end if;
  -- Said plainly here; the insert policy refuses it anyway.
  if not herald_hidden.current_user_is_tenant_admin()
     or (v_role = 'owner' and not herald_hidden.current_user_is_tenant_owner()) then
    raise exception 'Only a tenant''s owners invite owners, and only its owners and admins invite anyone'
      using errcode = '42501';
  end if;
  if exists (select 1 from herald_public.memberships m join herald_public.users u on u.id = m.user_id
              where m.tenant_id = v_tenant and u.email operator(public.=) invite_member.email) then
    raise exception 'email: % already belongs to this tenant', invite_member.email
      using errcode = '23505', constraint = 'memberships_pkey', column = 'email';
  end if;
  -- A new invitation replaces a pending one for the same email.
  update herald_public.invitations i set revoked_at = now()
   where i.tenant_id = v_tenant and i.email operator(public.=) invite_member.email
     and i.accepted_at is null and i.revoked_at is null;
  insert into herald_public.invitations (tenant_id, email, role, token_hash, invited_by)
  values (v_tenant, invite_member.email, v_role, public.digest(v_token, 'sha256'), herald_public.current_user_id())
  returning id, expires_at into v_id, v_expires;
  return row(v_id, invite_member.email, v_role, v_expires, v_token)::herald_public.created_invitation;
end;
$$;
comment on function herald_public.invite_member(public.citext, text) is
  E'Invites an email to the current tenant with a role (`owner`, `admin` or `member`): owners and admins invite, only owners invite owners. Returns the token once; it works once, within 7 days.';

create type herald_public.accepted_invitation as (
  tenant_id uuid,
  tenant_slug public.citext,
  role text
);
comment on type herald_public.accepted_invitation is
  E'The membership an accepted invitation created: sign in to `tenantSlug` to act in that tenant.';

-- Unknown, expired, used, withdrawn, or for another email: all look the same.
create function herald_public.accept_invitation(token text) returns herald_public.accepted_invitation
  language plpgsql volatile strict
  set search_path = ''
as $$
declare
  v_invitation record;
begin
  if herald_public.current_user_id() is null then
    raise exception 'Sign in as the person invited to accept an invitation' using errcode = '42501';
  end if;
  -- The policies show the person invited their own pending invitations and
  -- let them accept one; the trigger checks the token (no request role reads
  -- a token's hash) and writes the membership.
  for v_invitation in
    select i.tenant_id, i.id, i.role from herald_public.invitations i
     where i.email operator(public.=) (select u.email from herald_public.users u where u.id = herald_public.current_user_id())
       and i.accepted_at is null and i.revoked_at is null and i.expires_at > now()
  loop
    update herald_public.invitations i
       set accepted_by = herald_public.current_user_id(), presented_token = accept_invitation.token
     where i.tenant_id = v_invitation.tenant_id and i.id = v_invitation.id;
    if found then
      -- Now a member there, the user reads the tenant (policy select_joined).
      return row(v_invitation.tenant_id,
                 (select t.slug from herald_public.tenants t where t.id = v_invitation.tenant_id),
                 v_invitation.role)::herald_public.accepted_invitation;
    end if;
  end loop;
  raise exception 'No such invitation for you: it may have expired, been used or been withdrawn'
    using errcode = 'NTFND';
end;
$$;
comment on function herald_public.accept_invitation(text) is
  E'Accepts an invitation as the signed-in user (of any tenant), whose email it must name, and joins its tenant with its role. Then sign in to that tenant.';

create function herald_public.revoke_invitation(invitation_id uuid) returns herald_public.invitations
  language plpgsql volatile strict
  set search_path = ''
as $$
declare
  v_invitation herald_public.invitations;
begin
  update herald_public.invitations i set revoked_at = now()
   where i.tenant_id = herald_public.current_tenant_id() and i.id = revoke_invitation.invitation_id
     and i.accepted_at is null and i.revoked_at is null
  returning i.tenant_id, i.id, i.email, i.role, null::bytea, i.invited_by, i.expires_at, i.accepted_at,
            i.accepted_by, i.revoked_at, i.created_at, i.updated_at
  into v_invitation;
  if not found then
    raise exception 'No pending invitation with that id in this tenant' using errcode = 'NTFND';
  end if;
  return v_invitation;
end;
$$;
comment on function herald_public.revoke_invitation(uuid) is
  E'Withdraws a pending invitation of the current tenant (owners and admins); its token stops working.';

create function herald_public.change_member_role(user_id uuid, role text) returns herald_public.memberships
  language plpgsql volatile strict
  set search_path = ''
as $$
declare
  v_membership herald_public.memberships;
begin
  if not herald_hidden.current_user_is_tenant_owner() then
    raise exception 'Only a tenant''s owners change roles' using errcode = '42501';
  end if;
  update herald_public.memberships m set "role" = change_member_role.role
   where m.tenant_id = herald_public.current_tenant_id() and m.user_id = change_member_role.user_id
  returning m.* into v_membership;
  if not found then
    raise exception 'No such member in this tenant' using errcode = 'NTFND';
  end if;
  return v_membership;
end;
$$;
comment on function herald_public.change_member_role(uuid, text) is
  E'Changes a member''s role in the current tenant (owners only; a tenant keeps at least one owner).';

create function herald_public.remove_member(user_id uuid) returns boolean
  language plpgsql volatile strict
  set search_path = ''
as $$
begin
  if remove_member.user_id is distinct from herald_public.current_user_id()
     and not herald_hidden.current_user_is_tenant_owner() then
    raise exception 'Only a tenant''s owners remove members' using errcode = '42501';
  end if;
  delete from herald_public.memberships m
   where m.tenant_id = herald_public.current_tenant_id() and m.user_id = remove_member.user_id;
  if not found then
    raise exception 'No such member in this tenant' using errcode = 'NTFND';
  end if;
  return true;
end;
$$;
comment on function herald_public.remove_member(uuid) is
  E'Removes a member from the current tenant (owners only; a tenant keeps at least one owner). Their tokens stop working at once.';

create function herald_public.leave_tenant() returns boolean
  language plpgsql volatile
  set search_path = ''
as $$
begin
  if herald_public.current_user_id() is null then
    raise exception 'Only a signed-in user leaves a tenant' using errcode = '42501';
  end if;
  return herald_public.remove_member(herald_public.current_user_id());
end;
$$;
comment on function herald_public.leave_tenant() is
  E'The signed-in user leaves the current tenant (not as its last owner); their tokens for it stop working.';

-- Operators create tenants (the admin policies on tenants allow it); a member is refused (FORBIDDEN).
create function herald_public.create_tenant(slug public.citext, name text) returns herald_public.tenants
  language sql volatile strict
  set search_path = ''
as $$
  insert into herald_public.tenants (slug, name) values (create_tenant.slug, create_tenant.name) returning *;
$$;
comment on function herald_public.create_tenant(public.citext, text) is
  E'Creates a tenant with default settings (platform operators only). Add its first owner with `herald user create --role owner`.';

revoke execute on function herald_public.invite_member(public.citext, text), herald_public.accept_invitation(text),
  herald_public.revoke_invitation(uuid), herald_public.change_member_role(uuid, text), herald_public.remove_member(uuid),
  herald_public.leave_tenant(), herald_public.create_tenant(public.citext, text) from public;
grant execute on function herald_public.invite_member(public.citext, text), herald_public.accept_invitation(text),
  herald_public.revoke_invitation(uuid), herald_public.change_member_role(uuid, text), herald_public.remove_member(uuid),
  herald_public.leave_tenant() to :DATABASE_MEMBER;
grant execute on function herald_public.create_tenant(public.citext, text) to :DATABASE_ADMIN;

comment on table herald_public.memberships is
  E'@behavior -insert -update -delete\nA user''s role within one tenant. Owners and admins invite people (`inviteMember`), owners change roles (`changeMemberRole`) and remove members (`removeMember`), users leave (`leaveTenant`); operators add people with `herald user create`. Every change is in the tenant''s audit log.';
