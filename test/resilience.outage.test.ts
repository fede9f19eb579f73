import { describe, expect, it } from "vitest";
import { seedExtraTenant } from "./helpers/fixtures.ts";
import { readyToSend, seedAudience, settled, waitFor } from "./helpers/messaging.ts";
import { allDelivered, crashSigns, sendThrough, statuses, useHeraldPair } from "./helpers/cluster.ts";

/**
 * PostgreSQL stopped for 10 s in the middle of a broadcast, under `npm start`
 * (API + worker) and an `npm run worker` process: they wait it out (the
 * connections they ask for meanwhile are retried, /healthz says degraded) and
 * finish the broadcast by themselves once it is back.
 *
 * On a cluster of this file's own (embedded, whatever DATABASE_URL says).
 */

const herald = useHeraldPair("outage");

describe("PostgreSQL down for 10 s mid-broadcast", () => {
  it("every process stays up and finishes the broadcast: 0 lost, duplicates within what was in flight, every status final", async () => {
    const { db } = herald.cluster;
    const t = await seedExtraTenant(db, "outage");
    const sid = await readyToSend(db, herald.relay, t);
    const audience = await seedAudience(db, t, { count: 1000, exchange: 821, list: "everyone" });
    herald.relay.sandbox.setFaults({ latencyMs: 20 });
    const received = () => herald.relay.sandbox.messages.filter((m) => m.account === sid);
    const messageId = await sendThrough(db, herald.api.url!, t, {
      channel: "sms",
      body: "Through the outage",
      listIds: [audience.listId],
    });
    await waitFor(async () => received().length >= 300, 60_000, "300 messages before the outage");
    await herald.cluster.stop();
    const atStop = received().length;
    const health = await fetch(`${herald.api.url}/healthz`);
    expect(health.status).toBe(503);
    await new Promise((resolve) => setTimeout(resolve, 10_000));
    for (const p of [herald.api, herald.worker]) expect(p.alive(), p.output().slice(-3000)).toBe(true);
    await herald.cluster.start();

    const result = await settled(db, messageId, 120_000).catch(async (error: Error) => {
      const { rows } = await db.root.query(
        `select d.id, d.status, d.claimed_at, d.claimed_by, d.updated_at,
                (select json_agg(json_build_object('id', j.id, 'run_at', j.run_at, 'locked_by', j.locked_by, 'attempts', j.attempts, 'last_error', left(j.last_error, 200)))
                   from graphile_worker._private_jobs j where j.payload->>'id' = d.id::text or coalesce(j.payload::jsonb->'ids', '[]'::jsonb) ? d.id::text) as jobs
           from herald_public.deliveries d where d.message_id = $1 and d.status not in ('sent', 'delivered')`,
        [messageId],
      );
      const { rows: procs } = await db.root.query(
        "select process_id, started_at, worker_ids from herald_private.worker_processes",
      );
      throw new Error(`${error.message}\n${JSON.stringify(rows, null, 1)}\n${JSON.stringify(procs)}`);
    });
    herald.relay.sandbox.setFaults({});
    // Callbacks refused with 503 during the outage are not sent again: those
    // deliveries stay `sent` until the status check looks them up. A check that
    // was running when the server went away waits for its job to be unlocked
    // (at most one 30 s sweep), then looks up at 20 a second.
    await allDelivered(db, messageId, 1000, 120_000);
    const all = received();
    const distinct = new Set(all.map((m) => m.to));
    const duplicates = all.length - distinct.size;
    process.stdout.write(
      `down 10 s mid-broadcast: ${atStop} received at the stop; ${JSON.stringify(result.byStatus)} when settled; ${duplicates} duplicates; ` +
        `callbacks answered ${JSON.stringify(Object.fromEntries(herald.relay.answers))}\n`,
    );
    expect(distinct.size).toBe(1000);
    expect(duplicates).toBeLessThanOrEqual(10);
    expect(await statuses(db, messageId)).toEqual({ delivered: 1000 });
    expect(herald.relay.answers.get(500) ?? 0).toBe(0);
    expect((await fetch(`${herald.api.url}/healthz`)).status).toBe(200);
    for (const p of [herald.api, herald.worker]) {
      expect(p.alive(), p.output().slice(-3000)).toBe(true);
      expect(crashSigns(p.output())).toEqual([]);
    }
  }, 300_000);
});
