import { Logger, run, runMigrations } from "graphile-worker";
import type pg from "pg";
import { keyringFromConfig } from "../src/crypto/keyring.ts";
import { fanOut } from "../src/messages/fan-out.ts";
import { withWorkerConnection } from "../src/worker/tenant-context.ts";
import { startSandboxServer } from "../src/sandbox/server.ts";
import { say, withBenchDatabase } from "./common.ts";
import { measureSend, planEmailRuns, type SendRun } from "./send-run.ts";

/**
 * `npm run bench -- pipeline`, in one run:
 * 1. fan-out of a RECIPIENTS-contact broadcast (deliveries written and their
 *    jobs queued, batch by batch, exactly as message__fan_out does) against a
 *    bare INSERT … SELECT of as many rows into a plain table;
 * 2. end-to-end SMS deliveries per second, a Herald worker process sending
 *    them through the real Twilio SDK to the sandbox answering after each
 *    latency of BENCH_PROVIDER_LATENCY_MS (default 0 and 150 ms, as a real
 *    provider answers), against bare graphile-worker no-op jobs per second
 *    with the same settings (concurrency, poll interval, no local queue); the
 *    first latency sends all RECIPIENTS, later ones BENCH_LATENCY_RECIPIENTS;
 * 3. an email broadcast to RECIPIENTS, in SendGrid batches: recipients
 *    handed to the sandbox per second;
 * 4. the worker process's memory over each send: RSS as it goes, its peak,
 *    and its drift from 20 % to 100 % done.
 * The tenant's send window is open all day, so it runs at any hour. It ends
 * with one JSON line holding the figures and ratios.
 */

const RECIPIENTS = Number(process.env.BENCH_RECIPIENTS ?? 100_000);
const NOOP_JOBS = Number(process.env.BENCH_NOOP_JOBS ?? 50_000);
const CONCURRENCY = Number(process.env.HERALD_WORKER_CONCURRENCY ?? 10);
const LATENCIES = (process.env.BENCH_PROVIDER_LATENCY_MS ?? "0,150").split(",").map((v) => Number(v.trim()));
const LATENCY_RECIPIENTS = Math.min(RECIPIENTS, Number(process.env.BENCH_LATENCY_RECIPIENTS ?? 20_000));
const fmt = (n: number) => Math.round(n).toLocaleString("en-US");
const seconds = (since: number) => (performance.now() - since) / 1000;

