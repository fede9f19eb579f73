import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type pg from "pg";
import { importContacts } from "../src/contacts/import.ts";
import { contactLookupSql } from "../src/contacts/store.ts";
import { keyringFromConfig, type Keyring } from "../src/crypto/keyring.ts";
import { enterSession, withSession } from "../src/db/session.ts";
import { ROLES } from "../src/db/urls.ts";
import { median, percentile, say, timeQuery, withBenchDatabase } from "./common.ts";

/**
 * `npm run bench -- contacts`, three measurements in one run:
 * 1. CSV import (the real `herald contacts import` path: parse, normalise,
 *    encrypt, hash, upsert) against a plain multi-row INSERT of the same rows
 *    without encryption;
 * 2. phone lookups by keyed hash among 1M contacts of 1,000 tenants, as a
 *    member under RLS, exactly the statement contactByPhone runs;
 * 3. a tenant's page of 100 contacts filtered by tag, under RLS as
 *    herald_member vs a superuser with the tenant filter written by hand.
 */

const IMPORT_ROWS = Number(process.env.BENCH_IMPORT_ROWS ?? 100_000);
const TENANTS = Number(process.env.BENCH_TENANTS ?? 1000);
const CONTACTS_PER_TENANT = Number(process.env.BENCH_CONTACTS_PER_TENANT ?? 1000);
const LOOKUPS = Number(process.env.BENCH_LOOKUPS ?? 2000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 200);

const fmt = (n: number) => Math.round(n).toLocaleString("en-US");

/** Distinct valid US numbers, half of them in national format as people type them. */
const phoneOf = (i: number) => {
  const exchange = 200 + Math.floor(i / 10_000);
  const line = String(i % 10_000).padStart(4, "0");
  return i % 2 === 0 ? `+1 212 ${exchange} ${line}` : `(212) ${exchange}-${line}`;
};

/** CPU nanoseconds so far of each client backend of this database (Linux /proc); empty elsewhere. */
async function backendCpu(root: pg.Pool): Promise<Map<number, number>> {
  const { rows } = await root.query<{ pid: number }>(
    "select pid from pg_stat_activity where datname = current_database() and backend_type = 'client backend'",
  );
  const cpu = new Map<number, number>();
  for (const { pid } of rows) {
    try {
      cpu.set(pid, Number(fs.readFileSync(`/proc/${pid}/schedstat`, "utf8").split(" ")[0]));
    } catch {
      // not Linux, or the backend just ended
    }
  }
  return cpu;
}
const cpuSpent = (before: Map<number, number>, after: Map<number, number>) =>
  [...after].reduce((sum, [pid, ns]) => sum + ns - (before.get(pid) ?? 0), 0);

/** The run's figures, printed as one JSON line at the end (for scripts comparing runs). */
const figures: Record<string, number | string> = { bench: "contacts" };

