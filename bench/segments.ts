import type pg from "pg";
import { enterSession } from "../src/db/session.ts";
import { ROLES } from "../src/db/urls.ts";
import { median, percentile, say, withBenchDatabase } from "./common.ts";

/**
 * `npm run bench -- segments`, two measurements in one run (docs/audiences.md):
 * 1. evaluating a tenant's segment (plan = gold, tag vip, not on list churned)
 *    among 1,000,000 contacts of 1,000 tenants: the matching contacts of one
 *    tenant's 1,000, as herald_member under RLS, through searchContacts'
 *    function (the statement a preview and a fan-out snapshot run). Target:
 *    p99 < 50 ms.
 * 2. the count of the same segment in a tenant of 100,000 contacts
 *    (Segment.contactCount). Target: < 500 ms.
 * Contacts are seeded as superuser in set-based statements (no PII: a segment
 * reads no phone or email). Scale down for a smoke run with the variables below,
 * e.g. BENCH_SEGMENT_TENANTS=20 BENCH_SEGMENT_BIG=5000 BENCH_ROUNDS=20.
 */

const TENANTS = Number(process.env.BENCH_SEGMENT_TENANTS ?? 1000);
const CONTACTS_PER_TENANT = Number(process.env.BENCH_SEGMENT_CONTACTS_PER_TENANT ?? 1000);
const BIG_TENANT = Number(process.env.BENCH_SEGMENT_BIG ?? 100_000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 200);
const COUNT_ROUNDS = Math.max(5, Math.min(20, ROUNDS));

const TARGET_EVALUATION_P99_MS = 50;
const TARGET_COUNT_MS = 500;

const fmt = (n: number) => Math.round(n).toLocaleString("en-US");
const figures: Record<string, number | string> = { bench: "segments" };

interface SeededTenant {
  id: string;
  segmentId: string;
}

/**
 * `contacts` contacts in each of `tenantIds`: a third on plan gold, half
 * tagged vip, a tenth on list churned, seats 0-49, a tenth unsubscribed from
 * SMS; and a segment on plan = gold, tag vip, not list churned. Triggers off
 * (superuser, session_replication_role = replica): the rows are consistent
 * by construction, and 1M audit rows are not what is measured.
 */
async function seedTenants(root: pg.Pool, tenantIds: string[], contacts: number): Promise<SeededTenant[]> {
  const client = await root.connect();
  try {
    await client.query("begin");
    await client.query("set local session_replication_role = replica");
    await client.query(
      `insert into herald_public.contacts (tenant_id, first_name, key_version, hash_version, attributes, sms_subscribed, timezone)
       select t.id, 'c' || g, 1, 1,
              jsonb_build_object('plan', (array['gold', 'silver', 'bronze'])[1 + g % 3], 'seats', g % 50),
              g % 10 <> 0, case when g % 2 = 0 then 'Europe/Paris' else 'America/New_York' end
         from unnest($1::uuid[]) t(id) cross join generate_series(1, $2) g`,
      [tenantIds, contacts],
    );
    await client.query(
      `insert into herald_public.tags (tenant_id, name) select id, 'vip' from unnest($1::uuid[]) t(id)`,
      [tenantIds],
    );
    await client.query(
      `insert into herald_public.lists (tenant_id, name) select id, 'churned' from unnest($1::uuid[]) t(id)`,
      [tenantIds],
    );
    await client.query(
      `insert into herald_public.contact_tags (tenant_id, contact_id, tag_id)
       select c.tenant_id, c.id, t.id from herald_public.contacts c
         join herald_public.tags t on t.tenant_id = c.tenant_id and t.name = 'vip'
        where c.tenant_id = any ($1::uuid[]) and get_byte(uuid_send(c.id), 15) % 2 = 0`,
      [tenantIds],
    );
    await client.query(
      `insert into herald_public.list_members (tenant_id, list_id, contact_id)
       select c.tenant_id, l.id, c.id from herald_public.contacts c
         join herald_public.lists l on l.tenant_id = c.tenant_id and l.name = 'churned'
        where c.tenant_id = any ($1::uuid[]) and get_byte(uuid_send(c.id), 14) % 10 = 0`,
      [tenantIds],
    );
    // Triggers back on for the segments (audited as a tenant's would be); the filter's check runs either way.
    await client.query("set local session_replication_role = origin");
    const { rows } = await client.query<{ tenant_id: string; id: string }>(
      `insert into herald_public.segments (tenant_id, name, filter)
       select t.id, 'gold vips',
              jsonb_build_object('all', jsonb_build_array(
                jsonb_build_object('attribute', jsonb_build_object('key', 'plan', 'equals', 'gold')),
                jsonb_build_object('tags', jsonb_build_object('any', jsonb_build_array(v.id))),
                jsonb_build_object('lists', jsonb_build_object('none', jsonb_build_array(l.id)))))
         from unnest($1::uuid[]) t(id)
         join herald_public.tags v on v.tenant_id = t.id and v.name = 'vip'
         join herald_public.lists l on l.tenant_id = t.id and l.name = 'churned'
       returning tenant_id, id`,
      [tenantIds],
    );
    await client.query("commit");
    return rows.map((r) => ({ id: r.tenant_id, segmentId: r.id }));
  } catch (error) {
    await client.query("rollback");
    throw error;
  } finally {
    client.release();
  }
}

