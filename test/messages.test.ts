import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { WorkerHandle } from "../src/worker/worker.ts";
import { graphql, tokenFor, useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import {
  asRoot,
  asWorker,
  audiencePhone,
  readyToSend,
  seedAudience,
  settled,
  startSandboxServer,
  startSendingWorker,
  summary,
  type SandboxServer,
} from "./helpers/messaging.ts";

/**
 * Templates, sendMessage and the fan-out, through GraphQL, the worker, the
 * real SDKs and the sandbox. Pacing across processes and crash recovery are in
 * messages.processes.test.ts; holding back (schedule, quiet hours, cap,
 * cancel, opt-out) in messages.holds.test.ts.
 */

const db = useTestDatabase();
const api = useApiServer(db);
let a: TenantFixture;
let b: TenantFixture;
let server: SandboxServer;
let worker: WorkerHandle;
let aSid: string;
const tokens = { a: "", b: "" };

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  server = await startSandboxServer();
  aSid = await readyToSend(db.current, server, a);
  await readyToSend(db.current, server, b);
  tokens.a = await tokenFor(api.current, a, "member");
  tokens.b = await tokenFor(api.current, b, "member");
  worker = await startSendingWorker(db.current, server, 8);
});

afterAll(async () => {
  await worker?.stop();
  await server?.close();
});

const SEND = `mutation($input: SendMessageInput!) { sendMessage(input: $input) { message { rowId status recipientCount } } }`;
const send = (token: string, input: Record<string, unknown>) => graphql(api.current, token, SEND, { input });
const sentTo = (account: string, to: string) =>
  server.sandbox.messages.filter((m) => m.account === account && m.to === to);

describe("templates", () => {
  const CREATE = `mutation($t: TemplateInput!) { createTemplate(input: { template: $t }) { template { rowId variables smsEncoding smsSegments } } }`;

  it("records the variables a template uses and what its body costs as an SMS", async () => {
    const { body } = await graphql(api.current, tokens.a, CREATE, {
      t: {
        channel: "sms",
        name: "welcome",
        body: "Hi {{first_name|there}}, your {{ attributes.plan }} plan is ready. {{first_name}}",
      },
    });
    expect(body.errors).toBeUndefined();
    expect(body.data!.createTemplate.template).toMatchObject({
      variables: ["attributes.plan", "first_name"],
      smsEncoding: "GSM-7",
      smsSegments: 1,
    });

    const cases: [string, string, number][] = [
      ["x".repeat(160), "GSM-7", 1],
      ["x".repeat(161), "GSM-7", 2],
      ["[".repeat(80), "GSM-7", 1], // extension characters cost two septets: 160
      ["[".repeat(81), "GSM-7", 2],
      ["é".repeat(160), "GSM-7", 1], // é is in the GSM basic set
      ["ć".repeat(70), "UCS-2", 1],
      ["ć".repeat(71), "UCS-2", 2],
      ["🎉".repeat(35), "UCS-2", 1], // outside the BMP: two UTF-16 units each
      ["🎉".repeat(36), "UCS-2", 2],
    ];
    for (const [i, [text, encoding, segments]] of cases.entries()) {
      const { body: r } = await graphql(api.current, tokens.a, CREATE, {
        t: { channel: "sms", name: `segments ${i}`, body: text },
      });
      expect(r.errors, `case ${i}`).toBeUndefined();
      expect(r.data!.createTemplate.template, `case ${i}`).toMatchObject({
        smsEncoding: encoding,
        smsSegments: segments,
      });
    }
  });

  it("refuses an unknown variable or an unclosed brace, naming the field", async () => {
    const unknown = await graphql(api.current, tokens.a, CREATE, {
      t: { channel: "sms", name: "bad", body: "Hi {{firstname}}" },
    });
    expect(unknown.body.errors?.[0]).toMatchObject({ extensions: { code: "INVALID_INPUT", field: "body" } });
    expect(unknown.body.errors?.[0]?.message).toMatch(/firstname/);
    const unclosed = await graphql(api.current, tokens.a, CREATE, {
      t: { channel: "email", name: "bad mail", subject: "Hello {{first_name", body: "x" },
    });
    expect(unclosed.body.errors?.[0]).toMatchObject({ extensions: { code: "INVALID_INPUT", field: "subject" } });
    const noSubject = await graphql(api.current, tokens.a, CREATE, {
      t: { channel: "email", name: "no subject", body: "x" },
    });
    expect(noSubject.body.errors?.[0]?.extensions?.code).toBe("INVALID_INPUT");
  });
});