async function benchImport(root: pg.Pool, app: pg.Pool, keyring: Keyring) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "herald-bench-"));
  const file = path.join(dir, "contacts.csv");
  const rows = Array.from({ length: IMPORT_ROWS }, (_, i) => ({
    first: `First${i}`,
    last: `Last${i}`,
    phone: phoneOf(i),
    email: `person${i}@example.com`,
  }));
  fs.writeFileSync(
    file,
    ["first_name,last_name,phone,email", ...rows.map((r) => `${r.first},${r.last},"${r.phone}",${r.email}`)].join(
      "\n",
    ) + "\n",
  );
  const {
    rows: [tenant],
  } = await root.query<{ id: string }>(
    "insert into herald_public.tenants (slug, name) values ('bench-import', 'Import') returning id",
  );

  say(`importing ${fmt(IMPORT_ROWS)} contacts from CSV…`);
  // CPU time too: on a shared machine wall time moves with the neighbours' load, CPU time per row far less.
  const dbCpuBefore = await backendCpu(root);
  const nodeCpuBefore = process.cpuUsage();
  let started = performance.now();
  const summary = await importContacts({
    pool: app,
    keyring,
    tenantId: tenant!.id,
    file,
    rejectsFile: path.join(dir, "rejects.csv"),
  });
  const importSeconds = (performance.now() - started) / 1000;
  const nodeCpu = process.cpuUsage(nodeCpuBefore);
  const dbCpuNs = cpuSpent(dbCpuBefore, await backendCpu(root));
  if (summary.inserted !== IMPORT_ROWS)
    throw new Error(`import inserted ${summary.inserted} of ${IMPORT_ROWS}: ${JSON.stringify(summary)}`);

  say(`inserting the same ${fmt(IMPORT_ROWS)} rows in plain multi-row INSERTs…`);
  await root.query(`create table public.bench_plain_contacts (
    tenant_id uuid not null, id uuid not null default gen_random_uuid(),
    first_name text, last_name text, phone text, email text, primary key (tenant_id, id))`);
  started = performance.now();
  for (let start = 0; start < rows.length; start += 1000) {
    const chunk = rows.slice(start, start + 1000);
    const values = chunk.map((_, i) => `($1, $${i * 4 + 2}, $${i * 4 + 3}, $${i * 4 + 4}, $${i * 4 + 5})`).join(", ");
    await root.query(
      `insert into public.bench_plain_contacts (tenant_id, first_name, last_name, phone, email) values ${values}`,
      [tenant!.id, ...chunk.flatMap((r) => [r.first, r.last, r.phone, r.email])],
    );
  }
  const plainSeconds = (performance.now() - started) / 1000;
  fs.rmSync(dir, { recursive: true, force: true });

  const importRate = IMPORT_ROWS / importSeconds;
  const plainRate = IMPORT_ROWS / plainSeconds;
  Object.assign(figures, {
    import_node_cpu_us_per_row: Number(((nodeCpu.user + nodeCpu.system) / IMPORT_ROWS).toFixed(1)),
    import_db_cpu_us_per_row: Number((dbCpuNs / 1000 / IMPORT_ROWS).toFixed(1)),
    import_rows: IMPORT_ROWS,
    import_per_s: Math.round(importRate),
    plain_insert_per_s: Math.round(plainRate),
    ratio_import_plain: Number((importRate / plainRate).toFixed(2)),
  });
  process.stdout.write(
    [
      `Contact import: ${fmt(IMPORT_ROWS)} rows from CSV (parse, E.164, encrypt phone+email, 2 keyed hashes, upsert)`,
      `  herald contacts import:                     ${fmt(importRate)} contacts/s (${importSeconds.toFixed(1)} s)`,
      `  plain multi-row INSERT, no encryption:      ${fmt(plainRate)} rows/s (${plainSeconds.toFixed(1)} s)`,
      `  ratio import / plain INSERT:                ${(importRate / plainRate).toFixed(2)}x`,
      `  CPU per contact imported, Node / database:  ${figures.import_node_cpu_us_per_row} / ${figures.import_db_cpu_us_per_row} µs`,
      "",
    ].join("\n"),
  );
}

/** Seeds CONTACTS_PER_TENANT phone-only contacts in each tenant, two tenants at a time, in SQL. */
async function seedLookupTenants(
  root: pg.Pool,
  app: pg.Pool,
  keyring: Keyring,
): Promise<{ id: string; settings: Record<string, string> }[]> {
  say(`seeding ${fmt(TENANTS * CONTACTS_PER_TENANT)} contacts over ${fmt(TENANTS)} tenants…`);
  const { rows } = await root.query<{ id: string }>(
    "insert into herald_public.tenants (slug, name) select 'bench-' || g, 'Bench ' || g from generate_series(1, $1) g returning id",
    [TENANTS],
  );
  const tenants: { id: string; settings: Record<string, string> }[] = [];
  for (const { id } of rows) tenants.push({ id, settings: await keyring.sessionSettings(app, id) });
  let next = 0;
  const started = performance.now();
  const seedOne = async () => {
    for (let i = next++; i < tenants.length; i = next++) {
      const t = tenants[i]!;
      await withSession(app, { role: ROLES.worker, tenantId: t.id, settings: t.settings }, (client) =>
        client.query(
          `with k as materialized (
             select herald_hidden.current_data_key_version() as kv, herald_hidden.current_hash_key_version() as hv,
                    herald_hidden.data_key(herald_hidden.current_data_key_version()) as dk,
                    herald_hidden.hash_key(herald_hidden.current_hash_key_version()) as hk)
           insert into herald_public.contacts (first_name, phone_encrypted, phone_hash, key_version, hash_version)
           select 'c' || g, herald_hidden.encrypt_pii(p, k.dk), herald_hidden.keyed_hash('phone', p, k.hk), k.kv, k.hv
             from k, lateral (select g, '+1202' || lpad(g::text, 7, '0') as p from generate_series(1, $1) g) s`,
          [CONTACTS_PER_TENANT],
        ),
      );
      if (i % 100 === 99)
        say(
          `  ${fmt(i + 1)} tenants seeded (${fmt(((i + 1) * CONTACTS_PER_TENANT) / ((performance.now() - started) / 1000))} contacts/s)`,
        );
    }
  };
  await Promise.all([seedOne(), seedOne()]);
  await root.query("analyze herald_public.contacts");
  return tenants;
}

