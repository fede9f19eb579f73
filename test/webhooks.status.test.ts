import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { holdBack } from "../src/messages/claim.ts";
import type { WorkerHandle } from "../src/worker/worker.ts";
import { graphql, tokenFor } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import {
  asRoot,
  asWorker,
  deliveryJobsDueNow,
  readyToSend,
  sendThroughApi,
  startSandboxServer,
  startSendingWorker,
  waitFor,
  type SandboxServer,
} from "./helpers/messaging.ts";
import {
  appliedRows,
  contactWith,
  deliveryState,
  postTwilio,
  reportsApplied,
  SYSTEM_TWILIO,
  useCallableApiServer,
  writtenRows,
} from "./helpers/webhooks.ts";

/**
 * POST /webhooks/twilio/status: Twilio's status callbacks, end to end (the
 * worker sends through the sandbox, which calls back at the URL Herald gave
 * it) and one by one (out of order, repeated, forged, aimed at another tenant).
 */

const db = useTestDatabase();
const { api, endpoint } = useCallableApiServer(db);
let a: TenantFixture;
let b: TenantFixture;
let aSid: string;
let server: SandboxServer;
let worker: WorkerHandle;

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  server = await startSandboxServer();
  aSid = await readyToSend(db.current, server, a);
  await readyToSend(db.current, server, b);
  // Sends ask Twilio (the sandbox) to call back here.
  server.clients.system.callbackBaseUrl = endpoint.publicUrl;
  worker = await startSendingWorker(db.current, server, 4);
});

afterAll(async () => {
  await worker?.stop();
  await server?.close();
});

let phoneCounter = 0;
const freshPhone = (ending?: string) => `+1628556${ending ?? String(1000 + ++phoneCounter).padStart(4, "0")}`;

const statusPath = (tenantId: string, deliveryId?: string) =>
  `/webhooks/twilio/status?${new URLSearchParams({ tenant: tenantId, ...(deliveryId ? { delivery: deliveryId } : {}) })}`;

/** A status callback as Twilio posts it, signed for the public URL with `token`; resolves once what it acknowledged is applied. */
async function callback(
  t: TenantFixture,
  deliveryId: string | undefined,
  params: { sid: string; status: string; to: string; errorCode?: string },
  options: { token?: string; accountSid?: string } = {},
) {
  const body: Record<string, string> = {
    AccountSid: options.accountSid ?? aSid,
    ApiVersion: "2010-04-01",
    From: "+14155550000",
    MessageSid: params.sid,
    MessageStatus: params.status,
    SmsSid: params.sid,
    SmsStatus: params.status,
    To: params.to,
    ...(params.errorCode ? { ErrorCode: params.errorCode } : {}),
  };
  const path = statusPath(t.id, deliveryId);
  const result = await postTwilio(api.current, path, body, {
    token: options.token ?? t.providerSecret,
    signedFor: `${endpoint.publicUrl}${path}`,
  });
  await reportsApplied(db.current);
  return result;
}

/** A delivery of A's fixture message to a new contact, in `status`, as the worker would have left it. */
async function delivery(
  t: TenantFixture,
  status: string,
  providerMessageId: string | null,
): Promise<{ id: string; phone: string; contactId: string }> {
  const phone = freshPhone();
  const contactId = await contactWith(db.current, t, phone);
  const { rows } = await asRoot(db.current, (c) =>
    c.query(
      `insert into herald_public.deliveries (tenant_id, message_id, contact_id, channel, status, provider_message_id, provider, provider_account_id)
       values ($1, $2, $3, 'sms', $4, $5, 'tenant', $6) returning id`,
      [t.id, t.messageId, contactId, status, providerMessageId, t.providerAccountId],
    ),
  );
  return { id: rows[0].id, phone, contactId };
}

const stateOf = (deliveryId: string) => deliveryState(db.current, deliveryId);

let sidCounter = 0;
const newSid = () => `SM${String(++sidCounter).padStart(32, "0")}`;

