import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROLES } from "../src/db/urls.ts";
import type { WorkerHandle } from "../src/worker/worker.ts";
import { graphql, tokenFor, useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import {
  asRoot,
  closeSendWindowForAnHour,
  openSendWindow,
  readyToSend,
  sendThroughApi,
  settled,
  startSandboxServer,
  startSendingWorker,
  type SandboxServer,
} from "./helpers/messaging.ts";
import { contactWith, SYSTEM_TWILIO, textIn, webhookEnv } from "./helpers/webhooks.ts";
import { proveSenderNumbers } from "./helpers/numbers.ts";

/**
 * A contact's conversation: what they wrote (the inbound webhook), what was
 * sent to them (deliveries, rendered), Herald's keyword replies, one thread in
 * order; and replying within it.
 */

const db = useTestDatabase();
const api = useApiServer(db, { env: () => webhookEnv() });
let a: TenantFixture;
let b: TenantFixture;
let server: SandboxServer;
let worker: WorkerHandle;
let aNumber: string;
const tokens = { a: "", b: "", admin: "" };

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  server = await startSandboxServer();
  await readyToSend(db.current, server, a);
  aNumber = a.senderNumber;
  tokens.a = await tokenFor(api.current, a, "member");
  tokens.b = await tokenFor(api.current, b, "member");
  tokens.admin = await api.current.authenticator.sign({ role: ROLES.admin });
  worker = await startSendingWorker(db.current, server, 4);
});

afterAll(async () => {
  await worker?.stop();
  await server?.close();
});

let phones = 0;
const freshPhone = () => `+1628557${String(1000 + ++phones)}`;
/** A contact texts A's usual number, and Herald takes it. */
async function textToA(from: string, body: string) {
  expect((await textIn(api.current, a, { from, body })).status).toBe(200);
}

const THREAD = `query($c: UUID!, $first: Int, $channel: String) {
  allContacts(condition: { rowId: $c }) { nodes { conversation(first: $first, channel: $channel) { nodes { direction channel body status keyword tenantAddress } } } } }`;
/** The thread, newest first. */
const thread = async (token: string, contactId: string, variables: { first?: number; channel?: string } = {}) => {
  const { body } = await graphql(api.current, token, THREAD, { c: contactId, ...variables });
  if (body.errors) return body.errors;
  return body.data!.allContacts.nodes[0]?.conversation.nodes ?? null;
};

const REPLY = `mutation($c: UUID!, $body: String!, $channel: String) { replyToContact(input: { contactId: $c, body: $body, channel: $channel }) { message { rowId metadata } } }`;

