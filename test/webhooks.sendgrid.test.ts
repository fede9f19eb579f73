import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { WorkerHandle } from "../src/worker/worker.ts";
import { tokenFor } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import {
  asOwner,
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
import {
  appliedRows,
  contactWith,
  deliveryState,
  postSendGrid,
  reportsApplied,
  sendgridKeyPair,
  useCallableApiServer,
  writtenRows,
} from "./helpers/webhooks.ts";

/**
 * POST /webhooks/sendgrid/events[/<tenant>/<account>]: ECDSA over the raw
 * body, the five-minute window, one application per sg_event_id, each event
 * type's effect on the delivery and on later sends, and tenant isolation.
 * The system URL's key is the sandbox's (it sends the end-to-end events); a
 * tenant account has a key pair of the test's own.
 */

const db = useTestDatabase();
let server: SandboxServer;
beforeAll(async () => {
  server = await startSandboxServer();
});
const { api, endpoint } = useCallableApiServer(db, () => ({
  SENDGRID_WEBHOOK_PUBLIC_KEY: server.sandbox.sendgridPublicKey,
}));
let a: TenantFixture;
let b: TenantFixture;
let worker: WorkerHandle;
const tenantKeys = sendgridKeyPair();
let aAccountId: string;
let aPath: string;

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  await readyToSend(db.current, server, a);
  // A's own SendGrid account, with the key its event webhook signs with.
  aAccountId = await asOwner(
    db.current,
    a,
    async (c) =>
      (
        await c.query(
          "select id from herald_public.create_provider_account('sendgrid', 'Mail', 'SG.sandbox.tenant-a', webhook_public_key => $1)",
          [tenantKeys.publicKey],
        )
      ).rows[0].id,
  );
  aPath = `/webhooks/sendgrid/events/${a.id}/${aAccountId}`;
  // A's account sends nothing in this file (the system's does): deactivate it for sending.
  await asRoot(db.current, (c) =>
    c.query("update herald_public.provider_accounts set status = 'disabled' where id = $1", [aAccountId]),
  );
  server.sandbox.setSendGridEventUrl(`${endpoint.publicUrl}/webhooks/sendgrid/events`);
  worker = await startSendingWorker(db.current, server, 4);
});

afterAll(async () => {
  await worker?.stop();
  await server?.close();
});

let counter = 0;
const freshEmail = () => `person.${++counter}@example.com`;

/** An email delivery of tenant `t` to a new contact, as the worker leaves it once SendGrid accepted it. */
async function emailDelivery(t: TenantFixture, status = "sent", messageId: string | null = `msg${++counter}`) {
  const email = freshEmail();
  const contactId = await contactWith(db.current, t, null, { email });
  const { rows } = await asRoot(db.current, (c) =>
    c.query(
      `insert into herald_public.deliveries (tenant_id, message_id, contact_id, channel, status, provider_message_id, provider)
       values ($1, $2, $3, 'email', $4, $5, 'system') returning id`,
      [t.id, t.messageId, contactId, status, messageId],
    ),
  );
  return { id: rows[0].id as string, email, contactId, messageId };
}

/** A SendGrid event about a delivery, with the custom args Herald sends. */
const event = (
  d: { id: string; email: string; messageId: string | null },
  t: TenantFixture,
  kind: string,
  extra: Record<string, unknown> = {},
) => ({
  email: d.email,
  event: kind,
  timestamp: Math.floor(Date.now() / 1000),
  sg_event_id: `ev-${++counter}`,
  sg_message_id: `${d.messageId}.filter0001.1.0`,
  herald_tenant_id: t.id,
  herald_delivery_id: d.id,
  ...extra,
});

/** Posted to A's account URL; resolves once what was acknowledged is applied. */
const postToA = async (events: unknown[] | string, options: Partial<Parameters<typeof postSendGrid>[3]> = {}) => {
  const result = await postSendGrid(api.current, aPath, events, { key: tenantKeys.privateKey, ...options });
  await reportsApplied(db.current);
  return result;
};

const stateOf = (id: string) => deliveryState(db.current, id);

