import { execFileSync } from "node:child_process";
import { createHash, createHmac, randomBytes } from "node:crypto";
import fs from "node:fs";
import { beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../src/config.ts";
import { Keyring, tenantHashKey } from "../src/crypto/keyring.ts";
import { contactLookupSql } from "../src/contacts/store.ts";
import { enterSession, withSession } from "../src/db/session.ts";
import { ROLES } from "../src/db/urls.ts";
import { asRole, useTestDatabase, withRootDb, type TestDb } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import { testKeyring } from "./helpers/keys.ts";

/** What the database holds: keyed hashes, ciphertext only, no key, and an index-backed lookup. */

const db = useTestDatabase();
const config = loadConfig();
let a: TenantFixture;
let b: TenantFixture;

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
});

const asWorkerIn = <T>(keyring: Keyring, tenantId: string, fn: Parameters<typeof asRole<T>>[2]) =>
  keyring
    .sessionSettings(db.current.root, tenantId)
    .then((settings) => asRole(db.current, { role: ROLES.worker, tenantId, settings }, fn));

describe("keyed hashes", () => {
  it("are HMAC-SHA-256 under the tenant's own key, never a plain SHA-256", async () => {
    const stored = await withRootDb(
      db.current,
      async (c) =>
        (await c.query("select phone_hash, hash_version from herald_public.contacts where id = $1", [a.contactId]))
          .rows[0],
    );
    const expected = createHmac("sha256", tenantHashKey(config.hashKey, a.id))
      .update(`phone:${a.contactPhone}`)
      .digest();
    expect(stored.phone_hash.equals(expected)).toBe(true);
    for (const plain of [a.contactPhone, `phone:${a.contactPhone}`, a.contactPhone.slice(1)]) {
      expect(stored.phone_hash.equals(createHash("sha256").update(plain).digest()), plain).toBe(false);
    }
    // Tenant B hashing the same number gets another value: no cross-tenant equality either.
    const inB = await asWorkerIn(
      testKeyring(),
      b.id,
      async (c) =>
        (await c.query("select herald_hidden.pii_hash('phone', $1, $2) as h", [a.contactPhone, stored.hash_version]))
          .rows[0].h,
    );
    expect(inB.equals(stored.phone_hash)).toBe(false);
  });

  it("the same number under another hash-key version gives a different hash", async () => {
    const rotated = new Keyring({ masterKey: config.masterKey, hashKey: randomBytes(32) });
    const hashUnder = (keyring: Keyring) =>
      asWorkerIn(keyring, a.id, async (c) => {
        const { rows } = await c.query(
          "select herald_hidden.current_hash_key_version() as v, herald_hidden.pii_hash('phone', $1, herald_hidden.current_hash_key_version()) as h",
          [a.contactPhone],
        );
        return rows[0] as { v: number; h: Buffer };
      });
    const before = await hashUnder(testKeyring());
    const after = await hashUnder(rotated);
    expect(after.v).not.toBe(before.v);
    expect(after.h.equals(before.h)).toBe(false);
  });

  it("the phone lookup probes the (tenant_id, phone_hash) index", async () => {
    // Enough rows that a sequential scan would be the planner's choice without the index.
    await seedMany(db.current, a.id, 3000);
    await withRootDb(db.current, (c) => c.query("analyze herald_public.contacts"));
    const settings = await testKeyring().sessionSettings(db.current.root, a.id);
    const plan = await asRole(db.current, { role: ROLES.member, tenantId: a.id, settings }, async (c) => {
      // The statement contactByPhone runs, as a member, under RLS.
      const { rows } = await c.query(`explain (format json) ${contactLookupSql("phone")}`, ["phone", a.contactPhone]);
      return JSON.stringify(rows[0]["QUERY PLAN"]);
    });
    expect(plan).toContain('"Index Name":"contacts_phone_hash"');
    expect(plan).not.toContain('"Node Type":"Seq Scan"');
  });

  it("an upsert into a tenant new since ANALYZE still probes each hash's unique index", async () => {
    // Statistics that know every tenant but the new one (20 tenants of 1,000
    // contacts, the PII random bytes): the new tenant is estimated at about one row.
    for (let t = 0; t < 20; t++) {
      const other = (
        await db.current.root.query<{ id: string }>(
          "insert into herald_public.tenants (slug, name) values ($1, 'Other') returning id",
          [`plans-other-${t}`],
        )
      ).rows[0]!.id;
      await testKeyring().sessionSettings(db.current.root, other); // its data key (contacts name its version)
      await db.current.root.query(
        `insert into herald_public.contacts (tenant_id, phone_encrypted, phone_hash, email_encrypted, email_hash, key_version, hash_version)
         select $1, gen_random_bytes(60), gen_random_bytes(32), gen_random_bytes(70), gen_random_bytes(32), 1, 1
           from generate_series(1, 1000)`,
        [other],
      );
    }
    await db.current.root.query("analyze herald_public.contacts");
    const fresh = (
      await db.current.root.query<{ id: string }>(
        "insert into herald_public.tenants (slug, name) values ('plans-fresh', 'Fresh') returning id",
      )
    ).rows[0]!.id;
    const settings = await testKeyring().sessionSettings(db.current.root, fresh);
    const batch = (start: number) =>
      JSON.stringify(
        Array.from({ length: 500 }, (_, i) => ({
          phone: `+1720555${String(start + i).padStart(4, "0")}`,
          email: `fresh${start + i}@example.com`,
        })),
      );
    // The plan of the second batch, which finds the first one's contacts in the table (auto_explain, as a superuser may load it).
    const client = await db.current.root.connect();
    const plans: string[] = [];
    client.on("notice", (n) => plans.push(n.message ?? ""));
    try {
      await client.query("load 'auto_explain'");
      for (const start of [0, 500]) {
        await client.query("begin");
        if (start > 0)
          await client.query(`set local auto_explain.log_min_duration = 0; set local auto_explain.log_analyze = on;
                               set local auto_explain.log_timing = off; set local auto_explain.log_nested_statements = on;
                               set local auto_explain.log_level = notice`);
        await enterSession(client, { role: ROLES.worker, tenantId: fresh, settings });
        await client.query("select count(*) from herald_hidden.upsert_contacts($1)", [batch(start)]);
        await client.query("commit");
      }
    } finally {
      client.release();
    }
    const upsert = plans.find((p) => p.includes("CTE owners"));
    expect(upsert).toBeDefined();
    expect(upsert).toMatch(
      /Index Scan using contacts_phone_hash .*\n\s+Index Cond: \(\(tenant_id = .+\) AND \(phone_hash = /,
    );
    expect(upsert).toMatch(
      /Index Scan using contacts_email_hash .*\n\s+Index Cond: \(\(tenant_id = .+\) AND \(email_hash = /,
    );
    // No hash compared row by row over the tenant's contacts, no batch joined to them row by row.
    expect(upsert).not.toMatch(/Filter: \((phone|email)_hash/);
    expect(upsert).not.toContain("Rows Removed by Join Filter");
  });
});

/** Commits `count` contacts for a tenant (the lookup test needs them visible to ANALYZE). */
async function seedMany(testDb: TestDb, tenantId: string, count: number) {
  const settings = await testKeyring().sessionSettings(testDb.root, tenantId);
  await withSession(testDb.authenticator, { role: ROLES.worker, tenantId, settings }, async (client) => {
    for (let start = 0; start < count; start += 1000) {
      const docs = Array.from({ length: Math.min(1000, count - start) }, (_, i) => ({
        phone: `+1303555${String(start + i).padStart(4, "0")}`,
        email: `bulk${start + i}@example.com`,
      }));
      await client.query("select count(*) from herald_hidden.upsert_contacts($1)", [JSON.stringify(docs)]);
    }
  });
}

/** A pg_dump of the database: the real one when a client that fits the server exists, else an equivalent full export. */
async function dumpDatabase(testDb: TestDb): Promise<{ text: string; how: string }> {
  const serverMajor = await withRootDb(testDb, async (c) =>
    Math.floor(Number((await c.query("show server_version_num")).rows[0].server_version_num) / 10000),
  );
  const candidates = [
    "pg_dump",
    ...(fs.existsSync("/usr/lib/postgresql")
      ? fs.readdirSync("/usr/lib/postgresql").map((v) => `/usr/lib/postgresql/${v}/bin/pg_dump`)
      : []),
  ];
  for (const bin of candidates) {
    try {
      const version = execFileSync(bin, ["--version"], { encoding: "utf8" });
      const major = Number(/(\d+)(\.\d+)?/.exec(version.replace(/^[^\d]*/, ""))?.[1]);
      if (major >= serverMajor)
        return {
          text: execFileSync(bin, ["--dbname", testDb.urls.admin], { encoding: "utf8", maxBuffer: 256 * 1024 * 1024 }),
          how: `${bin} ${major}`,
        };
    } catch {
      // not installed, or too old for this server
    }
  }
  // No fitting pg_dump (e.g. the embedded PG 18 with a system pg_dump 15): export
  // every row of every table, every function body and every stored setting.
  const text = await withRootDb(testDb, async (c) => {
    const { rows: tables } = await c.query(
      "select format('%I.%I', table_schema, table_name) as t from information_schema.tables where table_type = 'BASE TABLE' and table_schema not in ('pg_catalog', 'information_schema')",
    );
    const parts: string[] = [];
    for (const { t } of tables)
      parts.push(...(await c.query(`select x::text as row from ${t} x`)).rows.map((r) => r.row as string));
    parts.push(...(await c.query("select prosrc from pg_proc")).rows.map((r) => r.prosrc as string));
    parts.push(
      ...(await c.query("select coalesce(array_to_string(setconfig, ','), '') as s from pg_db_role_setting")).rows.map(
        (r) => r.s as string,
      ),
    );
    return parts.join("\n");
  });
  return { text, how: "full row export" };
}

describe("a dump of the database", () => {
  it("contains no plaintext phone or email and no key", async () => {
    const { text, how } = await dumpDatabase(db.current);
    expect(text.length, how).toBeGreaterThan(10_000);
    // The dump does hold the contacts (their ids), just not their PII.
    expect(text, how).toContain(a.contactId);
    const settingsA = await testKeyring().sessionSettings(db.current.root, a.id);
    const settingsB = await testKeyring().sessionSettings(db.current.root, b.id);
    const secrets: Record<string, string> = {};
    for (const t of [a, b]) {
      secrets[`${t.slug} phone`] = t.contactPhone;
      secrets[`${t.slug} phone digits`] = t.contactPhone.slice(2);
      secrets[`${t.slug} email`] = t.contactEmail;
      secrets[`${t.slug} phone as hex`] = Buffer.from(t.contactPhone).toString("hex");
      secrets[`${t.slug} email as hex`] = Buffer.from(t.contactEmail).toString("hex");
    }
    secrets["a bulk email"] = "bulk42@example.com";
    secrets["a bulk phone"] = "3035550042";
    for (const [name, key] of [
      ["master key", config.masterKey],
      ["hash key", config.hashKey],
      ["A's data key", Buffer.from(settingsA["herald.data_key"]!, "base64")],
      ["B's data key", Buffer.from(settingsB["herald.data_key"]!, "base64")],
      ["A's hash key", Buffer.from(settingsA["herald.hash_key"]!, "base64")],
    ] as const) {
      secrets[`${name} (base64)`] = key.toString("base64");
      secrets[`${name} (hex)`] = key.toString("hex");
    }
    for (const [name, value] of Object.entries(secrets)) {
      expect(text.toLowerCase().includes(value.toLowerCase()), `${name} found in the dump (${how})`).toBe(false);
    }
  });
});
