-- Memberships are what turns a person into a reader of a tenant's PII (a
-- member's session gets the tenant's data key). Operators could insert any
-- membership from psql as herald_admin — their own user's too — then sign in
-- as that tenant's owner. Now nobody but Herald's definer functions writes
-- memberships: herald_private.grant_membership / revoke_membership, callable
-- by the authenticator (the CLI, as the operator's tool), which refuse a
-- platform operator's own user, and whose every write lands in the tenant's
-- audit log (a trigger on the table: no request role can skip it).
--
-- Idempotent: re-applied on every `db watch` save.

drop policy if exists insert_admin on herald_public.memberships;
drop policy if exists update_admin on herald_public.memberships;
drop policy if exists delete_admin on herald_public.memberships;
revoke insert, update, delete on herald_public.memberships from :DATABASE_ADMIN;

-- The definer functions below run as the owner, under forced RLS.
drop policy if exists insert_definer on herald_public.memberships;
drop policy if exists update_definer on herald_public.memberships;
drop policy if exists delete_definer on herald_public.memberships;
create policy insert_definer on herald_public.memberships for insert to :DATABASE_OWNER with check (true);
create policy update_definer on herald_public.memberships for update to :DATABASE_OWNER using (true) with check (true);
create policy delete_definer on herald_public.memberships for delete to :DATABASE_OWNER using (true);

-- The users that platform operators act as (named in herald_admin tokens and
-- in the audit log). Such a user never belongs to a tenant: an operator
-- cannot make itself a tenant's member, owner or admin.
create table if not exists herald_private.operators (
  user_id uuid primary key references herald_public.users on delete cascade,
  registered_at timestamptz not null default now()
);

create or replace function herald_private.register_operator(user_id uuid) returns void
  language plpgsql volatile strict security definer
  set search_path = ''
as $$
begin
  if exists (select 1 from herald_public.memberships m where m.user_id = register_operator.user_id) then
    raise exception 'This user belongs to a tenant: an operator acts as a user of its own, which no tenant has'
      using errcode = 'OPMEM';
  end if;
  insert into herald_private.operators (user_id) values (register_operator.user_id) on conflict do nothing;
end;
$$;

-- Adds (or changes the role of) a membership. Refused for an operator's own
-- user: the session's user claim (an operator who names itself) and every
-- registered operator. The audit trigger on memberships writes the tenant's
-- log row in this same statement, naming the database login and what the
-- caller said it was (`herald.actor_detail`).
create or replace function herald_private.grant_membership(tenant_id uuid, user_id uuid, role text) returns void
  language plpgsql volatile strict security definer
  set search_path = ''
as $$
begin
  if grant_membership.user_id = herald_public.current_user_id()
     or exists (select 1 from herald_private.operators o where o.user_id = grant_membership.user_id) then
    raise exception 'A platform operator cannot grant itself a membership: a tenant''s owner or admin adds its people'
      using errcode = 'OPSLF';
  end if;
  insert into herald_public.memberships (tenant_id, user_id, role)
  values (grant_membership.tenant_id, grant_membership.user_id, grant_membership.role)
  on conflict on constraint memberships_pkey do update set role = excluded.role
    where herald_public.memberships.role is distinct from excluded.role;
end;
$$;

create or replace function herald_private.revoke_membership(tenant_id uuid, user_id uuid) returns boolean
  language sql volatile strict security definer
  set search_path = ''
as $$
  with removed as (
    delete from herald_public.memberships m
     where m.tenant_id = revoke_membership.tenant_id and m.user_id = revoke_membership.user_id
    returning 1
  )
  select exists (select 1 from removed);
$$;

revoke execute on function herald_private.register_operator(uuid), herald_private.grant_membership(uuid, uuid, text),
  herald_private.revoke_membership(uuid, uuid) from public;
grant execute on function herald_private.register_operator(uuid), herald_private.grant_membership(uuid, uuid, text),
  herald_private.revoke_membership(uuid, uuid) to :DATABASE_AUTHENTICATOR;

comment on table herald_public.memberships is
  E'@behavior -insert -update -delete\nA user''s role within one tenant. Granted by operators through `herald user create` (audited in the tenant''s log).';
