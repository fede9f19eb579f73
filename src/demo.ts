import pg from "pg";
import { createTenant, findMembershipUser, findOrCreateUser, findTenant, grantMembership } from "./admin.ts";
import type { Authenticator } from "./auth.ts";
import { upsertContacts } from "./contacts/store.ts";
import type { Keyring } from "./crypto/keyring.ts";
import type { DatabaseUrls } from "./db/database.ts";
import { asAdmin, withSession } from "./db/session.ts";
import { ROLES } from "./db/urls.ts";
import type { Logger } from "./logger.ts";

/** Two demo tenants, created once per database so a first `npm start` has something to query. */
export const DEMO_TENANTS = [
  {
    slug: "acme-clinic",
    name: "Acme Clinic",
    email: "owner@acme-clinic.test",
    displayName: "Acme Owner",
    number: "+14155550100",
  },
  {
    slug: "globex-events",
    name: "Globex Events",
    email: "owner@globex-events.test",
    displayName: "Globex Owner",
    number: "+14155550200",
  },
] as const;

/** A few contacts per demo tenant (fictional 555-01xx numbers), so lookups, tags and lists show something. */
const DEMO_CONTACTS: Record<
  string,
  { first_name: string; last_name: string; phone: string; email: string; vip?: boolean }[]
> = {
  "acme-clinic": [
    { first_name: "Ada", last_name: "Lovelace", phone: "+14155550101", email: "ada@example.com", vip: true },
    { first_name: "Grace", last_name: "Hopper", phone: "+14155550102", email: "grace@example.com" },
    { first_name: "Alan", last_name: "Turing", phone: "+442079460958", email: "alan@example.org" },
  ],
  "globex-events": [
    { first_name: "Hedy", last_name: "Lamarr", phone: "+14155550103", email: "hedy@example.com", vip: true },
    { first_name: "Katherine", last_name: "Johnson", phone: "+14155550104", email: "katherine@example.com" },
  ],
};

const DEMO_FLAG = "demo_tenants_created";

/**
 * Whether this start creates the demo tenants and prints their owners' tokens.
 * Only in development: the embedded database, or HERALD_DEMO=true on an
 * external one. Production never gets them, whatever the database or
 * HERALD_DEMO say: a token printed at start is a credential in a log, and a
 * demo owner with a known email is a tenant nobody runs.
 */
export function demoPlan(input: { development: boolean; embedded: boolean; requested?: string }): {
  create: boolean;
  printTokens: boolean;
  warning?: string;
} {
  if (!input.development) {
    return {
      create: false,
      printTokens: false,
      warning:
        input.requested === "true"
          ? "HERALD_DEMO=true is ignored in production: demo tenants and tokens are for development only"
          : undefined,
    };
  }
  return { create: input.embedded || input.requested === "true", printTokens: true };
}

export async function ensureDemoTenants(urls: DatabaseUrls, logger: Logger, keyring: Keyring): Promise<void> {
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
    const tenants = await asAdmin(authenticator, async (client) => {
      const created = [];
      for (const demo of DEMO_TENANTS) {
        const tenant = (await findTenant(client, demo.slug)) ?? (await createTenant(client, demo));
        const user = await findOrCreateUser(client, { email: demo.email, displayName: demo.displayName });
        created.push({ ...tenant, ownerId: user.id });
        // A number of its own on the system account (an operator's assignment),
        // which it sends from and receives at: replies and STOP find the tenant.
        await client.query(
          "insert into herald_public.sender_numbers (tenant_id, phone_number, channel) values ($1, $2, 'sms') on conflict do nothing",
          [tenant.id, demo.number],
        );
        await client.query("update herald_public.tenant_settings set sms_from = $2 where tenant_id = $1", [
          tenant.id,
          demo.number,
        ]);
      }
      return created;
    });
    // The numbers are pending until the worker's sender_numbers__verify has
    // asked the provider (here the sandbox, whose system account holds them):
    // wait briefly until each routes, so that the first text to one finds its tenant.
    for (const deadline = Date.now() + 10_000; Date.now() < deadline;) {
      const { rows } = await owner.query<{ routed: number }>(
        "select count(*)::int as routed from unnest($1::text[]) n, herald_private.inbound_number_owner(n, 'sms')",
        [DEMO_TENANTS.map((d) => d.number)],
      );
      if (rows[0]!.routed === DEMO_TENANTS.length) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    // Memberships only through the audited function, as the CLI grants them.
    for (const tenant of tenants) {
      await grantMembership(authenticator, {
        tenantId: tenant.id,
        userId: tenant.ownerId,
        role: "owner",
        actorDetail: "herald demo data",
      });
    }
    for (const tenant of tenants) await addDemoContacts(authenticator, keyring, tenant);
    logger.info({ tenants: DEMO_TENANTS.map((t) => t.slug) }, "created the demo tenants");
  } finally {
    await owner.end();
    await authenticator.end();
  }
}

/** As the worker would: inside the tenant, with its keys, through the same upsert as the API. */
async function addDemoContacts(pool: pg.Pool, keyring: Keyring, tenant: { id: string; slug: string }) {
  const contacts = DEMO_CONTACTS[tenant.slug] ?? [];
  const settings = await keyring.sessionSettings(pool, tenant.id);
  await withSession(pool, { role: ROLES.worker, tenantId: tenant.id, settings }, async (client) => {
    const run = async <T>(text: string, values: unknown[]) => (await client.query(text, values)).rows as T[];
    const outcomes = await upsertContacts(
      run,
      contacts.map(({ vip: _vip, ...c }) => c),
    );
    const [list] = await run<{ id: string }>(
      "insert into herald_public.lists (name, description) values ('Newsletter', 'Monthly news') returning id",
      [],
    );
    const [tag] = await run<{ id: string }>("insert into herald_public.tags (name) values ('vip') returning id", []);
    for (const [i, outcome] of outcomes.entries()) {
      await run("insert into herald_public.list_members (list_id, contact_id) values ($1, $2)", [
        list!.id,
        outcome.contactId,
      ]);
      if (contacts[i]?.vip)
        await run("insert into herald_public.contact_tags (tag_id, contact_id) values ($1, $2)", [
          tag!.id,
          outcome.contactId,
        ]);
    }
  });
}

export interface DemoToken {
  name: string;
  slug: string;
  email: string;
  token: string;
  /** When its texts may go out, e.g. "08:00–21:00 UTC" (outside it they wait: quiet hours). */
  sendWindow: string;
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
        if (tenant && user) result.push({ tenant, user, sendWindow: await sendWindowOf(client, tenant.id) });
      }
      return result;
    });
    return Promise.all(
      found.map(async ({ tenant, user, sendWindow }) => ({
        name: tenant.name,
        slug: tenant.slug,
        email: user.email,
        sendWindow,
        token: await authenticator.sign({ sub: user.id, tenant_id: tenant.id, role: "herald_member" }, "12h"),
      })),
    );
  } finally {
    await pool.end();
  }
}

/** The tenant's send window in its own time zone, as the banner shows it ("08:00–21:00 UTC"; "all day" when start = end). */
async function sendWindowOf(client: pg.ClientBase, tenantId: string): Promise<string> {
  const { rows } = await client.query<{ start: string; end: string; timezone: string }>(
    `select to_char(send_window_start, 'HH24:MI') as start, to_char(send_window_end, 'HH24:MI') as end, timezone
       from herald_public.tenant_settings where tenant_id = $1`,
    [tenantId],
  );
  const w = rows[0];
  if (!w) return "unknown";
  return w.start === w.end ? `all day (${w.timezone})` : `${w.start}–${w.end} ${w.timezone}`;
}
