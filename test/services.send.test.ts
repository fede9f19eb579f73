import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { twimlMessages } from "../src/sandbox/inbound.ts";
import type { WorkerHandle } from "../src/worker/worker.ts";
import { graphql, tokenFor, useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import {
  asRoot,
  asWorker,
  readyToSend,
  seedAudience,
  sendThroughApi,
  settled,
  startSandboxServer,
  startSendingWorker,
  waitFor,
  type SandboxServer,
} from "./helpers/messaging.ts";
import { textIn, webhookEnv } from "./helpers/webhooks.ts";

/**
 * Twilio Messaging Services end to end: through GraphQL, the worker, the real
 * Twilio SDK and the sandbox's services (sticky sender). A service is added,
 * its pool synced from the sandbox, broadcasts go through it (named in the
 * message, then as the tenant's default), paced per service, and a text to a
 * pool number reaches the tenant (signed as Twilio signs it; STOP works).
 */

const db = useTestDatabase();
const api = useApiServer(db, { env: () => webhookEnv() });
let a: TenantFixture;
let b: TenantFixture;
let server: SandboxServer;
let worker: WorkerHandle;
let aSid: string;
let owner: string;
const POOL = ["+14155557001", "+14155557002", "+14155557003"];
let serviceSid: string;
let serviceId: string;

const ADD = `mutation($input: AddMessagingServiceInput!) { addMessagingService(input: $input) { messagingService { rowId status } } }`;
const UPDATE = `mutation($input: UpdateMessagingServiceInput!) { updateMessagingService(input: $input) { messagingService { rowId isDefault messagesPerSecond } } }`;
const SYNC = `mutation($id: UUID!) { syncMessagingService(input: { messagingServiceId: $id }) { messagingService { rowId } } }`;

/** The service as the tenant sees it, with its pool (through GraphQL). */
async function serviceState(id: string) {
  const { body } = await graphql(
    api.current,
    owner,
    `
      query ($id: UUID!) {
        allMessagingServices(condition: { rowId: $id }) {
          nodes {
            status
            lastError
            lastSyncedAt
            messagesPerSecond
            isDefault
            poolNumbers {
              nodes {
                phoneNumber
                status
              }
            }
          }
        }
      }
    `,
    { id },
  );
  expect(body.errors).toBeUndefined();
  const { poolNumbers, ...service } = body.data!.allMessagingServices.nodes[0];
  return { ...service, pool: poolNumbers.nodes };
}

/** Until a sync of the service finished after the one that finished at `prior` (null: the first). */
const synced = (id: string, prior: string | null) =>
  waitFor(async () => {
    const s = await serviceState(id);
    return s.status !== "pending" && s.lastSyncedAt && s.lastSyncedAt !== prior ? s : null;
  }, 20_000);

/** What the sandbox received from A's account for a message body: recipient → sending number. */
const fromByRecipient = (body: string) =>
  new Map(server.sandbox.messages.filter((m) => m.account === aSid && m.body === body).map((m) => [m.to, m.from]));

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  server = await startSandboxServer();
  aSid = await readyToSend(db.current, server, a);
  await readyToSend(db.current, server, b);
  owner = await tokenFor(api.current, a, "owner");
  worker = await startSendingWorker(db.current, server, 8);
  serviceSid = server.sandbox.services.add(aSid, { numbers: POOL, friendlyName: "Acme pool" });
});

afterAll(async () => {
  await worker?.stop();
  await server?.close();
});

