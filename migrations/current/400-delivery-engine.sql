--
-- The delivery engine's set-based steps (src/messages/claim.ts): pacing slots
-- and monthly-cap places reserved for a whole run of deliveries in one
-- statement each, instead of one call per delivery.
--
-- Idempotent: graphile-migrate re-runs it in watch mode.

drop function if exists herald_private.reserve_send_slots(uuid, interval, text, interval, interval, integer);
drop function if exists herald_hidden.count_toward_cap_many(integer);
drop function if exists herald_hidden.uncount_toward_cap_many(date, integer);

-- Up to `wanted` consecutive send slots for the tenant and (if given) the
-- sender, as many as start within `horizon`: the first at `first_at`, each
-- next one `step` later (the slower of the two paces). `granted` may be 0:
-- then nothing is reserved, and `first_at` says when the next slot is free.
-- As reserve_send_slot (000006): rows locked tenant first, then sender, in
-- every call, on the worker's owner connection in a one-statement
-- transaction, so the pace holds across worker processes.
create function herald_private.reserve_send_slots(tenant uuid, tenant_step interval, sender text, sender_step interval,
  horizon interval, wanted integer, out first_at timestamptz, out step interval, out granted integer)
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_tenant_at timestamptz;
  v_sender_at timestamptz := '-infinity';
  v_room interval;
begin
  insert into herald_private.send_pacing (scope, next_at) values ('tenant:' || tenant, '-infinity') on conflict do nothing;
  select p.next_at into v_tenant_at from herald_private.send_pacing p where p.scope = 'tenant:' || tenant for update;
  if sender is not null then
    insert into herald_private.send_pacing (scope, next_at) values ('sender:' || sender, '-infinity') on conflict do nothing;
    select p.next_at into v_sender_at from herald_private.send_pacing p where p.scope = 'sender:' || sender for update;
  end if;
  first_at := greatest(pg_catalog.clock_timestamp(), v_tenant_at, v_sender_at);
  step := greatest(tenant_step, coalesce(sender_step, tenant_step));
  v_room := pg_catalog.clock_timestamp() + horizon - first_at;
  if v_room < interval '0' then
    granted := 0;
  elsif step <= interval '0' then
    granted := greatest(wanted, 0);
  else
    granted := least(greatest(wanted, 0),
                     floor(extract(epoch from v_room) / extract(epoch from step))::integer + 1);
  end if;
  if granted = 0 then
    return;
  end if;
  update herald_private.send_pacing p set next_at = first_at + step * (granted - 1) + tenant_step
   where p.scope = 'tenant:' || tenant;
  if sender is not null then
    update herald_private.send_pacing p set next_at = first_at + step * (granted - 1) + sender_step
     where p.scope = 'sender:' || sender;
  end if;
end;
$$;

-- Counts up to `wanted` messages toward this month, as many as the cap allows:
-- `granted` of them, in `month`. The row lock is held until the caller
-- commits, as for count_toward_cap (000006).
create function herald_hidden.count_toward_cap_many(wanted integer, out month date, out granted integer)
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_tenant uuid := herald_public.current_tenant_id();
  v_cap integer;
  v_used integer;
begin
  month := pg_catalog.date_trunc('month', now() at time zone 'UTC')::date;
  select s.monthly_message_cap into v_cap from herald_public.tenant_settings s where s.tenant_id = v_tenant;
  insert into herald_hidden.monthly_usage (tenant_id, month) values (v_tenant, month) on conflict do nothing;
  select u.messages into v_used from herald_hidden.monthly_usage u
   where u.tenant_id = v_tenant and u.month = count_toward_cap_many.month for update;
  granted := greatest(least(wanted, coalesce(v_cap - v_used, wanted)), 0);
  if granted > 0 then
    update herald_hidden.monthly_usage u set messages = u.messages + granted
     where u.tenant_id = v_tenant and u.month = count_toward_cap_many.month;
  end if;
end;
$$;

-- `count` messages counted in `month` but certainly never accepted give their places back.
create function herald_hidden.uncount_toward_cap_many(month date, count integer) returns void
  language sql volatile
  set search_path = ''
as $$
  update herald_hidden.monthly_usage u set messages = greatest(u.messages - uncount_toward_cap_many.count, 0)
   where u.tenant_id = herald_public.current_tenant_id() and u.month = uncount_toward_cap_many.month;
$$;

grant execute on function herald_hidden.count_toward_cap_many(integer), herald_hidden.uncount_toward_cap_many(date, integer) to :DATABASE_WORKER;
