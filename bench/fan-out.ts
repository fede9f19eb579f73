import fs from "node:fs";
import type pg from "pg";
import { keyringFromConfig } from "../src/crypto/keyring.ts";
import { fanOut } from "../src/messages/fan-out.ts";
import { withWorkerConnection } from "../src/worker/tenant-context.ts";
import { say, withBenchDatabase } from "./common.ts";

/**
 * `npm run bench -- fan-out`: only the fan-out of `bench pipeline` (which also
 * sends everything through a worker), in a tighter loop. A broadcast to
 * RECIPIENTS contacts on one list, ROUNDS times (a new message each round),
 * against a bare INSERT … SELECT of as many rows into a plain table. Besides
 * wall time it reports the database backend's CPU time (/proc schedstat),
 * which other processes on a shared machine disturb far less.
 */

const RECIPIENTS = Number(process.env.BENCH_RECIPIENTS ?? 20_000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const fmt = (n: number) => Math.round(n).toLocaleString("en-US");

/** Nanoseconds a process has spent on a CPU (Linux); undefined elsewhere. */
function cpuNanoseconds(pid: number): number | undefined {
  try {
    return Number(fs.readFileSync(`/proc/${pid}/schedstat`, "utf8").split(" ")[0]);
  } catch {
    return undefined;
  }
}

async function seedAudience(root: pg.Pool, tenantId: string): Promise<string> {
  say(`seeding ${fmt(RECIPIENTS)} contacts on one list…`);
  // Ciphertext and hashes need no real keys here: fan-out reads only which of them are null.
  await root.query(
    `insert into herald_public.contacts (tenant_id, first_name, phone_encrypted, phone_hash, key_version, hash_version)
     select $1, 'Person' || g, '\\x00', herald_hidden.keyed_hash('phone', '+1212' || lpad(g::text, 7, '0'), '\\x01'), k.version, 1
       from generate_series(1, $2) g, (select max(version) as version from herald_private.tenant_data_keys where tenant_id = $1) k`,
    [tenantId, RECIPIENTS],
  );
  const {
    rows: [list],
  } = await root.query<{ id: string }>(
    "insert into herald_public.lists (tenant_id, name) values ($1, 'everyone') returning id",
    [tenantId],
  );
  await root.query(
    "insert into herald_public.list_members (tenant_id, list_id, contact_id) select tenant_id, $2, id from herald_public.contacts where tenant_id = $1",
    [tenantId, list!.id],
  );
  await root.query("analyze");
  return list!.id;
}

export async function benchFanOut(): Promise<void> {
  await withBenchDatabase(async ({ config, root, app }) => {
    const keyring = keyringFromConfig(config);
    const {
      rows: [tenant],
    } = await root.query<{ id: string }>(
      "insert into herald_public.tenants (slug, name) values ('bench-fan-out', 'Fan-out') returning id",
    );
    const tenantId = tenant!.id;
    await keyring.sessionSettings(app, tenantId); // creates the tenant's data key
    await root.query(
      "update herald_public.tenant_settings set rate_batch_size = 100000, rate_batch_interval_seconds = 1 where tenant_id = $1",
      [tenantId],
    );
    const listId = await seedAudience(root, tenantId);
    await root.query(
      "create table public.bench_plain_deliveries (tenant_id uuid, id uuid default gen_random_uuid(), message_id uuid, contact_id uuid, status text, run_at timestamptz)",
    );

    const fanOutTimes: number[] = [];
    const plainTimes: number[] = [];
    const fanOutCpu: number[] = [];
    const plainCpu: number[] = [];
    let batches = 0;
    for (let round = 0; round < ROUNDS; round++) {
      const plainClient = await root.connect();
      try {
        const {
          rows: [{ pid }],
        } = await plainClient.query("select pg_backend_pid() as pid");
        const cpu = cpuNanoseconds(pid);
        const started = performance.now();
        await plainClient.query(
          "insert into public.bench_plain_deliveries (tenant_id, message_id, contact_id, status, run_at) select tenant_id, gen_random_uuid(), contact_id, 'queued', now() from herald_public.list_members where tenant_id = $1",
          [tenantId],
        );
        plainTimes.push(performance.now() - started);
        if (cpu !== undefined) plainCpu.push(cpuNanoseconds(pid)! - cpu);
      } finally {
        plainClient.release();
      }

      const {
        rows: [message],
      } = await root.query<{ id: string }>(
        "insert into herald_public.messages (tenant_id, channel, body, list_ids) values ($1, 'sms', 'Hello {{first_name|there}}', array[$2::uuid]) returning id",
        [tenantId, listId],
      );
      await root.query("select graphile_worker.remove_job($1)", [`message:${message!.id}`]);
      say(`round ${round + 1}: fanning out ${fmt(RECIPIENTS)} recipients…`);
      await withWorkerConnection(app, keyring, tenantId, async (transaction, client) => {
        const {
          rows: [{ pid }],
        } = await client.query("select pg_backend_pid() as pid");
        const cpu = cpuNanoseconds(pid);
        const started = performance.now();
        const totals = await fanOut(transaction, message!.id, { smsFrom: "+15005550006", messagesPerSecond: 1000 });
        fanOutTimes.push(performance.now() - started);
        if (cpu !== undefined) fanOutCpu.push(cpuNanoseconds(pid)! - cpu);
        if (totals.queued !== RECIPIENTS) throw new Error(`fan-out queued ${totals.queued} of ${RECIPIENTS}`);
        batches = totals.batches;
      });
      const {
        rows: [jobs],
      } = await root.query(
        "select count(*)::int as n, sum(json_array_length(j.payload->'ids'))::int as deliveries from graphile_worker._private_jobs j join graphile_worker._private_tasks t on t.id = j.task_id where t.identifier = 'delivery__send'",
      );
      if (jobs.deliveries !== RECIPIENTS * (round + 1))
        throw new Error(`${jobs.deliveries} deliveries in jobs, not ${RECIPIENTS * (round + 1)}`);
    }

    const best = (xs: number[]) => Math.min(...xs);
    const fanOutMs = best(fanOutTimes);
    const plainMs = best(plainTimes);
    const figures = {
      bench: "fan-out",
      recipients: RECIPIENTS,
      rounds: ROUNDS,
      batches,
      fan_out_per_s: Math.round(RECIPIENTS / (fanOutMs / 1000)),
      plain_insert_select_per_s: Math.round(RECIPIENTS / (plainMs / 1000)),
      ratio_time: Number((fanOutMs / plainMs).toFixed(2)),
      fan_out_cpu_us_per_row: fanOutCpu.length ? Number((best(fanOutCpu) / 1000 / RECIPIENTS).toFixed(2)) : null,
      plain_cpu_us_per_row: plainCpu.length ? Number((best(plainCpu) / 1000 / RECIPIENTS).toFixed(2)) : null,
      ratio_cpu: fanOutCpu.length && plainCpu.length ? Number((best(fanOutCpu) / best(plainCpu)).toFixed(2)) : null,
    };
    process.stdout.write(
      [
        `Fan-out: one broadcast to ${fmt(RECIPIENTS)} contacts on a list, best of ${ROUNDS}`,
        `  fan-out (deliveries + their jobs, ${batches} batches): ${fmt(figures.fan_out_per_s)} recipients/s (${(fanOutMs / 1000).toFixed(2)} s)`,
        `  bare INSERT … SELECT into a plain table:  ${fmt(figures.plain_insert_select_per_s)} rows/s (${(plainMs / 1000).toFixed(2)} s)`,
        `  ratio fan-out time / bare INSERT time:    ${figures.ratio_time}x (target ≤ 2x)`,
        `  backend CPU per row, fan-out / bare:      ${figures.fan_out_cpu_us_per_row} / ${figures.plain_cpu_us_per_row} µs (${figures.ratio_cpu}x)`,
        JSON.stringify(figures),
        "",
      ].join("\n"),
    );
  });
}