describe("end to end: the worker sends, the sandbox calls back", () => {
  it("records sent then the final status, with the carrier's error codes", async () => {
    const phones = { ok: freshPhone(), failed: freshPhone("0001"), undelivered: freshPhone("0002") };
    const ids = await Promise.all(Object.values(phones).map((p) => contactWith(db.current, a, p)));
    const token = await tokenFor(api.current, a, "member");
    const messageId = await sendThroughApi(api.current, token, {
      channel: "sms",
      body: "Your table is ready",
      contactIds: ids,
    });
    const final = await waitFor(async () => {
      const { rows } = await db.current.root.query(
        `select c.id as contact_id, d.status, d.error_code, d.provider_message_id,
                (select array_agg(e.event || ':' || e.applied order by e.received_at) from herald_public.delivery_events e where e.delivery_id = d.id) as events
           from herald_public.deliveries d join herald_public.contacts c on c.id = d.contact_id where d.message_id = $1`,
        [messageId],
      );
      return rows.every((r) => ["delivered", "failed", "undelivered"].includes(r.status)) && rows.length === 3 && rows;
    }, 20_000);
    const byContact = Object.fromEntries(final.map((r) => [r.contact_id, r]));
    // 'sent' is applied only if it beat the worker's own record of the answer (usually it does not).
    const sentThen = (last: string) => [expect.stringMatching(/^sent:(true|false)$/), `${last}:true`];
    expect(byContact[ids[0]!]).toMatchObject({ status: "delivered", error_code: null, events: sentThen("delivered") });
    expect(byContact[ids[1]!]).toMatchObject({ status: "failed", error_code: "30003", events: sentThen("failed") });
    expect(byContact[ids[2]!]).toMatchObject({
      status: "undelivered",
      error_code: "30005",
      events: sentThen("undelivered"),
    });
    // The sandbox's message ids are the deliveries' ids at the provider.
    for (const r of final) expect(server.sandbox.messages.some((m) => m.id === r.provider_message_id)).toBe(true);
    // The tenant's view: the message's progress, each delivery's events in the order received.
    const { body: read } = await graphql(
      api.current,
      token,
      `
        query ($m: UUID!) {
          allMessages(condition: { rowId: $m }, first: 1) {
            nodes {
              stats {
                delivered
                failed
                undelivered
              }
              deliveries {
                nodes {
                  events(orderBy: RECEIVED_AT_ASC) {
                    nodes {
                      event
                      applied
                    }
                  }
                }
              }
            }
          }
        }
      `,
      { m: messageId },
    );
    expect(read.errors).toBeUndefined();
    const [message] = read.data!.allMessages.nodes;
    expect(message.stats).toEqual({ delivered: 1, failed: 1, undelivered: 1 });
    expect(
      message.deliveries.nodes
        .map((n: { events: { nodes: { event: string }[] } }) => n.events.nodes.map((e) => e.event))
        .sort(),
    ).toEqual([
      ["sent", "delivered"],
      ["sent", "failed"],
      ["sent", "undelivered"],
    ]);
  });

  it("a callback that outruns a lost answer settles the send: delivered, sent once, never 'unknown'", async () => {
    const phone = freshPhone();
    const contactId = await contactWith(db.current, a, phone);
    // The sandbox accepts, calls back at once, and drops the answer after 1.5 s.
    server.sandbox.setFaults({ acceptThenTimeoutMs: 1500 });
    try {
      const token = await tokenFor(api.current, a, "member");
      const messageId = await sendThroughApi(api.current, token, {
        channel: "sms",
        body: "Lost answer",
        contactIds: [contactId],
      });
      const row = await waitFor(async () => {
        const { rows } = await db.current.root.query(
          "select id, status, provider_message_id from herald_public.deliveries where message_id = $1",
          [messageId],
        );
        return rows[0]?.status === "delivered" && rows[0];
      }, 20_000);
      // The lost answer makes the worker look the send up later (a reconcile job, seconds on):
      // it runs now, and every job for the delivery ends, before the checks that it sent once.
      await waitFor(
        async () => (await deliveryJobsDueNow(db.current, row.id)) === 0,
        30_000,
        "the delivery's jobs to end",
      );
      // The worker's own view of the lost answer ('unknown') never overwrote what Twilio reported.
      expect((await stateOf(row.id)).status).toBe("delivered");
      expect(server.sandbox.messages.filter((m) => m.to === phone)).toHaveLength(1);
      expect(row.provider_message_id).toBe(server.sandbox.messages.find((m) => m.to === phone)!.id);
    } finally {
      server.sandbox.setFaults({});
      await server.sandbox.settled();
    }
  });
});

