import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { fanOut } from "../src/messages/fan-out.ts";
import { withWorkerConnection } from "../src/worker/tenant-context.ts";
import type { WorkerHandle } from "../src/worker/worker.ts";
import { tokenFor } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedExtraTenant } from "./helpers/fixtures.ts";
import { testKeyring } from "./helpers/keys.ts";
import {
  asRoot,
  asWorker,
  readyToSend,
  sendThroughApi,
  settled,
  startSandboxServer,
  startSendingWorker,
  waitFor,
  type SandboxServer,
} from "./helpers/messaging.ts";
import { useCallableApiServer } from "./helpers/webhooks.ts";

/**
 * An email broadcast through the delivery engine: SendGrid batches of up to
 * 1,000 personalizations, each recipient's own text, and events (posted by
 * the sandbox to Herald's event webhook) that find each recipient's delivery.
 */

const db = useTestDatabase();
let server: SandboxServer;
beforeAll(async () => {
  server = await startSandboxServer(10_000);
});
const { api, endpoint } = useCallableApiServer(db, () => ({
  SENDGRID_WEBHOOK_PUBLIC_KEY: server.sandbox.sendgridPublicKey,
}));
let worker: WorkerHandle | undefined;

afterEach(async () => {
  await worker?.stop();
  worker = undefined;
});

afterAll(async () => {
  await server?.close();
});

describe("an email broadcast", () => {
  it("5,000 recipients reach the sandbox in at most 5 requests; each one's events find its delivery; a bounce suppresses only its address", async () => {
    const t = await seedExtraTenant(db.current, "newsletter");
    const asked = new Date();
    await readyToSend(db.current, server, t);
    server.sandbox.setSendGridEventUrl(`${endpoint.publicUrl}/webhooks/sendgrid/events`);
    const people = Array.from({ length: 5000 }, (_, i) => ({
      email: i === 1234 ? "bounce@example.com" : `reader${i}@example.com`,
      first_name: `Reader${i}`,
    }));
    const { listId, bouncer } = await asWorker(db.current, t, async (c) => {
      const { rows } = await c.query<{ contact_id: string; ordinal: number }>(
        "select contact_id, ordinal from herald_hidden.upsert_contacts($1)",
        [JSON.stringify(people)],
      );
      const list = await c.query("insert into herald_public.lists (name) values ('readers') returning id");
      await c.query("insert into herald_public.list_members (list_id, contact_id) select $1, unnest($2::uuid[])", [
        list.rows[0].id,
        rows.map((r) => r.contact_id),
      ]);
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
    await asRoot(db.current, (c) =>
      c.query("update herald_public.messages set scheduled_at = now() where id = $1", [messageId]),
    );
    await withWorkerConnection(db.current.authenticator, testKeyring(), t.id, (transaction) =>
      fanOut(transaction, messageId, {}),
    );
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
    // Every one handed to SendGrid; events may already have moved some on
    // (delivered, or the bounce failed) by the time the last batch is recorded.
    const { byStatus } = await settled(db.current, messageId, 60_000);
    expect(Object.keys(byStatus).filter((status) => !["sent", "delivered", "failed"].includes(status))).toEqual([]);
    expect(Object.values(byStatus).reduce((sum, n) => sum + n, 0)).toBe(5000);
    expect(byStatus.failed ?? 0).toBeLessThanOrEqual(1);
    const requests = server.sandbox.mailSendRequests - requestsBefore;
    process.stdout.write(`email: 5,000 recipients in ${requests} mail/send requests\n`);
    expect(requests).toBeLessThanOrEqual(5);

    // Each recipient got their own text…
    const received = server.sandbox.messages.filter(
      (m) => m.provider === "sendgrid" && m.subject?.startsWith("News for Reader"),
    );
    expect(received).toHaveLength(5000);
    for (const m of received.slice(0, 50)) {
      const n = m.subject!.slice("News for Reader".length);
      // A marketing email: its own unsubscribe link in a footer, and in its List-Unsubscribe header.
      expect(m.body).toMatch(
        new RegExp(`^Hello Reader${n}, here is the news\\.\\n\\n--\\nUnsubscribe: (\\S+/unsubscribe/[\\w-]+)$`),
      );
      expect(m.headers?.["List-Unsubscribe"]).toBe(`<${m.body.split("Unsubscribe: ")[1]}>`);
    }
    // …and its events came back to its own delivery: delivered, but the one bounce.
    const final = await waitFor(
      async () => {
        const { rows } = await db.current.root.query(
          `select d.status, d.contact_id = $2 as bouncer,
                (select count(*)::int from herald_public.delivery_events e where e.delivery_id = d.id) as events
           from herald_public.deliveries d where d.message_id = $1`,
          [messageId, bouncer],
        );
        return rows.length === 5000 && rows.every((r) => r.events === 2) && rows;
      },
      60_000,
      "every recipient's two events",
    );
    expect(final.filter((r) => r.status === "delivered")).toHaveLength(4999);
    expect(final.filter((r) => r.status === "failed").map((r) => r.bouncer)).toEqual([true]);
    const suppressed = await asWorker(
      db.current,
      t,
      async (c) =>
        (
          await c.query(
            "select count(*)::int as n, bool_and(address_hash = any (herald_hidden.pii_hashes('email', 'bounce@example.com'))) as only_bouncer from herald_public.suppressions where kind = 'email' and created_at > $1",
            [asked],
          )
        ).rows[0],
    );
    expect(suppressed).toEqual({ n: 1, only_bouncer: true });
    await server.sandbox.settled();
  }, 90_000);
});