describe("a conversation", () => {
  it("interleaves what the contact wrote, what was sent to them (as rendered) and keyword replies, in order", async () => {
    const phone = freshPhone();
    const contactId = await contactWith(db.current, a, phone, { firstName: "Ada" });
    // A broadcast template, rendered for Ada.
    const template = await graphql(
      api.current,
      tokens.a,
      `
        mutation {
          createTemplate(
            input: { template: { channel: "sms", name: "reminder", body: "Hi {{first_name}}, see you at 10." } }
          ) {
            template {
              rowId
            }
          }
        }
      `,
    );
    const sent = await graphql(
      api.current,
      tokens.a,
      `
        mutation ($t: UUID!, $c: UUID!) {
          sendMessage(input: { channel: "sms", templateId: $t, contactIds: [$c] }) {
            message {
              rowId
            }
          }
        }
      `,
      {
        t: template.body.data!.createTemplate.template.rowId,
        c: contactId,
      },
    );
    await settled(db.current, sent.body.data!.sendMessage.message.rowId);
    await textToA(phone, "Can I come at 11 instead?");
    const {
      rows: [question],
    } = await db.current.root.query("select id from herald_public.inbound_messages where contact_id = $1", [contactId]);
    const reply = await graphql(api.current, tokens.a, REPLY, { c: contactId, body: "Yes, 11 works." });
    expect(reply.body.errors).toBeUndefined();
    // It answers from the number the contact wrote to, in reply to that message.
    expect(reply.body.data!.replyToContact.message.metadata).toEqual({ from: aNumber, in_reply_to: question.id });
    await settled(db.current, reply.body.data!.replyToContact.message.rowId);
    await textToA(phone, "HELP");

    expect((await thread(tokens.a, contactId)).reverse()).toEqual([
      {
        direction: "outbound",
        channel: "sms",
        body: "Hi Ada, see you at 10.",
        status: "sent",
        keyword: null,
        tenantAddress: aNumber,
      },
      {
        direction: "inbound",
        channel: "sms",
        body: "Can I come at 11 instead?",
        status: null,
        keyword: null,
        tenantAddress: aNumber,
      },
      {
        direction: "outbound",
        channel: "sms",
        body: "Yes, 11 works.",
        status: "sent",
        keyword: null,
        tenantAddress: aNumber,
      },
      { direction: "inbound", channel: "sms", body: "HELP", status: null, keyword: "help", tenantAddress: aNumber },
      {
        direction: "outbound",
        channel: "sms",
        body: expect.stringMatching(/^Tenant A: .*Reply STOP to cancel\.$/),
        status: "sent",
        keyword: null,
        tenantAddress: aNumber,
      },
    ]);
    expect(server.sandbox.messages.filter((m) => m.to === phone).map((m) => [m.from, m.body])).toEqual([
      [aNumber, "Hi Ada, see you at 10."],
      [aNumber, "Yes, 11 works."],
    ]);
    // The latest two, and one channel only.
    expect((await thread(tokens.a, contactId, { first: 2 })).map((e: { body: string }) => e.body)).toEqual([
      expect.stringMatching(/^Tenant A/),
      "HELP",
    ]);
    expect(await thread(tokens.a, contactId, { channel: "email" })).toEqual([]);
  });

  it("a reply goes from the number the contact last wrote to on that channel, while the tenant still has it", async () => {
    const phone = freshPhone();
    const contactId = await contactWith(db.current, a, phone);
    // A second SMS number and a WhatsApp number of A's (on the system account, as an operator assigns them).
    const second = "+14155559911";
    const whatsapp = "+14155559912";
    await asRoot(db.current, (c) =>
      c.query(
        "insert into herald_public.sender_numbers (tenant_id, phone_number, channel) values ($1, $2, 'sms'), ($1, $3, 'whatsapp') on conflict do nothing",
        [a.id, second, whatsapp],
      ),
    );
    await proveSenderNumbers(db.current, { phoneNumbers: [second, whatsapp] });
    const write = (to: string, body: string, channel: "sms" | "whatsapp" = "sms") =>
      textIn(api.current, a, {
        from: phone,
        body,
        to,
        channel,
        token: to === aNumber ? a.providerSecret : SYSTEM_TWILIO.authToken,
      });
    expect((await write(aNumber, "first, to the usual number")).status).toBe(200);
    expect((await write(second, "then to the second one")).status).toBe(200);
    expect((await write(whatsapp, "and on WhatsApp", "whatsapp")).status).toBe(200);
    const { rows: inbound } = await db.current.root.query(
      "select id, to_number from herald_public.inbound_messages where contact_id = $1 and channel = 'sms' order by received_at desc",
      [contactId],
    );
    expect(inbound[0].to_number).toBe(second);

    const reply = await graphql(api.current, tokens.a, REPLY, { c: contactId, body: "Replying by SMS" });
    expect(reply.body.data!.replyToContact.message.metadata).toEqual({ from: second, in_reply_to: inbound[0].id });
    await settled(db.current, reply.body.data!.replyToContact.message.rowId);
    // That number is on the system account (an operator's), so the system's account sent it.
    expect(server.sandbox.messages.filter((m) => m.to === phone).map((m) => [m.account, m.from, m.body])).toEqual([
      [SYSTEM_TWILIO.accountSid, second, "Replying by SMS"],
    ]);

    // Released by the tenant: the reply is still a reply, from the tenant's usual sender.
    await asRoot(db.current, (c) =>
      c.query("delete from herald_public.sender_numbers where phone_number = $1 and channel = 'sms'", [second]),
    );
    const later = await graphql(api.current, tokens.a, REPLY, { c: contactId, body: "From the usual sender" });
    expect(later.body.data!.replyToContact.message.metadata).toEqual({ in_reply_to: inbound[0].id });
  });

  it("leaves out what never reached the person (skipped, canceled)", async () => {
    const phone = freshPhone();
    const contactId = await contactWith(db.current, a, phone);
    await asRoot(db.current, (c) =>
      c.query(
        "insert into herald_public.deliveries (tenant_id, message_id, contact_id, channel, status, reason) values ($1, $2, $3, 'sms', 'skipped', 'suppressed')",
        [a.id, a.messageId, contactId],
      ),
    );
    expect(await thread(tokens.a, contactId)).toEqual([]);
    await textToA(phone, "hello?");
    expect((await thread(tokens.a, contactId)).map((e: { body: string }) => e.body)).toEqual(["hello?"]);
  });

  it("a reply is not held by quiet hours while the contact wrote in the last day; other sends are", async () => {
    const phone = freshPhone();
    const contactId = await contactWith(db.current, a, phone);
    await closeSendWindowForAnHour(db.current, a.id);
    try {
      await textToA(phone, "Are you open tomorrow?");
      const reply = await graphql(api.current, tokens.a, REPLY, { c: contactId, body: "Yes, from 9." });
      expect((await settled(db.current, reply.body.data!.replyToContact.message.rowId)).byStatus).toEqual({ sent: 1 });
      const other = await sendThroughApi(api.current, tokens.a, {
        channel: "sms",
        body: "Newsletter",
        contactIds: [contactId],
      });
      expect((await settled(db.current, other)).byReason).toEqual({ "queued/quiet_hours": 1 });
      // Metadata is the sender's to write: naming a message in it exempts nothing unless it is this contact's own, recent one.
      const theirs = (
        await db.current.root.query("select id from herald_public.inbound_messages where contact_id = $1", [contactId])
      ).rows[0].id as string;
      const stranger = await contactWith(db.current, a, freshPhone());
      for (const [label, contactIds, inReplyTo] of [
        ["another contact's message", [stranger], theirs],
        ["a made-up id", [contactId], "00000000-0000-4000-8000-000000000000"],
        ["not an id at all", [contactId], "anything"],
      ] as const) {
        const forged = await sendThroughApi(api.current, tokens.a, {
          channel: "sms",
          body: "Newsletter",
          contactIds,
          metadata: { in_reply_to: inReplyTo },
        });
        expect((await settled(db.current, forged)).byReason, label).toEqual({ "queued/quiet_hours": 1 });
      }
      // A day later, a reply is a send like any other.
      await asRoot(db.current, (c) =>
        c.query(
          "update herald_public.inbound_messages set received_at = received_at - interval '25 hours' where contact_id = $1",
          [contactId],
        ),
      );
      const late = await graphql(api.current, tokens.a, REPLY, { c: contactId, body: "Sorry for the delay" });
      expect((await settled(db.current, late.body.data!.replyToContact.message.rowId)).byReason).toEqual({
        "queued/quiet_hours": 1,
      });
    } finally {
      await openSendWindow(db.current, a.id);
    }
  });

  it("refuses a reply on a channel without threads, naming the field", async () => {
    const contactId = await contactWith(db.current, a, freshPhone());
    const { body } = await graphql(api.current, tokens.a, REPLY, { c: contactId, body: "x", channel: "email" });
    expect(body.errors?.[0]?.extensions).toMatchObject({ code: "INVALID_INPUT", field: "channel" });
  });
});

