import { describe, expect, it } from "vitest";
import { seedExtraTenant } from "./helpers/fixtures.ts";
import { readyToSend, seedAudience, settled, waitFor } from "./helpers/messaging.ts";
import { crashSigns, sendThrough, statuses, useHeraldPair } from "./helpers/cluster.ts";

/**
 * Providers do not retry a status callback that fails. With Herald's API
 * unreachable for 30 s in the middle of a broadcast, the callbacks of that
 * time are lost; the deliveries they were about stay `sent` — until the status
 * check looks them up at the provider (Twilio's Message fetch) once they are
 * overdue (HERALD_STATUS_CHECK_AFTER_SECONDS, 5 s here).
 *
 * On a cluster of this file's own (embedded, whatever DATABASE_URL says).
 */

const herald = useHeraldPair("callbacks");

describe("the API unreachable for 30 s during a broadcast", () => {
  it("every delivery the provider delivered ends `delivered`, looked up once overdue", async () => {
    const { db } = herald.cluster;
    const t = await seedExtraTenant(db, "unheard");
    const sid = await readyToSend(db, herald.relay, t);
    const count = 600;
    const audience = await seedAudience(db, t, { count, exchange: 831, list: "everyone" });
    herald.relay.sandbox.setFaults({ latencyMs: 10 });
    const received = () => herald.relay.sandbox.messages.filter((m) => m.account === sid);
    const messageId = await sendThrough(db, herald.api.url!, t, {
      channel: "sms",
      body: "Did you get this?",
      listIds: [audience.listId],
    });
    await waitFor(async () => received().length >= 50, 60_000, "50 messages before the API goes away");
    herald.relay.apiUrl = undefined;
    const downAt = Date.now();
    await settled(db, messageId, 60_000);
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, 30_000 - (Date.now() - downAt))));
    // While it was away, the status check cannot have settled what the callbacks could not.
    const lost = herald.relay.answers.get(502) ?? 0;
    herald.relay.apiUrl = herald.api.url;
    const backAt = Date.now();

    await waitFor(
      async () => (await statuses(db, messageId)).delivered === count,
      30_000,
      async () => `every delivery to be delivered: ${JSON.stringify(await statuses(db, messageId))}`,
    );
    const { rows } = await db.root.query<{ n: number }>(
      "select count(*)::int as n from herald_public.deliveries where message_id = $1 and status_checked_at is not null",
      [messageId],
    );
    process.stdout.write(
      `API down 30 s: ${lost} callbacks lost; all ${count} delivered ${Date.now() - backAt} ms after it came back; ${rows[0]!.n} looked up at the provider\n`,
    );
    expect(lost).toBeGreaterThan(0);
    expect(rows[0]!.n).toBeGreaterThan(0);
    expect(new Set(received().map((m) => m.to)).size).toBe(count);
    for (const p of [herald.api, herald.worker]) {
      expect(p.alive()).toBe(true);
      expect(crashSigns(p.output())).toEqual([]);
    }
  }, 150_000);
});
