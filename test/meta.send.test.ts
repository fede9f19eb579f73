import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SendError } from "../src/providers/errors.ts";
import { activeAccount } from "../src/providers/routing.ts";
import { transmitSms } from "../src/providers/transmit.ts";
import type { WorkerHandle } from "../src/worker/worker.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { proveSenderNumbers } from "./helpers/numbers.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import { createMetaAccount, inboundText, postMeta, type MetaFixture } from "./helpers/meta.ts";
import {
  asOwner,
  asWorker,
  readyToSend,
  settled,
  startSandboxServer,
  startSendingWorker,
  waitFor,
  type SandboxServer,
} from "./helpers/messaging.ts";
import { contactWith, useCallableApiServer } from "./helpers/webhooks.ts";

/**
 * WhatsApp through a tenant's Meta account: the worker sends text, approved
 * templates (parameters from contact fields) and media over the Graph API to
 * the sandbox's Graph endpoint, which answers with a wamid and reports
 * statuses back through Herald's signed Meta webhook.
 */

const db = useTestDatabase();
let server: SandboxServer;
// Before the API server: its keyword replies go to the sandbox's Graph API.
beforeAll(async () => {
  server = await startSandboxServer();
});
const { api, endpoint } = useCallableApiServer(db, () => ({ HERALD_META_GRAPH_URL: `${server.url}/meta` }));
let a: TenantFixture;
let b: TenantFixture;
let metaA: MetaFixture;
let worker: WorkerHandle;

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  await readyToSend(db.current, server, a);
  metaA = await createMetaAccount(db.current, a);
  server.sandbox.addMetaAccount(metaA.phoneNumberId, {
    accessToken: metaA.accessToken,
    appSecret: metaA.appSecret,
    webhookUrl: `${endpoint.publicUrl}${metaA.path}`,
    displayPhoneNumber: metaA.number.slice(1),
  });
  expect(await proveSenderNumbers(db.current, { phoneNumbers: [metaA.number], sandbox: server })).toEqual({
    [`whatsapp:${metaA.number}`]: "verified",
  });
  worker = await startSendingWorker(db.current, server, 4);
});

afterAll(async () => {
  await worker?.stop();
  await server?.close();
});

let phoneCounter = 0;
const freshPhone = (ending?: string) => `+1628558${ending ?? String(1000 + ++phoneCounter).padStart(4, "0")}`;

/** The Graph requests the sandbox received for a recipient (E.164). */
const requestsTo = (phone: string) => server.sandbox.metaRequests.filter((r) => r.body.to === phone.slice(1));

/**
 * A contact who has just written to the tenant's WhatsApp number (a signed
 * Cloud API webhook), so its 24-hour window is open and free-form text may go.
 */
async function contactWhoWrote(phone: string, fields?: { firstName?: string }): Promise<string> {
  const contactId = await contactWith(db.current, a, phone, fields);
  const posted = await postMeta(api.current, metaA.path, inboundText(metaA.phoneNumberId, phone, "hi"), {
    appSecret: metaA.appSecret,
  });
  expect(posted.status).toBe(200);
  await waitFor(async () => {
    const { rowCount } = await db.current.root.query(
      "select 1 from herald_public.inbound_messages where contact_id = $1 and channel = 'whatsapp'",
      [contactId],
    );
    return rowCount! > 0;
  });
  return contactId;
}

async function sendToContact(contactId: string, args: { body?: string; templateId?: string }): Promise<string> {
  const { rows } = await asOwner(db.current, a, (c) =>
    c.query("select id from herald_public.send_message('whatsapp', $1, $2, contact_ids => $3)", [
      args.templateId ?? null,
      args.body ?? null,
      [contactId],
    ]),
  );
  return rows[0].id as string;
}

const deliveryOf = async (messageId: string) =>
  (
    await db.current.root.query(
      `select d.id, d.status, d.reason, d.error_code, d.provider_message_id, d.completed_at,
              (select array_agg(e.provider || ':' || e.event order by e.received_at) from herald_public.delivery_events e
                where e.tenant_id = d.tenant_id and e.delivery_id = d.id) as events
         from herald_public.deliveries d where d.message_id = $1`,
      [messageId],
    )
  ).rows[0];

