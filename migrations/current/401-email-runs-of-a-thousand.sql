-- Email goes to SendGrid in batches of up to 1,000 personalizations (one
-- mail/send request per run the worker claims), so the fan-out queues email in
-- runs of up to 1,000 deliveries per job; SMS and WhatsApp keep runs of 50,
-- which the worker sends one call each, concurrently. Runs are still cut per
-- tenant and per two-second window of planned time, and now per channel too,
-- so that one job never mixes an email batch with text messages.
create or replace function herald_private.tg_deliveries__enqueue() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
begin
  perform graphile_worker.add_jobs(array(
    select pg_catalog.json_populate_record(null::graphile_worker.job_spec, pg_catalog.json_build_object(
             'identifier', 'delivery__send',
             'payload', pg_catalog.json_build_object('tenant_id', c.tenant_id, 'ids', c.ids),
             'run_at', c.run_at,
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
