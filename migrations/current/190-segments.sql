-- Segments: a tenant's saved, named filters over contact fields (docs/audiences.md).
--
-- One grammar, one validator, one compiler, all here: herald_hidden.segment_filter_sql
-- turns a filter (jsonb) into a WHERE clause over `herald_public.contacts c` and
-- its parameters. The clause's text is built only from this file's own
-- fragments (whitelisted columns, operators and casts); every value and every
-- attribute key from the filter is a parameter (`$1[n]`, an element of one
-- text[] bound with EXECUTE … USING). Storing a segment, searching contacts and
-- a broadcast's fan-out all go through it, so what is stored is what compiles,
-- and what runs is what was validated. The query runs as the caller (security
-- invoker) under row-level security.

-------------------------------------------------------------------------------
-- The compiler
-------------------------------------------------------------------------------

-- Limits: a filter is small and shallow (bounded compile and plan time).
create or replace function herald_hidden.segment_limits(out max_depth integer, out max_conditions integer,
  out max_items integer, out max_chars integer)
  language sql immutable parallel safe
  set search_path = ''
as $$
  select 6, 100, 500, 65536;
$$;

-- An attribute's value as a timestamp, or null when it is not a date string.
create or replace function herald_hidden.jsonb_timestamptz(value jsonb) returns timestamptz
  language plpgsql stable parallel safe
  set search_path = ''
