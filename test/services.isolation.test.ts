import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROLES } from "../src/db/urls.ts";
import type { WorkerHandle } from "../src/worker/worker.ts";
import { graphql, tokenFor, useApiServer } from "./helpers/api.ts";
import { asRole, expectPgError, useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import { testKeyring } from "./helpers/keys.ts";
import {
  asRoot,
  readyToSend,
  sendThroughApi,
  settled,
  startSandboxServer,
  startSendingWorker,
  waitFor,
  type SandboxServer,
} from "./helpers/messaging.ts";
import { textIn, webhookEnv } from "./helpers/webhooks.ts";

/**
 * Tenant B against tenant A's Messaging Service, in SQL (as B's member and
 * B's worker) and through GraphQL (B's owner token): B cannot see it, change
 * it, sync it, or send through it; naming A's SID on an account of B's own
 * gets B nothing from Twilio (the service is not on B's account), and A's pool
 * keeps routing to A. (The generic read/update/delete/insert matrix covers the
 * table too: test/isolation.sql.test.ts.)
 */

const db = useTestDatabase();
const api = useApiServer(db, { env: () => webhookEnv() });
let a: TenantFixture;
let b: TenantFixture;
let server: SandboxServer;
let worker: WorkerHandle;
const tokens = { a: "", b: "" };
const POOL = ["+14155558001", "+14155558002", "+14155558003"];
let aServiceSid: string;
let aServiceId: string;

const ADD = `mutation($input: AddMessagingServiceInput!) { addMessagingService(input: $input) { messagingService { rowId status } } }`;

/** A service's sync state, as the superuser sees it. */
const serviceRow = async (id: string) =>
  (
    await asRoot(db.current, (c) =>
      c.query(
        `select s.status, s.last_error, s.last_synced_at,
                (select count(*)::int from herald_public.sender_numbers n where n.messaging_service_id = s.id) as pool
           from herald_public.messaging_services s where s.id = $1`,
        [id],
      ),
    )
  ).rows[0];

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  server = await startSandboxServer();
  const aSid = await readyToSend(db.current, server, a);
  await readyToSend(db.current, server, b);
  tokens.a = await tokenFor(api.current, a, "owner");
  tokens.b = await tokenFor(api.current, b, "owner");
  worker = await startSendingWorker(db.current, server, 4);
  aServiceSid = server.sandbox.services.add(aSid, { numbers: POOL });
  const { body } = await graphql(api.current, tokens.a, ADD, {
    input: { providerAccountId: a.providerAccountId, serviceSid: aServiceSid, name: "A's pool" },
  });
  expect(body.errors).toBeUndefined();
  aServiceId = body.data!.addMessagingService.messagingService.rowId;
  await waitFor(async () => (await serviceRow(aServiceId)).status === "synced", 20_000);
});

afterAll(async () => {
  await worker?.stop();
  await server?.close();
});