describe("through the worker", () => {
  it("a text goes to the Graph API as a text message, and Meta's statuses move the delivery to delivered", async () => {
    const phone = freshPhone();
    const contactId = await contactWhoWrote(phone, { firstName: "Ada" });
    const messageId = await sendToContact(contactId, { body: "Hello {{first_name}}" });
    await settled(db.current, messageId);
    const [request] = requestsTo(phone);
    const delivery = await deliveryOf(messageId);
    expect(request!.phoneNumberId).toBe(metaA.phoneNumberId);
    expect(request!.body).toEqual({
      messaging_product: "whatsapp",
      recipient_type: "individual",
      to: phone.slice(1),
      biz_opaque_callback_data: delivery.id,
      type: "text",
      text: { preview_url: false, body: "Hello Ada" },
    });
    // Nothing went through Twilio.
    expect(server.sandbox.messages.filter((m) => m.provider === "twilio" && m.to.endsWith(phone))).toEqual([]);
    const done = await waitFor(async () => {
      const d = await deliveryOf(messageId);
      return d?.status === "delivered" && d.events?.length === 3 && d;
    });
    expect(done.provider_message_id).toBe(request!.wamid);
    expect(done.events).toEqual(["meta:sent", "meta:delivered", "meta:read"]);
  });

  it("a free-form text to a contact who has not written in 24 hours is skipped before any Graph call", async () => {
    const phone = freshPhone();
    const contactId = await contactWith(db.current, a, phone);
    const messageId = await sendToContact(contactId, { body: "Hello" });
    await settled(db.current, messageId);
    expect(await deliveryOf(messageId)).toMatchObject({ status: "skipped", reason: "outside_session_window" });
    expect(requestsTo(phone)).toEqual([]);
  });

  it("a template naming a Meta template goes as that template, its parameters filled from the contact", async () => {
    const phone = freshPhone();
    const contactId = await contactWith(db.current, a, phone, { firstName: "Grace" });
    const { rows } = await asOwner(db.current, a, (c) =>
      c.query(
        `insert into herald_public.templates (channel, name, body, whatsapp_template_name, whatsapp_template_language, whatsapp_template_parameters)
         values ('whatsapp', 'order update', 'Hi {{first_name}}, your order shipped', 'order_update', 'en_US', $1) returning id`,
        [["{{first_name|there}}", "{{last_name|friend}}"]],
      ),
    );
    const messageId = await sendToContact(contactId, { templateId: rows[0].id });
    await settled(db.current, messageId);
    const [request] = requestsTo(phone);
    expect(request!.body).toMatchObject({
      to: phone.slice(1),
      type: "template",
      template: {
        name: "order_update",
        language: { code: "en_US" },
        components: [
          {
            type: "body",
            parameters: [
              { type: "text", text: "Grace" },
              { type: "text", text: "friend" },
            ],
          },
        ],
      },
    });
    expect(request!.body).not.toHaveProperty("text");
  });

  it("131047 (outside the 24-hour window) reported by Meta fails the delivery with that code", async () => {
    const phone = freshPhone("0004");
    const contactId = await contactWhoWrote(phone);
    const messageId = await sendToContact(contactId, { body: "Are you there?" });
    const failed = await waitFor(async () => {
      const d = await deliveryOf(messageId);
      return d?.status === "failed" && d;
    });
    expect(failed.error_code).toBe("131047");
  });
});

describe("a send Meta may have taken", () => {
  it("ends unknown and is never sent again: the Cloud API has no message lookup", async () => {
    const phone = freshPhone();
    const contactId = await contactWhoWrote(phone);
    server.sandbox.setFaults({ errorRate: 1 });
    let messageId: string;
    try {
      messageId = await sendToContact(contactId, { body: "Did this go?" });
      await waitFor(async () => (await deliveryOf(messageId))?.status === "unknown");
    } finally {
      server.sandbox.setFaults({});
    }
    // Looked at again after the reconcile delay: with the faults gone, a resend would reach the sandbox.
    const final = await waitFor(async () => {
      const d = await deliveryOf(messageId);
      return d.completed_at && d;
    });
    expect(final.status).toBe("unknown");
    expect(final.reason).toMatch(/cannot be looked up/);
    expect(requestsTo(phone)).toEqual([]);
  });
});

