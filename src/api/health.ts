import fs from "node:fs";
import path from "node:path";
import type pg from "pg";
import { projectRoot } from "../paths.ts";
import type { WorkerHandle } from "../worker/worker.ts";

/**
 * What `/healthz` reports: the database answers, migrations are current, the
 * worker runs and holds its registration. While the database is away (a
 * restart) it answers 503 `degraded`; the process stays up and reports `ok`
 * again by itself once the database is back.
 */
export interface Health {
  status: "ok" | "degraded";
  database: { ok: boolean; latencyMs?: number; error?: string };
  migrations: { ok: boolean; applied?: number; committed: number };
  worker: {
    ok: boolean;
    inProcess: boolean;
    registered?: boolean;
    concurrency?: number;
    jobsWaiting?: number;
    jobsRunning?: number;
  };
}

const committedMigrations = () =>
  fs.readdirSync(path.join(projectRoot, "migrations", "committed")).filter((f) => f.endsWith(".sql")).length;

export async function checkHealth(ownerPool: pg.Pool, worker: WorkerHandle | undefined): Promise<Health> {
  const committed = committedMigrations();
  const started = performance.now();
  try {
    const { rows } = await ownerPool.query<{ applied: number; waiting: number; running: number }>(`
      select (select count(*)::int from graphile_migrate.migrations) as applied,
             (select count(*)::int from graphile_worker.jobs where locked_at is null and run_at <= now()) as waiting,
             (select count(*)::int from graphile_worker.jobs where locked_at is not null) as running`);
    const latencyMs = Math.round((performance.now() - started) * 10) / 10;
    const { applied, waiting, running } = rows[0]!;
    // Without an in-process worker, workers run elsewhere (`npm run worker`);
    // a queue that only grows is the sign they are missing.
    const migrations = { ok: applied === committed, applied, committed };
    // A worker that lost its registration (the database went away) is reconnecting: degraded until it has.
    const registered = worker?.isRegistered();
    const workerOk = worker ? worker.isRunning() && registered === true : true;
    return {
      status: migrations.ok && workerOk ? "ok" : "degraded",
      database: { ok: true, latencyMs },
      migrations,
      worker: {
        ok: workerOk,
        inProcess: Boolean(worker),
        registered,
        concurrency: worker?.concurrency,
        jobsWaiting: waiting,
        jobsRunning: running,
      },
    };
  } catch (error) {
    // /healthz is public: say what failed, not the driver's message (hosts, users).
    const code = (error as { code?: string }).code;
    return {
      status: "degraded",
      database: { ok: false, error: code ? `unreachable (${code})` : "unreachable" },
      migrations: { ok: false, committed },
      worker: { ok: false, inProcess: Boolean(worker) },
    };
  }
}
