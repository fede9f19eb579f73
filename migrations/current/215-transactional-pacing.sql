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
