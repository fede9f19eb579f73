-- The timestamps trigger (000001's herald_private.tg__timestamps), without
-- its SET clause: same behaviour, every name in it qualified instead.
--
-- It runs before every insert and update of almost every table, once per
-- row. A function with a SET clause saves, sets and restores that setting
-- at each call: for this two-line trigger that was most of its cost, about
-- 7 µs per row (some 9% of the database's CPU time in a CSV import of
-- contacts). A trigger that names only pg_catalog's functions, types and
-- operators, explicitly, resolves the same whatever the caller's
-- search_path; it is not SECURITY DEFINER, so it never runs with more
-- rights than its caller anyway.
--
-- Idempotent: create or replace (the triggers keep pointing at it).

create or replace function herald_private.tg__timestamps() returns trigger
  language plpgsql volatile
as $$
begin
  new.created_at := case when tg_op operator(pg_catalog.=) 'INSERT' then pg_catalog.now() else old.created_at end;
  new.updated_at := case when tg_op operator(pg_catalog.=) 'UPDATE' and old.updated_at operator(pg_catalog.>=) pg_catalog.now()
                      then old.updated_at operator(pg_catalog.+) '1 millisecond'::pg_catalog.interval
                      else pg_catalog.now() end;
  return new;
end;
$$;
comment on function herald_private.tg__timestamps() is
  E'Keeps created_at immutable and updated_at increasing.';
