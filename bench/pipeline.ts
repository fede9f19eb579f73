import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { Logger, run, runMigrations } from "graphile-worker";
import type pg from "pg";
import { keyringFromConfig } from "../src/crypto/keyring.ts";
import { fanOut } from "../src/messages/fan-out.ts";
import { withWorkerConnection } from "../src/worker/tenant-context.ts";
import { startSandboxServer } from "../src/sandbox/server.ts";
import { say, withBenchDatabase } from "./common.ts";

/**
 * `npm run bench -- pipeline`, in one run:
 * 1. fan-out of a RECIPIENTS-contact broadcast (deliveries written and their
 *    jobs queued, batch by batch, exactly as message__fan_out does) against a
 *    bare INSERT … SELECT of as many rows into a plain table;
 * 2. end-to-end deliveries per second, a Herald worker process sending them
 *    all through the real Twilio SDK to the sandbox, against bare
 *    graphile-worker no-op jobs per second with the same settings
 *    (concurrency, poll interval, no local queue);
 * 3. the worker process's memory over the whole send: RSS as it goes, and its peak.
 */

const RECIPIENTS = Number(process.env.BENCH_RECIPIENTS ?? 100_000);
const NOOP_JOBS = Number(process.env.BENCH_NOOP_JOBS ?? 50_000);
const CONCURRENCY = Number(process.env.HERALD_WORKER_CONCURRENCY ?? 10);
const fmt = (n: number) => Math.round(n).toLocaleString("en-US");
const seconds = (since: number) => (performance.now() - since) / 1000;

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

async function seedAudience(root: pg.Pool, app: pg.Pool, keyring: ReturnType<typeof keyringFromConfig>, tenantId: string) {
  say(`seeding ${fmt(RECIPIENTS)} contacts on one list…`);
  return withWorkerConnection(app, keyring, tenantId, async (transaction) => {
    for (let start = 0; start < RECIPIENTS; start += 5000) {
      const docs = Array.from({ length: Math.min(5000, RECIPIENTS - start) }, (_, k) => {
        const i = start + k;
        // Lines 1000–9999: none ends in the sandbox's failure digits (0001–0003).
        return { phone: `+1212${200 + Math.floor(i / 9000)}${1000 + (i % 9000)}`, first_name: `Person${i}` };
      });
      await transaction((c) => c.query("select count(*) from herald_hidden.upsert_contacts($1)", [JSON.stringify(docs)]));
    }
    return transaction(async (c) => {
      const { rows } = await c.query("insert into herald_public.lists (name) values ('everyone') returning id");
      await c.query("insert into herald_public.list_members (list_id, contact_id) select $1, id from herald_public.contacts", [rows[0].id]);
      return rows[0].id as string;
    });
  });
}