async function createTenants(root: pg.Pool, prefix: string, count: number): Promise<string[]> {
  const { rows } = await root.query<{ id: string }>(
    `insert into herald_public.tenants (slug, name)
     select $1 || g, $1 || g from generate_series(1, $2) g returning id`,
    [prefix, count],
  );
  return rows.map((r) => r.id);
}

/** Runs `sql` in a transaction as the tenant's member; milliseconds and the rows' count. */
async function asMember(client: pg.PoolClient, tenantId: string, name: string, sql: string, params: unknown[]) {
  await client.query("begin");
  try {
    await enterSession(client, { role: ROLES.member, tenantId });
    const started = process.hrtime.bigint();
    const result = await client.query({ name, text: sql, values: params });
    return { ms: Number(process.hrtime.bigint() - started) / 1e6, rows: result.rows };
  } finally {
    await client.query("commit");
  }
}

export async function benchSegments(): Promise<void> {
  await withBenchDatabase(async ({ root, app }) => {
    say(`seeding ${fmt(TENANTS * CONTACTS_PER_TENANT)} contacts over ${fmt(TENANTS)} tenants…`);
    let started = performance.now();
    const tenantIds = await createTenants(root, "seg-bench-", TENANTS);
    const tenants: SeededTenant[] = [];
    for (let i = 0; i < tenantIds.length; i += 100) {
      tenants.push(...(await seedTenants(root, tenantIds.slice(i, i + 100), CONTACTS_PER_TENANT)));
    }
    say(`  ${((performance.now() - started) / 1000).toFixed(1)} s`);
    say(`seeding a tenant of ${fmt(BIG_TENANT)} contacts…`);
    started = performance.now();
    const [big] = await seedTenants(root, await createTenants(root, "seg-bench-big-", 1), BIG_TENANT);
    say(`  ${((performance.now() - started) / 1000).toFixed(1)} s`);
    await root.query("analyze herald_public.contacts, herald_public.contact_tags, herald_public.list_members");

    const client = await app.connect();
    try {
      say(`timing ${fmt(ROUNDS)} segment evaluations in random tenants…`);
      const evaluate = "select id from herald_public.search_contacts(segment_id => $1)";
      const samples: number[] = [];
      let matched = 0;
      for (let i = 0; i < ROUNDS + 20; i++) {
        const t = tenants[Math.floor(Math.random() * tenants.length)]!;
        const { ms, rows } = await asMember(client, t.id, "bench_segment_eval", evaluate, [t.segmentId]);
        if (rows.length === 0) throw new Error(`segment ${t.segmentId} matched nobody`);
        if (i >= 20) {
          samples.push(ms); // the first 20 warm the caches
          matched += rows.length;
        }
      }

      say(`timing ${COUNT_ROUNDS} counts of the ${fmt(BIG_TENANT)}-contact tenant's segment…`);
      const count =
        "select herald_public.segments_contact_count(s) as n from herald_public.segments s where s.tenant_id = $1 and s.id = $2";
      const counts: number[] = [];
      let bigCount = 0;
      for (let i = 0; i < COUNT_ROUNDS + 2; i++) {
        const { ms, rows } = await asMember(client, big!.id, "bench_segment_count", count, [big!.id, big!.segmentId]);
        bigCount = rows[0].n as number;
        if (i >= 2) counts.push(ms);
      }

      const p99 = percentile(samples, 99);
      const countMedian = median(counts);
      const countMax = Math.max(...counts);
      Object.assign(figures, {
        contacts: TENANTS * CONTACTS_PER_TENANT + BIG_TENANT,
        evaluations: ROUNDS,
        evaluation_matched_avg: Math.round(matched / ROUNDS),
        evaluation_p50_ms: Number(median(samples).toFixed(3)),
        evaluation_p99_ms: Number(p99.toFixed(3)),
        ratio_evaluation_p99_target: Number((p99 / TARGET_EVALUATION_P99_MS).toFixed(3)),
        big_tenant_contacts: BIG_TENANT,
        big_tenant_matched: bigCount,
        count_median_ms: Number(countMedian.toFixed(1)),
        count_max_ms: Number(countMax.toFixed(1)),
        ratio_count_target: Number((countMax / TARGET_COUNT_MS).toFixed(3)),
      });
      process.stdout.write(
        [
          `Segment evaluation (plan = gold, tag vip, not list churned): one tenant's ${fmt(CONTACTS_PER_TENANT)} contacts among ${fmt(TENANTS * CONTACTS_PER_TENANT)} of ${fmt(TENANTS)} tenants (member, RLS), ${fmt(ROUNDS)} runs`,
          `  matching contacts fetched: ${fmt(matched / ROUNDS)} on average`,
          `  p50 ${median(samples).toFixed(3)} ms, p99 ${p99.toFixed(3)} ms; target p99 < ${TARGET_EVALUATION_P99_MS} ms: ratio ${(p99 / TARGET_EVALUATION_P99_MS).toFixed(3)}`,
          `Segment count in a tenant of ${fmt(BIG_TENANT)} contacts (Segment.contactCount), ${COUNT_ROUNDS} runs: ${fmt(bigCount)} match`,
          `  median ${countMedian.toFixed(1)} ms, max ${countMax.toFixed(1)} ms; target < ${TARGET_COUNT_MS} ms: ratio (max) ${(countMax / TARGET_COUNT_MS).toFixed(3)}`,
          "",
        ].join("\n"),
      );
    } finally {
      client.release();
    }
  });
  process.stdout.write(`${JSON.stringify(figures)}\n`);
}
