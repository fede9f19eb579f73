import "../src/env-defaults.ts";
import pg from "pg";
import { loadConfig } from "../src/config.ts";
import { dropDatabase } from "../src/db/bootstrap.ts";
import { openDatabase } from "../src/db/database.ts";
import { createLogger } from "../src/logger.ts";

/**
 * `npm run bench`: what row-level security costs. The same aggregate over one
 * tenant's API keys, run (a) as herald_member under RLS with no WHERE clause,
 * and (b) as a superuser with the hand-written `where tenant_id = …` that RLS
 * replaces. Both in one run, on one database; prints the ratio of medians.
 */

const ROWS_PER_TENANT = Number(process.env.BENCH_ROWS ?? 100_000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 30);

const logger = createLogger("warn", 2);
const config = loadConfig();
const database = `herald_bench_${process.pid}`;
const db = await openDatabase(config, logger, { database });
const root = new pg.Pool({ connectionString: db.urls.admin, max: 1 });
const app = new pg.Pool({ connectionString: db.urls.authenticator, max: 1 });

const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;

async function time(pool: pg.Pool, setup: string[], sql: string, params: unknown[]): Promise<number[]> {
  const client = await pool.connect();
  const samples: number[] = [];
  try {
    await client.query("begin");
    for (const s of setup) await client.query(s, []);
    for (let i = 0; i < ROUNDS + 3; i++) {
      const started = process.hrtime.bigint();
      await client.query(sql, params);
      if (i >= 3) samples.push(Number(process.hrtime.bigint() - started) / 1e6); // 3 warm-up rounds
    }
    await client.query("rollback");
  } finally {
    client.release();
  }
  return samples;
}

try {
  process.stderr.write(`seeding ${ROWS_PER_TENANT.toLocaleString()} API keys for each of 2 tenants…\n`);
  const { rows: tenants } = await root.query<{ id: string }>(
    "insert into herald_public.tenants (slug, name) values ('bench-a', 'A'), ('bench-b', 'B') returning id",
  );
  const [a, b] = tenants.map((t) => t.id) as [string, string];
  await root.query(
    `insert into herald_public.api_keys (tenant_id, name, token_prefix, secret_hash)
     select t, 'k' || i, 'hk_bench', public.digest(t::text || i, 'sha256')
       from unnest($1::uuid[]) t, generate_series(1, $2) i`,
    [[a, b], ROWS_PER_TENANT],
  );
  await root.query("analyze herald_public.api_keys");

  const query = "select count(*), max(created_at) from herald_public.api_keys";
  const rls = await time(
    app,
    [`select set_config('role', 'herald_member', true), set_config('jwt.claims.tenant_id', '${a}', true)`],
    query,
    [],
  );
  const manual = await time(root, [], `${query} where tenant_id = $1`, [a]);

  const ratio = median(rls) / median(manual);
  process.stdout.write(
    [
      `RLS overhead: one tenant's aggregate over ${ROWS_PER_TENANT.toLocaleString()} of ${(2 * ROWS_PER_TENANT).toLocaleString()} rows, median of ${ROUNDS}`,
      `  as herald_member under RLS (no WHERE):      ${median(rls).toFixed(2)} ms`,
      `  as superuser with WHERE tenant_id = $1:     ${median(manual).toFixed(2)} ms`,
      `  ratio RLS / hand-written filter:            ${ratio.toFixed(2)}x`,
      "",
    ].join("\n"),
  );
} finally {
  await root.end();
  await app.end();
  await dropDatabase(db.urls.adminMaintenance, database);
  await db.stop();
}
