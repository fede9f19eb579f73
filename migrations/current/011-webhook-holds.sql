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
