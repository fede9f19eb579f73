import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { WorkerHandle } from "../src/worker/worker.ts";
import { graphql, tokenFor, useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedExtraTenant } from "./helpers/fixtures.ts";
import {
  asRoot,
  asWorker,
  openSendWindowNow,
  readyToSend,
  seedAudience,
  setRates,
  settled,
  startSandboxServer,
  startSendingWorker,
  summary,
  waitFor,
  type SandboxServer,
} from "./helpers/messaging.ts";

/**
 * What holds a delivery back, and what ends it early: a schedule, quiet hours,
 * the monthly cap, cancellation, an opt-out or suppression recorded after the
 * message was queued; and the provider's answers: a 429, a refusal, a
 * timeout after acceptance, a 5xx before it.
 */

const db = useTestDatabase();
const api = useApiServer(db);
let server: SandboxServer;
let worker: WorkerHandle;
let exchange = 700;

beforeAll(async () => {
  server = await startSandboxServer();
  worker = await startSendingWorker(db.current, server, 6);
});

afterAll(async () => {
  await worker?.stop();
  await server?.close();
});

beforeEach(() => server.sandbox.setFaults({}));

/** A fresh tenant per test (its own settings, pace and monthly usage), ready to send, with its owner's token. */
async function tenant(name: string) {
  const t = await seedExtraTenant(db.current, name);
  const sid = await readyToSend(db.current, server, t);
  const token = await tokenFor(api.current, t, "owner");
  const received = () => server.sandbox.messages.filter((m) => m.account === sid);
  return { t, sid, token, received };
}