async function seedAudience(
  root: pg.Pool,
  app: pg.Pool,
  keyring: ReturnType<typeof keyringFromConfig>,
  tenantId: string,
) {
  say(`seeding ${fmt(RECIPIENTS)} contacts on one list…`);
  return withWorkerConnection(app, keyring, tenantId, async (transaction) => {
    for (let start = 0; start < RECIPIENTS; start += 5000) {
      const docs = Array.from({ length: Math.min(5000, RECIPIENTS - start) }, (_, k) => {
        const i = start + k;
        // Lines 1000–9999: none ends in the sandbox's failure digits (0001–0003).
        return {
          phone: `+1212${200 + Math.floor(i / 9000)}${1000 + (i % 9000)}`,
          email: `person${i}@bench.test`,
          first_name: `Person${i}`,
        };
      });
      await transaction((c) =>
        c.query("select count(*) from herald_hidden.upsert_contacts($1)", [JSON.stringify(docs)]),
      );
    }
    return transaction(async (c) => {
      const list = async (name: string, limit: number) => {
        const { rows } = await c.query("insert into herald_public.lists (name) values ($1) returning id", [name]);
        await c.query(
          "insert into herald_public.list_members (list_id, contact_id) select $1, id from herald_public.contacts order by id limit $2",
          [rows[0].id, limit],
        );
        return rows[0].id as string;
      };
      return { everyone: await list("everyone", RECIPIENTS), some: await list("some", LATENCY_RECIPIENTS) };
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
    // Only the no-op jobs: the set-up may have queued Herald's own (the send window's change re-plans held deliveries).
    const { rows } = await root.query(
      `select count(*)::int as n from graphile_worker._private_jobs j
         join graphile_worker._private_tasks t on t.id = j.task_id
        where t.identifier = 'bench__noop'`,
    );
    if (rows[0].n === 0) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const rate = NOOP_JOBS / seconds(started);
  await runner.stop();
  return rate;
}

/** A message to a list, fanned out here (its own fan-out job removed); its id and the deliveries queued. */
async function fannedOut(
  root: pg.Pool,
  app: pg.Pool,
  keyring: ReturnType<typeof keyringFromConfig>,
  tenantId: string,
  listId: string,
  channel: "sms" | "email",
) {
  const {
    rows: [message],
  } = await root.query<{ id: string }>(
    channel === "sms"
      ? "insert into herald_public.messages (tenant_id, channel, body, list_ids) values ($1, 'sms', 'Hello {{first_name|there}}, this is a benchmark.', array[$2::uuid]) returning id"
      : "insert into herald_public.messages (tenant_id, channel, subject, body, list_ids) values ($1, 'email', 'News for {{first_name}}', 'Hello {{first_name|there}}, this is a benchmark.', array[$2::uuid]) returning id",
    [tenantId, listId],
  );
  await root.query("select graphile_worker.remove_job($1)", [`message:${message!.id}`]);
  const started = performance.now();
  const totals = await withWorkerConnection(app, keyring, tenantId, (transaction) =>
    fanOut(transaction, message!.id, { smsFrom: "+15005550006", messagesPerSecond: 10_000 }),
  );
  return { messageId: message!.id, totals, seconds: seconds(started) };
}

export async function benchPipeline() {
  await withBenchDatabase(async ({ config, db, root, app }) => {
    const keyring = keyringFromConfig(config);
    await runMigrations({ connectionString: db.urls.owner });
    const {
      rows: [tenant],
    } = await root.query<{ id: string }>(
      "insert into herald_public.tenants (slug, name) values ('bench-pipeline', 'Pipeline') returning id",
    );
    const tenantId = tenant!.id;
    // The tenant's pace out of the way (this measures Herald, not a carrier's
    // limit), and its send window open all day: quiet hours would hold every
    // SMS until morning when the benchmark runs at night.
    await root.query(
      "update herald_public.tenant_settings set rate_batch_size = 100000, rate_batch_interval_seconds = 1, send_window_start = '00:00', send_window_end = '00:00' where tenant_id = $1",
      [tenantId],
    );
    const lists = await seedAudience(root, app, keyring, tenantId);

    // 1. Fan-out against a bare INSERT … SELECT.
    await root.query(
      "create table public.bench_plain_deliveries (tenant_id uuid, id uuid default gen_random_uuid(), message_id uuid, contact_id uuid, status text, run_at timestamptz)",
    );
    say("bare INSERT … SELECT…");
    const started = performance.now();
    await root.query(
      "insert into public.bench_plain_deliveries (tenant_id, message_id, contact_id, status, run_at) select tenant_id, gen_random_uuid(), contact_id, 'queued', now() from herald_public.list_members where tenant_id = $1 and list_id = $2",
      [tenantId, lists.everyone],
    );
    const plainSeconds = seconds(started);

    const noopRate = await noopJobsPerSecond(root, db.urls.owner);

    say(`fanning out ${fmt(RECIPIENTS)} recipients (deliveries + jobs, in batches)…`);
    const first = await fannedOut(root, app, keyring, tenantId, lists.everyone, "sms");
    const {
      rows: [jobs],
    } = await root.query(
      "select count(*)::int as n, sum(json_array_length(payload->'ids'))::int as deliveries from graphile_worker._private_jobs",
    );
    if (first.totals.queued !== RECIPIENTS || jobs.deliveries !== RECIPIENTS) {
      throw new Error(
        `fan-out queued ${first.totals.queued} deliveries, ${jobs.deliveries} of them in jobs, not ${RECIPIENTS}`,
      );
    }

    // 2. SMS end to end, at each provider latency.
    const sandbox = await startSandboxServer(100);
    const sms: (SendRun & { latencyMs: number })[] = [];
    try {
      for (const [i, latencyMs] of LATENCIES.entries()) {
        const message = i === 0 ? first : await fannedOut(root, app, keyring, tenantId, lists.some, "sms");
        sandbox.sandbox.setFaults({ latencyMs });
        const run = await measureSend({
          label: `SMS, provider answering after ${latencyMs} ms`,
          root,
          db,
          sandbox,
          messageId: message.messageId,
          deliveries: message.totals.queued,
          concurrency: CONCURRENCY,
        });
        sms.push({ ...run, latencyMs });
      }
      sandbox.sandbox.setFaults({});

      // 3. Email, in SendGrid batches of up to 1,000 recipients.
      say(`fanning out an email to ${fmt(RECIPIENTS)} recipients…`);
      const email = await fannedOut(root, app, keyring, tenantId, lists.everyone, "email");
      await planEmailRuns(root, tenantId, email.messageId);
      const requestsBefore = sandbox.sandbox.mailSendRequests;
      const emailRun = await measureSend({
        label: "email",
        root,
        db,
        sandbox,
        messageId: email.messageId,
        deliveries: email.totals.queued,
        concurrency: CONCURRENCY,
      });
      const emailRequests = sandbox.sandbox.mailSendRequests - requestsBefore;
      report({ first, plainSeconds, jobs: jobs.n, noopRate, sms, emailRun, emailRequests });
    } finally {
      await sandbox.close();
    }
  });
}

function report(r: {
  first: { totals: { queued: number; batches: number }; seconds: number };
  plainSeconds: number;
  jobs: number;
  noopRate: number;
  sms: (SendRun & { latencyMs: number })[];
  emailRun: SendRun;
  emailRequests: number;
}) {
  const fanOutRate = RECIPIENTS / r.first.seconds;
  const plainRate = RECIPIENTS / r.plainSeconds;
  const atZero = r.sms.find((s) => s.latencyMs === 0) ?? r.sms[0]!;
  const lines = [
    `Send pipeline: one broadcast to ${fmt(RECIPIENTS)} contacts`,
    `  fan-out (deliveries + ${fmt(r.jobs)} jobs, ${r.first.totals.batches} batches): ${fmt(fanOutRate)} recipients/s (${r.first.seconds.toFixed(2)} s)`,
    `  bare INSERT … SELECT into a plain table:     ${fmt(plainRate)} rows/s (${r.plainSeconds.toFixed(2)} s)`,
    `  ratio fan-out time / bare INSERT time:       ${(r.first.seconds / r.plainSeconds).toFixed(2)}x (target ≤ 2x)`,
    `  bare graphile-worker no-op jobs:             ${fmt(r.noopRate)} jobs/s (concurrency ${CONCURRENCY})`,
    ...r.sms.flatMap((s) => [
      `  SMS end to end, provider at ${s.latencyMs} ms:       ${fmt(s.rate)} deliveries/s (${fmt(s.deliveries)}, first claim to last send, ${s.seconds.toFixed(1)} s)`,
      `    ratio deliveries / no-op jobs:             ${(s.rate / r.noopRate).toFixed(3)} (target ≥ 0.5 at 0 ms)` +
        (s === atZero ? "" : `; ratio to the 0 ms figure ${(s.rate / atZero.rate).toFixed(2)} (target ≥ 0.8)`),
      `    worker RSS while sending:                  ${s.rss.map(([share, mib]) => `${Math.round(share * 100)}%: ${mib} MiB`).join(", ")}; peak ${s.peakRssMiB} MiB, drift from 20% ${(s.rssDrift * 100).toFixed(0)}%`,
    ]),
    `  email, in SendGrid batches:                  ${fmt(r.emailRun.rate)} recipients/s (${fmt(r.emailRun.deliveries)} in ${r.emailRequests} requests, ${r.emailRun.seconds.toFixed(1)} s; target ≥ 10,000/s)`,
    `    worker RSS while sending:                  ${r.emailRun.rss.map(([share, mib]) => `${Math.round(share * 100)}%: ${mib} MiB`).join(", ")}; peak ${r.emailRun.peakRssMiB} MiB, drift from 20% ${(r.emailRun.rssDrift * 100).toFixed(0)}%`,
    "",
  ];
  process.stdout.write(lines.join("\n"));
  const round = (n: number, digits = 3) => Number(n.toFixed(digits));
  process.stdout.write(
    JSON.stringify({
      bench: "pipeline",
      recipients: RECIPIENTS,
      worker_concurrency: CONCURRENCY,
      fan_out_recipients_per_s: Math.round(fanOutRate),
      bare_insert_rows_per_s: Math.round(plainRate),
      fan_out_time_ratio: round(r.first.seconds / r.plainSeconds, 2),
      noop_jobs_per_s: Math.round(r.noopRate),
      sms: r.sms.map((s) => ({
        provider_latency_ms: s.latencyMs,
        deliveries: s.deliveries,
        deliveries_per_s: Math.round(s.rate),
        ratio_to_noop: round(s.rate / r.noopRate),
        ratio_to_0ms: round(s.rate / atZero.rate),
        worker_peak_rss_mib: s.peakRssMiB,
        worker_rss_drift_from_20pct: round(s.rssDrift),
      })),
      email: {
        recipients: r.emailRun.deliveries,
        recipients_per_s: Math.round(r.emailRun.rate),
        mail_send_requests: r.emailRequests,
        worker_peak_rss_mib: r.emailRun.peakRssMiB,
        worker_rss_drift_from_20pct: round(r.emailRun.rssDrift),
      },
    }) + "\n",
  );
}