const suppressionOf = (t: TenantFixture, email: string) =>
  asWorker(
    db.current,
    t,
    async (c) =>
      (
        await c.query(
          "select reason from herald_public.suppressions where kind = 'email' and address_hash = any (herald_hidden.pii_hashes('email', $1))",
          [email],
        )
      ).rows[0]?.reason ?? null,
  );

describe("end to end: the worker sends, the sandbox reports", () => {
  it("delivered, or bounced and suppressed so that the next email to the address is not sent", async () => {
    const ok = freshEmail();
    // The sandbox bounces mail to bounce@… (src/sandbox/core.ts, outcomeFor).
    const bouncing = "bounce@example.com";
    const ids = [
      await contactWith(db.current, a, null, { email: ok }),
      await contactWith(db.current, a, null, { email: bouncing }),
    ];
    const token = await tokenFor(api.current, a, "member");
    const email = { channel: "email", subject: "Hi", body: "Hello", contactIds: ids };
    const first = await sendThroughApi(api.current, token, email);
    const rows = await waitFor(async () => {
      const { rows } = await db.current.root.query(
        "select contact_id, status, error_code, id from herald_public.deliveries where message_id = $1",
        [first],
      );
      return rows.length === 2 && rows.every((r) => r.status === "delivered" || r.status === "failed") && rows;
    }, 20_000);
    await reportsApplied(db.current);
    const byContact = Object.fromEntries(rows.map((r) => [r.contact_id, r]));
    expect(byContact[ids[0]!]).toMatchObject({ status: "delivered" });
    expect(byContact[ids[1]!]).toMatchObject({ status: "failed", error_code: "5.1.1" });
    // 'processed' is applied only if it beat the worker's own record of the answer (usually it does not).
    expect((await stateOf(byContact[ids[0]!].id)).events).toEqual([
      { event: "processed", applied: expect.any(Boolean) },
      { event: "delivered", applied: true },
    ]);
    expect(await suppressionOf(a, bouncing)).toBe("bounce");

    const second = await sendThroughApi(api.current, token, email);
    expect((await settled(db.current, second)).byReason).toEqual({ "skipped/suppressed": 1 });
    // The second email's events come in the background: let them land here, not in a later test.
    await server.sandbox.settled();
  });
});

describe("signatures", () => {
  it("verifies the raw bytes: the same events re-serialised fail, and nothing is written", async () => {
    const d = await emailDelivery(a);
    const raw = JSON.stringify([event(d, a, "delivered")]);
    const reserialised = JSON.stringify(JSON.parse(raw), null, 2);
    const before = await writtenRows(db.current);
    const refused = await postToA(reserialised, { signedBody: raw });
    expect(refused.status).toBe(403);
    expect(JSON.parse(refused.body).error.code).toBe("INVALID_SIGNATURE");
    expect(await writtenRows(db.current)).toEqual(before);
    expect((await postToA(raw)).status).toBe(200);
    expect((await stateOf(d.id)).status).toBe("delivered");
  });

  it("refuses a missing signature, another key's, or a timestamp more than five minutes away, with 403", async () => {
    const d = await emailDelivery(a);
    const events = [event(d, a, "delivered")];
    const before = await writtenRows(db.current);
    const now = Math.floor(Date.now() / 1000);
    const cases: [string, Partial<Parameters<typeof postSendGrid>[3]>, string][] = [
      ["no signature", { signature: null }, "MISSING_SIGNATURE"],
      ["another key", { key: sendgridKeyPair().privateKey }, "INVALID_SIGNATURE"],
      ["not a signature", { signature: "Zm9yZ2Vk" }, "INVALID_SIGNATURE"],
      ["six minutes old", { timestamp: now - 360 }, "STALE_TIMESTAMP"],
      ["six minutes ahead", { timestamp: now + 360 }, "STALE_TIMESTAMP"],
    ];
    for (const [label, options, code] of cases) {
      const result = await postToA(events, options);
      expect(result.status, label).toBe(403);
      expect(JSON.parse(result.body).error.code, label).toBe(code);
    }
    // The system URL does not take a tenant account's key either.
    expect(
      (await postSendGrid(api.current, "/webhooks/sendgrid/events", events, { key: tenantKeys.privateKey })).status,
    ).toBe(403);
    await reportsApplied(db.current);
    expect(await writtenRows(db.current)).toEqual(before);
  });

  it("answers 404 for an account that is not the tenant's SendGrid account, and 403 for one without a key", async () => {
    const events = [event(await emailDelivery(a), a, "delivered")];
    expect(
      (
        await postSendGrid(api.current, `/webhooks/sendgrid/events/${b.id}/${aAccountId}`, events, {
          key: tenantKeys.privateKey,
        })
      ).status,
    ).toBe(404);
    expect(
      (
        await postSendGrid(api.current, `/webhooks/sendgrid/events/${a.id}/${a.providerAccountId}`, events, {
          key: tenantKeys.privateKey,
        })
      ).status,
    ).toBe(404); // A's Twilio account
    expect(
      (
        await postSendGrid(api.current, `/webhooks/sendgrid/events/not-a-uuid/${aAccountId}`, events, {
          key: tenantKeys.privateKey,
        })
      ).status,
    ).toBe(404);
    const keyless = await asOwner(
      db.current,
      b,
      async (c) =>
        (
          await c.query(
            "select id from herald_public.create_provider_account('sendgrid', 'Mail', 'SG.sandbox.tenant-b')",
          )
        ).rows[0].id,
    );
    const noKey = await postSendGrid(api.current, `/webhooks/sendgrid/events/${b.id}/${keyless}`, events, {
      key: tenantKeys.privateKey,
    });
    expect(noKey.status).toBe(403);
  });
});