async function send(token: string, input: Record<string, unknown>): Promise<string> {
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

const deliveryOf = async (messageId: string) =>
  (
    await db.current.root.query(
      "select id, status, reason, hold_reason, error_code, attempts, run_at from herald_public.deliveries where message_id = $1",
      [messageId],
    )
  ).rows;

const jobsFor = async (deliveryId: string) =>
  (
    await db.current.root.query(
      `select j.run_at from graphile_worker._private_jobs j join graphile_worker._private_tasks t on t.id = j.task_id
        where t.identifier = 'delivery__send' and j.payload->>'id' = $1`,
      [deliveryId],
    )
  ).rows;

describe("scheduling and cancelling", () => {
  it("a scheduled message is not sent early, then goes out at its time", async () => {
    const { t, token, received } = await tenant("sched");
    const at = new Date(Date.now() + 3_000);
    const messageId = await send(token, {
      channel: "sms",
      body: "Later",
      contactIds: [t.contactId],
      scheduledAt: at.toISOString(),
    });
    await new Promise((r) => setTimeout(r, 1_500));
    expect((await summary(db.current, messageId)).total).toBe(0);
    expect(received()).toHaveLength(0);
    await settled(db.current, messageId, 15_000);
    expect(received()).toHaveLength(1);
    expect(received()[0]!.createdAt.getTime()).toBeGreaterThanOrEqual(at.getTime());
  });

  it("a scheduled message canceled before its time never starts", async () => {
    const { t, token, received } = await tenant("sched-cancel");
    const messageId = await send(token, {
      channel: "sms",
      body: "Never",
      contactIds: [t.contactId],
      scheduledAt: new Date(Date.now() + 2_000).toISOString(),
    });
    const r = await graphql(
      api.current,
      token,
      `
        mutation ($id: UUID!) {
          cancelMessage(input: { messageId: $id }) {
            message {
              status
              canceledAt
            }
          }
        }
      `,
      { id: messageId },
    );
    expect(r.body.data!.cancelMessage.message.status).toBe("canceled");
    await new Promise((resolve) => setTimeout(resolve, 3_500));
    expect(await summary(db.current, messageId)).toMatchObject({ messageStatus: "canceled", total: 0 });
    expect(received()).toHaveLength(0);
  });

  it("canceling mid-broadcast cancels every delivery not yet handed to a provider", async () => {
    const { t, token, received } = await tenant("cancel-mid");
    await setRates(db.current, t, { perSecond: 4, senderMps: 100 });
    const audience = await seedAudience(db.current, t, { count: 40, exchange: exchange++, list: "slow" });
    const messageId = await send(token, { channel: "sms", body: "Stop me", listIds: [audience.listId] });
    await waitFor(async () => received().length >= 3);
    const canceled = await graphql(
      api.current,
      token,
      `
        mutation ($id: UUID!) {
          cancelMessage(input: { messageId: $id }) {
            message {
              status
              stats {
                total
                queued
                waiting
                canceled
              }
              reasons {
                nodes {
                  status
                  reason
                  count
                }
              }
            }
          }
        }
      `,
      { id: messageId },
    );
    // The payload is the state after the cancel: nothing left queued, the rest counted as canceled.
    const after = canceled.body.data!.cancelMessage.message;
    expect(after.status).toBe("canceled");
    expect(after.stats).toMatchObject({ total: 40, queued: 0, waiting: 0 });
    expect(after.stats.canceled).toBeGreaterThan(0);
    expect(after.reasons.nodes).toContainEqual({
      status: "canceled",
      reason: "message canceled",
      count: after.stats.canceled,
    });
    const result = await settled(db.current, messageId);
    const sent = result.byStatus.sent ?? 0;
    expect(sent).toBeGreaterThanOrEqual(3);
    expect(sent).toBeLessThan(40);
    expect(sent + (result.byStatus.canceled ?? 0)).toBe(40);
    // At most the deliveries in flight at the cancel went out after it.
    expect(result.byStatus.canceled ?? 0).toBeLessThanOrEqual(after.stats.canceled);
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    expect(received()).toHaveLength(sent);
  });
});

describe("checks at send time", () => {
  it("an opt-out or a suppression recorded after the message was queued wins", async () => {
    const { t, token, received } = await tenant("late-optout");
    await setRates(db.current, t, { perSecond: 2, senderMps: 100 });
    const audience = await seedAudience(db.current, t, { count: 6, exchange: exchange++, list: "late" });
    const messageId = await send(token, { channel: "sms", body: "Hello", listIds: [audience.listId] });
    await waitFor(async () => (await summary(db.current, messageId)).messageStatus === "fanned_out");
    // Fan-out orders by contact id: the last two are the last to go.
    const [optOut, suppress] = [...audience.contacts].sort((x, y) => (x.id < y.id ? 1 : -1));
    await asRoot(db.current, (c) =>
      c.query("update herald_public.contacts set sms_subscribed = false where id = $1", [optOut!.id]),
    );
    await graphql(
      api.current,
      token,
      `
        mutation ($a: String!) {
          addSuppression(input: { kind: "phone", address: $a }) {
            suppression {
              rowId
            }
          }
        }
      `,
      { a: suppress!.phone },
    );
    const result = await settled(db.current, messageId);
    expect(result.byReason).toEqual({ "skipped/unsubscribed": 1, "skipped/suppressed": 1 });
    expect(result.byStatus.sent).toBe(4);
    expect(received().map((m) => m.to)).not.toContain(optOut!.phone);
    expect(received().map((m) => m.to)).not.toContain(suppress!.phone);
  });

  it("quiet hours defer a delivery to the window's opening, not drop it", async () => {
    const { t, token, received } = await tenant("quiet");
    const now = new Date();
    const hour = (now.getUTCHours() + 2) % 24;
    const start = `${String(hour).padStart(2, "0")}:00`;
    const end = `${String((hour + 1) % 24).padStart(2, "0")}:00`;
    await asRoot(db.current, (c) =>
      c.query(
        "update herald_public.tenant_settings set timezone = 'UTC', send_window_start = $2, send_window_end = $3 where tenant_id = $1",
        [t.id, start, end],
      ),
    );
    const messageId = await send(token, { channel: "sms", body: "At a decent hour", contactIds: [t.contactId] });
    const [delivery] = await waitFor(async () => {
      const rows = await deliveryOf(messageId);
      return rows[0]?.reason === "quiet_hours" && rows;
    });
    const opens = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate(), hour));
    if (opens < now) opens.setUTCDate(opens.getUTCDate() + 1);
    expect(delivery).toMatchObject({ status: "queued", reason: "quiet_hours", hold_reason: "quiet_hours" });
    expect(new Date(delivery.run_at).toISOString()).toBe(opens.toISOString());
    // Its job waits for the window.
    // (Queued once the run that held it back has committed.)
    await waitFor(
      async () => (await jobsFor(delivery.id)).some((j) => new Date(j.run_at).toISOString() === opens.toISOString()),
      10_000,
      "its job at the window's opening",
    );
    expect(received()).toHaveLength(0);

    // The window opens (as if the clock had moved): the waiting job sends it.
    await openSendWindowNow(db.current, t.id, delivery.id);
    await waitFor(async () => (await deliveryOf(messageId))[0]?.status === "sent");
    expect(received()).toHaveLength(1);
  });

  it("widening the send window releases what quiet hours held, within seconds, not at the old opening", async () => {
    const { t, token, received } = await tenant("quiet-widened");
    const hh = (h: number) => `${String(((h % 24) + 24) % 24).padStart(2, "0")}:00`;
    const hour = new Date().getUTCHours();
    await asRoot(db.current, (c) =>
      c.query(
        "update herald_public.tenant_settings set timezone = 'UTC', send_window_start = $2, send_window_end = $3 where tenant_id = $1",
        [t.id, hh(hour + 2), hh(hour + 3)],
      ),
    );
    const messageId = await send(token, {
      channel: "sms",
      body: "Now that the window is wider",
      contactIds: [t.contactId],
    });
    await waitFor(
      async () => (await deliveryOf(messageId))[0]?.hold_reason === "quiet_hours",
      15_000,
      "held by quiet hours",
    );
    expect(received()).toHaveLength(0);

    // The owner widens the window so that it is open now (as a newcomer at 04:08 UTC would).
    const widened = await graphql(
      api.current,
      token,
      `
        mutation ($id: UUID!, $start: Time!) {
          updateTenantSettingByTenantId(input: { tenantId: $id, tenantSettingPatch: { sendWindowStart: $start } }) {
            tenantSetting {
              sendWindowStart
              sendWindowEnd
            }
          }
        }
      `,
      { id: t.id, start: hh(hour - 1) },
    );
    expect(widened.body.errors).toBeUndefined();
    await waitFor(async () => (await deliveryOf(messageId))[0]?.status === "sent", 10_000, "sent after widening");
    expect(received()).toHaveLength(1);
    expect((await deliveryOf(messageId))[0]).toMatchObject({ status: "sent", hold_reason: null });
  });

  it("quiet hours are the contact's own, may wrap midnight, and ignore zones Postgres would misread", async () => {
    const { t } = await tenant("zones");
    const opensAt = (tz: string | null, start: string, end: string) =>
      asWorker(db.current, t, async (c) => {
        const { rows } = await c.query("select herald_hidden.send_window_opens_at($1, 'UTC', $2, $3) as at", [
          tz,
          start,
          end,
        ]);
        return rows[0].at ? new Date(rows[0].at).toISOString() : null;
      });
    const hh = (h: number) => `${String(((h % 24) + 24) % 24).padStart(2, "0")}:00`;
    const now = new Date();
    // Tokyo (UTC+9, no DST): the window opens at the next local hour.
    const tokyo = new Date(now.getTime() + 9 * 3600_000);
    const tokyoHour = tokyo.getUTCHours();
    const opensInTokyo = new Date(
      Date.UTC(tokyo.getUTCFullYear(), tokyo.getUTCMonth(), tokyo.getUTCDate(), tokyoHour + 1) - 9 * 3600_000,
    );
    expect(await opensAt("Asia/Tokyo", hh(tokyoHour + 1), hh(tokyoHour + 2))).toBe(opensInTokyo.toISOString());
    // A window that wraps midnight and contains now: open.
    const utcHour = now.getUTCHours();
    expect(await opensAt(null, hh(utcHour - 1), hh(utcHour - 2))).toBeNull();
    // 'UTC+5' is POSIX for UTC-5 and 'PST' has no DST: neither is used; the tenant's zone (UTC) is.
    const opensInUtc = new Date(
      Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate(), utcHour + 1),
    ).toISOString();
    for (const misread of ["UTC+5", "+05:30", "PST", "Not/AZone"])
      expect(await opensAt(misread, hh(utcHour + 1), hh(utcHour + 2)), misread).toBe(opensInUtc);
  });

  it("the monthly cap holds deliveries back with a reason, and raising it releases them", async () => {
    const { t, token, received } = await tenant("capped");
    await asRoot(db.current, (c) =>
      c.query("update herald_public.tenant_settings set monthly_message_cap = 2 where tenant_id = $1", [t.id]),
    );
    const audience = await seedAudience(db.current, t, { count: 5, exchange: exchange++, list: "capped" });
    const messageId = await send(token, { channel: "sms", body: "Capped", listIds: [audience.listId] });
    const held = await settled(db.current, messageId);
    expect(held.byStatus).toEqual({ sent: 2, queued: 3 });
    expect(held.byReason).toEqual({ "queued/monthly_cap": 3 });
    expect(received()).toHaveLength(2);
    // Each waits for the month to turn…
    const nextMonth = new Date(Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth() + 1, 1));
    const waiting = (await deliveryOf(messageId)).filter((d) => d.status === "queued");
    for (const d of waiting) expect(new Date(d.run_at).toISOString()).toBe(nextMonth.toISOString());

    // …or for the cap to be raised.
    const raised = await graphql(
      api.current,
      token,
      `
        mutation ($id: UUID!) {
          updateTenantSettingByTenantId(input: { tenantId: $id, tenantSettingPatch: { monthlyMessageCap: 10 } }) {
            tenantSetting {
              monthlyMessageCap
            }
          }
        }
      `,
      { id: t.id },
    );
    expect(raised.body.errors).toBeUndefined();
    await waitFor(async () => (await summary(db.current, messageId)).byStatus.sent === 5);
    expect(received()).toHaveLength(5);
    const { rows } = await db.current.root.query(
      "select messages from herald_hidden.monthly_usage where tenant_id = $1",
      [t.id],
    );
    expect(rows[0].messages).toBe(5);
  });
});