describe("in SQL", () => {
  it("B's member sees none of A's service or pool, and changes, syncs or sends through none of it", async () => {
    const settings = await testKeyring().sessionSettings(db.current.root, b.id);
    await asRole(db.current, { role: ROLES.member, tenantId: b.id, userId: b.ownerId, settings }, async (c) => {
      const seen = await c.query("select id from herald_public.messaging_services where id = $1", [aServiceId]);
      expect(seen.rows).toEqual([]);
      const pool = await c.query("select id from herald_public.sender_numbers where messaging_service_id = $1", [
        aServiceId,
      ]);
      expect(pool.rows).toEqual([]);
      const updated = await c.query(
        "update herald_public.messaging_services set is_default = true, messages_per_second = 1000 where id = $1 returning id",
        [aServiceId],
      );
      expect(updated.rows).toEqual([]);
      const deleted = await c.query("delete from herald_public.messaging_services where id = $1 returning id", [
        aServiceId,
      ]);
      expect(deleted.rows).toEqual([]);
      for (const call of [
        () => c.query("select herald_public.sync_messaging_service($1)", [aServiceId]),
        () => c.query("select herald_public.update_messaging_service($1, 'pwned')", [aServiceId]),
        () =>
          c.query("select herald_public.add_messaging_service($1, $2, 'mine now')", [a.providerAccountId, aServiceSid]),
      ])
        expect((await expectPgError(c, call))?.code).toBe("NTFND");
      // A's SID in a message: refused as the message is written.
      const send = await expectPgError(c, () =>
        c.query("select herald_public.send_message('sms', body => 'hi', all_contacts => true, metadata => $1::jsonb)", [
          JSON.stringify({ messaging_service: aServiceSid }),
        ]),
      );
      expect(send).toMatchObject({ code: "NOSND" });
      expect(send!.message).not.toMatch(/tenant a|A's pool/i);
    });
  });

  it("B's worker cannot write A's pool, nor import numbers into A's service", async () => {
    const settings = await testKeyring().sessionSettings(db.current.root, b.id);
    await asRole(db.current, { role: ROLES.worker, tenantId: b.id, settings }, async (c) => {
      const sync = await expectPgError(c, () =>
        c.query("select * from herald_hidden.sync_pool_numbers($1, $2)", [aServiceId, ["+14155558999"]]),
      );
      expect(sync?.code).toBe("NTFND");
      const moved = await c.query(
        "update herald_public.sender_numbers set messaging_service_id = null, status = 'failed' where messaging_service_id = $1 returning id",
        [aServiceId],
      );
      expect(moved.rows).toEqual([]);
      const removed = await c.query(
        "delete from herald_public.sender_numbers where phone_number = any ($1) returning id",
        [POOL],
      );
      expect(removed.rows).toEqual([]);
      const insert = await expectPgError(c, () =>
        c.query(
          `insert into herald_public.sender_numbers (tenant_id, phone_number, provider_account_id, messaging_service_id, status)
           values ($1, '+14155558998', $2, $3, 'verified')`,
          [a.id, a.providerAccountId, aServiceId],
        ),
      );
      expect(insert?.code).toBe("42501");
    });
    expect((await serviceRow(aServiceId)).pool).toBe(3);
  });
});

describe("through GraphQL", () => {
  it("B's token sees no service of A's and gets NOT_FOUND for A's ids, NOT_OWN_SENDER for A's SID", async () => {
    const read = await graphql(
      api.current,
      tokens.b,
      `
        query ($id: UUID!, $tenant: UUID!) {
          allMessagingServices {
            nodes {
              rowId
            }
          }
          messagingServiceByTenantIdAndRowId(tenantId: $tenant, rowId: $id) {
            rowId
          }
        }
      `,
      { id: aServiceId, tenant: a.id },
    );
    expect(read.body.errors).toBeUndefined();
    expect(read.body.data).toEqual({ allMessagingServices: { nodes: [] }, messagingServiceByTenantIdAndRowId: null });

    const mutations: [string, Record<string, unknown>][] = [
      [
        `mutation($id: UUID!) { syncMessagingService(input: { messagingServiceId: $id }) { messagingService { rowId } } }`,
        { id: aServiceId },
      ],
      [
        `mutation($id: UUID!) { updateMessagingService(input: { messagingServiceId: $id, isDefault: true }) { messagingService { rowId } } }`,
        { id: aServiceId },
      ],
      [ADD, { input: { providerAccountId: a.providerAccountId, serviceSid: aServiceSid, name: "mine" } }],
    ];
    for (const [query, variables] of mutations) {
      const { body } = await graphql(api.current, tokens.b, query, variables);
      expect(body.errors?.[0]?.extensions, query).toMatchObject({ code: "NOT_FOUND" });
    }
    const send = await graphql(
      api.current,
      tokens.b,
      `
        mutation ($input: SendMessageInput!) {
          sendMessage(input: $input) {
            message {
              rowId
            }
          }
        }
      `,
      { input: { channel: "sms", body: "hi", allContacts: true, metadata: { messaging_service: aServiceSid } } },
    );
    expect(send.body.errors?.[0]?.extensions).toMatchObject({ code: "NOT_OWN_SENDER", field: "metadata" });
    expect((await serviceRow(aServiceId)).pool).toBe(3);
  });

  it("a plain member of A cannot add, change or sync A's services: owners and admins only", async () => {
    const member = await tokenFor(api.current, a, "member");
    const add = await graphql(api.current, member, ADD, {
      input: { providerAccountId: a.providerAccountId, serviceSid: `MG${"c".repeat(32)}`, name: "member's" },
    });
    expect(add.body.errors?.[0]?.extensions).toMatchObject({ code: "FORBIDDEN" });
    const update = await graphql(
      api.current,
      member,
      `
        mutation ($id: UUID!) {
          updateMessagingService(input: { messagingServiceId: $id, messagesPerSecond: "1000" }) {
            messagingService {
              rowId
            }
          }
        }
      `,
      { id: aServiceId },
    );
    expect(update.body.errors?.[0]?.extensions).toMatchObject({ code: "NOT_FOUND" });
  });

  it("A's SID on B's own account: Twilio knows no such service there, so B gets no pool and sends nothing through it", async () => {
    const { body } = await graphql(api.current, tokens.b, ADD, {
      input: { providerAccountId: b.providerAccountId, serviceSid: aServiceSid, name: "borrowed" },
    });
    expect(body.errors).toBeUndefined();
    const bServiceId = body.data!.addMessagingService.messagingService.rowId;
    const state = await waitFor(async () => {
      const row = await serviceRow(bServiceId);
      return row.status !== "pending" && row;
    }, 20_000);
    expect(state).toMatchObject({ status: "failed", pool: 0 });
    expect(state.last_error).toMatch(/20404|not found/i);

    const before = server.sandbox.messages.length;
    const message = await sendThroughApi(api.current, tokens.b, {
      channel: "sms",
      body: "Through a borrowed service",
      contactIds: [b.contactId],
      metadata: { messaging_service: aServiceSid },
    });
    expect(await settled(db.current, message)).toMatchObject({ byStatus: { failed: 1 } });
    expect(server.sandbox.messages.slice(before).filter((m) => m.body === "Through a borrowed service")).toEqual([]);

    // A's pool still routes to A only: a text to it signed with B's token is refused.
    const forged = await textIn(api.current, b, { from: "+14155558111", to: POOL[0]!, body: "STOP" });
    expect(forged.status).toBe(403);
    const real = await textIn(api.current, a, { from: "+14155558111", to: POOL[0]!, body: "hello" });
    expect(real.status).toBe(200);
  });
});
