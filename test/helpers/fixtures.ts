import type pg from "pg";
import type { TestDb } from "./db.ts";

/**
 * Two tenants with a row in every table, committed (as superuser) into the
 * file's own database: tenant A is the victim, tenant B the attacker.
 */
export interface TenantFixture {
  id: string;
  slug: string;
  ownerId: string;
  memberId: string;
  apiKeyId: string;
  apiKeySecret: string;
  pingId: string;
}

async function seedTenant(client: pg.PoolClient, slug: string, name: string): Promise<TenantFixture> {
  const one = async <T extends pg.QueryResultRow>(sql: string, params: unknown[]) => (await client.query<T>(sql, params)).rows[0]!;
  const { id } = await one<{ id: string }>("insert into herald_public.tenants (slug, name) values ($1, $2) returning id", [slug, name]);
  const owner = await one<{ id: string }>("insert into herald_public.users (email) values ($1) returning id", [`owner@${slug}.test`]);
  const member = await one<{ id: string }>("insert into herald_public.users (email) values ($1) returning id", [`member@${slug}.test`]);
  await client.query(
    "insert into herald_public.memberships (tenant_id, user_id, role) values ($1, $2, 'owner'), ($1, $3, 'member')",
    [id, owner.id, member.id],
  );
  await client.query("select herald_private.set_user_password($1, $2)", [owner.id, `${slug}-password`]);
  // Through the real function, as the tenant's owner would.
  await client.query("select set_config('jwt.claims.tenant_id', $1, true), set_config('jwt.claims.user_id', $2, true)", [id, owner.id]);
  const key = await one<{ api_key_id: string; secret: string }>("select api_key_id, secret from herald_public.create_api_key($1)", [`${slug} key`]);
  const ping = await one<{ id: string }>("insert into herald_hidden.pings (tenant_id) values ($1) returning id", [id]);
  return { id, slug, ownerId: owner.id, memberId: member.id, apiKeyId: key.api_key_id, apiKeySecret: key.secret, pingId: ping.id };
}

async function committed<T>(db: TestDb, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await db.root.connect();
  try {
    await client.query("begin");
    const result = await fn(client);
    await client.query("commit");
    return result;
  } catch (error) {
    await client.query("rollback");
    throw error;
  } finally {
    client.release();
  }
}

export const seedTwoTenants = (db: TestDb): Promise<{ a: TenantFixture; b: TenantFixture }> =>
  committed(db, async (client) => ({
    a: await seedTenant(client, "tenant-a", "Tenant A"),
    b: await seedTenant(client, "tenant-b", "Tenant B"),
  }));

/** One more tenant, for a test that changes it (suspends it, removes members…). */
export const seedExtraTenant = (db: TestDb, slug: string): Promise<TenantFixture> =>
  committed(db, (client) => seedTenant(client, slug, slug));
