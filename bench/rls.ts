import { ROLES } from "../src/db/urls.ts";
import { median, say, timeQuery, withBenchDatabase } from "./common.ts";

/**
 * `npm run bench -- rls`: what row-level security costs. The same aggregate over
 * one tenant's API keys, run (a) as herald_member under RLS with no WHERE clause,
 * and (b) as a superuser with the hand-written `where tenant_id = …` that RLS
 * replaces. Both in one run, on one database; prints the ratio of medians.
 */

const ROWS_PER_TENANT = Number(process.env.BENCH_ROWS ?? 100_000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 30);

export async function benchRls(): Promise<void> {
  await withBenchDatabase(async ({ root, app }) => {
    say(`seeding ${ROWS_PER_TENANT.toLocaleString()} API keys for each of 2 tenants…`);
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
    const rls = await timeQuery(app, { role: ROLES.member, tenantId: a }, query, [], ROUNDS);
    const manual = await timeQuery(root, undefined, `${query} where tenant_id = $1`, [a], ROUNDS);
    process.stdout.write(
      [
        `RLS overhead: one tenant's aggregate over ${ROWS_PER_TENANT.toLocaleString()} of ${(2 * ROWS_PER_TENANT).toLocaleString()} rows, median of ${ROUNDS}`,
        `  as herald_member under RLS (no WHERE):      ${median(rls).toFixed(2)} ms`,
        `  as superuser with WHERE tenant_id = $1:     ${median(manual).toFixed(2)} ms`,
        `  ratio RLS / hand-written filter:            ${(median(rls) / median(manual)).toFixed(2)}x`,
        "",
      ].join("\n"),
    );
  });
}