describe("applying events", () => {
  it("each once: a batch posted twice is acknowledged twice, and writes one event each", async () => {
    const d = await emailDelivery(a);
    const batch = [event(d, a, "processed"), event(d, a, "delivered"), event(d, a, "open")];
    expect((await postToA(batch)).json).toEqual({ received: 3, accepted: 3, ignored: 0 });
    const once = await stateOf(d.id);
    // One applied (delivered); processed and open only recorded: the delivery was already sent, then delivered.
    expect(once).toMatchObject({
      status: "delivered",
      events: [
        { event: "processed", applied: false },
        { event: "delivered", applied: true },
        { event: "open", applied: false },
      ],
    });
    expect((await postToA(batch)).json).toEqual({ received: 3, accepted: 3, ignored: 0 });
    expect(await stateOf(d.id)).toEqual(once);
  });

  it("out of order: delivered before processed ends delivered", async () => {
    const d = await emailDelivery(a);
    await postToA([event(d, a, "delivered")]);
    await postToA([event(d, a, "processed")]);
    expect(await stateOf(d.id)).toMatchObject({
      status: "delivered",
      events: [
        { event: "delivered", applied: true },
        { event: "processed", applied: false },
      ],
    });
  });

  it("maps every event type onto the delivery, and suppresses what later sends must honour", async () => {
    const cases: [string, Record<string, unknown>, string, string | null][] = [
      ["processed", {}, "sent", null],
      ["deferred", {}, "sent", null],
      ["delivered", {}, "delivered", null],
      ["open", {}, "delivered", null],
      ["click", {}, "delivered", null],
      ["bounce", { type: "bounce", status: "5.1.1" }, "failed", "bounce"],
      ["bounce", { type: "blocked", status: "4.7.1" }, "undelivered", null],
      ["dropped", {}, "failed", null],
      ["spamreport", {}, "sent", "spam_report"],
      ["unsubscribe", {}, "sent", "unsubscribe"],
      ["group_unsubscribe", {}, "sent", "unsubscribe"],
    ];
    const deliveries = await Promise.all(cases.map(() => emailDelivery(a)));
    const result = await postToA(cases.map(([kind, extra], i) => event(deliveries[i]!, a, kind, extra)));
    expect(result.status).toBe(200);
    for (const [i, [kind, extra, status, suppression]] of cases.entries()) {
      const d = deliveries[i]!;
      const label = `${kind} ${JSON.stringify(extra)}`;
      expect((await stateOf(d.id)).status, label).toBe(status);
      expect(await suppressionOf(a, d.email), label).toBe(suppression);
    }
    // Spam reports and unsubscribes are the person's choice: recorded as consent, and their email flag follows.
    const choices = deliveries.filter((_, i) =>
      ["spamreport", "unsubscribe", "group_unsubscribe"].includes(cases[i]![0]),
    );
    const consent = await asWorker(
      db.current,
      a,
      async (c) =>
        (
          await c.query(
            "select c.email_subscribed, e.detail, e.source from herald_public.contacts c join herald_public.consent_events e on e.contact_id = c.id where c.id = any ($1) order by e.detail",
            [choices.map((d) => d.contactId)],
          )
        ).rows,
    );
    expect(consent).toEqual([
      { email_subscribed: false, detail: "group_unsubscribe", source: "email_provider" },
      { email_subscribed: false, detail: "spamreport", source: "email_provider" },
      { email_subscribed: false, detail: "unsubscribe", source: "email_provider" },
    ]);
  });

  it("settles an 'unknown' email (its answer was lost) as sent, with SendGrid's message id", async () => {
    const d = await emailDelivery(a, "unknown", null);
    await postToA([{ ...event(d, a, "processed"), sg_message_id: "lostAnswer123.filter0001.1.0" }]);
    expect(await stateOf(d.id)).toMatchObject({ status: "sent", provider_message_id: "lostAnswer123" });
  });

  it("later sends honour an unsubscribe: the address is not emailed again", async () => {
    const email = freshEmail();
    const contactId = await contactWith(db.current, a, null, { email });
    const d = await emailDelivery(a);
    await postToA([{ ...event(d, a, "unsubscribe"), email }]);
    const token = await tokenFor(api.current, a, "member");
    const messageId = await sendThroughApi(api.current, token, {
      channel: "email",
      subject: "News",
      body: "x",
      contactIds: [contactId],
    });
    expect((await settled(db.current, messageId)).byStatus).toEqual({ skipped: 1 });
    expect(server.sandbox.messages.filter((m) => m.to === email)).toEqual([]);
    await server.sandbox.settled();
  });
});