describe("a Messaging Service", () => {
  it("is added through the API and its pool is imported from Twilio as verified numbers of the tenant", async () => {
    const { body } = await graphql(api.current, owner, ADD, {
      input: { providerAccountId: a.providerAccountId, serviceSid, name: "Acme pool", messagesPerSecond: "1000" },
    });
    expect(body.errors).toBeUndefined();
    serviceId = body.data!.addMessagingService.messagingService.rowId;
    const state = await synced(serviceId, null);
    expect(state).toMatchObject({ status: "synced", lastError: null });
    expect(state.pool).toEqual(POOL.map((phoneNumber) => ({ phoneNumber, status: "verified" })));
    // The pool's numbers are on the service's account.
    const { rows } = await asRoot(db.current, (c) =>
      c.query("select distinct provider_account_id from herald_public.sender_numbers where messaging_service_id = $1", [
        serviceId,
      ]),
    );
    expect(rows).toEqual([{ provider_account_id: a.providerAccountId }]);
  });

  it("sends a broadcast through the pool with sticky sender: each recipient gets the same pool number in two broadcasts", async () => {
    const audience = await seedAudience(db.current, a, { count: 6, exchange: 710, list: "pool audience" });
    const phones = audience.contacts.map((c) => c.phone).sort();
    // First named in the message, then as the tenant's default (no metadata at all).
    const first = await sendThroughApi(api.current, owner, {
      channel: "sms",
      body: "Pool broadcast one",
      listIds: [audience.listId],
      metadata: { messaging_service: serviceSid },
    });
    expect(await settled(db.current, first)).toMatchObject({ byStatus: { sent: 6 } });
    const { body } = await graphql(api.current, owner, UPDATE, {
      input: { messagingServiceId: serviceId, isDefault: true },
    });
    expect(body.errors).toBeUndefined();
    const second = await sendThroughApi(api.current, owner, {
      channel: "sms",
      body: "Pool broadcast two",
      listIds: [audience.listId],
    });
    expect(await settled(db.current, second)).toMatchObject({ byStatus: { sent: 6 } });

    const one = fromByRecipient("Pool broadcast one");
    const two = fromByRecipient("Pool broadcast two");
    expect([...one.keys()].sort()).toEqual(phones);
    expect([...two.keys()].sort()).toEqual(phones);
    // Every send went from a pool number, all three were used, and each recipient kept theirs.
    expect(new Set(one.values())).toEqual(new Set(POOL));
    for (const phone of phones) expect(two.get(phone), phone).toBe(one.get(phone));
    // Herald recorded the number Twilio reported, not the service's SID.
    const { rows } = await asRoot(db.current, (c) =>
      c.query<{ from_address: string; n: number }>(
        "select from_address, count(*)::int as n from herald_public.deliveries where message_id = any ($1) group by 1 order by 1",
        [[first, second]],
      ),
    );
    expect(rows.map((r) => r.from_address)).toEqual(POOL);
    expect(rows.reduce((n, r) => n + r.n, 0)).toBe(12);
  });

  it("gives a recipient a new pool number only once theirs leaves the pool (after a sync)", async () => {
    const stuck = fromByRecipient("Pool broadcast one");
    server.sandbox.services.setNumbers(serviceSid, POOL.slice(0, 2));
    const prior = (await serviceState(serviceId)).lastSyncedAt;
    expect((await graphql(api.current, owner, SYNC, { id: serviceId })).body.errors).toBeUndefined();
    const state = await synced(serviceId, prior);
    expect(state.pool.map((n: { phoneNumber: string }) => n.phoneNumber)).toEqual(POOL.slice(0, 2));

    const audience = await asRoot(db.current, (c) =>
      c.query("select id from herald_public.lists where tenant_id = $1 and name = 'pool audience'", [a.id]),
    );
    const third = await sendThroughApi(api.current, owner, {
      channel: "sms",
      body: "Pool broadcast three",
      listIds: [audience.rows[0].id],
    });
    expect(await settled(db.current, third)).toMatchObject({ byStatus: { sent: 6 } });
    const now = fromByRecipient("Pool broadcast three");
    for (const [phone, from] of stuck) {
      if (from === POOL[2]) expect(POOL.slice(0, 2), phone).toContain(now.get(phone));
      else expect(now.get(phone), phone).toBe(from);
    }
  });

  it("paces the service as one sender at its messages_per_second, however many numbers its pool has", async () => {
    const { body } = await graphql(api.current, owner, UPDATE, {
      input: { messagingServiceId: serviceId, messagesPerSecond: "2" },
    });
    expect(body.errors).toBeUndefined();
    const audience = await seedAudience(db.current, a, { count: 6, exchange: 720, list: "paced audience" });
    const message = await sendThroughApi(api.current, owner, {
      channel: "sms",
      body: "Paced through the pool",
      listIds: [audience.listId],
      metadata: { messaging_service: serviceSid },
    });
    expect(await settled(db.current, message)).toMatchObject({ byStatus: { sent: 6 } });
    const times = server.sandbox.messages
      .filter((m) => m.body === "Paced through the pool")
      .map((m) => m.createdAt.getTime())
      .sort((x, y) => x - y);
    expect(times).toHaveLength(6);
    // 2 a second: five gaps of 500 ms, give or take timer and HTTP jitter (unpaced, the tenant's 1,000/s would send them in ~5 ms).
    expect(times.at(-1)! - times[0]!).toBeGreaterThanOrEqual(2_300);
    // And at the service's pace, not a single number's 1 a second (5 s).
    expect(times.at(-1)! - times[0]!).toBeLessThan(4_500);
    // Each pool number alone would have allowed far more (the numbers' own rate is not what paced them).
    expect(
      new Set(server.sandbox.messages.filter((m) => m.body === "Paced through the pool").map((m) => m.from)).size,
    ).toBe(2);
  });
});

