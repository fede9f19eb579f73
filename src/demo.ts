import pg from "pg";
import { addMembership, createTenant, findMembershipUser, findOrCreateUser, findTenant } from "./admin.ts";
import type { Authenticator } from "./auth.ts";
import type { DatabaseUrls } from "./db/database.ts";
import { asAdmin } from "./db/session.ts";
import type { Logger } from "./logger.ts";

/** Two demo tenants, created once per database so a first `npm start` has something to query. */
export const DEMO_TENANTS = [
  { slug: "acme-clinic", name: "Acme Clinic", email: "owner@acme-clinic.test", displayName: "Acme Owner" },
  { slug: "globex-events", name: "Globex Events", email: "owner@globex-events.test", displayName: "Globex Owner" },
] as const;

const DEMO_FLAG = "demo_tenants_created";

export async function ensureDemoTenants(urls: DatabaseUrls, logger: Logger): Promise<void> {
  const owner = new pg.Client({ connectionString: urls.owner });
  const authenticator = new pg.Pool({ connectionString: urls.authenticator, max: 1 });
  await owner.connect();
  try {
    // The flag makes this "once": demo tenants deleted by hand stay deleted.
    const { rowCount } = await owner.query(
      "insert into herald_private.instance_flags (name) values ($1) on conflict do nothing",
      [DEMO_FLAG],
    );
    if (!rowCount) return;
    await asAdmin(authenticator, async (client) => {
      for (const demo of DEMO_TENANTS) {
        const tenant = (await findTenant(client, demo.slug)) ?? (await createTenant(client, demo));
        const user = await findOrCreateUser(client, { email: demo.email, displayName: demo.displayName });
        await addMembership(client, { tenantId: tenant.id, userId: user.id, role: "owner" });
      }
    });
    logger.info({ tenants: DEMO_TENANTS.map((t) => t.slug) }, "created the demo tenants");
  } finally {
    await owner.end();
    await authenticator.end();
  }
}

export interface DemoToken {
  name: string;
  slug: string;
  email: string;
  token: string;
}

/** Fresh tokens for the demo tenants' owners, for the start-up banner. */
export async function demoTokens(urls: DatabaseUrls, authenticator: Authenticator): Promise<DemoToken[]> {
  if (!authenticator.canSign) return [];
  const pool = new pg.Pool({ connectionString: urls.authenticator, max: 1 });
  try {
    const found = await asAdmin(pool, async (client) => {
      const result = [];
      for (const demo of DEMO_TENANTS) {
        const tenant = await findTenant(client, demo.slug);
        const user = tenant && (await findMembershipUser(client, tenant.id, demo.email));
        if (tenant && user) result.push({ tenant, user });
      }
      return result;
    });
    return Promise.all(
      found.map(async ({ tenant, user }) => ({
        name: tenant.name,
        slug: tenant.slug,
        email: user.email,
        token: await authenticator.sign({ sub: user.id, tenant_id: tenant.id, role: "herald_member" }, "12h"),
      })),
    );
  } finally {
    await pool.end();
  }
}
