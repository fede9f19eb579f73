import pg from "pg";
import { loadConfig, type Config } from "../src/config.ts";
import { dropDatabase } from "../src/db/bootstrap.ts";
import { openDatabase, type Database } from "../src/db/database.ts";
import { watchMigrations } from "../src/db/migrate.ts";
import { enterSession, type SessionContext } from "../src/db/session.ts";
import { createLogger } from "../src/logger.ts";

/** A scratch database for one benchmark run, dropped afterwards. */
export async function withBenchDatabase<T>(
  fn: (ctx: { config: Config; db: Database; root: pg.Pool; app: pg.Pool }) => Promise<T>,
): Promise<T> {
  const config = loadConfig();
  const database = `herald_bench_${process.pid}`;
  const logger = createLogger("warn", 2);
  const db = await openDatabase(config, logger, { database });
  // The schema as it will be committed: the work in progress of migrations/current/ on top, as the tests have it.
  await watchMigrations(db.urls, logger, true);
  const root = new pg.Pool({ connectionString: db.urls.admin, max: 4 });
  const app = new pg.Pool({ connectionString: db.urls.authenticator, max: 4 });
  try {
    return await fn({ config, db, root, app });
  } finally {
    await root.end();
    await app.end();
    await dropDatabase(db.urls.adminMaintenance, database);
    await db.stop();
  }
}

export const median = (xs: number[]) => percentile(xs, 50);
export const percentile = (xs: number[], p: number) =>
  [...xs].sort((x, y) => x - y)[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))]!;

/** Runs `sql` ROUNDS times in one transaction, inside `session` if given (3 warm-up rounds), returning milliseconds per run. */
export async function timeQuery(
  pool: pg.Pool,
  session: SessionContext | undefined,
  sql: string,
  params: unknown[],
  rounds: number,
): Promise<number[]> {
  const client = await pool.connect();
  const samples: number[] = [];
  try {
    await client.query("begin");
    if (session) await enterSession(client, session);
    for (let i = 0; i < rounds + 3; i++) {
      const started = process.hrtime.bigint();
      await client.query({ name: "bench_timed", text: sql, values: params }); // prepared, as PostGraphile's are
      if (i >= 3) samples.push(Number(process.hrtime.bigint() - started) / 1e6);
    }
    await client.query("rollback");
  } finally {
    client.release();
  }
  return samples;
}

export const say = (text: string) => process.stderr.write(`${text}\n`);