describe("inbound to a pool number", () => {
  it("routes to the tenant, signed by the service's account, and STOP unsubscribes the sender", async () => {
    const { rows } = await asRoot(db.current, (c) =>
      c.query<{ to: string }>("select m.to from (select unnest($1::text[]) as to) m order by m.to limit 1", [
        [...fromByRecipient("Pool broadcast two").keys()],
      ]),
    );
    const phone = rows[0]!.to;
    const poolNumber = POOL[1]!;
    const hello = await textIn(api.current, a, { from: phone, to: poolNumber, body: "Hello pool" });
    expect(hello.status).toBe(200);
    // B's token does not sign for A's pool number: 403, nothing stored.
    const forged = await textIn(api.current, a, { from: phone, to: poolNumber, body: "STOP", token: b.providerSecret });
    expect(forged.status).toBe(403);
    const stop = await textIn(api.current, a, { from: phone, to: poolNumber, body: "STOP" });
    expect(stop.status).toBe(200);
    expect(twimlMessages(stop.body).join(" ")).toMatch(/unsubscribed/i);

    const state = await asWorker(db.current, a, async (c) => {
      const inbound = await c.query(
        `select herald_hidden.decrypt_pii(body_encrypted, key_version) as body, keyword, sender_number_id is not null as on_number
           from herald_public.inbound_messages where to_number = $1 order by received_at`,
        [poolNumber],
      );
      const contact = await c.query(
        "select sms_subscribed from herald_public.contacts where phone_hash = any (herald_hidden.pii_hashes('phone', $1))",
        [phone],
      );
      return { inbound: inbound.rows, subscribed: contact.rows[0]?.sms_subscribed };
    });
    expect(state.inbound).toEqual([
      { body: "Hello pool", keyword: null, on_number: true },
      { body: "STOP", keyword: "stop", on_number: true },
    ]);
    expect(state.subscribed).toBe(false);
    // Tenant B has nothing of it.
    const seenByB = await asWorker(db.current, b, (c) =>
      c.query("select count(*)::int as n from herald_public.inbound_messages where to_number = $1", [poolNumber]),
    );
    expect(seenByB.rows[0].n).toBe(0);
  });
});

describe("the service's lifecycle", () => {
  it("refuses the same SID twice (CONFLICT on serviceSid), and deleting the service keeps its numbers, outside any pool", async () => {
    const again = await graphql(api.current, owner, ADD, {
      input: { providerAccountId: a.providerAccountId, serviceSid, name: "again" },
    });
    expect(again.body.errors?.[0]?.extensions).toMatchObject({ code: "CONFLICT", field: "serviceSid" });
    const { body } = await graphql(
      api.current,
      owner,
      `
        mutation ($id: UUID!, $tenant: UUID!) {
          deleteMessagingServiceByTenantIdAndRowId(input: { tenantId: $tenant, rowId: $id }) {
            messagingService {
              rowId
            }
          }
        }
      `,
      { id: serviceId, tenant: a.id },
    );
    expect(body.errors).toBeUndefined();
    const { rows } = await asRoot(db.current, (c) =>
      c.query(
        "select phone_number, status, messaging_service_id from herald_public.sender_numbers where tenant_id = $1 and phone_number = any ($2) order by 1",
        [a.id, POOL],
      ),
    );
    expect(rows).toEqual(
      POOL.slice(0, 2).map((phone_number) => ({ phone_number, status: "verified", messaging_service_id: null })),
    );
    // Still the tenant's: texts to them still reach it.
    expect((await textIn(api.current, a, { from: "+14155557999", to: POOL[0]!, body: "still there?" })).status).toBe(
      200,
    );
  });
});