describe("another tenant, and operators", () => {
  it("tenant B can neither read A's conversation nor reply in it", async () => {
    const phone = freshPhone();
    const contactId = await contactWith(db.current, a, phone);
    await textToA(phone, "private question");
    expect(await thread(tokens.b, contactId)).toBeNull();
    const before = (
      await db.current.root.query("select count(*)::int as n from herald_public.messages where tenant_id = $1", [b.id])
    ).rows[0].n;
    const { body } = await graphql(api.current, tokens.b, REPLY, { c: contactId, body: "hello from B" });
    expect(body.errors?.[0]?.extensions).toMatchObject({ code: "NOT_FOUND", field: "contactId" });
    expect(
      (
        await db.current.root.query("select count(*)::int as n from herald_public.messages where tenant_id = $1", [
          b.id,
        ])
      ).rows[0].n,
    ).toBe(before);
  });

  it("an operator sees that the conversation exists but gets NO_KEY for its text", async () => {
    const phone = freshPhone();
    const contactId = await contactWith(db.current, a, phone);
    await textToA(phone, "for the tenant's eyes");
    const result = await thread(tokens.admin, contactId);
    expect(result).toEqual([expect.objectContaining({ extensions: expect.objectContaining({ code: "NO_KEY" }) })]);
  });
});