describe("a broadcast to a 1,000-contact list", () => {
  it("sends to everyone but the 3 suppressed, 2 unsubscribed and 1 invalid number, each once, rendered", async () => {
    const audience = await seedAudience(db.current, a, {
      count: 994,
      exchange: 601,
      list: "customers",
      firstName: (i) => (i % 2 ? `Ada${i}` : ""),
    });
    // Six more on the same list, who must not get it.
    const extra = await asWorker(db.current, a, async (c) => {
      const docs = [
        ...[0, 1, 2].map((i) => ({ phone: audiencePhone(602, i), first_name: "Suppressed" })),
        ...[3, 4].map((i) => ({ phone: audiencePhone(602, i), first_name: "Unsubscribed", sms_subscribed: false })),
        // Stored before a numbering-plan change, say: no longer a valid number.
        { phone: "+11234567890", first_name: "Invalid" },
      ];
      const { rows } = await c.query("select contact_id from herald_hidden.upsert_contacts($1) order by ordinal", [
        JSON.stringify(docs),
      ]);
      await c.query("insert into herald_public.list_members (list_id, contact_id) select $1, unnest($2::uuid[])", [
        audience.listId,
        rows.map((r) => r.contact_id),
      ]);
      return docs;
    });
    for (const suppressed of extra.slice(0, 3)) {
      const r = await graphql(
        api.current,
        tokens.a,
        `
          mutation ($a: String!) {
            addSuppression(input: { kind: "phone", address: $a, reason: "manual" }) {
              suppression {
                rowId
                reason
              }
            }
          }
        `,
        { a: suppressed.phone },
      );
      expect(r.body.errors).toBeUndefined();
    }

    const sent = await send(tokens.a, {
      channel: "sms",
      body: "Hi {{first_name|there}}, 20% off today.",
      listIds: [audience.listId],
    });
    expect(sent.body.errors).toBeUndefined();
    const messageId = sent.body.data!.sendMessage.message.rowId as string;

    const result = await settled(db.current, messageId);
    expect(result.total).toBe(1000);
    expect(result.byStatus).toEqual({ sent: 994, skipped: 6 });
    expect(result.byReason).toEqual({ "skipped/suppressed": 3, "skipped/unsubscribed": 2, "skipped/invalid_phone": 1 });

    // Exactly the expected messages reached the provider: one per recipient, none to the six.
    const received = server.sandbox.messages.filter((m) => m.account === aSid && m.body.endsWith("20% off today."));
    expect(received).toHaveLength(994);
    expect(new Set(received.map((m) => m.to)).size).toBe(994);
    for (const skipped of extra) expect(sentTo(aSid, skipped.phone)).toHaveLength(0);
    expect(sentTo(aSid, audience.contacts[1]!.phone)[0]!.body).toBe("Hi Ada1, 20% off today.");
    expect(sentTo(aSid, audience.contacts[0]!.phone)[0]!.body).toBe("Hi there, 20% off today.");

    // Progress through the API, with reasons.
    const progress = await graphql(
      api.current,
      tokens.a,
      `query($id: UUID!) { messageByTenantIdAndRowId(tenantId: "${a.id}", rowId: $id) { status recipientCount stats { total sent skipped queued } reasons { nodes { status reason count } } } }`,
      { id: messageId },
    );
    expect(progress.body.data!.messageByTenantIdAndRowId).toMatchObject({
      status: "fanned_out",
      recipientCount: 1000,
      stats: { total: 1000, sent: 994, skipped: 6, queued: 0 },
    });
    expect(progress.body.data!.messageByTenantIdAndRowId.reasons.nodes).toHaveLength(3);

    // Each delivery records how it went out.
    const { rows } = await db.current.root.query(
      "select count(*)::int as n from herald_public.deliveries where message_id = $1 and status = 'sent' and provider = 'tenant' and provider_message_id like 'SM%' and segments = 1 and from_address is not null",
      [messageId],
    );
    expect(rows[0].n).toBe(994);
  }, 120_000);

  it("a contact on several lists and tags gets one delivery", async () => {
    const audience = await seedAudience(db.current, b, { count: 5, exchange: 603, list: "overlap" });
    const tag = await asWorker(db.current, b, async (c) => {
      const t = await c.query("insert into herald_public.tags (name) values ('overlap') returning id");
      await c.query("insert into herald_public.contact_tags (tag_id, contact_id) select $1, unnest($2::uuid[])", [
        t.rows[0].id,
        audience.contacts.map((x) => x.id),
      ]);
      return t.rows[0].id as string;
    });
    const r = await send(tokens.b, {
      channel: "sms",
      body: "Once only",
      listIds: [audience.listId],
      tagIds: [tag],
      contactIds: [audience.contacts[0]!.id],
    });
    const result = await settled(db.current, r.body.data!.sendMessage.message.rowId);
    expect(result).toMatchObject({ total: 5, byStatus: { sent: 5 } });
  });
});

