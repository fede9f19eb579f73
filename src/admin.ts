import type pg from "pg";

/**
 * Platform-operator actions (CLI, demo data), run as herald_admin through the
 * same policies as everyone else: the admin policies are what allow them.
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

export async function addMembership(
  client: pg.ClientBase,
  input: { tenantId: string; userId: string; role: "owner" | "admin" | "member" },
): Promise<void> {
  await client.query(
    `insert into herald_public.memberships (tenant_id, user_id, role) values ($1, $2, $3)
     on conflict (tenant_id, user_id) do update set role = excluded.role`,
    [input.tenantId, input.userId, input.role],
  );
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