describe("reports that arrive before the worker's own view", () => {
  it("callbacks that outrun the SDK's answer keep their final status: the answer does not set it back to 'sent'", async () => {
    const phone = freshPhone();
    const contactId = await contactWith(db.current, a, phone);
    // The sandbox stores the message and starts its callbacks, then answers after 600 ms.
    server.sandbox.setFaults({ slowAnswerMs: 600 });
    try {
      const token = await tokenFor(api.current, a, "member");
      const messageId = await sendThroughApi(api.current, token, {
        channel: "sms",
        body: "Slow answer",
        contactIds: [contactId],
      });
      const row = await waitFor(async () => {
        const { rows } = await db.current.root.query(
          "select id, sent_at from herald_public.deliveries where message_id = $1 and provider = 'tenant'",
          [messageId],
        );
        return rows[0]?.sent_at && rows[0];
      }, 20_000);
      await server.sandbox.settled();
      await reportsApplied(db.current);
      expect(await stateOf(row.id)).toMatchObject({
        status: "delivered",
        events: [
          { event: "sent", applied: true },
          { event: "delivered", applied: true },
        ],
      });
    } finally {
      server.sandbox.setFaults({});
    }
  });

  it("a delivery a report has settled is not queued again (holdBack after a lost answer)", async () => {
    const sid = newSid();
    const d = await delivery(a, "delivered", sid);
    const decision = await asWorker(db.current, a, (c) =>
      holdBack(c, d.id, new Date(), "reconciled: not accepted, sending again"),
    );
    expect(decision).toEqual({ kind: "done", status: "delivered" });
    expect((await stateOf(d.id)).status).toBe("delivered");
  });
});

describe("one callback at a time", () => {
  it("never moves backwards: a late 'sent' after 'delivered' is recorded, not applied", async () => {
    const sid = newSid();
    const d = await delivery(a, "sent", sid);
    expect((await callback(a, d.id, { sid, status: "delivered", to: d.phone })).status).toBe(204);
    expect((await callback(a, d.id, { sid, status: "sent", to: d.phone })).status).toBe(204);
    expect((await callback(a, d.id, { sid, status: "failed", to: d.phone, errorCode: "30003" })).status).toBe(204);
    expect(await stateOf(d.id)).toMatchObject({
      status: "delivered",
      error_code: null,
      completed: true,
      events: [
        { event: "delivered", applied: true },
        { event: "sent", applied: false },
        { event: "failed", applied: false },
      ],
    });
  });

  it("ignores duplicates: each (MessageSid, status) once", async () => {
    const sid = newSid();
    const d = await delivery(a, "sent", sid);
    for (const status of ["sent", "delivered", "delivered", "sent", "delivered"])
      await callback(a, d.id, { sid, status, to: d.phone });
    expect(await stateOf(d.id)).toMatchObject({
      status: "delivered",
      events: [
        { event: "sent", applied: false },
        { event: "delivered", applied: true },
      ],
    });
  });

  it("finds the delivery by MessageSid when the URL names none", async () => {
    const sid = newSid();
    const d = await delivery(a, "sent", sid);
    await callback(a, undefined, { sid, status: "undelivered", to: d.phone, errorCode: "30005" });
    expect(await stateOf(d.id)).toMatchObject({ status: "undelivered", error_code: "30005", completed: true });
  });

  it("settles an 'unknown' delivery (the answer was lost): sent, with the provider's id", async () => {
    const d = await delivery(a, "unknown", null);
    const sid = newSid();
    await callback(a, d.id, { sid, status: "sent", to: d.phone });
    expect(await stateOf(d.id)).toMatchObject({ status: "sent", provider_message_id: sid });
  });

  it("keeps reports of another provider message (an earlier attempt) without applying them", async () => {
    const d = await delivery(a, "sent", newSid());
    await callback(a, d.id, { sid: newSid(), status: "failed", to: d.phone, errorCode: "30003" });
    expect(await stateOf(d.id)).toMatchObject({ status: "sent", events: [{ event: "failed", applied: false }] });
  });

  it("21610 suppresses the number and unsubscribes the contact, across the tenant's numbers", async () => {
    const sid = newSid();
    const d = await delivery(a, "sent", sid);
    await callback(a, d.id, { sid, status: "failed", to: d.phone, errorCode: "21610" });
    const state = await asWorker(db.current, a, async (c) => {
      const { rows } = await c.query(
        `select c.sms_subscribed,
                (select s.reason from herald_public.suppressions s where s.tenant_id = c.tenant_id and s.kind = 'phone' and s.address_hash = c.phone_hash) as suppression,
                (select json_agg(json_build_object('action', e.action, 'source', e.source, 'detail', e.detail)) from herald_public.consent_events e where e.contact_id = c.id) as consent
           from herald_public.contacts c where c.id = $1`,
        [d.contactId],
      );
      return rows[0];
    });
    expect(state).toEqual({
      sms_subscribed: false,
      suppression: "carrier_opt_out",
      consent: [{ action: "opt_out", source: "carrier", detail: "21610" }],
    });
    expect((await stateOf(d.id)).status).toBe("failed");
    // Twilio repeating the callback records nothing more.
    await callback(a, d.id, { sid, status: "failed", to: d.phone, errorCode: "21610" });
    const { rows } = await db.current.root.query(
      "select count(*)::int as n from herald_public.consent_events where contact_id = $1",
      [d.contactId],
    );
    expect(rows[0].n).toBe(1);
  });
});

