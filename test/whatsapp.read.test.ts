import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { WorkerHandle } from "../src/worker/worker.ts";
import { graphql, tokenFor } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { addWhatsAppSender } from "./helpers/numbers.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import {
  asRoot,
  readyToSend,
  sendThroughApi,
  startSandboxServer,
  startSendingWorker,
  waitFor,
  type SandboxServer,
} from "./helpers/messaging.ts";
import { contactWith, postTwilio, reportsApplied, textIn, useCallableApiServer } from "./helpers/webhooks.ts";

/**
 * Read receipts (issue 16): `read` is its own step after `delivered`
 * (`deliveries.read_at`), in order or out of order (an early `read` implies
 * delivered), never backwards; counted on the message (`readCount`) and told
 * to the tenant's app as `delivery.read`.
 */

const db = useTestDatabase();
const { api, endpoint } = useCallableApiServer(db);
let a: TenantFixture;
let b: TenantFixture;
let aSid: string;
let server: SandboxServer;
let worker: WorkerHandle;
const tokens = { a: "", owner: "" };

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  server = await startSandboxServer();
  aSid = await readyToSend(db.current, server, a);
  server.clients.system.callbackBaseUrl = endpoint.publicUrl;
  // A's number also takes WhatsApp, on A's own Twilio account.
  await addWhatsAppSender(db.current, server, a);
  tokens.a = await tokenFor(api.current, a, "member");
  tokens.owner = await tokenFor(api.current, a, "owner");
  worker = await startSendingWorker(db.current, server, 4);
});

afterAll(async () => {
  await worker?.stop();
  await server?.close();
});

let phones = 0;
const freshPhone = () => `+1628561${String(1000 + ++phones)}`;
let sids = 0;
const newSid = () => `SM${String(++sids).padStart(32, "0")}`;

/** A WhatsApp delivery of A's fixture message in `status` with provider id `sid`, as the worker would have left it. */
async function whatsappDelivery(status: string, sid: string): Promise<string> {
  const contactId = await contactWith(db.current, a, freshPhone());
  const { rows } = await asRoot(db.current, (c) =>
    c.query(
      `insert into herald_public.deliveries (tenant_id, message_id, contact_id, channel, status, provider_message_id, provider, provider_account_id)
       values ($1, $2, $3, 'whatsapp', $4, $5, 'tenant', $6) returning id`,
      [a.id, a.messageId, contactId, status, sid, a.providerAccountId],
    ),
  );
  return rows[0].id;
}

/** Twilio's status callback for `deliveryId`, signed by A's account; resolves once applied. */
async function callback(t: TenantFixture, deliveryId: string, sid: string, status: string, token = t.providerSecret) {
  const path = `/webhooks/twilio/status?${new URLSearchParams({ tenant: t.id, delivery: deliveryId })}`;
  const result = await postTwilio(
    api.current,
    path,
    {
      AccountSid: aSid,
      ApiVersion: "2010-04-01",
      From: `whatsapp:${a.senderNumber}`,
      MessageSid: sid,
      MessageStatus: status,
      SmsSid: sid,
      SmsStatus: status,
      To: "whatsapp:+16285619999",
    },
    { token, signedFor: `${endpoint.publicUrl}${path}` },
  );
  await reportsApplied(db.current);
  return result;
}

async function stateOf(deliveryId: string) {
  const { rows } = await db.current.root.query(
    `select d.status, d.read_at is not null as read, d.read_at,
            (select array_agg(e.event || ':' || e.applied order by e.received_at) from herald_public.delivery_events e where e.delivery_id = d.id) as events
       from herald_public.deliveries d where d.id = $1`,
    [deliveryId],
  );
  return rows[0];
}

