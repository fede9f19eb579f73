-- The audit trigger (000008's herald_private.tg__audit), cheaper per row:
-- same triggers, arguments and log rows.
--
-- It used to find an insert's set columns, and an update's changed ones, by
-- turning each row into jsonb (to_jsonb(r), then jsonb_each) — for a contact,
-- hex-encoding both encrypted fields and rebuilding its attributes — which was
-- about a quarter of the database's CPU time in a CSV import. Now it reads the
-- table's columns from the catalog once per statement and writes one plain
-- expression per column (`r.col is not null`, `r.col is distinct from o.col`),
-- so the per-row work is a null test or a comparison per column.
--
-- Comparisons keep jsonb's meaning: a column whose type's own equality is not
-- byte-for-byte (citext: 'VIP' = 'vip') is compared as text, so changing only
-- the case of a tag's name is still a change. A jsonb null counts as unset on
-- insert, as it did.
--
-- Idempotent: create or replace (the triggers keep pointing at it).

create or replace function herald_private.tg__audit() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
declare
  v_keys text[] := pg_catalog.string_to_array(tg_argv[0], ',');
  v_ignored text[] := coalesce(pg_catalog.string_to_array(nullif(tg_argv[1], ''), ','), '{}') || array['created_at', 'updated_at'];
  v_tenant text := case when tg_table_name = 'tenants' then 'id' else 'tenant_id' end;
  v_actor record;
  v_record_id text;
  v_columns text;
  v_join text;
begin
  select * into v_actor from herald_private.audit_actor();
  v_record_id := pg_catalog.array_to_string(array(select pg_catalog.format('(r.%I)::text', k) from pg_catalog.unnest(v_keys) k), $s$ || '/' || $s$);
  -- One `case` per audited column, in name order (as the log has always listed
  -- them): the column's name when an insert set it / an update changed it.
  select pg_catalog.string_agg(
           pg_catalog.format('case when %s then %L end',
             case
               when tg_op = 'INSERT' and a.atttypid = 'pg_catalog.jsonb'::pg_catalog.regtype
                 then pg_catalog.format($c$r.%1$I is not null and r.%1$I <> 'null'::jsonb$c$, a.attname)
               when tg_op = 'INSERT' and t.typtype = 'c'
                 then pg_catalog.format('pg_catalog.num_nonnulls(r.%I) > 0', a.attname)
               when tg_op = 'INSERT'
                 then pg_catalog.format('r.%I is not null', a.attname)
               -- Types whose equality is byte-for-byte (or numeric, as jsonb's is): compared as they are.
               when a.atttypid = any ('{bool,int2,int4,int8,numeric,float4,float8,text,varchar,uuid,bytea,jsonb,date,time,timestamp,timestamptz,interval,_text,_uuid,_int2,_int4,_int8}'::pg_catalog.regtype[])
                 then pg_catalog.format('r.%1$I is distinct from o.%1$I', a.attname)
               else pg_catalog.format('r.%1$I::text is distinct from o.%1$I::text', a.attname)
             end,
             a.attname),
           ', ' order by a.attname::text)
    into v_columns
    from pg_catalog.pg_attribute a
    join pg_catalog.pg_type t on t.oid = a.atttypid
   where a.attrelid = tg_relid and a.attnum > 0 and not a.attisdropped
     and a.attname::text <> all (v_ignored);
  v_columns := case when v_columns is null then $e$'{}'::text[]$e$
                    else pg_catalog.format('pg_catalog.array_remove(array[%s]::text[], null)', v_columns) end;

  if tg_op = 'INSERT' then
    -- (The tenant exists: the row's foreign key was checked before this statement trigger runs.)
    execute pg_catalog.format(
      $q$insert into herald_public.audit_log (tenant_id, actor_kind, actor_id, db_user, actor_detail, action, table_name, record_id, changed_columns)
         select r.%1$I, $1, $2, session_user, $3, 'insert', $4, %2$s, %3$s
           from new_rows r$q$,
      v_tenant, v_record_id, v_columns)
    using v_actor.kind, v_actor.actor_id, v_actor.detail, tg_table_name;
  elsif tg_op = 'DELETE' then
    execute pg_catalog.format(
      $q$insert into herald_public.audit_log (tenant_id, actor_kind, actor_id, db_user, actor_detail, action, table_name, record_id, changed_columns)
         select r.%1$I, $1, $2, session_user, $3, 'delete', $4, %2$s, '{}'
           from old_rows r
          -- Deleting a tenant deletes its log with it (and what it owned, by
          -- cascade): nothing is written for a tenant that is gone.
          where exists (select 1 from herald_public.tenants t where t.id = r.%1$I)$q$,
      v_tenant, v_record_id)
    using v_actor.kind, v_actor.actor_id, v_actor.detail, tg_table_name;
  else
    v_join := pg_catalog.array_to_string(array(select pg_catalog.format('o.%1$I = r.%1$I', k) from pg_catalog.unnest(v_keys) k), ' and ');
    execute pg_catalog.format(
      $q$insert into herald_public.audit_log (tenant_id, actor_kind, actor_id, db_user, actor_detail, action, table_name, record_id, changed_columns)
         select c.tenant_id, $1, $2, session_user, $3, 'update', $4, c.record_id, c.changed
           from (select r.%1$I as tenant_id, %2$s as record_id, %3$s as changed
                   from new_rows r join old_rows o on %4$s) c
          where pg_catalog.cardinality(c.changed) > 0$q$,
      v_tenant, v_record_id, v_columns, v_join)
    using v_actor.kind, v_actor.actor_id, v_actor.detail, tg_table_name;
  end if;
  return null;
end;
$$;
comment on function herald_private.tg__audit() is
  E'Writes audit_log rows for a statement: actor, table, row key and changed column names (never values).';