describe("the transport", () => {
  async function send(message: { to: string; body: string; mediaUrls?: string[] }, from?: string) {
    return asWorker(db.current, a, async (c) => {
      const account = (await activeAccount(c, "twilio", "whatsapp"))!;
      expect(account.kind).toBe("meta");
      return transmitSms(
        server.clients,
        { account, settings: { fallback_to_system: false, sms_from: null }, from: from ?? account.default_number! },
        { ...message, channel: "whatsapp" },
      );
    });
  }

  it("media go by link, one Graph message each, the text as the first one's caption", async () => {
    const phone = freshPhone();
    const sent = await send({
      to: phone,
      body: "Your invoice",
      mediaUrls: ["https://cdn.example.com/files/invoice%20may.pdf", "https://cdn.example.com/p/photo.JPG"],
    });
    const [document, image] = requestsTo(phone);
    expect(document!.body).toMatchObject({
      type: "document",
      document: {
        link: "https://cdn.example.com/files/invoice%20may.pdf",
        caption: "Your invoice",
        filename: "invoice may.pdf",
      },
    });
    expect(image!.body).toMatchObject({ type: "image", image: { link: "https://cdn.example.com/p/photo.JPG" } });
    expect(image!.body.image).not.toHaveProperty("caption");
    // The delivery is known by the message that carries the text.
    expect(sent.providerMessageId).toBe(document!.wamid);
    expect(sent.provider).toBe("tenant");
  });

  it("an audio cannot carry the text: the text goes first, on its own", async () => {
    const phone = freshPhone();
    await send({ to: phone, body: "Listen", mediaUrls: ["https://cdn.example.com/a/note.ogg"] });
    expect(requestsTo(phone).map((r) => r.body.type)).toEqual(["text", "audio"]);
  });

  it("an invalid access token is Meta's 190, answered as 401: certainly not accepted", async () => {
    server.sandbox.addMetaAccount(metaA.phoneNumberId, {
      accessToken: "another-token",
      appSecret: metaA.appSecret,
      webhookUrl: `${endpoint.publicUrl}${metaA.path}`,
    });
    try {
      const error = await send({ to: freshPhone(), body: "hi" }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(SendError);
      expect((error as SendError).code).toBe(190);
      expect((error as SendError).status).toBe(401);
      expect((error as SendError).uncertain).toBe(false);
    } finally {
      server.sandbox.addMetaAccount(metaA.phoneNumberId, {
        accessToken: metaA.accessToken,
        appSecret: metaA.appSecret,
        webhookUrl: `${endpoint.publicUrl}${metaA.path}`,
      });
    }
  });

  it("Meta's rate limit (80007, a 400) is answered as 429: retried later, certainly not accepted", async () => {
    const phone = freshPhone();
    server.sandbox.setFaults({ rateLimitBurst: 1 });
    try {
      const error = await send({ to: phone, body: "hi" }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(SendError);
      expect((error as SendError).code).toBe(80007);
      expect((error as SendError).status).toBe(429);
      expect((error as SendError).uncertain).toBe(false);
    } finally {
      server.sandbox.setFaults({});
    }
    expect(requestsTo(phone)).toEqual([]);
  });

  it("a sender that is not the Meta account's number is refused before any call", async () => {
    const phone = freshPhone();
    const error = await send({ to: phone, body: "hi" }, b.senderNumber).catch((e: unknown) => e);
    expect((error as SendError).code).toBe("NOT_OWN_SENDER");
    expect(requestsTo(phone)).toEqual([]);
  });
});

describe("testProviderAccount", () => {
  it("sends a WhatsApp text through the Meta account (never its token to another provider)", async () => {
    const phone = freshPhone();
    await asOwner(db.current, a, (c) =>
      c.query("select herald_public.test_provider_account($1, $2)", [metaA.accountId, phone]),
    );
    const account = await waitFor(async () => {
      const { rows } = await db.current.root.query(
        "select last_tested_at, last_error from herald_public.provider_accounts where id = $1",
        [metaA.accountId],
      );
      return rows[0].last_tested_at && rows[0];
    });
    expect(account.last_error).toBeNull();
    expect(requestsTo(phone).map((r) => r.body.type)).toEqual(["text"]);
    expect(server.sandbox.messages.filter((m) => m.provider === "sendgrid" && m.to === phone)).toEqual([]);
  });
});

describe("the sandbox's phones", () => {
  it("a phone writing in through the sandbox reaches Herald signed as Meta signs, and HELP is answered", async () => {
    const phone = freshPhone();
    const status = await server.sandbox.metaTextIn({ phoneNumberId: metaA.phoneNumberId, from: phone, body: "help" });
    expect(status).toBe(200);
    const { rows } = await db.current.root.query(
      "select keyword from herald_public.inbound_messages where tenant_id = $1 and to_number = $2 order by received_at desc limit 1",
      [a.id, metaA.number],
    );
    expect(rows[0].keyword).toBe("help");
    const reply = await waitFor(async () => requestsTo(phone)[0]);
    expect(reply.body).toMatchObject({ type: "text" });
  });
});
