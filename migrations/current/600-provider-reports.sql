--
-- Provider reports (Twilio status callbacks, SendGrid events): acknowledged
-- once journaled, applied to deliveries in sets.
--
-- Every SMS brings two or three status callbacks and every email two or more
-- events. Applying each one in the request (lock the delivery, insert its
-- event, update the delivery) made the callback path the cap on sending. Now
-- the webhook verifies the signature, appends what the provider said to
-- herald_hidden.provider_reports (one INSERT for all the requests of a tenant
-- that arrive together, inside the tenant under RLS) and answers once that
-- commits: a report acknowledged is a report stored. An applier
-- (src/webhooks/reports.ts, right after the insert; the provider_reports__sweep
-- task for what a crashed process left behind) takes pending reports oldest
-- first and applies them with herald_hidden.apply_provider_reports, a few
-- set-based statements per batch; the reports leave the journal in the
-- transaction that applies them, so each is applied exactly once.
--
-- Idempotent: graphile-migrate re-runs it in watch mode.

drop function if exists herald_hidden.apply_provider_reports(integer);
drop function if exists herald_hidden.provider_reports_waiting(interval);
drop table if exists herald_hidden.provider_reports cascade;

create table herald_hidden.provider_reports (
  tenant_id uuid not null default herald_public.current_tenant_id()
    references herald_public.tenants on delete cascade,
  -- The order received: reports are applied in it.
  id bigint generated always as identity,
  provider text not null constraint provider_reports_provider check (provider in ('twilio', 'sendgrid')),
  -- Herald's delivery id (the callback URL's, or SendGrid's custom args), else
  -- found by the provider's message id. Not a foreign key: a report may name
  -- a delivery this tenant does not have, and is then kept by nobody.
  delivery_id uuid,
  provider_message_id text constraint provider_reports_provider_message_id_length check (length(provider_message_id) <= 300),
  -- The provider's own word (MessageStatus, SendGrid's event) and what it makes of the delivery (null: nothing).
  event text not null constraint provider_reports_event_length check (length(event) between 1 and 40),
  status text constraint provider_reports_status check (status in ('sent', 'delivered', 'undelivered', 'failed')),
  dedupe_key text not null constraint provider_reports_dedupe_key_length check (length(dedupe_key) between 1 and 200),
  error_code text constraint provider_reports_error_code_length check (length(error_code) <= 50),
  occurred_at timestamptz,
  -- An opt-out the report carries (Twilio 21610; a SendGrid bounce,
  -- unsubscribe or spam report): the address it is about, encrypted under the
  -- tenant's data key like every other address Herald keeps.
  opt_out text constraint provider_reports_opt_out check (opt_out in ('carrier_opt_out', 'bounce', 'email_opt_out')),
  channel text constraint provider_reports_channel check (channel in ('sms', 'whatsapp', 'email')),
  address_encrypted bytea,
  key_version smallint,
  -- Per row (clock_timestamp): the reports of one INSERT keep their order in delivery_events.received_at.
  received_at timestamptz not null default clock_timestamp(),
  primary key (tenant_id, id),
  constraint provider_reports_opt_out_address check ((opt_out is null) = (address_encrypted is null) and (opt_out is null) = (key_version is null)),
  -- As for contacts: a key version still in use cannot be destroyed.
  constraint provider_reports_key_version_fkey foreign key (tenant_id, key_version)
    references herald_private.tenant_data_keys (tenant_id, version)
);
comment on table herald_hidden.provider_reports is
  E'Status callbacks and email events acknowledged to the provider and not yet applied to deliveries.';

alter table herald_hidden.provider_reports enable row level security;
alter table herald_hidden.provider_reports force row level security;
create policy select_worker on herald_hidden.provider_reports for select to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
create policy insert_worker on herald_hidden.provider_reports for insert to :DATABASE_WORKER
  with check (tenant_id = (select herald_public.current_tenant_id()));
create policy delete_worker on herald_hidden.provider_reports for delete to :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
-- The sweep finds which tenants have reports waiting (tenant and age only).
create policy select_admin on herald_hidden.provider_reports for select to :DATABASE_ADMIN using (true);

grant select, delete on herald_hidden.provider_reports to :DATABASE_WORKER;
grant insert (tenant_id, provider, delivery_id, provider_message_id, event, status, dedupe_key, error_code, occurred_at,
              opt_out, channel, address_encrypted, key_version)
  on herald_hidden.provider_reports to :DATABASE_WORKER;
grant select (tenant_id, received_at) on herald_hidden.provider_reports to :DATABASE_ADMIN;

-- delivery_events keep the time a report was received, not the time it was applied.
grant insert (received_at) on herald_public.delivery_events to :DATABASE_WORKER;

-- Applies up to `max_reports` of the session tenant's waiting reports, oldest
-- first, with the semantics herald_hidden.apply_delivery_event has for one:
-- each (dedupe key) once; a delivery only moves up (queued → sending/unknown
-- → sent → a final status), so a final status that outran the send's answer
-- stays; a report of another provider message than the delivery's (an
-- earlier attempt) is recorded, not applied; one that names no delivery of
-- this tenant is dropped.
-- In a batch, a report is applied when its status ranks above the delivery's
-- and above every earlier valid report's of the batch — what applying them
-- one by one would do.
create function herald_hidden.apply_provider_reports(max_reports integer default 1000)
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
           r.received_at, r.opt_out, v_deliveries[r.ordinality] as delivery_id,
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
    insert into herald_public.delivery_events (delivery_id, provider, event, dedupe_key, error_code, applied, status, occurred_at, received_at)
    select t.delivery_id, t.provider, t.event, t.dedupe_key, t.error_code, t.applied,
           coalesce(t.applied_so_far[pg_catalog.cardinality(t.applied_so_far)], t.initial_status), t.occurred_at, t.received_at
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

-- For the sweep (as herald_admin): the tenants with reports waiting longer
-- than `older_than` — what a process that acknowledged them and died left.
create function herald_hidden.provider_reports_waiting(older_than interval)
  returns table (tenant_id uuid, waiting bigint)
  language sql stable
  set search_path = ''
as $$
  select r.tenant_id, count(*) from herald_hidden.provider_reports r
   where r.received_at < now() - provider_reports_waiting.older_than
   group by r.tenant_id;
$$;
grant execute on function herald_hidden.provider_reports_waiting(interval) to :DATABASE_ADMIN;