async function noopJobsPerSecond(root: pg.Pool, ownerUrl: string): Promise<number> {
  say(`running ${fmt(NOOP_JOBS)} no-op jobs through bare graphile-worker (concurrency ${CONCURRENCY})…`);
  await root.query(
    `select graphile_worker.add_jobs(array(
       select json_populate_record(null::graphile_worker.job_spec, json_build_object('identifier', 'bench__noop', 'payload', '{}'::json))
         from generate_series(1, $1)))`,
    [NOOP_JOBS],
  );
  // Timed from the start of the worker until the queue is empty.
  const started = performance.now();
  const runner = await run({
    connectionString: ownerUrl,
    concurrency: CONCURRENCY,
    pollInterval: 1000, // as Herald's worker
    noHandleSignals: true,
    parsedCronItems: [],
    taskList: { bench__noop: async () => undefined },
    logger: new Logger(() => () => undefined),
  });
  for (;;) {
    const { rows } = await root.query("select count(*)::int as n from graphile_worker._private_jobs");
    if (rows[0].n === 0) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const rate = NOOP_JOBS / seconds(started);
  await runner.stop();
  return rate;
}

export async function benchPipeline() {
  await withBenchDatabase(async ({ config, db, root, app }) => {
    const keyring = keyringFromConfig(config);
    await runMigrations({ connectionString: db.urls.owner });
    const { rows: [tenant] } = await root.query<{ id: string }>("insert into herald_public.tenants (slug, name) values ('bench-pipeline', 'Pipeline') returning id");
    const tenantId = tenant!.id;
    // The tenant's pace out of the way: this measures Herald, not a carrier's limit.
    await root.query("update herald_public.tenant_settings set rate_batch_size = 100000, rate_batch_interval_seconds = 1 where tenant_id = $1", [tenantId]);
    const listId = await seedAudience(root, app, keyring, tenantId);

    // 1. Fan-out against a bare INSERT … SELECT.
    await root.query("create table public.bench_plain_deliveries (tenant_id uuid, id uuid default gen_random_uuid(), message_id uuid, contact_id uuid, status text, run_at timestamptz)");
    say("bare INSERT … SELECT…");
    let started = performance.now();
    await root.query(
      "insert into public.bench_plain_deliveries (tenant_id, message_id, contact_id, status, run_at) select tenant_id, gen_random_uuid(), contact_id, 'queued', now() from herald_public.list_members where tenant_id = $1",
      [tenantId],
    );
    const plainSeconds = seconds(started);

    const noopRate = await noopJobsPerSecond(root, db.urls.owner);

    const { rows: [message] } = await root.query<{ id: string }>(
      "insert into herald_public.messages (tenant_id, channel, body, list_ids) values ($1, 'sms', 'Hello {{first_name|there}}, this is a benchmark.', array[$2::uuid]) returning id",
      [tenantId, listId],
    );
    // Fanned out here, timed, rather than by the job its insert queued.
    await root.query("select graphile_worker.remove_job($1)", [`message:${message!.id}`]);
    say(`fanning out ${fmt(RECIPIENTS)} recipients (deliveries + jobs, in batches)…`);
    started = performance.now();
    const totals = await withWorkerConnection(app, keyring, tenantId, (transaction) =>
      fanOut(transaction, message!.id, { smsFrom: "+15005550006", messagesPerSecond: 1000 }),
    );
    const fanOutSeconds = seconds(started);
    const { rows: [jobs] } = await root.query("select count(*)::int as n, sum(json_array_length(payload->'ids'))::int as deliveries from graphile_worker._private_jobs");
    if (totals.queued !== RECIPIENTS || jobs.deliveries !== RECIPIENTS) {
      throw new Error(`fan-out queued ${totals.queued} deliveries, ${jobs.deliveries} of them in jobs, not ${RECIPIENTS}`);
    }

    // 2 and 3. A real worker process sends them all to the sandbox.
    const sandbox = await startSandboxServer(100);
    say(`sending ${fmt(RECIPIENTS)} messages through a worker process (concurrency ${CONCURRENCY}) to the sandbox…`);
    const child = spawn(process.execPath, [path.resolve("src/main.ts"), "--worker-only"], {
      env: {
        ...process.env,
        DATABASE_URL: db.urls.admin,
        NODE_ENV: "development",
        HERALD_PUBLIC_URL: sandbox.origin,
        HERALD_WORKER_CONCURRENCY: String(CONCURRENCY),
        HERALD_SMS_FROM_MPS: "1000",
        LOG_LEVEL: "warn",
      },
      stdio: ["ignore", "ignore", "inherit"],
    });
    const samples: string[] = [];
    let peak = 0;
    let nextReport = 0.1;
    started = performance.now();
    for (;;) {
      await new Promise((r) => setTimeout(r, 1000));
      const memory = memoryOf(child.pid!);
      if (memory) peak = Math.max(peak, memory.peak);
      const { rows } = await root.query("select count(*) filter (where status = 'sent')::int as sent, count(*) filter (where status in ('failed', 'skipped', 'unknown'))::int as bad from herald_public.deliveries where message_id = $1", [message!.id]);
      const done = rows[0].sent / RECIPIENTS;
      if (done >= nextReport || rows[0].sent + rows[0].bad >= RECIPIENTS) {
        samples.push(`${Math.round(done * 100)}%: ${memory?.rss.toFixed(0) ?? "?"} MiB`);
        say(`  ${fmt(rows[0].sent)} sent (${(rows[0].sent / seconds(started)).toFixed(0)}/s), worker RSS ${memory?.rss.toFixed(0) ?? "?"} MiB`);
        nextReport = Math.floor(done * 10 + 1) / 10;
      }
      if (rows[0].bad > 0) {
        const { rows: why } = await root.query("select status, reason, count(*)::int as n from herald_public.deliveries where message_id = $1 and status in ('failed', 'skipped', 'unknown') group by 1, 2", [message!.id]);
        throw new Error(`${rows[0].bad} deliveries did not go out: ${JSON.stringify(why)}`);
      }
      if (rows[0].sent >= RECIPIENTS) break;
      if (child.exitCode !== null) throw new Error(`the worker process exited (${child.exitCode})`);
    }
    const { rows: [span] } = await root.query<{ s: number }>(
      "select extract(epoch from max(sent_at) - min(claimed_at))::float8 as s from herald_public.deliveries where message_id = $1",
      [message!.id],
    );
    child.kill("SIGTERM");
    await new Promise((resolve) => child.once("exit", resolve));
    await sandbox.close();
    const sendRate = RECIPIENTS / span!.s;

    const fanOutRate = RECIPIENTS / fanOutSeconds;
    const plainRate = RECIPIENTS / plainSeconds;
    process.stdout.write(
      [
        `Send pipeline: one broadcast to ${fmt(RECIPIENTS)} contacts`,
        `  fan-out (deliveries + ${fmt(jobs.n)} jobs, ${totals.batches} batches): ${fmt(fanOutRate)} recipients/s (${fanOutSeconds.toFixed(2)} s)`,
        `  bare INSERT … SELECT into a plain table:     ${fmt(plainRate)} rows/s (${plainSeconds.toFixed(2)} s)`,
        `  ratio fan-out time / bare INSERT time:       ${(fanOutSeconds / plainSeconds).toFixed(2)}x (target ≤ 2x)`,
        `  end-to-end through the sandbox:              ${fmt(sendRate)} deliveries/s (first claim to last send, ${span!.s.toFixed(1)} s)`,
        `  bare graphile-worker no-op jobs:             ${fmt(noopRate)} jobs/s (concurrency ${CONCURRENCY})`,
        `  ratio deliveries / no-op jobs:               ${(sendRate / noopRate).toFixed(3)} (target ≥ 0.5)`,
        `  worker RSS while sending:                    ${samples.join(", ")}`,
        `  worker peak RSS:                             ${peak.toFixed(0)} MiB`,
        "",
      ].join("\n"),
    );
  });
}