describe("one by one", () => {
  it("in order: sent, delivered, read", async () => {
    const sid = newSid();
    const id = await whatsappDelivery("sending", sid);
    await callback(a, id, sid, "sent");
    await callback(a, id, sid, "delivered");
    expect(await stateOf(id)).toMatchObject({ status: "delivered", read: false });
    await callback(a, id, sid, "read");
    expect(await stateOf(id)).toMatchObject({
      status: "delivered",
      read: true,
      events: ["sent:true", "delivered:true", "read:false"],
    });
  });

  it("out of order: an early read implies delivered; the late delivered and sent change nothing", async () => {
    const sid = newSid();
    const id = await whatsappDelivery("sent", sid);
    await callback(a, id, sid, "read");
    const afterRead = await stateOf(id);
    expect(afterRead).toMatchObject({ status: "delivered", read: true, events: ["read:true"] });
    await callback(a, id, sid, "delivered");
    await callback(a, id, sid, "sent");
    const after = await stateOf(id);
    expect(after).toMatchObject({
      status: "delivered",
      read: true,
      events: ["read:true", "delivered:false", "sent:false"],
    });
    expect(after.read_at).toEqual(afterRead.read_at);
  });

  it("never backwards: a repeated read keeps the first time; a later failure report does not undo it", async () => {
    const sid = newSid();
    const id = await whatsappDelivery("sent", sid);
    await callback(a, id, sid, "delivered");
    await callback(a, id, sid, "read");
    const first = await stateOf(id);
    await new Promise((r) => setTimeout(r, 20));
    await callback(a, id, sid, "read");
    // An earlier attempt's copy read later (another MessageSid): recorded, the first time stays.
    await callback(a, id, newSid(), "read");
    await callback(a, id, sid, "undelivered");
    const after = await stateOf(id);
    expect(after).toMatchObject({ status: "delivered", read: true });
    expect(after.read_at).toEqual(first.read_at);
  });

  it("a read of a delivery that failed is recorded, not applied: nothing is read", async () => {
    const sid = newSid();
    const id = await whatsappDelivery("sent", sid);
    await callback(a, id, sid, "undelivered");
    await callback(a, id, sid, "read");
    expect(await stateOf(id)).toMatchObject({ status: "undelivered", read: false });
  });

  it("another tenant's read changes nothing of A's", async () => {
    const sid = newSid();
    const id = await whatsappDelivery("delivered", sid);
    // Signed by B's account for a URL naming A: refused. Naming B's own tenant: A's delivery is not there.
    expect((await callback(a, id, sid, "read", b.providerSecret)).status).toBe(403);
    expect((await callback(b, id, sid, "read")).status).toBe(404);
    expect(await stateOf(id)).toMatchObject({ status: "delivered", read: false });
  });
});

describe("end to end", () => {
  it("the provider reports read after delivered: counted on the message, told to the app as delivery.read", async () => {
    const created = await graphql(
      api.current,
      tokens.owner,
      `
        mutation {
          createWebhookEndpoint(input: { url: "https://app.example.test/herald", eventTypes: ["delivery.read"] }) {
            endpoint {
              webhookEndpointId
            }
          }
        }
      `,
    );
    expect(created.body.errors).toBeUndefined();
    const endpointId = created.body.data!.createWebhookEndpoint.endpoint.webhookEndpointId;

    const phone = freshPhone();
    const contactId = await contactWith(db.current, a, phone);
    const signedFor = `${endpoint.publicUrl}/webhooks/twilio/sms`;
    expect((await textIn(api.current, a, { from: phone, body: "hi", channel: "whatsapp", signedFor })).status).toBe(
      200,
    );
    server.sandbox.whatsapp.noteInbound(phone, a.senderNumber);
    const messageId = await sendThroughApi(api.current, tokens.a, {
      channel: "whatsapp",
      body: "Thanks for writing",
      contactIds: [contactId],
    });
    const delivery = await waitFor(async () => {
      const { rows } = await db.current.root.query(
        "select id, status, read_at from herald_public.deliveries where message_id = $1",
        [messageId],
      );
      return rows[0]?.read_at && rows[0];
    }, 20_000);
    expect(delivery.status).toBe("delivered");
    expect((await stateOf(delivery.id)).events).toEqual([
      expect.stringMatching(/^sent:(true|false)$/),
      "delivered:true",
      "read:false",
    ]);

    const { body } = await graphql(
      api.current,
      tokens.a,
      `
        query ($m: UUID!) {
          allMessages(condition: { rowId: $m }) {
            nodes {
              readCount
              stats {
                delivered
              }
              deliveries {
                nodes {
                  readAt
                }
              }
            }
          }
        }
      `,
      { m: messageId },
    );
    expect(body.errors).toBeUndefined();
    expect(body.data!.allMessages.nodes[0]).toMatchObject({ readCount: 1, stats: { delivered: 1 } });
    expect(body.data!.allMessages.nodes[0].deliveries.nodes[0].readAt).toBeTruthy();

    const today = new Date().toISOString().slice(0, 10);
    const usage = await graphql(
      api.current,
      tokens.a,
      `
        query ($d: Date!) {
          usage(fromDay: $d, toDay: $d) {
            nodes {
              channel
              account
              delivered
              read
            }
          }
        }
      `,
      { d: today },
    );
    expect(usage.body.errors).toBeUndefined();
    // This test's delivery and the ones above (on A's fixture message, also today).
    const { rows: counted } = await db.current.root.query(
      `select count(*) filter (where read_at is not null)::int as read, count(*) filter (where status = 'delivered')::int as delivered
         from herald_public.deliveries where tenant_id = $1 and channel = 'whatsapp'`,
      [a.id],
    );
    expect(counted[0].read).toBeGreaterThanOrEqual(4);
    expect(usage.body.data!.usage.nodes).toContainEqual({ channel: "whatsapp", account: "tenant", ...counted[0] });

    const { rows: events } = await db.current.root.query(
      "select event_type, payload from herald_public.webhook_deliveries where endpoint_id = $1",
      [endpointId],
    );
    expect(events).toMatchObject([
      {
        event_type: "delivery.read",
        payload: { delivery_id: delivery.id, message_id: messageId, channel: "whatsapp", status: "delivered" },
      },
    ]);
  });
});