async function benchLookups(app: pg.Pool, tenants: { id: string; settings: Record<string, string> }[]) {
  say(`timing ${fmt(LOOKUPS)} phone lookups…`);
  const samples: number[] = [];
  const client = await app.connect();
  try {
    for (let i = 0; i < LOOKUPS + 50; i++) {
      const t = tenants[Math.floor(Math.random() * tenants.length)]!;
      const phone = `+1202${String(1 + Math.floor(Math.random() * CONTACTS_PER_TENANT)).padStart(7, "0")}`;
      await client.query("begin");
      await enterSession(client, { role: ROLES.member, tenantId: t.id, settings: t.settings });
      const started = process.hrtime.bigint();
      // Prepared, as in the API (the plugin names its statements).
      const { rowCount } = await client.query({
        name: "bench_lookup",
        text: contactLookupSql("phone"),
        values: ["phone", phone],
      });
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      await client.query("commit");
      if (rowCount !== 1) throw new Error(`lookup of ${phone} in ${t.id} found ${rowCount} rows`);
      if (i >= 50) samples.push(ms); // the first 50 warm the plan cache and buffers
    }
  } finally {
    client.release();
  }
  Object.assign(figures, {
    lookups: LOOKUPS,
    lookup_contacts: TENANTS * CONTACTS_PER_TENANT,
    lookup_p50_ms: Number(median(samples).toFixed(3)),
    lookup_p99_ms: Number(percentile(samples, 99).toFixed(3)),
  });
  process.stdout.write(
    [
      `Phone lookup by keyed hash: ${fmt(LOOKUPS)} random lookups among ${fmt(TENANTS * CONTACTS_PER_TENANT)} contacts of ${fmt(TENANTS)} tenants (member, RLS)`,
      `  p50 ${median(samples).toFixed(3)} ms, p99 ${percentile(samples, 99).toFixed(3)} ms`,
      "",
    ].join("\n"),
  );
}

async function benchTaggedPage(root: pg.Pool, app: pg.Pool, tenant: { id: string; settings: Record<string, string> }) {
  const {
    rows: [tag],
  } = await root.query<{ id: string }>(
    "insert into herald_public.tags (tenant_id, name) values ($1, 'vip') returning id",
    [tenant.id],
  );
  await root.query(
    `insert into herald_public.contact_tags (tenant_id, contact_id, tag_id)
     select tenant_id, id, $2 from herald_public.contacts where tenant_id = $1 and random() < 0.5`,
    [tenant.id, tag!.id],
  );
  await root.query("analyze herald_public.contact_tags");
  const page = (filter: string) => `
    select c.id, c.first_name, c.last_name, c.created_at
      from herald_public.contacts c
     where ${filter} exists (select 1 from herald_public.contact_tags ct
                              where ct.tenant_id = c.tenant_id and ct.contact_id = c.id and ct.tag_id = $1)
     order by c.created_at, c.id
     limit 100`;
  const rls = await timeQuery(
    app,
    { role: ROLES.member, tenantId: tenant.id, settings: tenant.settings },
    page(""),
    [tag!.id],
    ROUNDS,
  );
  const manual = await timeQuery(root, undefined, page("c.tenant_id = $2 and"), [tag!.id, tenant.id], ROUNDS);
  Object.assign(figures, {
    tagged_page_rls_ms: Number(median(rls).toFixed(3)),
    tagged_page_manual_ms: Number(median(manual).toFixed(3)),
    ratio_rls_manual: Number((median(rls) / median(manual)).toFixed(2)),
  });
  process.stdout.write(
    [
      `Tagged contacts page (100 of a tenant's ${fmt(CONTACTS_PER_TENANT)} contacts, by tag), median of ${ROUNDS}`,
      `  as herald_member under RLS (no tenant filter): ${median(rls).toFixed(3)} ms`,
      `  as superuser with WHERE tenant_id = $2:        ${median(manual).toFixed(3)} ms`,
      `  ratio RLS / hand-written filter:               ${(median(rls) / median(manual)).toFixed(2)}x`,
      "",
    ].join("\n"),
  );
}

export async function benchContacts(): Promise<void> {
  await withBenchDatabase(async ({ config, root, app }) => {
    const keyring = keyringFromConfig(config);
    await benchImport(root, app, keyring);
    const tenants = await seedLookupTenants(root, app, keyring);
    await benchLookups(app, tenants);
    await benchTaggedPage(root, app, tenants[0]!);
  });
  process.stdout.write(`${JSON.stringify(figures)}\n`);
}
