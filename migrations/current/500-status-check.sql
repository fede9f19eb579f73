-- Status reconciliation (src/messages/status-check.ts): a `sent` delivery
-- whose final status never came (a status callback lost while Herald was
-- down; providers do not retry them) is looked up at the provider. When it
-- was last looked up, so the next look waits its turn.
alter table herald_public.deliveries add column if not exists status_checked_at timestamptz;
comment on column herald_public.deliveries.status_checked_at is
  E'@behavior -*\nWhen the worker last asked the provider for this delivery''s status, its final report being overdue.';
grant update (status_checked_at) on herald_public.deliveries to :DATABASE_WORKER;
