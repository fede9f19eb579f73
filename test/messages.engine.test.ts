import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { fanOut } from "../src/messages/fan-out.ts";
import { withWorkerConnection } from "../src/worker/tenant-context.ts";
import type { WorkerHandle } from "../src/worker/worker.ts";
import { tokenFor } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedExtraTenant, type TenantFixture } from "./helpers/fixtures.ts";
import { testKeyring } from "./helpers/keys.ts";
import { asRoot, asWorker, readyToSend, seedAudience, sendThroughApi, settled, startSandboxServer, startSendingWorker, waitFor, type SandboxServer } from "./helpers/messaging.ts";
import { useCallableApiServer } from "./helpers/webhooks.ts";

/**
 * The delivery engine under a provider that answers slowly, as real ones do
 * (100–300 ms): provider calls overlap instead of queueing behind each other;
 * one tenant's backlog does not hold up another tenant's single message; an
 * email broadcast goes out in SendGrid batches whose events still find each
 * recipient's delivery. (Pacing across processes and kill -9: messages.processes.test.ts.)
 */

const db = useTestDatabase();
let server: SandboxServer;
beforeAll(async () => {
  server = await startSandboxServer(20_000);
});
const { api, endpoint } = useCallableApiServer(db, () => ({ SENDGRID_WEBHOOK_PUBLIC_KEY: server.sandbox.sendgridPublicKey }));
let worker: WorkerHandle | undefined;

afterEach(async () => {
  server.sandbox.setFaults({});
  await worker?.stop();
  worker = undefined;
});

afterAll(async () => {
  await server?.close();
});

const accountOf = async (t: TenantFixture) => readyToSend(db.current, server, t);

describe("a provider that answers after 200 ms", () => {
  it("2,000 SMS from one worker process go out far faster than one call after another allows", async () => {
    const t = await seedExtraTenant(db.current, "concurrent");
    const sid = await accountOf(t);
    const audience = await seedAudience(db.current, t, { count: 2000, exchange: 701, list: "all" });
    const latencyMs = Number(process.env.LAT ?? 200);
    const concurrency = 10;
    server.sandbox.setFaults({ latencyMs });
    worker = await startSendingWorker(db.current, server, concurrency);
    const token = await tokenFor(api.current, t, "member");
    const started = performance.now();
    const messageId = await sendThroughApi(api.current, token, { channel: "sms", body: "Fast {{first_name}}", listIds: [audience.listId] });
    const result = await settled(db.current, messageId, 60_000);
    const seconds = (performance.now() - started) / 1000;
    expect(result.byStatus).toEqual({ sent: 2000 });
    const received = server.sandbox.messages.filter((m) => m.account === sid && m.body.startsWith("Fast "));
    expect(new Set(received.map((m) => m.to)).size).toBe(2000);
    expect(received).toHaveLength(2000);
    // One call after another, `concurrency` jobs at a time, cannot beat concurrency / latency.
    const sequentialSeconds = (2000 * latencyMs) / 1000 / concurrency;
    process.stdout.write(`concurrency: 2,000 SMS at ${latencyMs} ms in ${seconds.toFixed(1)} s (${(2000 / seconds).toFixed(0)}/s); sequential bound ${sequentialSeconds} s\n`);
    expect(seconds).toBeLessThan(sequentialSeconds / 2);
  }, 90_000);
});

describe("fairness between tenants", () => {
  it("tenant B's single SMS goes out within seconds while tenant A's broadcast has a backlog", async () => {
    const a = await seedExtraTenant(db.current, "big-sender");
    const b = await seedExtraTenant(db.current, "one-code");
    const aSid = await accountOf(a);
    const bSid = await accountOf(b);
    const audience = await seedAudience(db.current, a, { count: 4000, exchange: 702, list: "everyone" });
    // A's plan runs at 1,000 a second; two jobs at a time against a 300 ms provider send about 300.
    server.sandbox.setFaults({ latencyMs: 300 });
    worker = await startSendingWorker(db.current, server, 2);
    const aMessage = await sendThroughApi(api.current, await tokenFor(api.current, a, "member"), { channel: "sms", body: "Big news", listIds: [audience.listId] });
    const fromA = () => server.sandbox.messages.filter((m) => m.account === aSid).length;
    await waitFor(async () => fromA() >= 600, 30_000, "A's broadcast to be well under way");
    const asked = Date.now();
    const bMessage = await sendThroughApi(api.current, await tokenFor(api.current, b, "member"), { channel: "sms", body: "Your code is 4321", contactIds: [b.contactId] });
    await waitFor(async () => server.sandbox.messages.some((m) => m.account === bSid && m.body === "Your code is 4321"), 30_000, "B's code");
    const waited = Date.now() - asked;
    const aPending = 4000 - fromA();
    process.stdout.write(`fairness: B's single SMS out ${waited} ms after it was sent, with ${aPending} of A's 4,000 still to go\n`);
    // A's backlog ahead of it (thousands of overdue sends, ~10 s of work) did not hold it up.
    expect(aPending).toBeGreaterThan(1000);
    expect(waited).toBeLessThan(3_000);
    expect((await settled(db.current, bMessage)).byStatus).toEqual({ sent: 1 });
    expect((await settled(db.current, aMessage, 60_000)).byStatus).toEqual({ sent: 4000 });
  }, 90_000);
});