describe("the provider's answers", () => {
  it("a 429 is retried with backoff; a refusal ends the delivery with the provider's code", async () => {
    const { t, token, received } = await tenant("answers");
    server.sandbox.setFaults({ rateLimitBurst: 1 });
    const messageId = await send(token, { channel: "sms", body: "Retry me", contactIds: [t.contactId] });
    await settled(db.current, messageId);
    expect(await deliveryOf(messageId)).toMatchObject([{ status: "sent", attempts: 2 }]);
    expect(received().filter((m) => m.body === "Retry me")).toHaveLength(1);

    // Sandbox rule: numbers ending 0003 have opted out at the carrier (21610): permanent, not retried.
    const contactId = await asWorker(
      db.current,
      t,
      async (c) =>
        (
          await c.query("select contact_id from herald_hidden.upsert_contacts($1)", [
            JSON.stringify([{ phone: "+14155550003" }]),
          ])
        ).rows[0].contact_id,
    );
    const refused = await send(token, { channel: "sms", body: "Refused", contactIds: [contactId] });
    await settled(db.current, refused);
    expect(await deliveryOf(refused)).toMatchObject([{ status: "failed", error_code: "21610", attempts: 1 }]);
    expect((await deliveryOf(refused))[0].reason).toMatch(/unsubscribed recipient/);
  });

  it("an accepted send whose answer never came is reconciled, not resent", async () => {
    const { t, token, received } = await tenant("timeout");
    server.sandbox.setFaults({ acceptThenTimeoutMs: 50 });
    const messageId = await send(token, { channel: "sms", body: "Exactly once", contactIds: [t.contactId] });
    await waitFor(async () => (await deliveryOf(messageId))[0]?.status === "unknown");
    server.sandbox.setFaults({});
    await settled(db.current, messageId, 30_000);
    const [delivery] = await deliveryOf(messageId);
    expect(delivery).toMatchObject({ status: "sent", reason: "reconciled: the provider had accepted it", attempts: 1 });
    expect(received().filter((m) => m.body === "Exactly once")).toHaveLength(1);
    // The message id the provider gave, found by the lookup.
    expect(
      (
        await db.current.root.query("select provider_message_id from herald_public.deliveries where message_id = $1", [
          messageId,
        ])
      ).rows[0].provider_message_id,
    ).toBe(received().find((m) => m.body === "Exactly once")!.id);
  });

  it("a 5xx before acceptance is looked up, found absent, and sent again once", async () => {
    const { t, token, received } = await tenant("fivexx");
    server.sandbox.setFaults({ errorRate: 1 });
    const messageId = await send(token, { channel: "sms", body: "After the outage", contactIds: [t.contactId] });
    await waitFor(async () => (await deliveryOf(messageId))[0]?.status === "unknown");
    server.sandbox.setFaults({});
    await settled(db.current, messageId, 30_000);
    expect(await deliveryOf(messageId)).toMatchObject([{ status: "sent", attempts: 2 }]);
    expect(received().filter((m) => m.body === "After the outage")).toHaveLength(1);
    // Counted once toward the month, though claimed twice.
    const { rows } = await db.current.root.query(
      "select messages from herald_hidden.monthly_usage where tenant_id = $1",
      [t.id],
    );
    expect(rows[0].messages).toBe(1);
  });
});

