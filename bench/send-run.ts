import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import type pg from "pg";
import type { Database } from "../src/db/database.ts";
import type { SandboxServer } from "../src/sandbox/server.ts";
import { say } from "./common.ts";

/**
 * One measured send: a real worker process (`node src/main.ts --worker-only`,
 * as `npm run worker` starts it) sends every delivery of a message to the
 * sandbox, while this process watches the database and the worker's memory.
 */

const fmt = (n: number) => Math.round(n).toLocaleString("en-US");

/** The Node flags `npm run worker` starts a worker process with (its memory settings): measured as deployed. */
const workerNodeFlags = (): string[] => {
  const script =
    (JSON.parse(fs.readFileSync("package.json", "utf8")) as { scripts: Record<string, string> }).scripts.worker ?? "";
  return script.split(/\s+/).filter((arg) => arg.startsWith("--") && arg !== "--worker-only");
};

/** RSS and its high-water mark of a process, from /proc (Linux), in MiB. */
function memoryOf(pid: number): { rss: number; peak: number } | undefined {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
    const kib = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
    return { rss: kib("VmRSS") / 1024, peak: kib("VmHWM") / 1024 };
  } catch {
    return undefined;
  }
}

export interface SendRun {
  label: string;
  deliveries: number;
  /** Deliveries handed to the provider per second, first claim to last acceptance. */
  rate: number;
  seconds: number;
  /** Worker RSS (MiB) by share done: [share, MiB]. */
  rss: [number, number][];
  peakRssMiB: number;
  /** (max − min) / min of the RSS samples from 20 % to 100 % done. */
  rssDrift: number;
}

export async function measureSend(options: {
  label: string;
  root: pg.Pool;
  db: Database;
  sandbox: SandboxServer;
  messageId: string;
  deliveries: number;
  concurrency: number;
  env?: Record<string, string>;
}): Promise<SendRun> {
  const { root, messageId, deliveries } = options;
  say(`${options.label}: sending ${fmt(deliveries)} through a worker process (concurrency ${options.concurrency})…`);
  const child = spawn(process.execPath, [...workerNodeFlags(), path.resolve("src/main.ts"), "--worker-only"], {
    env: {
      ...process.env,
      DATABASE_URL: options.db.urls.admin,
      NODE_ENV: "development",
      HERALD_PUBLIC_URL: options.sandbox.origin,
      HERALD_WORKER_CONCURRENCY: String(options.concurrency),
      // The system number's pace out of the way: this measures Herald, not a carrier's limit.
      HERALD_SMS_FROM_MPS: "10000",
      LOG_LEVEL: "warn",
      ...options.env,
    },
    stdio: ["ignore", "ignore", "inherit"],
  });
  const rss: [number, number][] = [];
  let peak = 0;
  let nextReport = 0.1;
  const started = performance.now();
  try {
    for (;;) {
      await new Promise((r) => setTimeout(r, 500));
      const memory = memoryOf(child.pid!);
      if (memory) peak = Math.max(peak, memory.peak);
      const { rows } = await root.query(
        `select count(*) filter (where status in ('sent', 'delivered'))::int as sent,
                count(*) filter (where status in ('failed', 'skipped', 'unknown', 'undelivered'))::int as bad
           from herald_public.deliveries where message_id = $1`,
        [messageId],
      );
      const done = rows[0].sent / deliveries;
      if (done >= nextReport || rows[0].sent >= deliveries) {
        if (memory) rss.push([Math.round(done * 100) / 100, Math.round(memory.rss)]);
        say(
          `  ${fmt(rows[0].sent)} sent (${(rows[0].sent / ((performance.now() - started) / 1000)).toFixed(0)}/s), worker RSS ${memory?.rss.toFixed(0) ?? "?"} MiB`,
        );
        nextReport = Math.floor(done * 10 + 1) / 10;
      }
      if (rows[0].bad > 0) {
        const { rows: why } = await root.query(
          "select status, reason, count(*)::int as n from herald_public.deliveries where message_id = $1 and status not in ('sent', 'delivered', 'queued', 'sending') group by 1, 2",
          [messageId],
        );
        throw new Error(`${rows[0].bad} deliveries did not go out: ${JSON.stringify(why)}`);
      }
      if (rows[0].sent >= deliveries) break;
      if (child.exitCode !== null) throw new Error(`the worker process exited (${child.exitCode})`);
    }
  } finally {
    child.kill("SIGTERM");
    await new Promise((resolve) => (child.exitCode !== null ? resolve(undefined) : child.once("exit", resolve)));
  }
  const {
    rows: [span],
  } = await root.query<{ s: number }>(
    "select extract(epoch from max(sent_at) - min(claimed_at))::float8 as s from herald_public.deliveries where message_id = $1",
    [messageId],
  );
  const steady = rss.filter(([share]) => share >= 0.2).map(([, mib]) => mib);
  const rssDrift = steady.length > 1 ? (Math.max(...steady) - Math.min(...steady)) / Math.min(...steady) : 0;
  return {
    label: options.label,
    deliveries,
    rate: deliveries / span!.s,
    seconds: span!.s,
    rss,
    peakRssMiB: Math.round(peak),
    rssDrift,
  };
}

/**
 * An email message's deliveries in runs of up to 1,000 per job (as the
 * fan-out plans email: one SendGrid request each), replacing the jobs the
 * insert queued.
 */
export async function planEmailRuns(root: pg.Pool, tenantId: string, messageId: string): Promise<number> {
  await root.query(
    `delete from graphile_worker._private_jobs j using graphile_worker._private_tasks k
      where k.id = j.task_id and k.identifier = 'delivery__send' and j.payload->>'tenant_id' = $1`,
    [tenantId],
  );
  const { rows } = await root.query<{ n: number }>(
    `select count(*)::int as n from graphile_worker.add_jobs(array(
       select json_populate_record(null::graphile_worker.job_spec, json_build_object('identifier', 'delivery__send',
                'payload', json_build_object('tenant_id', $1::uuid, 'ids', ids), 'max_attempts', 25))
         from (select array_agg(id order by id) as ids
                 from (select id, (row_number() over (order by id) - 1) / 1000 as run
                         from herald_public.deliveries where message_id = $2 and status = 'queued') x
                group by run) runs))`,
    [tenantId, messageId],
  );
  return rows[0]!.n;
}
