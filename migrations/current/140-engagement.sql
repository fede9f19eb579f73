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
