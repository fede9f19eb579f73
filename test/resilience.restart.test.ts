import { describe, expect, it } from "vitest";
import { seedExtraTenant } from "./helpers/fixtures.ts";
import { readyToSend, seedAudience, settled, waitFor } from "./helpers/messaging.ts";
import { allDelivered, crashSigns, sendThrough, statuses, useHeraldPair } from "./helpers/cluster.ts";

/**
 * PostgreSQL restarted (`pg_ctl restart -m fast`: every connection terminated
 * with 57P01) under `npm start` (API + worker) and an `npm run worker`
 * process: in the middle of a broadcast, and while idle. Both processes stay
 * up and carry on by themselves; nothing is lost, duplicates stay within what
 * was in flight, and every delivery ends `delivered`.
 *
 * On a cluster of this file's own (embedded, whatever DATABASE_URL says: a
 * test never restarts a server it does not own).
 */

const herald = useHeraldPair("restart");

/** Both processes are alive and none logged a crash. */
function expectAlive() {
  for (const p of [herald.api, herald.worker]) {
    expect(p.alive(), p.output().slice(-3000)).toBe(true);
    expect(crashSigns(p.output())).toEqual([]);
  }
}

describe("PostgreSQL restarted mid-broadcast", () => {
  it("every process stays up; 0 lost, duplicates within what was in flight, every status final", async () => {
    const { db } = herald.cluster;
    const t = await seedExtraTenant(db, "restarted");
    const sid = await readyToSend(db, herald.relay, t);
    const audience = await seedAudience(db, t, { count: 1000, exchange: 811, list: "everyone" });
    herald.relay.sandbox.setFaults({ latencyMs: 20 });
    const received = () => herald.relay.sandbox.messages.filter((m) => m.account === sid);
    const messageId = await sendThrough(db, herald.api.url!, t, {
      channel: "sms",
      body: "Still here",
      listIds: [audience.listId],
    });
    await waitFor(async () => received().length >= 300, 60_000, "300 messages before the restart");
    const { rows } = await db.root.query(
      "select count(*)::int as n from herald_public.deliveries where message_id = $1 and status = 'sending'",
      [messageId],
    );
    const atRestart = received().length;
    await herald.cluster.restart();

    const restartedAt = Date.now();
    const result = await settled(db, messageId, 90_000);
    process.stdout.write(`settled ${Date.now() - restartedAt} ms after the restart\n`);
    herald.relay.sandbox.setFaults({});
    await allDelivered(db, messageId, 1000, 30_000);
    const all = received();
    const distinct = new Set(all.map((m) => m.to));
    const duplicates = all.length - distinct.size;
    process.stdout.write(
      `restart mid-broadcast: ${atRestart} received at the restart, ${rows[0].n} sending; ${JSON.stringify(result.byStatus)} when settled; ` +
        `${duplicates} duplicates; callbacks answered ${JSON.stringify(Object.fromEntries(herald.relay.answers))}\n`,
    );
    expect(distinct.size).toBe(1000);
    // Two processes of 5 jobs each: at most 10 sends were in flight.
    expect(duplicates).toBeLessThanOrEqual(10);
    expect(await statuses(db, messageId)).toEqual({ delivered: 1000 });
    // A callback that came while the database was away was told to come back (503), never 500.
    expect(herald.relay.answers.get(500) ?? 0).toBe(0);
    expectAlive();
  }, 150_000);
});

describe("PostgreSQL down for 10 s while Herald is idle", () => {
  it("stays up, says degraded meanwhile, and sends again once the database is back", async () => {
    const { db } = herald.cluster;
    await herald.cluster.stop();
    const during = await fetch(`${herald.api.url}/healthz`);
    expect(during.status).toBe(503);
    expect(((await during.json()) as { status: string }).status).toBe("degraded");
    await new Promise((resolve) => setTimeout(resolve, 10_000));
    expectAlive();
    await herald.cluster.start();
    // Healthy again by itself: database reachable, the worker registered again.
    const health = await waitFor(
      async () => {
        const r = await fetch(`${herald.api.url}/healthz`);
        return r.status === 200 && ((await r.json()) as { worker: { registered: boolean } });
      },
      30_000,
      "/healthz to say ok again",
    );
    expect(health.worker.registered).toBe(true);

    const t = await seedExtraTenant(db, "after-outage");
    const sid = await readyToSend(db, herald.relay, t);
    const audience = await seedAudience(db, t, { count: 20, exchange: 812, list: "few" });
    const messageId = await sendThrough(db, herald.api.url!, t, {
      channel: "sms",
      body: "Back again",
      listIds: [audience.listId],
    });
    await allDelivered(db, messageId, 20, 30_000);
    expect(herald.relay.sandbox.messages.filter((m) => m.account === sid)).toHaveLength(20);
    expectAlive();
  }, 90_000);
});
