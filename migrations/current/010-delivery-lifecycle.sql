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