describe("sendMessage input", () => {
  it("an idempotency key replayed returns the original message and sends nothing new", async () => {
    const input = { channel: "sms", body: "Your code is 1234", contactIds: [a.contactId], idempotencyKey: "otp-1" };
    const first = await send(tokens.a, input);
    const second = await send(tokens.a, input);
    const id = first.body.data!.sendMessage.message.rowId;
    expect(second.body.data!.sendMessage.message.rowId).toBe(id);
    await settled(db.current, id);
    expect(sentTo(aSid, a.contactPhone).filter((m) => m.body === "Your code is 1234")).toHaveLength(1);
    const { rows } = await db.current.root.query(
      "select count(*)::int as n from herald_public.messages where tenant_id = $1 and idempotency_key = 'otp-1'",
      [a.id],
    );
    expect(rows[0].n).toBe(1);

    const changed = await send(tokens.a, { ...input, body: "Your code is 9999" });
    expect(changed.body.errors?.[0]).toMatchObject({ extensions: { code: "INVALID_INPUT", field: "idempotencyKey" } });
    // Another tenant's key space is its own.
    const other = await send(tokens.b, { ...input, contactIds: [b.contactId] });
    expect(other.body.errors).toBeUndefined();
    expect(other.body.data!.sendMessage.message.rowId).not.toBe(id);
  });

  it("names the field of a bad request", async () => {
    const cases: [Record<string, unknown>, string, string][] = [
      [{ channel: "fax", body: "x", contactIds: [a.contactId] }, "channel", "INVALID_INPUT"],
      [{ channel: "sms", contactIds: [a.contactId] }, "body", "INVALID_INPUT"],
      [{ channel: "sms", body: "x" }, "contactIds", "INVALID_INPUT"],
      [{ channel: "email", body: "x", contactIds: [a.contactId] }, "subject", "INVALID_INPUT"],
      [{ channel: "sms", body: "Hi {{nickname}}", contactIds: [a.contactId] }, "body", "INVALID_INPUT"],
      [
        { channel: "sms", body: "x", contactIds: [a.contactId], metadata: { from: "+15005550006" } },
        "metadata",
        "NOT_OWN_SENDER",
      ],
      [
        { channel: "sms", body: "x", contactIds: [a.contactId], scheduledAt: "2099-01-01T00:00:00Z" },
        "scheduledAt",
        "INVALID_INPUT",
      ],
    ];
    for (const [input, field, code] of cases) {
      const r = await send(tokens.a, input);
      expect(r.body.errors?.[0], JSON.stringify(input)).toMatchObject({ extensions: { code, field } });
    }
  });
});