describe("the sweep", () => {
  it("gives a job again to an open delivery that has none, so nothing waits forever", async () => {
    const { t, token, received } = await tenant("orphan");
    await asRoot(db.current, (c) =>
      c.query(
        "update herald_public.tenant_settings set rate_batch_size = 1, rate_batch_interval_seconds = 3600 where tenant_id = $1",
        [t.id],
      ),
    );
    const audience = await seedAudience(db.current, t, { count: 2, exchange: exchange++, list: "orphans" });
    // The second recipient is planned an hour out; its job is then lost, and its time long past.
    const messageId = await send(token, { channel: "sms", body: "Not forgotten", listIds: [audience.listId] });
    await waitFor(async () => (await summary(db.current, messageId)).byStatus.sent === 1);
    const [waiting] = (await deliveryOf(messageId)).filter((d) => d.status === "queued");
    await asRoot(db.current, async (c) => {
      await c.query(
        `delete from graphile_worker._private_jobs j using graphile_worker._private_tasks k
          where k.id = j.task_id and k.identifier = 'delivery__send' and (j.payload->>'id' = $1 or j.payload::jsonb->'ids' ? $1)`,
        [waiting.id],
      );
      await c.query("update herald_public.deliveries set run_at = now() - interval '1 hour' where id = $1", [
        waiting.id,
      ]);
      await c.query(
        "update herald_public.tenant_settings set rate_batch_size = 1000, rate_batch_interval_seconds = 1 where tenant_id = $1",
        [t.id],
      );
      // The plan and the gate still hold the hour-long step: clear them as if it had passed.
      await c.query("delete from herald_hidden.send_plans where tenant_id = $1", [t.id]);
      await c.query("delete from herald_private.send_pacing where scope like $1", [`%${t.id}%`]);
      await c.query("select graphile_worker.add_job('deliveries__sweep', '{}'::json)");
    });
    await waitFor(async () => (await summary(db.current, messageId)).byStatus.sent === 2);
    expect(received().filter((m) => m.body === "Not forgotten")).toHaveLength(2);
  });
});
