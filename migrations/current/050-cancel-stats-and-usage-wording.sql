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