describe("tenants", () => {
  it("tenant A's account cannot report on tenant B's deliveries, however the events name them", async () => {
    const victim = await emailDelivery(b);
    const before = await appliedRows(db.current);
    const result = await postToA([
      event(victim, b, "bounce", { type: "bounce" }), // names B as the tenant: not A's to report
      { ...event(victim, b, "dropped"), herald_tenant_id: undefined }, // B's delivery id, inside A: no such delivery
      { ...event(victim, b, "delivered"), herald_tenant_id: undefined, herald_delivery_id: undefined }, // B's message id alone
    ]);
    // The one naming B is refused outright; the two naming nobody are A's to report, and name no delivery of A's.
    expect(result.json).toEqual({ received: 3, accepted: 2, ignored: 1 });
    expect(await appliedRows(db.current)).toEqual(before);
    expect((await stateOf(victim.id)).status).toBe("sent");
    expect(await suppressionOf(b, victim.email)).toBeNull();
  });

  it("on the system URL, each event goes to the tenant Herald named when sending, and one naming none is ignored", async () => {
    const ofA = await emailDelivery(a);
    const ofB = await emailDelivery(b);
    const sign = server.sandbox.signSendGridEvents;
    const result = await postSendGrid(
      api.current,
      "/webhooks/sendgrid/events",
      [
        event(ofA, a, "delivered"),
        event(ofB, b, "delivered"),
        { ...event(ofB, b, "dropped"), herald_tenant_id: undefined },
      ],
      { key: sign },
    );
    expect(result.json).toEqual({ received: 3, accepted: 2, ignored: 1 });
    await reportsApplied(db.current);
    expect((await stateOf(ofA.id)).status).toBe("delivered");
    expect((await stateOf(ofB.id)).status).toBe("delivered");
  });
});