describe("tenant B against tenant A's audience and templates", () => {
  it("cannot send to A's contacts, lists, tags or templates: an error, and nothing sent", async () => {
    const template = await graphql(
      api.current,
      tokens.a,
      `
        mutation {
          createTemplate(input: { template: { channel: "sms", name: "a-only", body: "A's words" } }) {
            template {
              rowId
            }
          }
        }
      `,
    );
    const aTemplate = template.body.data!.createTemplate.template.rowId;
    const { rows: countBefore } = await db.current.root.query(
      "select count(*)::int as n from herald_public.messages where tenant_id = $1",
      [b.id],
    );
    const attacks: [Record<string, unknown>, string][] = [
      [{ contactIds: [a.contactId], body: "x" }, "contactIds"],
      [{ contactIds: [b.contactId, a.contactId], body: "x" }, "contactIds"],
      [{ listIds: [a.listId], body: "x" }, "listIds"],
      [{ tagIds: [a.tagId], body: "x" }, "tagIds"],
      [{ templateId: aTemplate, contactIds: [b.contactId] }, "templateId"],
    ];
    for (const [input, field] of attacks) {
      const r = await send(tokens.b, { channel: "sms", ...input });
      expect(r.body.errors?.[0], field).toMatchObject({ extensions: { code: "NOT_FOUND", field } });
    }
    // Nothing was stored, so nothing can be sent.
    const { rows: countAfter } = await db.current.root.query(
      "select count(*)::int as n from herald_public.messages where tenant_id = $1",
      [b.id],
    );
    expect(countAfter[0].n).toBe(countBefore[0].n);
  });

  it("cannot see, cancel or fan out A's messages, nor write deliveries for them", async () => {
    const r = await send(tokens.a, {
      channel: "sms",
      body: "A's own",
      contactIds: [a.contactId],
      scheduledAt: new Date(Date.now() + 3_600_000).toISOString(),
    });
    const aMessage = r.body.data!.sendMessage.message.rowId;
    const seen = await graphql(
      api.current,
      tokens.b,
      `query($id: UUID!) { messageByTenantIdAndRowId(tenantId: "${a.id}", rowId: $id) { rowId } allMessages { totalCount } allDeliveries(condition: { messageId: $id }) { totalCount } }`,
      { id: aMessage },
    );
    expect(seen.body.data!.messageByTenantIdAndRowId).toBeNull();
    expect(seen.body.data!.allDeliveries.totalCount).toBe(0);
    const cancel = await graphql(
      api.current,
      tokens.b,
      `
        mutation ($id: UUID!) {
          cancelMessage(input: { messageId: $id }) {
            message {
              rowId
            }
          }
        }
      `,
      { id: aMessage },
    );
    expect(cancel.body.errors?.[0]).toMatchObject({ extensions: { code: "NOT_FOUND", field: "messageId" } });

    // Raw SQL as B's worker: the fan-out finds no such message; a delivery row naming it is refused.
    await asWorker(db.current, b, async (c) => {
      const { rows } = await c.query("select * from herald_hidden.fan_out_batch($1, 100, null, 1)", [aMessage]);
      expect(rows[0]).toMatchObject({ contacts: 0, done: true });
      await expect(
        c.query("insert into herald_public.deliveries (message_id, contact_id, channel) values ($1, $2, 'sms')", [
          aMessage,
          b.contactId,
        ]),
      ).rejects.toMatchObject({ code: "23503" });
    });
    const after = await asRoot(
      db.current,
      async (c) =>
        (await c.query("select status, canceled_at from herald_public.messages where id = $1", [aMessage])).rows[0],
    );
    expect(after).toMatchObject({ status: "pending", canceled_at: null });
    expect((await summary(db.current, aMessage)).total).toBe(0);
  });
});
