import type pg from "pg";

/**
 * Platform-operator actions (CLI, demo data), run as herald_admin through the
 * same policies as everyone else: the admin policies are what allow them.
 * Memberships are the exception: only herald_private's audited functions
 * write them (see docs/operators.md).
 */

export interface Tenant {
  id: string;
  slug: string;
  name: string;
}

export async function createTenant(client: pg.ClientBase, input: { slug: string; name: string }): Promise<Tenant> {
  const { rows } = await client.query<Tenant>(
    "insert into herald_public.tenants (slug, name) values ($1, $2) returning id, slug::text, name",
    [input.slug, input.name],
  );
  return rows[0]!;
}

export async function findTenant(client: pg.ClientBase, slug: string): Promise<Tenant | undefined> {
  const { rows } = await client.query<Tenant>(
    "select id, slug::text, name from herald_public.tenants where slug = $1::citext",
    [slug],
  );
  return rows[0];
}

export async function findOrCreateUser(
  client: pg.ClientBase,
  input: { email: string; displayName?: string },
): Promise<{ id: string; email: string; created: boolean }> {
  const { rows } = await client.query<{ id: string; email: string; created: boolean }>(
    `with inserted as (
       insert into herald_public.users (email, display_name) values ($1, $2)
       on conflict (email) do nothing
       returning id, email::text, true as created
     )
     select * from inserted
     union all
     select id, email::text, false from herald_public.users where email = $1::citext
     limit 1`,
    [input.email, input.displayName ?? null],
  );
  return rows[0]!;
}

/**
 * Adds a membership (or changes its role), as the authenticator through
 * herald_private.grant_membership: operators write no membership directly.
 * The function refuses a platform operator's own user (OPSLF), and the tenant's
 * audit log names the database login and `actorDetail`.
 */
export async function grantMembership(
  pool: pg.Pool,
  input: { tenantId: string; userId: string; role: "owner" | "admin" | "member"; actorDetail: string },
): Promise<void> {
  const client = await pool.connect();
  try {
    await client.query("begin");
    await client.query("select set_config('herald.actor_detail', $1, true)", [input.actorDetail.slice(0, 100)]);
    await client.query("select herald_private.grant_membership($1, $2, $3)", [
      input.tenantId,
      input.userId,
      input.role,
    ]);
    await client.query("commit");
  } catch (error) {
    await client.query("rollback").catch(() => undefined);
    throw error;
  } finally {
    client.release();
  }
}

/** Records that operators act as this user (an admin token names it): it can then never be granted a membership. */
export async function registerOperator(pool: pg.Pool, userId: string): Promise<void> {
  await pool.query("select herald_private.register_operator($1)", [userId]);
}

/** Runs as the authenticator (the only role allowed to set passwords); the password is a bind parameter. */
export async function setUserPassword(pool: pg.Pool, userId: string, password: string): Promise<void> {
  await pool.query("select herald_private.set_user_password($1, $2)", [userId, password]);
}

export async function findMembershipUser(
  client: pg.ClientBase,
  tenantId: string,
  email?: string,
): Promise<{ id: string; email: string } | undefined> {
  const { rows } = await client.query<{ id: string; email: string }>(
    `select u.id, u.email::text from herald_public.memberships m
       join herald_public.users u on u.id = m.user_id
      where m.tenant_id = $1 and ($2::citext is null or u.email = $2::citext)
      order by (m.role = 'owner') desc, m.created_at
      limit 1`,
    [tenantId, email ?? null],
  );
  return rows[0];
}

/**
 * Removes a membership, as the authenticator through herald_private.revoke_membership
 * (audited like a grant). False when the user was not a member. A tenant's last owner
 * is refused by the table's trigger (LSTOW).
 */
export async function revokeMembership(
  pool: pg.Pool,
  input: { tenantId: string; userId: string; actorDetail: string },
): Promise<boolean> {
  const client = await pool.connect();
  try {
    await client.query("begin");
    await client.query("select set_config('herald.actor_detail', $1, true)", [input.actorDetail.slice(0, 100)]);
    const { rows } = await client.query<{ removed: boolean }>(
      "select herald_private.revoke_membership($1, $2) as removed",
      [input.tenantId, input.userId],
    );
    await client.query("commit");
    return rows[0]!.removed;
  } catch (error) {
    await client.query("rollback").catch(() => undefined);
    throw error;
  } finally {
    client.release();
  }
}
