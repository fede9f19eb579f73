-- Tenant self-service: a tenant's owners and admins invite people by email
-- (an invitation token, shown once, accepted by the signed-in user whose email
-- it names), owners change roles and remove members, a user leaves a tenant,
-- and platform operators create tenants, all over GraphQL.
--
-- Security stays in row-level security, as for every request: the functions
-- below run with the caller's rights, and the policies decide. A membership is
-- written by a member only as the tenant's owner (roles, removals) or as
-- itself (leaving). Joining goes through the invitation: the person invited
-- (signed in, to any tenant, with the email it names) marks it accepted,
-- presenting its token, and the invitation's trigger checks the token and
-- writes the membership. Triggers also keep what no policy can see across
-- rows: a tenant always keeps an owner, and a platform operator's user never
-- joins a tenant (000009's rule, now for every way in). Every write lands in the tenant's
-- audit log. Another tenant's invitation or member looks exactly like one that
-- does not exist (NTFND).
--
-- Idempotent: re-applied on every `db watch` save.

drop function if exists herald_public.invite_member(public.citext, text);
drop function if exists herald_public.accept_invitation(text);
drop function if exists herald_public.revoke_invitation(uuid);
drop function if exists herald_public.change_member_role(uuid, text);
drop function if exists herald_public.remove_member(uuid);
drop function if exists herald_public.leave_tenant();
drop function if exists herald_public.create_tenant(public.citext, text);
drop type if exists herald_public.created_invitation;
drop type if exists herald_public.accepted_invitation;
drop policy if exists select_invitee on herald_public.tenants;
drop policy if exists select_joined on herald_public.tenants;
drop policy if exists select_self on herald_public.memberships;
drop policy if exists insert_invitee on herald_public.memberships;
drop policy if exists update_member on herald_public.memberships;
drop policy if exists delete_member on herald_public.memberships;
drop table if exists herald_public.invitations cascade;
drop trigger if exists _300_keep_an_owner on herald_public.memberships;
drop trigger if exists _300_no_operator_members on herald_public.memberships;
drop function if exists herald_private.tg_memberships__keep_an_owner();
drop function if exists herald_private.tg_memberships__no_operator_members();
drop function if exists herald_private.tg_invitations__settle();
drop function if exists herald_hidden.current_user_is_tenant_owner();

-------------------------------------------------------------------------------
-- Helpers (invoker rights: they read through the caller's own policies)
-------------------------------------------------------------------------------

-- Whether the signed-in user is an owner of the current tenant.
create function herald_hidden.current_user_is_tenant_owner() returns boolean
  language sql stable parallel safe
  set search_path = ''
as $$
  select exists (
    select 1 from herald_public.memberships m
    where m.tenant_id = (select herald_public.current_tenant_id())
      and m.user_id = (select herald_public.current_user_id())
      and m.role = 'owner'
  );
$$;

grant execute on function herald_hidden.current_user_is_tenant_owner() to :DATABASE_MEMBER;

-------------------------------------------------------------------------------
-- invitations (tenant-owned; the token is stored only as a SHA-256 hash)
-------------------------------------------------------------------------------

create table herald_public.invitations (
  tenant_id uuid not null default herald_public.current_tenant_id()
    references herald_public.tenants on delete cascade,
  id uuid not null default gen_random_uuid(),
  email public.citext not null
    constraint invitations_email_format check (email ~ '^[^@\s]+@[^@\s]+\.[^@\s]+$'),
  role text not null default 'member'
    constraint invitations_role_valid check (role in ('owner', 'admin', 'member')),
  -- A random 192-bit token needs no slow hash (as API keys). Unique per
  -- tenant like every key of a tenant table; accepting finds it by the index
  -- below.
  token_hash bytea not null,
  invited_by uuid references herald_public.users on delete set null,
  expires_at timestamptz not null default now() + interval '7 days',
  accepted_at timestamptz,
  accepted_by uuid references herald_public.users on delete set null,
  revoked_at timestamptz,
  -- Written by the person accepting, checked and cleared by the trigger below:
  -- never stored.
  presented_token text constraint invitations_token_not_kept check (presented_token is null),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (tenant_id, id),
  constraint invitations_token_hash_key unique (tenant_id, token_hash),
  constraint invitations_used_once check (accepted_at is null or revoked_at is null)
);
comment on table herald_public.invitations is
  E'@behavior -insert -update -delete\nAn invitation to join a tenant with a role, for an email. Created with `inviteMember`, withdrawn with `revokeInvitation`, accepted by the person invited with `acceptInvitation`. A tenant''s owners and admins read its invitations.';
comment on column herald_public.invitations.token_hash is E'@behavior -*';
comment on column herald_public.invitations.presented_token is E'@behavior -*';
comment on constraint invitations_token_hash_key on herald_public.invitations is E'@behavior -*';
comment on column herald_public.invitations.expires_at is E'After this, the invitation can no longer be accepted.';
create index invitations_by_token_hash on herald_public.invitations (token_hash);
create index invitations_by_email on herald_public.invitations (tenant_id, email);

create trigger _100_timestamps before insert or update on herald_public.invitations
  for each row execute function herald_private.tg__timestamps();

-- An invitation is used once: accepted or withdrawn, it stays so. Accepting
-- it (setting accepted_by) is the session's user, whose email it names,
-- presenting its token (another token leaves the row untouched, so the
-- accepting statement may try each of the user's pending invitations without
-- reading any hash); the trigger then writes the membership. Definer: the
-- membership is in a tenant the person invited is not signed in to, and the
-- operators list is private. The token is cleared, never stored.
create function herald_private.tg_invitations__settle() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
begin
  if old.accepted_at is not null or old.revoked_at is not null or old.expires_at <= now() then
    raise exception 'No such invitation for you: it may have expired, been used or been withdrawn'
      using errcode = 'NTFND';
  end if;
  if new.accepted_by is not distinct from old.accepted_by then
    if new.accepted_at is not null or new.presented_token is not null then
      raise exception 'An invitation is accepted by the person invited' using errcode = '42501';
    end if;
    return new;
  end if;
  if new.accepted_by is distinct from herald_public.current_user_id()
     or not exists (select 1 from herald_public.users u
                     where u.id = new.accepted_by and u.email operator(public.=) old.email) then
    raise exception 'No such invitation for you: it may have expired, been used or been withdrawn'
      using errcode = 'NTFND';
  end if;
  -- Another token: the row is left as it was, as if the statement had not matched it.
  if public.digest(coalesce(new.presented_token, ''), 'sha256') <> old.token_hash then
    return null;
  end if;
  new.presented_token := null;
  new.accepted_at := now();
  new.revoked_at := null;
  begin
    insert into herald_public.memberships (tenant_id, user_id, role) values (old.tenant_id, new.accepted_by, old.role);
  exception when unique_violation then
    raise exception 'You already belong to this tenant' using errcode = '23505', constraint = 'memberships_pkey';
  end;
  return new;
end;
$$;
create trigger _200_settle before update on herald_public.invitations
  for each row execute function herald_private.tg_invitations__settle();

create trigger _900_audit_insert after insert on herald_public.invitations referencing new table as new_rows
  for each statement execute function herald_private.tg__audit('id', '');
create trigger _900_audit_update after update on herald_public.invitations referencing old table as old_rows new table as new_rows
  for each statement execute function herald_private.tg__audit('id', '');
create trigger _900_audit_delete after delete on herald_public.invitations referencing old table as old_rows
  for each statement execute function herald_private.tg__audit('id', '');

alter table herald_public.invitations enable row level security;
alter table herald_public.invitations force row level security;

-- Invitations name people's emails: the tenant's owners and admins see them, not plain members or API keys.
create policy select_member on herald_public.invitations for select to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()) and (select herald_hidden.current_user_is_tenant_admin()));
comment on policy select_member on herald_public.invitations is E'A tenant''s owners and admins read its invitations.';
-- The person invited, signed in to any tenant: the invitations for their own
-- email (pending or not: an UPDATE's new row must stay readable).
create policy select_invitee on herald_public.invitations for select to :DATABASE_MEMBER
  using (email = (select u.email from herald_public.users u where u.id = (select herald_public.current_user_id())));
comment on policy select_invitee on herald_public.invitations is
  E'A signed-in user reads the invitations for their own email (accepting one takes its token).';
-- Owners invite anyone, admins invite admins and members; the inviter is the session's user.
create policy insert_member on herald_public.invitations for insert to :DATABASE_MEMBER
  with check (
    tenant_id = (select herald_public.current_tenant_id())
    and (select herald_hidden.current_user_is_tenant_admin())
    and (role <> 'owner' or (select herald_hidden.current_user_is_tenant_owner()))
    and invited_by is not distinct from (select herald_public.current_user_id())
  );
comment on policy insert_member on herald_public.invitations is
  E'Owners invite with any role, admins invite admins and members, naming themselves as the inviter.';
create policy update_member on herald_public.invitations for update to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()) and (select herald_hidden.current_user_is_tenant_admin()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
comment on policy update_member on herald_public.invitations is E'A tenant''s owners and admins withdraw its invitations.';
create policy update_invitee on herald_public.invitations for update to :DATABASE_MEMBER
  using (
    email = (select u.email from herald_public.users u where u.id = (select herald_public.current_user_id()))
    and accepted_at is null and revoked_at is null and expires_at > now()
  )
  with check (accepted_by = (select herald_public.current_user_id()));
comment on policy update_invitee on herald_public.invitations is
  E'The person invited accepts the invitation as themself, presenting its token (checked by the _200_settle trigger).';
create policy select_admin on herald_public.invitations for select to :DATABASE_ADMIN using (true);
comment on policy select_admin on herald_public.invitations is E'Operators read every tenant''s invitations.';
create policy delete_admin on herald_public.invitations for delete to :DATABASE_ADMIN using (true);
comment on policy delete_admin on herald_public.invitations is E'Operators delete any invitation.';

grant select (tenant_id, id, email, role, invited_by, expires_at, accepted_at, accepted_by, revoked_at, created_at, updated_at)
  on herald_public.invitations to :DATABASE_MEMBER, :DATABASE_ADMIN;
grant insert (tenant_id, email, role, token_hash, invited_by), update (revoked_at, accepted_by, presented_token)
  on herald_public.invitations to :DATABASE_MEMBER;
grant delete on herald_public.invitations to :DATABASE_ADMIN;

-- A user reads their own memberships and the tenants they belong to, in
-- every tenant (which tenant to sign in to next, e.g. after accepting).
create policy select_self on herald_public.memberships for select to :DATABASE_MEMBER
  using (user_id = (select herald_public.current_user_id()));
comment on policy select_self on herald_public.memberships is E'A signed-in user reads their own memberships.';
create policy select_joined on herald_public.tenants for select to :DATABASE_MEMBER
  using (id in (select m.tenant_id from herald_public.memberships m where m.user_id = (select herald_public.current_user_id())));
comment on policy select_joined on herald_public.tenants is E'A signed-in user reads the tenants they belong to.';

-------------------------------------------------------------------------------
-- memberships: written by owners and by the user leaving
-------------------------------------------------------------------------------

create policy update_member on herald_public.memberships for update to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()) and (select herald_hidden.current_user_is_tenant_owner()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
comment on policy update_member on herald_public.memberships is E'A tenant''s owners change its members'' roles.';
create policy delete_member on herald_public.memberships for delete to :DATABASE_MEMBER
  using (
    tenant_id = (select herald_public.current_tenant_id())
    and (user_id = (select herald_public.current_user_id()) or (select herald_hidden.current_user_is_tenant_owner()))
  );
comment on policy delete_member on herald_public.memberships is
  E'A tenant''s owners remove its members; every user may leave.';

grant update (role), delete on herald_public.memberships to :DATABASE_MEMBER;

-- A tenant keeps at least one owner, whoever removes or demotes one (an
-- owner, the owner leaving, an operator's `herald membership remove`, the
-- deletion of the user). Deleting the tenant itself takes its owners with it.
-- Definer: it must see and lock every owner row of the tenant. The owner rows
-- are locked first, so two owners demoting each other at once cannot both
-- pass (one waits, or is chosen as a deadlock victim and retries).
create function herald_private.tg_memberships__keep_an_owner() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
begin
  if old.role <> 'owner' or (tg_op = 'UPDATE' and new.role = 'owner') then
    return coalesce(new, old);
  end if;
  if not exists (select 1 from herald_public.tenants t where t.id = old.tenant_id) then
    return old;  -- the tenant is being deleted
  end if;
  perform 1 from herald_public.memberships m where m.tenant_id = old.tenant_id and m.role = 'owner' for update;
  if not exists (select 1 from herald_public.memberships m
                  where m.tenant_id = old.tenant_id and m.role = 'owner' and m.user_id <> old.user_id) then
    raise exception 'A tenant keeps at least one owner: make another member an owner first'
      using errcode = 'LSTOW';
  end if;
  return coalesce(new, old);
end;
$$;
create trigger _300_keep_an_owner before update or delete on herald_public.memberships
  for each row execute function herald_private.tg_memberships__keep_an_owner();

-- 000009: a platform operator's user never belongs to a tenant. grant_membership
-- checked it; accepting an invitation is another way in, so the table checks it.
create function herald_private.tg_memberships__no_operator_members() returns trigger
  language plpgsql volatile security definer
  set search_path = ''
as $$
begin
  if exists (select 1 from herald_private.operators o where o.user_id = new.user_id) then
    raise exception 'A platform operator cannot grant itself a membership: a tenant''s owner or admin adds its people'
      using errcode = 'OPSLF';
  end if;
  return new;
end;
$$;
create trigger _300_no_operator_members before insert or update of user_id on herald_public.memberships
  for each row execute function herald_private.tg_memberships__no_operator_members();

revoke execute on function herald_private.tg_memberships__keep_an_owner(),
  herald_private.tg_memberships__no_operator_members(), herald_private.tg_invitations__settle() from public;

-------------------------------------------------------------------------------
-- The API (mutations), with the caller's rights
-------------------------------------------------------------------------------

create type herald_public.created_invitation as (
  invitation_id uuid,
  email public.citext,
  role text,
  expires_at timestamptz,
  token text
);
comment on type herald_public.created_invitation is
  E'A new invitation. `token` is shown this once and never again: give it to the person invited.';

create function herald_public.invite_member(email public.citext, role text default 'member')
  returns herald_public.created_invitation
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_tenant uuid := herald_public.current_tenant_id();
  v_role text := coalesce(invite_member.role, 'member');
  v_token text := 'hi_' || pg_catalog.encode(public.gen_random_bytes(24), 'hex');
  v_id uuid;
  v_expires timestamptz;
begin
  if v_tenant is null then
    raise exception 'No tenant in this request' using errcode = 'NOTNT';
  end if;
  -- Said plainly here; the insert policy refuses it anyway.
  if not herald_hidden.current_user_is_tenant_admin()
     or (v_role = 'owner' and not herald_hidden.current_user_is_tenant_owner()) then
    raise exception 'Only a tenant''s owners invite owners, and only its owners and admins invite anyone'
      using errcode = '42501';
  end if;
  if exists (select 1 from herald_public.memberships m join herald_public.users u on u.id = m.user_id
              where m.tenant_id = v_tenant and u.email operator(public.=) invite_member.email) then
    raise exception 'email: % already belongs to this tenant', invite_member.email
      using errcode = '23505', constraint = 'memberships_pkey', column = 'email';
  end if;
  -- A new invitation replaces a pending one for the same email.
  update herald_public.invitations i set revoked_at = now()
   where i.tenant_id = v_tenant and i.email operator(public.=) invite_member.email
     and i.accepted_at is null and i.revoked_at is null;
  insert into herald_public.invitations (tenant_id, email, role, token_hash, invited_by)
  values (v_tenant, invite_member.email, v_role, public.digest(v_token, 'sha256'), herald_public.current_user_id())
  returning id, expires_at into v_id, v_expires;
  return row(v_id, invite_member.email, v_role, v_expires, v_token)::herald_public.created_invitation;
end;
$$;
comment on function herald_public.invite_member(public.citext, text) is
  E'Invites an email to the current tenant with a role (`owner`, `admin` or `member`): owners and admins invite, only owners invite owners. Returns the token once; it works once, within 7 days.';

create type herald_public.accepted_invitation as (
  tenant_id uuid,
  tenant_slug public.citext,
  role text
);
comment on type herald_public.accepted_invitation is
  E'The membership an accepted invitation created: sign in to `tenantSlug` to act in that tenant.';

-- Unknown, expired, used, withdrawn, or for another email: all look the same.
create function herald_public.accept_invitation(token text) returns herald_public.accepted_invitation
  language plpgsql volatile strict
  set search_path = ''
as $$
declare
  v_invitation record;
begin
  if herald_public.current_user_id() is null then
    raise exception 'Sign in as the person invited to accept an invitation' using errcode = '42501';
  end if;
  -- The policies show the person invited their own pending invitations and
  -- let them accept one; the trigger checks the token (no request role reads
  -- a token's hash) and writes the membership.
  for v_invitation in
    select i.tenant_id, i.id, i.role from herald_public.invitations i
     where i.email operator(public.=) (select u.email from herald_public.users u where u.id = herald_public.current_user_id())
       and i.accepted_at is null and i.revoked_at is null and i.expires_at > now()
  loop
    update herald_public.invitations i
       set accepted_by = herald_public.current_user_id(), presented_token = accept_invitation.token
     where i.tenant_id = v_invitation.tenant_id and i.id = v_invitation.id;
    if found then
      -- Now a member there, the user reads the tenant (policy select_joined).
      return row(v_invitation.tenant_id,
                 (select t.slug from herald_public.tenants t where t.id = v_invitation.tenant_id),
                 v_invitation.role)::herald_public.accepted_invitation;
    end if;
  end loop;
  raise exception 'No such invitation for you: it may have expired, been used or been withdrawn'
    using errcode = 'NTFND';
end;
$$;
comment on function herald_public.accept_invitation(text) is
  E'Accepts an invitation as the signed-in user (of any tenant), whose email it must name, and joins its tenant with its role. Then sign in to that tenant.';

create function herald_public.revoke_invitation(invitation_id uuid) returns herald_public.invitations
  language plpgsql volatile strict
  set search_path = ''
as $$
declare
  v_invitation herald_public.invitations;
begin
  update herald_public.invitations i set revoked_at = now()
   where i.tenant_id = herald_public.current_tenant_id() and i.id = revoke_invitation.invitation_id
     and i.accepted_at is null and i.revoked_at is null
  returning i.tenant_id, i.id, i.email, i.role, null::bytea, i.invited_by, i.expires_at, i.accepted_at,
            i.accepted_by, i.revoked_at, i.created_at, i.updated_at
  into v_invitation;
  if not found then
    raise exception 'No pending invitation with that id in this tenant' using errcode = 'NTFND';
  end if;
  return v_invitation;
end;
$$;
comment on function herald_public.revoke_invitation(uuid) is
  E'Withdraws a pending invitation of the current tenant (owners and admins); its token stops working.';

create function herald_public.change_member_role(user_id uuid, role text) returns herald_public.memberships
  language plpgsql volatile strict
  set search_path = ''
as $$
declare
  v_membership herald_public.memberships;
begin
  if not herald_hidden.current_user_is_tenant_owner() then
    raise exception 'Only a tenant''s owners change roles' using errcode = '42501';
  end if;
  update herald_public.memberships m set "role" = change_member_role.role
   where m.tenant_id = herald_public.current_tenant_id() and m.user_id = change_member_role.user_id
  returning m.* into v_membership;
  if not found then
    raise exception 'No such member in this tenant' using errcode = 'NTFND';
  end if;
  return v_membership;
end;
$$;
comment on function herald_public.change_member_role(uuid, text) is
  E'Changes a member''s role in the current tenant (owners only; a tenant keeps at least one owner).';

create function herald_public.remove_member(user_id uuid) returns boolean
  language plpgsql volatile strict
  set search_path = ''
as $$
begin
  if remove_member.user_id is distinct from herald_public.current_user_id()
     and not herald_hidden.current_user_is_tenant_owner() then
    raise exception 'Only a tenant''s owners remove members' using errcode = '42501';
  end if;
  delete from herald_public.memberships m
   where m.tenant_id = herald_public.current_tenant_id() and m.user_id = remove_member.user_id;
  if not found then
    raise exception 'No such member in this tenant' using errcode = 'NTFND';
  end if;
  return true;
end;
$$;
comment on function herald_public.remove_member(uuid) is
  E'Removes a member from the current tenant (owners only; a tenant keeps at least one owner). Their tokens stop working at once.';

create function herald_public.leave_tenant() returns boolean
  language plpgsql volatile
  set search_path = ''
as $$
begin
  if herald_public.current_user_id() is null then
    raise exception 'Only a signed-in user leaves a tenant' using errcode = '42501';
  end if;
  return herald_public.remove_member(herald_public.current_user_id());
end;
$$;
comment on function herald_public.leave_tenant() is
  E'The signed-in user leaves the current tenant (not as its last owner); their tokens for it stop working.';

-- Operators create tenants (the admin policies on tenants allow it); a member is refused (FORBIDDEN).
create function herald_public.create_tenant(slug public.citext, name text) returns herald_public.tenants
  language sql volatile strict
  set search_path = ''
as $$
  insert into herald_public.tenants (slug, name) values (create_tenant.slug, create_tenant.name) returning *;
$$;
comment on function herald_public.create_tenant(public.citext, text) is
  E'Creates a tenant with default settings (platform operators only). Add its first owner with `herald user create --role owner`.';

revoke execute on function herald_public.invite_member(public.citext, text), herald_public.accept_invitation(text),
  herald_public.revoke_invitation(uuid), herald_public.change_member_role(uuid, text), herald_public.remove_member(uuid),
  herald_public.leave_tenant(), herald_public.create_tenant(public.citext, text) from public;
grant execute on function herald_public.invite_member(public.citext, text), herald_public.accept_invitation(text),
  herald_public.revoke_invitation(uuid), herald_public.change_member_role(uuid, text), herald_public.remove_member(uuid),
  herald_public.leave_tenant() to :DATABASE_MEMBER;
grant execute on function herald_public.create_tenant(public.citext, text) to :DATABASE_ADMIN;

comment on table herald_public.memberships is
  E'@behavior -insert -update -delete\nA user''s role within one tenant. Owners and admins invite people (`inviteMember`), owners change roles (`changeMemberRole`) and remove members (`removeMember`), users leave (`leaveTenant`); operators add people with `herald user create`. Every change is in the tenant''s audit log.';
