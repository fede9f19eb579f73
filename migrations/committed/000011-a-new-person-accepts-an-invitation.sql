--! Previous: sha1:76a52585018527393e8d803781fb2dfcdd162e13
--! Hash: sha1:2c598a8fd39c0324b1bdc7d925f224d4955b2cca
--! Message: A new person accepts an invitation

--! split: 080-accept-invitation-sign-up.sql
-- A person invited who has no Herald user yet accepts an invitation:
-- `POST /auth/accept-invitation` with the token and a password calls
-- herald_private.accept_invitation, which (in the route's one statement, so
-- one transaction) finds the pending invitation by the token's hash, creates
-- the user with the invitation's email (or, for an existing user, checks their
-- own password), and accepts the invitation through 070's path: the update of
-- the invitation as that user, whose _200_settle trigger checks the token and
-- the email and writes the membership (so the operator and last-owner
-- triggers and the audit log apply as for every membership). It returns the
-- identity to sign a JWT for, as verify_login does.
--
-- Unknown, expired, withdrawn, used, a suspended tenant's, or an existing
-- user's wrong password: all return null, one and the same answer.
--
-- Idempotent: re-applied on every `db watch` save.

drop function if exists herald_private.accept_invitation(text, text);
drop policy if exists select_definer on herald_public.invitations;
drop policy if exists update_definer on herald_public.invitations;
drop policy if exists insert_definer on herald_public.users;

-- The definer function below runs as the owner, under forced RLS.
create policy select_definer on herald_public.invitations for select to :DATABASE_OWNER using (true);
create policy update_definer on herald_public.invitations for update to :DATABASE_OWNER using (true) with check (true);
create policy insert_definer on herald_public.users for insert to :DATABASE_OWNER with check (true);

create function herald_private.accept_invitation(token text, password text)
  returns herald_private.login_identity
  language plpgsql volatile strict security definer
  set search_path = ''
as $$
declare
  v_invitation record;
  v_user_id uuid;
  v_hash text;
  v_new_user boolean := false;
  v_accepted integer;
  v_claimed_user text := pg_catalog.current_setting('jwt.claims.user_id', true);
  v_actor_detail text := pg_catalog.current_setting('herald.actor_detail', true);
  v_identity herald_private.login_identity;
begin
  -- set_user_password's rule, said before anything is looked up: a weak
  -- password then tells nothing about the token.
  if pg_catalog.length(accept_invitation.password) < 10 then
    raise exception 'Password must be at least 10 characters' using errcode = 'WEAKP';
  end if;
  -- Locked: two acceptances of one token at once run one after the other,
  -- and the second finds it used.
  select i.tenant_id, i.id, i.email into v_invitation
    from herald_public.invitations i
    join herald_public.tenants t on t.id = i.tenant_id
   where i.token_hash = public.digest(accept_invitation.token, 'sha256')
     and i.accepted_at is null and i.revoked_at is null and i.expires_at > now()
     and t.status = 'active'
   order by i.created_at
   limit 1
     for update of i;
  if not found then
    -- Spend the bcrypt time the other answers spend, so that time does not
    -- tell a good token from a bad one.
    perform public.crypt(accept_invitation.password, public.gen_salt('bf', 10));
    return null;
  end if;

  select u.id, p.password_hash into v_user_id, v_hash
    from herald_public.users u
    left join herald_private.user_passwords p on p.user_id = u.id
   where u.email operator(public.=) v_invitation.email;
  if v_user_id is null then
    -- A new person: their user, with the invitation's email and their password.
    -- Another invitation for the same email may be creating it at this moment:
    -- then it exists, and this one checks its password like any other.
    insert into herald_public.users (email) values (v_invitation.email)
      on conflict (email) do nothing
    returning id into v_user_id;
    if v_user_id is not null then
      perform herald_private.set_user_password(v_user_id, accept_invitation.password);
      v_new_user := true;
    else
      select u.id, p.password_hash into v_user_id, v_hash
        from herald_public.users u
        left join herald_private.user_passwords p on p.user_id = u.id
       where u.email operator(public.=) v_invitation.email;
    end if;
  end if;
  -- An existing user proves it is them: their own password (none set: refused).
  if not v_new_user and (v_hash is null or public.crypt(accept_invitation.password, v_hash) is distinct from v_hash) then
    return null;
  end if;

  -- 070's path, as that user: the trigger checks the token and the email,
  -- then writes the membership. The claim is transaction-local (and rolled
  -- back with it on an error); the audit log names how it came.
  perform pg_catalog.set_config('jwt.claims.user_id', v_user_id::text, true),
          pg_catalog.set_config('herald.actor_detail', 'accept-invitation', true);
  update herald_public.invitations i
     set accepted_by = v_user_id, presented_token = accept_invitation.token
   where i.tenant_id = v_invitation.tenant_id and i.id = v_invitation.id;
  get diagnostics v_accepted = row_count;
  perform pg_catalog.set_config('jwt.claims.user_id', coalesce(v_claimed_user, ''), true),
          pg_catalog.set_config('herald.actor_detail', coalesce(v_actor_detail, ''), true);
  if v_accepted = 0 then
    return null;
  end if;

  select m.user_id, m.tenant_id, t.slug, m.role into v_identity
    from herald_public.memberships m
    join herald_public.tenants t on t.id = m.tenant_id
   where m.tenant_id = v_invitation.tenant_id and m.user_id = v_user_id;
  return v_identity;
end;
$$;
comment on function herald_private.accept_invitation(text, text) is
  E'POST /auth/accept-invitation: accepts a pending invitation by its token, as a new user with this password or as the existing user whose password it is; returns the membership to sign a JWT for, or null (one answer for every refusal).';

revoke execute on function herald_private.accept_invitation(text, text) from public;
grant execute on function herald_private.accept_invitation(text, text) to :DATABASE_AUTHENTICATOR;
