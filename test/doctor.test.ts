import { beforeAll, describe, expect, it } from "vitest";
import fs from "node:fs";
import path from "node:path";
import { CHECKS, runDoctor } from "../src/doctor.ts";
import { formatAllowList, heldGrants } from "../src/doctor/grants.ts";
import { projectRoot } from "../src/paths.ts";
import { runCli } from "./helpers/cli.ts";
import { useTestDatabase, withRootDb } from "./helpers/db.ts";
import { seedTwoTenants } from "./helpers/fixtures.ts";

/**
 * `herald doctor` passes on the real schema and catches each planted fault.
 * Two tenants with a row in every table, so that the probes have other
 * tenants' rows to (not) see.
 */

const db = useTestDatabase();
beforeAll(async () => {
  await seedTwoTenants(db.current);
});

/** `also`: other checks the same fault rightly trips (e.g. PUBLIC may execute → request roles may too). */
/** `alsoBefore16`: what PostgreSQL 15 adds, where a role's INHERIT attribute alone decides whether it holds its roles' rights. */
const FAULTS: Array<{ check: string; plant: string[]; also?: string[]; alsoBefore16?: string[] }> = [
  { check: "rls-enabled", plant: ["alter table herald_public.api_keys no force row level security"] },
  // Without RLS, the probes see and change other tenants' rows.
  {
    check: "rls-enabled",
    plant: ["alter table herald_hidden.pings disable row level security"],
    also: ["probe-reads", "probe-writes"],
  },
  {
    check: "has-policy",
    plant: [
      "create table herald_public.planted (tenant_id uuid not null, id uuid not null, primary key (tenant_id, id))",
      "alter table herald_public.planted enable row level security",
      "alter table herald_public.planted force row level security",
    ],
  },
  {
    check: "no-for-all-policy",
    plant: [
      "create policy all_member on herald_public.tenants for all to herald_member using (id = (select herald_public.current_tenant_id()))",
    ],
  },
  {
    check: "no-public-policy",
    plant: ["create policy select_anyone on herald_public.users for select using (true)"],
    also: ["probe-reads"],
  },
  { check: "role-attributes", plant: ["alter role herald_member bypassrls"], also: ["probe-reads", "probe-writes"] },
  { check: "role-attributes", plant: ["alter role herald_owner superuser"] },
  // From PostgreSQL 16 each membership has its own INHERIT option, which Herald grants off; on 15 the authenticator then holds every request role's grants.
  {
    check: "authenticator-noinherit",
    plant: ["alter role herald_authenticator inherit"],
    alsoBefore16: ["grants-allow-list"],
  },
  // An owner holds every privilege, TRUNCATE included.
  {
    check: "request-roles-own-nothing",
    plant: ["alter table herald_public.tenant_settings owner to herald_member"],
    also: ["grants-allow-list", "no-truncate"],
  },
  {
    check: "security-definer",
    plant: [
      "create function herald_public.planted() returns int language sql security definer set search_path = '' as 'select 1'",
    ],
  },
  {
    check: "views-security-invoker",
    plant: ["create view herald_public.planted_view as select id from herald_public.tenants"],
  },
  {
    check: "security-definer",
    plant: [
      "create function public.planted() returns int language sql security definer set search_path = '' as 'select 1'",
    ],
  },
  {
    check: "security-definer",
    plant: [
      "create function herald_private.planted() returns int language sql security definer set search_path = public as 'select 1'",
      "revoke execute on function herald_private.planted() from public",
    ],
  },
  {
    check: "security-definer",
    plant: [
      "create function herald_private.planted() returns int language sql security definer set search_path = '' as 'select 1'",
    ],
    also: ["private-schema-grants"],
  },
  {
    check: "tenant-foreign-keys",
    plant: [
      // Points at a global unique key of a tenant-owned table, so only the foreign key is wrong.
      "alter table herald_hidden.pings add column api_key_hash bytea",
      "alter table herald_hidden.pings add constraint planted_fk foreign key (api_key_hash) references herald_public.api_keys (secret_hash)",
    ],
  },
  {
    check: "tenant-column",
    plant: [
      "create table herald_public.planted (id uuid primary key)",
      "alter table herald_public.planted enable row level security",
      "alter table herald_public.planted force row level security",
      "create policy select_member on herald_public.planted for select to herald_member using (id = (select herald_public.current_user_id()))",
    ],
  },
  { check: "tenant-unique-keys", plant: ["alter table herald_hidden.pings add constraint planted_unique unique (id)"] },
  {
    check: "tenant-policies",
    plant: ["create policy leak on herald_public.api_keys for select to herald_member using (true)"],
    also: ["probe-reads"],
  },
  {
    check: "tenant-policies",
    plant: ["alter policy insert_member on herald_hidden.pings with check (true)"],
    also: ["probe-writes"],
  },
  // The member inherits the operator's grants and cross-tenant policies.
  {
    check: "role-memberships",
    plant: ["grant herald_admin to herald_member"],
    also: ["grants-allow-list", "probe-reads", "probe-writes"],
  },
  { check: "role-memberships", plant: ["grant herald_owner to herald_authenticator"] },
  { check: "private-schema-grants", plant: ["grant usage on schema herald_private to herald_member"] },
  {
    check: "private-schema-grants",
    plant: ["grant select on herald_private.user_passwords to herald_worker"],
    also: ["grants-allow-list"],
  },
  // PUBLIC's grant reaches the authenticator too, which the list gives nothing.
  {
    check: "no-public-grants",
    plant: ["grant select on herald_public.tenants to public"],
    also: ["grants-allow-list"],
  },
  // Each of these passed the catalog rules before the allow-list and the probes, and each really broke isolation.
  {
    check: "no-truncate",
    plant: ["grant truncate on herald_public.contacts to herald_member"],
    also: ["grants-allow-list"],
  },
  { check: "grants-allow-list", plant: ["grant update (tenant_id) on herald_public.tags to herald_worker"] },
  {
    // A member policy that "mentions current_tenant_id()", with `or true` appended.
    check: "probe-reads",
    plant: [
      "alter policy select_member on herald_public.audit_log using (tenant_id = (select herald_public.current_tenant_id()) or true)",
    ],
  },
  {
    // `where true` references no column, so only the delete policy decides which rows go.
    check: "probe-writes",
    plant: [
      "alter policy delete_member on herald_public.tags using (tenant_id = (select herald_public.current_tenant_id()) or true)",
    ],
  },
  {
    check: "probe-writes",
    plant: [
      "alter policy update_member on herald_public.lists using (tenant_id = (select herald_public.current_tenant_id()) or true)",
    ],
  },
  {
    check: "probe-writes",
    plant: [
      "alter policy insert_member on herald_public.tags with check (tenant_id = (select herald_public.current_tenant_id()) or true)",
    ],
  },
  {
    check: "function-settings",
    plant: [
      `create function herald_public.planted() returns int language sql set "jwt.claims.tenant_id" = '00000000-0000-0000-0000-000000000000' as 'select 1'`,
    ],
  },
  {
    check: "function-settings",
    plant: ["create function public.planted() returns int language sql set role = herald_admin as 'select 1'"],
  },
  {
    // A view outside Herald's schemas, owned by the superuser (who bypasses RLS), handed to a request role.
    check: "views-security-invoker",
    plant: [
      "create view public.planted_view as select tenant_id, id from herald_public.contacts",
      "grant select on public.planted_view to herald_member",
    ],
    also: ["grants-allow-list", "probe-reads"],
  },
  {
    check: "no-context-switching",
    plant: [
      "create function herald_public.planted() returns text language sql set search_path = '' as $$ select pg_catalog.set_config('jwt.claims.tenant_id', '', true) $$",
    ],
  },
];

