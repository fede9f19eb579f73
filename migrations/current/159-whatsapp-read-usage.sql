-- Usage counts read deliveries (WhatsApp read receipts): `read`, after the
-- other columns. As in 000008, with that one column more; the view and the
-- GraphQL type follow. Idempotent: the view and function are dropped and
-- made again, the type's attribute added once.

drop view if exists herald_public.daily_usage;
drop function if exists herald_hidden.usage_between(timestamptz, timestamptz);

create function herald_hidden.usage_between(from_at timestamptz, to_at timestamptz)
  returns table (tenant_id uuid, day date, channel text, account text, provider text, messages integer, deliveries integer,
                 queued integer, sending integer, sent integer, delivered integer, undelivered integer, failed integer,
                 skipped integer, canceled integer, unknown integer, segments integer, inbound integer, opt_outs integer,
                 read integer)
  language sql stable
as $$
  select u.tenant_id, u.day, u.channel, u.account,
         case when u.channel = 'email' then 'sendgrid' else 'twilio' end,
         sum(u.messages)::integer, sum(u.deliveries)::integer, sum(u.queued)::integer, sum(u.sending)::integer,
         sum(u.sent)::integer, sum(u.delivered)::integer, sum(u.undelivered)::integer, sum(u.failed)::integer,
         sum(u.skipped)::integer, sum(u.canceled)::integer, sum(u.unknown)::integer, sum(u.segments)::integer,
         sum(u.inbound)::integer, sum(u.opt_outs)::integer, sum(u.read)::integer
    from (
      select m.tenant_id, (m.created_at at time zone 'UTC')::date as day, d.channel, d.provider as account,
             count(distinct d.message_id) as messages, count(*) as deliveries,
             count(*) filter (where d.status = 'queued') as queued,
             count(*) filter (where d.status = 'sending') as sending,
             count(*) filter (where d.status = 'sent') as sent,
             count(*) filter (where d.status = 'delivered') as delivered,
             count(*) filter (where d.status = 'undelivered') as undelivered,
             count(*) filter (where d.status = 'failed') as failed,
             count(*) filter (where d.status = 'skipped') as skipped,
             count(*) filter (where d.status = 'canceled') as canceled,
             count(*) filter (where d.status = 'unknown') as unknown,
             coalesce(sum(d.segments), 0) as segments, 0 as inbound, 0 as opt_outs,
             count(*) filter (where d.read_at is not null) as read
        from herald_public.messages m
        join herald_public.deliveries d on d.tenant_id = m.tenant_id and d.message_id = m.id
       where m.created_at >= usage_between.from_at and m.created_at < usage_between.to_at
       group by 1, 2, 3, 4
      union all
      select i.tenant_id, (i.received_at at time zone 'UTC')::date, i.channel, i.account,
             0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, count(*), 0, 0
        from herald_public.inbound_messages i
       where i.received_at >= usage_between.from_at and i.received_at < usage_between.to_at
       group by 1, 2, 3, 4
      union all
      select e.tenant_id, (e.created_at at time zone 'UTC')::date, e.channel, null,
             0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, count(*), 0
        from herald_public.consent_events e
       where e.action = 'opt_out' and e.created_at >= usage_between.from_at and e.created_at < usage_between.to_at
       group by 1, 2, 3
    ) u
   group by u.tenant_id, u.day, u.channel, u.account;
$$;
grant execute on function herald_hidden.usage_between(timestamptz, timestamptz) to :DATABASE_MEMBER, :DATABASE_ADMIN;

create view herald_public.daily_usage with (security_invoker = true) as
select * from herald_hidden.usage_between('-infinity', 'infinity');
comment on view herald_public.daily_usage is
  E'@behavior -*\nWhat the tenant sent and received per UTC day, channel and account (`tenant` or `system`; none for deliveries never handed to a provider): messages, deliveries by status, SMS segments, inbound messages, opt-outs, deliveries read. A delivery counts on its message''s day.';
comment on column herald_public.daily_usage.account is E'`tenant` (its own provider account), `system`, or null (never handed to a provider: skipped, canceled, still queued).';
grant select on herald_public.daily_usage to :DATABASE_MEMBER, :DATABASE_ADMIN;

do $$
begin
  if not exists (select 1 from pg_catalog.pg_attribute a
                  where a.attrelid = 'herald_public.usage_day'::regclass and a.attname = 'read' and not a.attisdropped) then
    alter type herald_public.usage_day add attribute read integer;
  end if;
end;
$$;
comment on column herald_public.usage_day.read is E'Deliveries the recipient read (WhatsApp read receipts); each counts as delivered too.';

create or replace function herald_public.usage(from_day date, to_day date) returns setof herald_public.usage_day
  language plpgsql stable
  set search_path = ''
as $$
begin
  if from_day is null or to_day is null or to_day < from_day or to_day - from_day > 366 then
    raise exception 'give fromDay and toDay, at most 366 days apart' using errcode = '22023', column = 'toDay';
  end if;
  return query
  select u.day, u.channel, u.account, u.provider, u.messages, u.deliveries, u.queued, u.sending, u.sent, u.delivered,
         u.undelivered, u.failed, u.skipped, u.canceled, u.unknown, u.segments, u.inbound, u.opt_outs, u.read
    from herald_hidden.usage_between((from_day::timestamp) at time zone 'UTC', ((to_day + 1)::timestamp) at time zone 'UTC') u
   where u.tenant_id = herald_public.current_tenant_id()
   order by u.day, u.channel, u.account nulls last;
end;
$$;