describe("an email broadcast", () => {
  it("5,000 recipients reach the sandbox in at most 5 requests; each one's events find its delivery; a bounce suppresses only its address", async () => {
    const t = await seedExtraTenant(db.current, "newsletter");
    const asked = new Date();
    await accountOf(t);
    server.sandbox.setSendGridEventUrl(`${endpoint.publicUrl}/webhooks/sendgrid/events`);
    const people = Array.from({ length: 5000 }, (_, i) => ({ email: i === 1234 ? "bounce@example.com" : `reader${i}@example.com`, first_name: `Reader${i}` }));
    const { listId, bouncer } = await asWorker(db.current, t, async (c) => {
      const { rows } = await c.query<{ contact_id: string; ordinal: number }>("select contact_id, ordinal from herald_hidden.upsert_contacts($1)", [JSON.stringify(people)]);
      const list = await c.query("insert into herald_public.lists (name) values ('readers') returning id");
      await c.query("insert into herald_public.list_members (list_id, contact_id) select $1, unnest($2::uuid[])", [list.rows[0].id, rows.map((r) => r.contact_id)]);
      return { listId: list.rows[0].id as string, bouncer: rows.find((r) => r.ordinal === 1234)!.contact_id };
    });
    const messageId = await sendThroughApi(api.current, await tokenFor(api.current, t, "member"), {
      channel: "email",
      subject: "News for {{first_name}}",
      body: "Hello {{first_name}}, here is the news.",
      listIds: [listId],
      scheduledAt: new Date(Date.now() + 3_600_000).toISOString(),
    });
    // Fanned out here, with email runs of 1,000 deliveries each (as the
    // fan-out plans email), before any worker runs.
    await asRoot(db.current, (c) => c.query("select graphile_worker.remove_job($1)", [`message:${messageId}`]));
    await asRoot(db.current, (c) => c.query("update herald_public.messages set scheduled_at = now() where id = $1", [messageId]));
    await withWorkerConnection(db.current.authenticator, testKeyring(), t.id, (transaction) => fanOut(transaction, messageId, {}));
    await asRoot(db.current, async (c) => {
      await c.query(
        `delete from graphile_worker._private_jobs j using graphile_worker._private_tasks k
          where k.id = j.task_id and k.identifier = 'delivery__send' and j.payload->>'tenant_id' = $1`,
        [t.id],
      );
      await c.query(
        `select graphile_worker.add_jobs(array(
           select json_populate_record(null::graphile_worker.job_spec, json_build_object('identifier', 'delivery__send',
                    'payload', json_build_object('tenant_id', $1::uuid, 'ids', ids), 'max_attempts', 25))
             from (select array_agg(id order by id) as ids
                     from (select id, (row_number() over (order by id) - 1) / 1000 as run from herald_public.deliveries where message_id = $2) x
                    group by run) runs))`,
        [t.id, messageId],
      );
    });
    const requestsBefore = server.sandbox.mailSendRequests;
    worker = await startSendingWorker(db.current, server, 4);
    expect((await settled(db.current, messageId, 60_000)).byStatus).toEqual({ sent: 5000 });
    const requests = server.sandbox.mailSendRequests - requestsBefore;
    process.stdout.write(`email: 5,000 recipients in ${requests} mail/send requests\n`);
    expect(requests).toBeLessThanOrEqual(5);

    // Each recipient got their own text…
    const received = server.sandbox.messages.filter((m) => m.provider === "sendgrid" && m.subject?.startsWith("News for Reader"));
    expect(received).toHaveLength(5000);
    for (const m of received.slice(0, 50)) {
      const n = m.subject!.slice("News for Reader".length);
      expect(m.body).toBe(`Hello Reader${n}, here is the news.`);
    }
    // …and its events came back to its own delivery: delivered, but the one bounce.
    const final = await waitFor(async () => {
      const { rows } = await db.current.root.query(
        `select d.status, d.contact_id = $2 as bouncer,
                (select count(*)::int from herald_public.delivery_events e where e.delivery_id = d.id) as events
           from herald_public.deliveries d where d.message_id = $1`,
        [messageId, bouncer],
      );
      return rows.length === 5000 && rows.every((r) => r.events === 2) && rows;
    }, 60_000, "every recipient's two events");
    expect(final.filter((r) => r.status === "delivered")).toHaveLength(4999);
    expect(final.filter((r) => r.status === "failed").map((r) => r.bouncer)).toEqual([true]);
    const suppressed = await asWorker(db.current, t, async (c) =>
      (await c.query("select count(*)::int as n, bool_and(address_hash = any (herald_hidden.pii_hashes('email', 'bounce@example.com'))) as only_bouncer from herald_public.suppressions where kind = 'email' and created_at > $1", [asked])).rows[0],
    );
    expect(suppressed).toEqual({ n: 1, only_bouncer: true });
    await server.sandbox.settled();
  }, 90_000);
});
