import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { WorkerHandle } from "../src/worker/worker.ts";
import { tokenFor, useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedExtraTenant } from "./helpers/fixtures.ts";
import {
  asRoot,
  readyToSend,
  seedAudience,
  sendThroughApi,
  setRates,
  settled,
  startSandboxServer,
  startSendingWorker,
  waitFor,
  type SandboxServer,
} from "./helpers/messaging.ts";

/**
 * Transactional texts (codes, reminders the contact asked for) are not held by
 * quiet hours, and are paced ahead of marketing traffic on the same sender.
 */

const db = useTestDatabase();
const api = useApiServer(db);
let server: SandboxServer;
let worker: WorkerHandle;

beforeAll(async () => {
  server = await startSandboxServer();
  worker = await startSendingWorker(db.current, server, 6);
});

afterAll(async () => {
  await worker?.stop();
  await server?.close();
});

async function tenant(name: string) {
  const t = await seedExtraTenant(db.current, name);
  const sid = await readyToSend(db.current, server, t);
  const token = await tokenFor(api.current, t, "owner");
  const received = () => server.sandbox.messages.filter((m) => m.account === sid);
  return { t, token, received };
}

const deliveryOf = async (messageId: string) =>
  (
    await db.current.root.query("select status, hold_reason from herald_public.deliveries where message_id = $1", [
      messageId,
    ])
  ).rows[0];

/** An IANA zone (Etc/GMT±N, whose sign is POSIX's: Etc/GMT-9 is UTC+9) where the local time is now 23:xx. */
function zoneAt23(now = new Date()): string {
  let offset = (23 - now.getUTCHours() + 24) % 24; // hours ahead of UTC
  if (offset > 14) offset -= 24;
  return offset === 0 ? "Etc/GMT" : `Etc/GMT${offset > 0 ? "-" : "+"}${Math.abs(offset)}`;
}

describe("quiet hours", () => {
  it("at 23:00 in the contact's zone a transactional SMS goes; a marketing one waits for the window", async () => {
    const { t, token, received } = await tenant("tx-quiet");
    const zone = zoneAt23();
    expect(
      new Intl.DateTimeFormat("en-GB", { timeZone: zone, hour: "2-digit", hour12: false }).format(new Date()),
    ).toBe("23");
    await asRoot(db.current, async (c) => {
      await c.query(
        "update herald_public.tenant_settings set timezone = 'UTC', send_window_start = '08:00', send_window_end = '21:00' where tenant_id = $1",
        [t.id],
      );
      await c.query("update herald_public.contacts set timezone = $2 where id = $1", [t.contactId, zone]);
    });
    const marketing = await sendThroughApi(api.current, token, {
      channel: "sms",
      body: "Sale tonight!",
      contactIds: [t.contactId],
    });
    const code = await sendThroughApi(api.current, token, {
      channel: "sms",
      body: "Your code is 4821",
      purpose: "transactional",
      contactIds: [t.contactId],
    });
    expect((await settled(db.current, code, 20_000)).byStatus).toEqual({ sent: 1 });
    await waitFor(async () => (await deliveryOf(marketing))?.hold_reason === "quiet_hours", 15_000, "marketing held");
    expect(await deliveryOf(marketing)).toEqual({ status: "queued", hold_reason: "quiet_hours" });
    expect(received().map((m) => m.body)).toEqual(["Your code is 4821"]);
  });
});

describe("pacing", () => {
  it("a transactional SMS sent while a marketing broadcast is queued on the same number goes out before it", async () => {
    const { t, token, received } = await tenant("tx-pace");
    // One message a second from the tenant's number: a 10-recipient broadcast takes 10 s.
    await setRates(db.current, t, { perSecond: 1000, senderMps: 1 });
    const { listId } = await seedAudience(db.current, t, { count: 10, exchange: 731, list: "Everyone" });
    const broadcast = await sendThroughApi(api.current, token, {
      channel: "sms",
      body: "Spring sale",
      listIds: [listId],
    });
    // The broadcast is under way: fanned out, and its first texts arriving.
    await waitFor(async () => received().length >= 1, 15_000, "the broadcast's first text");
    const before = received().length;
    const code = await sendThroughApi(api.current, token, {
      channel: "sms",
      body: "Your code is 7310",
      purpose: "transactional",
      contactIds: [t.contactId],
    });
    await settled(db.current, code, 20_000);
    await settled(db.current, broadcast, 30_000);

    const order = received().map((m) => m.body);
    expect(order).toHaveLength(11);
    const at = order.indexOf("Your code is 7310");
    // It takes the next free slot: at most the slots already reserved (a second ahead, at 1/s) go first.
    expect(at).toBeLessThanOrEqual(before + 2);
    expect(order.slice(at + 1).length).toBeGreaterThanOrEqual(10 - before - 2);
    // And the number's pace held for everyone: about a second apart.
    const times = received().map((m) => m.createdAt.getTime());
    for (let i = 1; i < times.length; i++) expect(times[i]! - times[i - 1]!).toBeGreaterThan(700);
  });
});