describe("forged and misdirected callbacks", () => {
  it("refuses missing and wrong signatures with 403, writing nothing", async () => {
    const sid = newSid();
    const d = await delivery(a, "sent", sid);
    const before = await writtenRows(db.current);
    const path = statusPath(a.id, d.id);
    const params = { AccountSid: aSid, MessageSid: sid, MessageStatus: "delivered", To: d.phone };
    expect((await postTwilio(api.current, path, params, { token: a.providerSecret, signature: null })).status).toBe(
      403,
    );
    expect(
      (
        await postTwilio(api.current, path, params, {
          token: b.providerSecret,
          signedFor: `${endpoint.publicUrl}${path}`,
        })
      ).status,
    ).toBe(403);
    expect(
      (
        await postTwilio(api.current, path, params, {
          token: a.providerSecret,
          signedFor: `https://elsewhere.example${path}`,
        })
      ).status,
    ).toBe(403);
    // Signed for another delivery's URL, replayed at this one.
    expect(
      (
        await postTwilio(api.current, path, params, {
          token: a.providerSecret,
          signedFor: `${endpoint.publicUrl}${statusPath(a.id)}`,
        })
      ).status,
    ).toBe(403);
    expect(await writtenRows(db.current)).toEqual(before);
  });

  it("tenant A's account cannot report on tenant B's deliveries", async () => {
    const sid = newSid();
    const victim = await delivery(b, "sent", sid);
    const before = await appliedRows(db.current);
    // Naming B in the URL: A's AccountSid is not one of B's accounts.
    const asB = await callback(
      b,
      victim.id,
      { sid, status: "undelivered", to: victim.phone },
      { token: a.providerSecret, accountSid: aSid },
    );
    expect(asB.status).toBe(404);
    // Naming A in the URL and B's delivery: verified, but inside A there is no such delivery.
    const asA = await callback(a, victim.id, { sid, status: "undelivered", to: victim.phone });
    expect(asA.status).toBe(204);
    // And by B's MessageSid alone, likewise.
    expect((await callback(a, undefined, { sid, status: "undelivered", to: victim.phone })).status).toBe(204);
    // Verified and stored in A's own journal, then applied inside A: nothing anywhere changed.
    expect(await appliedRows(db.current)).toEqual(before);
    expect((await stateOf(victim.id)).status).toBe("sent");
  });

  it("a callback signed by the system account for a tenant that does not exist is 404", async () => {
    const result = await callback(
      { ...a, id: "00000000-0000-4000-8000-000000000000" },
      undefined,
      { sid: newSid(), status: "sent", to: freshPhone() },
      {
        token: SYSTEM_TWILIO.authToken,
        accountSid: SYSTEM_TWILIO.accountSid,
      },
    );
    expect(result.status).toBe(404);
  });
});
