import { spawn, type ChildProcess } from "node:child_process";
import path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { ROLES } from "../src/db/urls.ts";
import { graphql, useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedExtraTenant } from "./helpers/fixtures.ts";
import {
  asOwner,
  asRoot,
  readyToSend,
  seedAudience,
  settled,
  startSandboxServer,
  waitFor,
  type SandboxServer,
} from "./helpers/messaging.ts";
import { proveSenderNumbers } from "./helpers/numbers.ts";

/**
 * Real worker processes (`node src/main.ts --worker-only`, as `npm run worker`
 * starts them) against this file's database and the test's sandbox: pacing
 * that holds across three of them, and a kill -9 in the middle of a broadcast.
 */

const db = useTestDatabase();
const api = useApiServer(db);
let server: SandboxServer;
const children = new Set<ChildProcess>();

beforeAll(async () => {
  server = await startSandboxServer();
});

afterEach(async () => {
  for (const child of children) child.kill("SIGKILL");
  children.clear();
});

afterAll(async () => {
  await server?.close();
});

/** Starts a worker process and waits until it has registered (its jobs are recoverable from then on). */
async function startWorkerProcess(concurrency: number): Promise<ChildProcess> {
  const child = spawn(process.execPath, [path.resolve("src/main.ts"), "--worker-only"], {
    env: {
      ...process.env,
      DATABASE_URL: db.current.urls.admin,
      // Development mode points the SDKs at <public URL>/sandbox: this test's sandbox.
      NODE_ENV: "development",
      HERALD_PUBLIC_URL: server.origin,
      HERALD_WORKER_CONCURRENCY: String(concurrency),
      LOG_LEVEL: "info",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  // Its logs, for the error message if it never comes up.
  let stderr = "";
  const collect = (chunk: Buffer) => void (stderr = (stderr + chunk.toString()).slice(-4000));
  child.stdout!.on("data", collect);
  child.stderr!.on("data", collect);
  children.add(child);
  child.on("exit", () => children.delete(child));
  await waitFor(
    async () => {
      if (child.exitCode !== null) throw new Error(`worker process exited (${child.exitCode}): ${stderr}`);
      // Registered under `host:pid:random`, with its pool's id.
      const { rows } = await db.current.root.query(
        "select 1 from herald_private.worker_processes where split_part(process_id, ':', 2) = $1 and cardinality(worker_ids) > 0",
        [String(child.pid)],
      );
      return rows.length > 0;
    },
    // Three Node processes starting at once on a busy 2-core machine can take a while.
    90_000,
    async () => `a worker process to start; it said: ${stderr}`,
  );
  return child;
}

async function send(t: { id: string; ownerId: string }, input: Record<string, unknown>): Promise<string> {
  const token = await api.current.authenticator.sign({ role: ROLES.member, tenant_id: t.id, sub: t.ownerId });
  const r = await graphql(
    api.current,
    token,
    `
      mutation ($input: SendMessageInput!) {
        sendMessage(input: $input) {
          message {
            rowId
          }
        }
      }
    `,
    { input },
  );
  expect(r.body.errors).toBeUndefined();
  return r.body.data!.sendMessage.message.rowId;
}

/** The smallest span covering `n` consecutive sends: under a limit of n-1 per window W, it must be at least W. */
function narrowestSpan(times: number[], n: number): number {
  let narrowest = Infinity;
  for (let i = 0; i + n - 1 < times.length; i++) narrowest = Math.min(narrowest, times[i + n - 1]! - times[i]!);
  return narrowest;
}

describe("pacing with three worker processes", () => {
  it("never exceeds the tenant's rate nor either sender number's, in any window", async () => {
    const t = await seedExtraTenant(db.current, "paced");
    const sid = await readyToSend(db.current, server, t, { perSecond: 3, senderMps: 2 });
    // A second number on the same account; both send at 2 per second.
    const numbers = await asOwner(db.current, t, async (c) => {
      const { rows } = await c.query("select phone_number from herald_public.sender_numbers where tenant_id = $1", [
        t.id,
      ]);
      await c.query(
        "insert into herald_public.sender_numbers (phone_number, provider_account_id, messages_per_second) values ('+14155559911', $1, 2)",
        [t.providerAccountId],
      );
      return [rows[0].phone_number as string, "+14155559911"];
    });
    await proveSenderNumbers(db.current, { phoneNumbers: ["+14155559911"], sandbox: server });
    await Promise.all([startWorkerProcess(4), startWorkerProcess(4), startWorkerProcess(4)]);
    const first = await seedAudience(db.current, t, { count: 12, exchange: 801, list: "first" });
    const second = await seedAudience(db.current, t, { count: 12, exchange: 802, list: "second" });
    // Scheduled a moment ahead, so that both are fanned out (planned) before any is sent…
    const at = new Date(Date.now() + 4_000).toISOString();
    const messages = await Promise.all([
      send(t, {
        channel: "sms",
        body: "Paced one",
        listIds: [first.listId],
        metadata: { from: numbers[0] },
        scheduledAt: at,
      }),
      send(t, {
        channel: "sms",
        body: "Paced two",
        listIds: [second.listId],
        metadata: { from: numbers[1] },
        scheduledAt: at,
      }),
    ]);
    await waitFor(async () => {
      const { rows } = await db.current.root.query(
        "select count(*)::int as n from herald_public.messages where id = any($1) and status = 'fanned_out'",
        [messages],
      );
      return rows[0].n === 2;
    });
    // …then every delivery is made due at once, as after a worker outage: the
    // plan no longer spaces anything, and the jobs of 3 processes compete.
    // Only the send-time gate, shared in Postgres, keeps the pace.
    await asRoot(db.current, async (c) => {
      await c.query("update herald_public.deliveries set run_at = now() where message_id = any($1)", [messages]);
      await c.query(
        `update graphile_worker._private_jobs j set run_at = now() from graphile_worker._private_tasks k
          where k.id = j.task_id and k.identifier = 'delivery__send' and j.payload->>'tenant_id' = $1`,
        [t.id],
      );
    });
    for (const id of messages) expect((await settled(db.current, id, 60_000)).byStatus).toEqual({ sent: 12 });

    const received = server.sandbox.messages.filter((m) => m.account === sid);
    expect(received).toHaveLength(24);
    const times = received.map((m) => m.createdAt.getTime()).sort((x, y) => x - y);
    // The sandbox clocks arrival, after a timer and an HTTP hop whose delay
    // varies (by over 100 ms on a loaded 2-core machine). So each check spans
    // enough sends that the jitter, at its two ends only, stays well below
    // what a broken gate would show: without the tenant's gate the two numbers
    // together send 4 per second (any 7 sends span 1.5 s, not 2 s); without
    // the numbers' gates, one number may take every tenant slot (any 3 of its
    // sends span 0.67 s, not 1 s).
    const jitter = 200;
    const tenantSpan = narrowestSpan(times, 7); // 3 per second: any 7 sends span at least 2 s
    const senderSpans = numbers.map((n) =>
      narrowestSpan(
        received
          .filter((m) => m.from === n)
          .map((m) => m.createdAt.getTime())
          .sort((x, y) => x - y),
        3,
      ),
    );
    process.stdout.write(
      `pacing: narrowest span of 7 tenant sends ${tenantSpan} ms (limit 2000), of 3 sends per number ${senderSpans.join(", ")} ms (limit 1000)\n`,
    );
    expect(tenantSpan).toBeGreaterThanOrEqual(2000 - jitter);
    for (const span of senderSpans) expect(span).toBeGreaterThanOrEqual(1000 - jitter);
  }, 120_000);
});

describe("a worker process killed mid-broadcast", () => {
  it("loses no delivery; duplicates are counted and bounded by what was in flight", async () => {
    const t = await seedExtraTenant(db.current, "crashy");
    const sid = await readyToSend(db.current, server, t);
    const audience = await seedAudience(db.current, t, { count: 2000, exchange: 803, list: "big" });
    // A provider slow enough that the process's whole in-flight limit (HERALD_SEND_CONCURRENCY, 200) is in the air at the kill.
    server.sandbox.setFaults({ latencyMs: 500 });
    const concurrency = 10;
    server.sandbox.takePeakInFlight();
    const doomed = await startWorkerProcess(concurrency);
    const messageId = await send(t, { channel: "sms", body: "Survive this", listIds: [audience.listId] });
    const received = () => server.sandbox.messages.filter((m) => m.account === sid);
    await waitFor(async () => received().length >= 500, 60_000, "500 messages");
    doomed.kill("SIGKILL");
    await new Promise((resolve) => doomed.once("exit", resolve));
    const atKill = received().length;
    const { rows: inFlight } = await db.current.root.query(
      "select count(*)::int as n from herald_public.deliveries where message_id = $1 and status = 'sending'",
      [messageId],
    );
    const openAtKill = server.sandbox.takePeakInFlight();

    await startWorkerProcess(concurrency);
    const result = await settled(db.current, messageId, 120_000);
    server.sandbox.setFaults({});
    expect(result.byStatus, JSON.stringify(result)).toEqual({ sent: 2000 });
    const all = received();
    const distinct = new Set(all.map((m) => m.to));
    expect(distinct.size).toBe(2000);
    const duplicates = all.length - distinct.size;
    // The kill landed mid-send, with about 200 sends in the air: the recovery path was exercised, not skipped.
    expect(inFlight[0].n).toBeGreaterThanOrEqual(150);
    const { rows: reconciled } = await db.current.root.query(
      "select count(*)::int as n from herald_public.deliveries where message_id = $1 and reason like 'reconciled%'",
      [messageId],
    );
    process.stdout.write(
      `kill -9: ${atKill} received at the kill, ${inFlight[0].n} deliveries left 'sending' (up to ${openAtKill} requests open at once), ${reconciled[0].n} reconciled, ${duplicates} duplicates\n`,
    );
    expect(duplicates).toBeLessThanOrEqual(inFlight[0].n);
  }, 240_000);
});