as $$
begin
  if pg_catalog.jsonb_typeof(value) is distinct from 'string' or pg_catalog.length(value #>> '{}') > 64 then
    return null;
  end if;
  return (value #>> '{}')::timestamptz;
exception when data_exception then
  return null;
end;
$$;

-- Refuse a filter, naming the path of what is wrong (`filter.all[1].attribute.gte`).
create or replace function herald_hidden.segment_filter_refuse(path text, message text) returns void
  language plpgsql volatile
  set search_path = ''
as $$
begin
  raise exception '%: %', path, message using errcode = '22023', column = path;
end;
$$;

-- A comparison value: a date (ISO 8601) or {"ago": "<interval>"}; or, where
-- numbers are allowed, a number. Adds the parameter and returns the SQL of the
-- right-hand side, and the value's kind.
create or replace function herald_hidden.segment_filter_bound(value jsonb, path text, numbers_allowed boolean,
  inout params text[], out sql text, out kind text)
  language plpgsql stable
  set search_path = ''
as $$
declare
  v_text text;
begin
  if pg_catalog.jsonb_typeof(value) = 'number' and numbers_allowed then
    params := params || (value #>> '{}');
    sql := pg_catalog.format('$1[%s]::numeric', pg_catalog.cardinality(params));
    kind := 'number';
    return;
  end if;
  if pg_catalog.jsonb_typeof(value) = 'object' and (select pg_catalog.array_agg(k) from pg_catalog.jsonb_object_keys(value) k) = array['ago']
     and pg_catalog.jsonb_typeof(value -> 'ago') = 'string' then
    v_text := value ->> 'ago';
    begin
      if pg_catalog.length(v_text) > 64 or v_text::interval is null then
        raise invalid_datetime_format;
      end if;
    exception when data_exception then
      perform herald_hidden.segment_filter_refuse(path || '.ago', 'must be an interval such as "30 days"');
    end;
    params := params || v_text;
    sql := pg_catalog.format('(pg_catalog.now() - $1[%s]::interval)', pg_catalog.cardinality(params));
    kind := 'date';
    return;
  end if;
  if pg_catalog.jsonb_typeof(value) = 'string' then
    v_text := value #>> '{}';
    begin
      if pg_catalog.length(v_text) > 64 or v_text::timestamptz is null then
        raise invalid_datetime_format;
      end if;
    exception when data_exception then
      perform herald_hidden.segment_filter_refuse(path, 'must be a date such as "2026-01-31" or "2026-01-31T09:00:00Z"');
    end;
    params := params || v_text;
    sql := pg_catalog.format('$1[%s]::timestamptz', pg_catalog.cardinality(params));
    kind := 'date';
    return;
  end if;
  perform herald_hidden.segment_filter_refuse(path,
    case when numbers_allowed then 'must be a number, a date, or {"ago": "30 days"}'
         else 'must be a date, or {"ago": "30 days"}' end);
end;
$$;

-- `expression` compared with gt/gte/lt/lte (and, when `existence` is given,
-- `exists`) from the object `spec`; every key of spec must be one of those.
create or replace function herald_hidden.segment_filter_range(spec jsonb, path text, expression text, existence text,
  numbers_allowed boolean, inout params text[], out sql text)
  language plpgsql stable
  set search_path = ''
as $$
declare
  v_key text;
  v_parts text[] := '{}';
  v_bound record;
  v_kind text;
  v_operator text;
begin
  if pg_catalog.jsonb_typeof(spec) is distinct from 'object' or spec = '{}' then
    perform herald_hidden.segment_filter_refuse(path,
      case when existence is null then 'must be an object with gt, gte, lt or lte'
           else 'must be an object with gt, gte, lt, lte or exists' end);
  end if;
  for v_key in select k from pg_catalog.jsonb_object_keys(spec) k order by k loop
    if v_key = 'exists' and existence is not null then
      if pg_catalog.jsonb_typeof(spec -> v_key) is distinct from 'boolean' then
        perform herald_hidden.segment_filter_refuse(path || '.exists', 'must be true or false');
      end if;
      v_parts := v_parts || case when (spec ->> v_key)::boolean then existence else '(not ' || existence || ')' end;
      continue;
    end if;
    v_operator := case v_key when 'gt' then '>' when 'gte' then '>=' when 'lt' then '<' when 'lte' then '<=' end;
    if v_operator is null then
      perform herald_hidden.segment_filter_refuse(path || '.' || v_key,
        case when existence is null then 'is not a comparison (gt, gte, lt, lte)'
             else 'is not a comparison (gt, gte, lt, lte, exists)' end);
    end if;
    select * into v_bound from herald_hidden.segment_filter_bound(spec -> v_key, path || '.' || v_key, numbers_allowed, params);
    params := v_bound.params;
    if v_kind is not null and v_kind <> v_bound.kind then
      perform herald_hidden.segment_filter_refuse(path || '.' || v_key, 'compares a ' || v_bound.kind || ' where another bound is a ' || v_kind);
    end if;
    v_kind := v_bound.kind;
    v_parts := v_parts || pg_catalog.format('%s %s %s',
      case when v_kind = 'number' then pg_catalog.replace(expression, '%TYPE%', 'number') else pg_catalog.replace(expression, '%TYPE%', 'date') end,
      v_operator, v_bound.sql);
  end loop;
  sql := '(' || pg_catalog.array_to_string(v_parts, ' and ') || ')';
end;
$$;

-- A list of 1..max_items uuids (tag or list ids) as a uuid[] parameter.
create or replace function herald_hidden.segment_filter_ids(value jsonb, path text, inout params text[], out sql text, out how_many integer)
  language plpgsql stable
  set search_path = ''
as $$
declare
  v_ids uuid[];
  v_item jsonb;
  v_index integer := 0;
begin
  if pg_catalog.jsonb_typeof(value) is distinct from 'array' or pg_catalog.jsonb_array_length(value) = 0
     or pg_catalog.jsonb_array_length(value) > (select max_items from herald_hidden.segment_limits()) then
    perform herald_hidden.segment_filter_refuse(path, pg_catalog.format('must be a list of 1 to %s ids',
      (select max_items from herald_hidden.segment_limits())));
  end if;
  for v_item in select e from pg_catalog.jsonb_array_elements(value) e loop
    if pg_catalog.jsonb_typeof(v_item) <> 'string' or (v_item #>> '{}') !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
      perform herald_hidden.segment_filter_refuse(path || '[' || v_index || ']', 'must be an id (a UUID)');
    end if;
    v_index := v_index + 1;
  end loop;
  v_ids := array(select distinct (e #>> '{}')::uuid from pg_catalog.jsonb_array_elements(value) e);
  params := params || v_ids::text;
  sql := pg_catalog.format('$1[%s]::uuid[]', pg_catalog.cardinality(params));
  how_many := pg_catalog.cardinality(v_ids);
end;
$$;

-- A text column compared with equals / in / exists (exactly one).
create or replace function herald_hidden.segment_filter_text(spec jsonb, path text, column_sql text, inout params text[], out sql text)
  language plpgsql stable
  set search_path = ''
as $$
declare
  v_key text;
  v_index integer := 0;
  v_item jsonb;
begin
  if pg_catalog.jsonb_typeof(spec) is distinct from 'object' or (select count(*) from pg_catalog.jsonb_object_keys(spec)) <> 1 then
    perform herald_hidden.segment_filter_refuse(path, 'must be an object with exactly one of equals, in, exists');
  end if;
  v_key := (select k from pg_catalog.jsonb_object_keys(spec) k);
  if v_key = 'equals' then
    if pg_catalog.jsonb_typeof(spec -> v_key) <> 'string' or pg_catalog.length(spec ->> v_key) > 200 then
      perform herald_hidden.segment_filter_refuse(path || '.equals', 'must be a string of at most 200 characters');
    end if;
    params := params || (spec ->> v_key);
    sql := pg_catalog.format('%s = $1[%s]', column_sql, pg_catalog.cardinality(params));
  elsif v_key = 'in' then
    if pg_catalog.jsonb_typeof(spec -> v_key) <> 'array' or pg_catalog.jsonb_array_length(spec -> v_key) = 0
       or pg_catalog.jsonb_array_length(spec -> v_key) > (select max_items from herald_hidden.segment_limits()) then
      perform herald_hidden.segment_filter_refuse(path || '.in', pg_catalog.format('must be a list of 1 to %s strings',
        (select max_items from herald_hidden.segment_limits())));
    end if;
    for v_item in select e from pg_catalog.jsonb_array_elements(spec -> v_key) e loop
      if pg_catalog.jsonb_typeof(v_item) <> 'string' or pg_catalog.length(v_item #>> '{}') > 200 then
        perform herald_hidden.segment_filter_refuse(path || '.in[' || v_index || ']', 'must be a string of at most 200 characters');
      end if;
      v_index := v_index + 1;
    end loop;
    -- PostgreSQL's own array literal of the strings; the query casts it back.
    params := params || array(select e #>> '{}' from pg_catalog.jsonb_array_elements(spec -> v_key) e)::text;
    sql := pg_catalog.format('%s = any ($1[%s]::text[])', column_sql, pg_catalog.cardinality(params));
  elsif v_key = 'exists' then
    if pg_catalog.jsonb_typeof(spec -> v_key) <> 'boolean' then
      perform herald_hidden.segment_filter_refuse(path || '.exists', 'must be true or false');
    end if;
    sql := pg_catalog.format(case when (spec ->> v_key)::boolean then '(%s is not null)' else '(%s is null)' end, column_sql);
  else
    perform herald_hidden.segment_filter_refuse(path || '.' || v_key, 'is not one of equals, in, exists');
  end if;
end;
$$;

-- One node of a filter (an object with exactly one key), compiled.
create or replace function herald_hidden.segment_filter_node(node jsonb, path text, depth integer,
  inout params text[], inout conditions integer, out sql text)
  language plpgsql stable
  set search_path = ''
as $$
declare
  v_limits record := herald_hidden.segment_limits();
  v_key text;
  v_spec jsonb;
  v_child record;
  v_parts text[] := '{}';
  v_index integer := 0;
  v_item jsonb;
  v_ids record;
  v_join text;
  v_channel text;
  v_attr text;
  v_ops text[];
begin
  if depth > v_limits.max_depth then
    perform herald_hidden.segment_filter_refuse(path, pg_catalog.format('is nested deeper than %s levels', v_limits.max_depth));
  end if;
  conditions := conditions + 1;
  if conditions > v_limits.max_conditions then
    perform herald_hidden.segment_filter_refuse(path, pg_catalog.format('makes the filter longer than %s conditions', v_limits.max_conditions));
  end if;
  if pg_catalog.jsonb_typeof(node) is distinct from 'object' or (select count(*) from pg_catalog.jsonb_object_keys(node)) <> 1 then
    perform herald_hidden.segment_filter_refuse(path, 'must be an object with exactly one condition');
  end if;
  v_key := (select k from pg_catalog.jsonb_object_keys(node) k);
  v_spec := node -> v_key;
  path := path || '.' || v_key;

  case v_key
  when 'all', 'any' then
    if pg_catalog.jsonb_typeof(v_spec) <> 'array' or pg_catalog.jsonb_array_length(v_spec) = 0
       or pg_catalog.jsonb_array_length(v_spec) > v_limits.max_conditions then
      perform herald_hidden.segment_filter_refuse(path, 'must be a non-empty list of conditions');
    end if;
    for v_item in select e from pg_catalog.jsonb_array_elements(v_spec) e loop
      select * into v_child from herald_hidden.segment_filter_node(v_item, path || '[' || v_index || ']', depth + 1, params, conditions);
      params := v_child.params;
      conditions := v_child.conditions;
      v_parts := v_parts || v_child.sql;
      v_index := v_index + 1;
    end loop;
    sql := '(' || pg_catalog.array_to_string(v_parts, case when v_key = 'all' then ' and ' else ' or ' end) || ')';

  when 'not' then
    select * into v_child from herald_hidden.segment_filter_node(v_spec, path, depth + 1, params, conditions);
    params := v_child.params;
    conditions := v_child.conditions;
    sql := '(not ' || v_child.sql || ')';

  when 'subscribed' then
    if pg_catalog.jsonb_typeof(v_spec) <> 'object' or v_spec = '{}' then
      perform herald_hidden.segment_filter_refuse(path, 'must be an object such as {"sms": true}');
    end if;
    for v_channel in select k from pg_catalog.jsonb_object_keys(v_spec) k order by k loop
      if v_channel not in ('sms', 'email', 'whatsapp') then
        perform herald_hidden.segment_filter_refuse(path || '.' || v_channel, 'is not a channel (sms, email, whatsapp)');
      end if;
      if pg_catalog.jsonb_typeof(v_spec -> v_channel) <> 'boolean' then
        perform herald_hidden.segment_filter_refuse(path || '.' || v_channel, 'must be true or false');
      end if;
      params := params || (v_spec ->> v_channel);
      v_parts := v_parts || pg_catalog.format('c.%s = $1[%s]::boolean',
        case v_channel when 'sms' then 'sms_subscribed' when 'email' then 'email_subscribed' else 'whatsapp_subscribed' end,
        pg_catalog.cardinality(params));
    end loop;
    sql := '(' || pg_catalog.array_to_string(v_parts, ' and ') || ')';

  when 'tags', 'lists' then
    if pg_catalog.jsonb_typeof(v_spec) <> 'object' or v_spec = '{}' then
      perform herald_hidden.segment_filter_refuse(path, 'must be an object with any, all and/or none');
    end if;
    v_join := case v_key
      when 'tags' then 'from herald_public.contact_tags x where x.tenant_id = c.tenant_id and x.contact_id = c.id and x.tag_id = any (%s)'
      else 'from herald_public.list_members x where x.tenant_id = c.tenant_id and x.contact_id = c.id and x.list_id = any (%s)' end;
    for v_attr in select k from pg_catalog.jsonb_object_keys(v_spec) k order by k loop
      if v_attr not in ('any', 'all', 'none') then
        perform herald_hidden.segment_filter_refuse(path || '.' || v_attr, 'is not one of any, all, none');
      end if;
      select * into v_ids from herald_hidden.segment_filter_ids(v_spec -> v_attr, path || '.' || v_attr, params);
      params := v_ids.params;
      if v_attr = 'any' then
        v_parts := v_parts || pg_catalog.format('exists (select 1 ' || v_join || ')', v_ids.sql);
      elsif v_attr = 'none' then
        v_parts := v_parts || pg_catalog.format('not exists (select 1 ' || v_join || ')', v_ids.sql);
      else
        params := params || v_ids.how_many::text;
        v_parts := v_parts || pg_catalog.format('(select count(*) ' || v_join || ') = $1[%s]::bigint', v_ids.sql,
          pg_catalog.cardinality(params));
      end if;
    end loop;
    sql := '(' || pg_catalog.array_to_string(v_parts, ' and ') || ')';

  when 'attribute' then
    if pg_catalog.jsonb_typeof(v_spec) <> 'object' then
      perform herald_hidden.segment_filter_refuse(path, 'must be an object with key and one of equals, in, exists, or gt/gte/lt/lte');
    end if;
    if pg_catalog.jsonb_typeof(v_spec -> 'key') is distinct from 'string'
       or pg_catalog.length(v_spec ->> 'key') not between 1 and 200 then
      perform herald_hidden.segment_filter_refuse(path || '.key', 'must be the name of an attribute (1 to 200 characters)');
    end if;
    params := params || (v_spec ->> 'key');
    v_attr := pg_catalog.format('$1[%s]', pg_catalog.cardinality(params));
    v_ops := array(select k from pg_catalog.jsonb_object_keys(v_spec) k where k <> 'key' order by k);
    if pg_catalog.cardinality(v_ops) = 0 then
      perform herald_hidden.segment_filter_refuse(path, 'needs one of equals, in, exists, or gt/gte/lt/lte');
    end if;
    if v_ops && array['equals', 'in', 'exists'] and pg_catalog.cardinality(v_ops) > 1 then
      perform herald_hidden.segment_filter_refuse(path || '.' || v_ops[2], 'cannot be combined with another test on one attribute');
    end if;
    if v_ops[1] = 'equals' then
      if pg_catalog.jsonb_typeof(v_spec -> 'equals') not in ('string', 'number', 'boolean')
         or pg_catalog.length((v_spec -> 'equals')::text) > 1000 then
        perform herald_hidden.segment_filter_refuse(path || '.equals', 'must be a string, number or boolean');
      end if;
      -- Containment of {key: value}: an exact match of a scalar, and the shape a GIN index on attributes serves.
      params := params || pg_catalog.jsonb_build_object(v_spec ->> 'key', v_spec -> 'equals')::text;
      sql := pg_catalog.format('c.attributes @> $1[%s]::jsonb', pg_catalog.cardinality(params));
    elsif v_ops[1] = 'in' then
      if pg_catalog.jsonb_typeof(v_spec -> 'in') <> 'array' or pg_catalog.jsonb_array_length(v_spec -> 'in') = 0
         or pg_catalog.jsonb_array_length(v_spec -> 'in') > v_limits.max_items then
        perform herald_hidden.segment_filter_refuse(path || '.in', pg_catalog.format('must be a list of 1 to %s values', v_limits.max_items));
      end if;
      for v_item in select e from pg_catalog.jsonb_array_elements(v_spec -> 'in') e loop
        if pg_catalog.jsonb_typeof(v_item) not in ('string', 'number', 'boolean') or pg_catalog.length(v_item::text) > 1000 then
          perform herald_hidden.segment_filter_refuse(path || '.in[' || v_index || ']', 'must be a string, number or boolean');
        end if;
        v_index := v_index + 1;
      end loop;
      params := params || (v_spec -> 'in')::text;
      sql := pg_catalog.format('c.attributes -> %s = any (array(select pg_catalog.jsonb_array_elements($1[%s]::jsonb)))',
        v_attr, pg_catalog.cardinality(params));
    elsif v_ops[1] = 'exists' then
      if pg_catalog.jsonb_typeof(v_spec -> 'exists') <> 'boolean' then
        perform herald_hidden.segment_filter_refuse(path || '.exists', 'must be true or false');
      end if;
      sql := pg_catalog.format(case when (v_spec ->> 'exists')::boolean then '(c.attributes ? %s)' else '(not c.attributes ? %s)' end, v_attr);
    else
      -- Numbers compare with numbers, dates with date strings; anything else in the attribute matches no bound.
      select r.sql, r.params into sql, params from herald_hidden.segment_filter_range(v_spec - 'key', path,
        pg_catalog.format('herald_hidden.segment_attribute_%%TYPE%%(c.attributes -> %s)', v_attr), null, true, params) r;
    end if;

  when 'timezone', 'locale' then
    select r.sql, r.params into sql, params
      from herald_hidden.segment_filter_text(v_spec, path, case v_key when 'timezone' then 'c.timezone' else 'c.locale' end, params) r;

  when 'createdAt', 'updatedAt' then
    select r.sql, r.params into sql, params from herald_hidden.segment_filter_range(v_spec, path,
      case v_key when 'createdAt' then 'c.created_at' else 'c.updated_at' end, null, false, params) r;

  when 'lastInboundAt' then
    select r.sql, r.params into sql, params from herald_hidden.segment_filter_range(v_spec, path,
      '(select max(i.received_at) from herald_public.inbound_messages i where i.tenant_id = c.tenant_id and i.contact_id = c.id)',
      'exists (select 1 from herald_public.inbound_messages i where i.tenant_id = c.tenant_id and i.contact_id = c.id)',
      false, params) r;

  when 'lastDeliveredAt' then
    select r.sql, r.params into sql, params from herald_hidden.segment_filter_range(v_spec, path,
      '(select max(d.completed_at) from herald_public.deliveries d where d.tenant_id = c.tenant_id and d.contact_id = c.id and d.status = ''delivered'')',
      'exists (select 1 from herald_public.deliveries d where d.tenant_id = c.tenant_id and d.contact_id = c.id and d.status = ''delivered'')',
      false, params) r;

  else
    perform herald_hidden.segment_filter_refuse(path,
      'is not a condition (all, any, not, subscribed, tags, lists, attribute, timezone, locale, createdAt, updatedAt, lastInboundAt, lastDeliveredAt)');
  end case;
end;
$$;

create or replace function herald_hidden.segment_attribute_number(value jsonb) returns numeric
  language sql immutable parallel safe
  set search_path = ''
as $$
  select case when pg_catalog.jsonb_typeof(value) = 'number' then value::numeric end;
$$;

create or replace function herald_hidden.segment_attribute_date(value jsonb) returns timestamptz
  language sql stable parallel safe
  set search_path = ''
as $$
  select herald_hidden.jsonb_timestamptz(value);
$$;

-- A filter, validated and compiled: `sql` is a boolean expression over
-- `herald_public.contacts c` whose every input is an element of `params`
-- (referenced as `$1[n]`). Raises 22023 naming the offending path.
create or replace function herald_hidden.segment_filter_sql(filter jsonb, path text default 'filter',
  out sql text, out params text[])
  language plpgsql stable
  set search_path = ''
as $$
declare
  v_node record;
begin
  if filter is null then
    perform herald_hidden.segment_filter_refuse(path, 'is required');
  end if;
  if pg_catalog.length(filter::text) > (select max_chars from herald_hidden.segment_limits()) then
    perform herald_hidden.segment_filter_refuse(path, pg_catalog.format('is longer than %s characters',
      (select max_chars from herald_hidden.segment_limits())));
  end if;
  select * into v_node from herald_hidden.segment_filter_node(filter, path, 1, '{}', 0);
  sql := v_node.sql;
  params := v_node.params;
end;
$$;

-- True, or an error naming the offending path: the check on segments.filter.
-- (Declared immutable for the check: a filter's validity depends on nothing else.)
create or replace function herald_hidden.segment_filter_valid(filter jsonb) returns boolean
  language plpgsql immutable
  set search_path = ''
as $$
begin
  perform herald_hidden.segment_filter_sql(filter, 'filter');
  return true;
end;
$$;

-------------------------------------------------------------------------------
-- segments (tenant-owned)
-------------------------------------------------------------------------------

drop table if exists herald_public.segments cascade;
drop function if exists herald_private.tg_segments__validate_filter();

create table herald_public.segments (
  tenant_id uuid not null default herald_public.current_tenant_id()
    references herald_public.tenants on delete cascade,
  id uuid not null default gen_random_uuid(),
  name public.citext not null constraint segments_name_length check (length(name) between 1 and 200),
  description text constraint segments_description_length check (length(description) <= 2000),
  -- Only a valid filter is stored. A check (not a trigger) so that row-level
  -- security refuses another tenant's row before the filter is even read.
  filter jsonb not null constraint segments_filter_valid check (herald_hidden.segment_filter_valid(filter)),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (tenant_id, id),
  constraint segments_name_unique unique (tenant_id, name)
);
comment on table herald_public.segments is
  E'A saved, named filter over contacts: a broadcast audience (`sendMessage(segmentIds:)`) and a search (`searchContacts(segmentId:)`). '
  'The filter grammar is in docs/audiences.md.';
comment on column herald_public.segments.filter is
  E'The filter, e.g. `{"all": [{"attribute": {"key": "plan", "equals": "gold"}}, {"tags": {"any": ["<tag id>"]}}]}`. '
  'Validated when written: an invalid one is refused with the path of what is wrong.';

create trigger _100_timestamps before insert or update on herald_public.segments
  for each row execute function herald_private.tg__timestamps();
create trigger _900_audit_insert after insert on herald_public.segments referencing new table as new_rows
  for each statement execute function herald_private.tg__audit('id', '');
create trigger _900_audit_update after update on herald_public.segments referencing old table as old_rows new table as new_rows
  for each statement execute function herald_private.tg__audit('id', '');
create trigger _900_audit_delete after delete on herald_public.segments referencing old table as old_rows
  for each statement execute function herald_private.tg__audit('id', '');

alter table herald_public.segments enable row level security;
alter table herald_public.segments force row level security;

create policy select_member on herald_public.segments for select to :DATABASE_MEMBER, :DATABASE_WORKER
  using (tenant_id = (select herald_public.current_tenant_id()));
comment on policy select_member on herald_public.segments is E'Members (and the worker, at fan-out) read their own tenant''s segments.';
create policy insert_member on herald_public.segments for insert to :DATABASE_MEMBER
  with check (tenant_id = (select herald_public.current_tenant_id()));
comment on policy insert_member on herald_public.segments is E'Members add segments to their own tenant only.';
create policy update_member on herald_public.segments for update to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
comment on policy update_member on herald_public.segments is E'Members edit their own tenant''s segments, and cannot move one to another tenant.';
create policy delete_member on herald_public.segments for delete to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()));
comment on policy delete_member on herald_public.segments is E'Members delete their own tenant''s segments.';
create policy select_admin on herald_public.segments for select to :DATABASE_ADMIN using (true);
comment on policy select_admin on herald_public.segments is E'Operators read every tenant''s segments.';
create policy delete_admin on herald_public.segments for delete to :DATABASE_ADMIN using (true);
comment on policy delete_admin on herald_public.segments is E'Operators delete any segment.';

grant select on herald_public.segments to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;
grant insert (tenant_id, name, description, filter), update (name, description, filter) on herald_public.segments to :DATABASE_MEMBER;
grant delete on herald_public.segments to :DATABASE_MEMBER, :DATABASE_ADMIN;

grant execute on function
  herald_hidden.segment_limits(),
  herald_hidden.jsonb_timestamptz(jsonb),
  herald_hidden.segment_filter_refuse(text, text),
  herald_hidden.segment_filter_bound(jsonb, text, boolean, text[]),
  herald_hidden.segment_filter_range(jsonb, text, text, text, boolean, text[]),
  herald_hidden.segment_filter_ids(jsonb, text, text[]),
  herald_hidden.segment_filter_text(jsonb, text, text, text[]),
  herald_hidden.segment_filter_node(jsonb, text, integer, text[], integer),
  herald_hidden.segment_attribute_number(jsonb),
  herald_hidden.segment_attribute_date(jsonb),
  herald_hidden.segment_filter_sql(jsonb, text),
  herald_hidden.segment_filter_valid(jsonb)
  to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;

-- How many of `segment_ids` are not the session tenant's segments (another
-- tenant's are as missing as ones that never existed). Called by send_message.
create or replace function herald_hidden.missing_segments(segment_ids uuid[])
  returns integer
  language sql stable
  set search_path = ''
as $$
  select pg_catalog.cardinality(segment_ids) - (
    select count(*)::integer from herald_public.segments s
     where s.tenant_id = herald_public.current_tenant_id()
       and s.id = any (segment_ids));
$$;
grant execute on function herald_hidden.missing_segments(uuid[]) to :DATABASE_MEMBER, :DATABASE_WORKER;

-------------------------------------------------------------------------------
-- Evaluating a filter
-------------------------------------------------------------------------------

-- The ids of the session tenant's contacts matching a filter (and optional
-- further segment), as the caller, under row-level security.
create or replace function herald_hidden.segment_filter_where(filter jsonb, segment_id uuid, path text,
  out sql text, out params text[])
  language plpgsql stable
  set search_path = ''
as $$
declare
  v_filter jsonb := filter;
  v_compiled record;
begin
  if segment_id is not null then
    select s.filter into v_filter from herald_public.segments s
     where s.tenant_id = herald_public.current_tenant_id() and s.id = segment_filter_where.segment_id;
    if not found then
      raise exception 'segment not found' using errcode = 'NTFND', column = 'segmentId';
    end if;
    if filter is not null then
      v_filter := pg_catalog.jsonb_build_object('all', pg_catalog.jsonb_build_array(v_filter, filter));
    end if;
  end if;
  if v_filter is null then
    sql := 'true';
    params := '{}';
    return;
  end if;
  select * into v_compiled from herald_hidden.segment_filter_sql(v_filter, path);
  sql := v_compiled.sql;
  params := v_compiled.params;
end;
$$;
grant execute on function herald_hidden.segment_filter_where(jsonb, uuid, text) to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;

-- searchContacts: by tag, list, filter and/or saved segment (all given must hold).
drop function if exists herald_public.search_contacts(uuid, uuid);
drop function if exists herald_public.search_contacts(uuid, uuid, jsonb, uuid);
create function herald_public.search_contacts(tag_id uuid default null, list_id uuid default null,
  filter jsonb default null, segment_id uuid default null)
  returns setof herald_public.contacts
  language plpgsql stable
  rows 1000
  set search_path = ''
as $$
declare
  v_where record;
begin
  select * into v_where from herald_hidden.segment_filter_where(filter, segment_id, 'filter');
  return query execute
    'select c.* from herald_public.contacts c
      where c.tenant_id = (select herald_public.current_tenant_id())
        and ($2 is null or exists (
              select 1 from herald_public.contact_tags ct
               where ct.tenant_id = c.tenant_id and ct.contact_id = c.id and ct.tag_id = $2))
        and ($3 is null or exists (
              select 1 from herald_public.list_members lm
               where lm.tenant_id = c.tenant_id and lm.contact_id = c.id and lm.list_id = $3))
        and ' || v_where.sql || '
      order by c.created_at, c.id'
    using v_where.params, tag_id, list_id;
end;
$$;
comment on function herald_public.search_contacts(uuid, uuid, jsonb, uuid) is
  E'Contacts with the given tag, on the given list, matching `filter` (the segment grammar, docs/audiences.md) and/or the saved segment `segmentId`; oldest first. '
  'With `first` and `totalCount` this is a preview: the count and the first page.';
grant execute on function herald_public.search_contacts(uuid, uuid, jsonb, uuid)
  to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;

-- How many contacts match a segment now (one count statement, no rows fetched).
create or replace function herald_public.segments_contact_count(segment herald_public.segments) returns integer
  language plpgsql stable
  set search_path = ''
as $$
declare
  v_compiled record;
  v_count integer;
begin
  select * into v_compiled from herald_hidden.segment_filter_sql(segment.filter, 'filter');
  execute 'select count(*)::integer from herald_public.contacts c
            where c.tenant_id = (select herald_public.current_tenant_id()) and ' || v_compiled.sql
    into v_count using v_compiled.params;
  return v_count;
end;
$$;
comment on function herald_public.segments_contact_count(herald_public.segments) is E'How many contacts match this segment now.';
grant execute on function herald_public.segments_contact_count(herald_public.segments) to :DATABASE_MEMBER, :DATABASE_WORKER, :DATABASE_ADMIN;

-- Last delivered: the latest delivered delivery of a contact, from an index.
create index if not exists deliveries_delivered_by_contact on herald_public.deliveries (tenant_id, contact_id, completed_at)
  where status = 'delivered';