describe("herald doctor", () => {
  it("passes on the migrated schema", async () => {
    await withRootDb(db.current, async (c) => {
      const { findings } = await runDoctor(c);
      expect(findings).toEqual([]);
    });
  });

  it("allows exactly the migrated schema's grants: no stale entry widens what a future grant may add", async () => {
    // What `herald doctor --print-grants` prints, against the literal in the reviewed file.
    const source = fs.readFileSync(path.join(projectRoot, "src/doctor/allowed-grants.ts"), "utf8");
    const literal = source
      .slice(source.indexOf("= {", source.indexOf("export const ALLOWED_GRANTS")) + 2)
      .replace(/;\s*$/, "");
    // Compared as values: the file is prettier's layout of what --print-grants prints.
    const asValue = (text: string): unknown => new Function(`return (${text});`)();
    expect(asValue(formatAllowList(await withRootDb(db.current, heldGrants)))).toEqual(asValue(literal));
  });

  it("has a planted fault for every check", () => {
    expect(new Set(FAULTS.map((f) => f.check))).toEqual(new Set(CHECKS.map((c) => c.name)));
  });

  it.each(FAULTS)("catches $check: $plant.0", async ({ check, plant, also = [], alsoBefore16 = [] }) => {
    // Planted inside a transaction that rolls back (role changes included), so
    // neither the schema nor other test files ever see it.
    await withRootDb(db.current, async (c) => {
      for (const sql of plant) await c.query(sql);
      const { findings } = await runDoctor(c);
      const found = [...new Set(findings.map((f) => f.check))].sort();
      const version = Number((await c.query("select current_setting('server_version_num') as v")).rows[0].v);
      const expected = [check, ...also, ...(version < 160000 ? alsoBefore16 : [])];
      expect(found, JSON.stringify(findings, null, 1)).toEqual(expected.sort());
    });
  });

  it("the CLI exits 0 on a sound schema and 1, naming the check, on a broken one", async () => {
    const sound = await runCli(db.current, ["doctor"]);
    expect(sound.stdout).toContain(`All ${CHECKS.length} isolation checks passed.`);
    expect(sound.code).toBe(0);

    // This file's database is its own, so a committed fault harms no one else.
    await db.current.root.query("alter table herald_public.tenants no force row level security");
    const broken = await runCli(db.current, ["doctor"]);
    expect(broken.code).toBe(1);
    expect(broken.stdout).toMatch(/FAIL\s+rls-enabled/);
    expect(broken.stdout).toContain("herald_public.tenants: RLS not forced");
    await db.current.root.query("alter table herald_public.tenants force row level security");
  });
});
