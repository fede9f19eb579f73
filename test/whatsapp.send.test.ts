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
  settled,
  startSandboxServer,
  startSendingWorker,
  waitFor,
  type SandboxServer,
} from "./helpers/messaging.ts";
import { contactWith, textIn, useCallableApiServer } from "./helpers/webhooks.ts";

/**
 * WhatsApp through Twilio (issue 16): a document reaches the provider; the
 * 24-hour customer-service window (free-form goes at T+23h, is skipped at
 * T+25h before any provider call, an approved template goes at T+25h); the
 * provider's 63016 is a permanent failure with the same reason; approved
 * templates synced from the account with their status.
 */

const db = useTestDatabase();
const { api, endpoint } = useCallableApiServer(db);
let a: TenantFixture;
let b: TenantFixture;
let aSid: string;
let server: SandboxServer;
let worker: WorkerHandle;
const tokens = { a: "", owner: "", b: "" };
const HOUR = 3600_000;

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  server = await startSandboxServer();
  aSid = await readyToSend(db.current, server, a);
  server.clients.system.callbackBaseUrl = endpoint.publicUrl;
  // A's number also takes WhatsApp, on A's own Twilio account.
  await addWhatsAppSender(db.current, server, a);
  tokens.a = await tokenFor(api.current, a, "member");
  tokens.owner = await tokenFor(api.current, a, "owner");
  tokens.b = await tokenFor(api.current, b, "owner");
  worker = await startSendingWorker(db.current, server, 4);
});

afterAll(async () => {
  await worker?.stop();
  await server?.close();
});

let phones = 0;
const freshPhone = () => `+1628559${String(1000 + ++phones)}`;

/** A contact who wrote to A on WhatsApp `hoursAgo` ago (Herald's record of it; the sandbox's too unless told otherwise). */
async function wroteOnWhatsApp(hoursAgo: number, options: { sandboxKnows?: boolean; firstName?: string } = {}) {
  const phone = freshPhone();
  const contactId = await contactWith(db.current, a, phone, { firstName: options.firstName });
  const signedFor = `${endpoint.publicUrl}/webhooks/twilio/sms`;
  expect((await textIn(api.current, a, { from: phone, body: "hello", channel: "whatsapp", signedFor })).status).toBe(
    200,
  );
  await asRoot(db.current, (c) =>
    c.query(
      "update herald_public.inbound_messages set received_at = now() - make_interval(hours => $2) where contact_id = $1",
      [contactId, hoursAgo],
    ),
  );
  if (options.sandboxKnows !== false)
    server.sandbox.whatsapp.noteInbound(phone, a.senderNumber, new Date(Date.now() - hoursAgo * HOUR));
  return { phone, contactId };
}

const sentTo = (phone: string) => server.sandbox.messages.filter((m) => m.to === `whatsapp:${phone}`);

async function templateWith(input: Record<string, unknown>): Promise<string> {
  const { body } = await graphql(
    api.current,
    tokens.a,
    `
      mutation ($t: TemplateInput!) {
        createTemplate(input: { template: $t }) {
          template {
            rowId
          }
        }
      }
    `,
    { t: { channel: "whatsapp", ...input } },
  );
  expect(body.errors).toBeUndefined();
  return body.data!.createTemplate.template.rowId;
}

describe("media", () => {
  it("a WhatsApp message with one document reaches the provider with it", async () => {
    const { phone, contactId } = await wroteOnWhatsApp(1);
    const messageId = await sendThroughApi(api.current, tokens.a, {
      channel: "whatsapp",
      body: "Here is your invoice",
      mediaUrls: ["https://cdn.example.test/invoices/0042.pdf"],
      contactIds: [contactId],
    });
    const done = await settled(db.current, messageId);
    expect(done.byReason).toEqual({});
    expect(sentTo(phone)).toMatchObject([
      {
        account: aSid,
        channel: "whatsapp",
        from: `whatsapp:${a.senderNumber}`,
        body: "Here is your invoice",
        media: ["https://cdn.example.test/invoices/0042.pdf"],
      },
    ]);
  });
});

describe("the 24-hour window", () => {
  it("free-form: goes 23 hours after the contact wrote, is skipped at 25 hours before any provider call", async () => {
    const recent = await wroteOnWhatsApp(23);
    const stale = await wroteOnWhatsApp(25);
    const messageId = await sendThroughApi(api.current, tokens.a, {
      channel: "whatsapp",
      body: "Your table is ready",
      contactIds: [recent.contactId, stale.contactId],
    });
    await settled(db.current, messageId);
    const { rows } = await db.current.root.query(
      "select contact_id, status, reason, attempts, provider_message_id from herald_public.deliveries where message_id = $1",
      [messageId],
    );
    const byContact = Object.fromEntries(rows.map((r) => [r.contact_id, r]));
    expect(byContact[recent.contactId].status).toMatch(/^(sent|delivered)$/);
    expect(byContact[stale.contactId]).toMatchObject({
      status: "skipped",
      reason: "outside_session_window",
      attempts: 0,
      provider_message_id: null,
    });
    expect(sentTo(recent.phone)).toHaveLength(1);
    expect(sentTo(stale.phone)).toHaveLength(0);
  });

  it("an approved template goes at 25 hours, sent as the template with its variables rendered", async () => {
    const content = server.sandbox.whatsapp.addContent(aSid, {
      friendlyName: "order_ready",
      language: "en",
      body: "Hi {{1}}, order {{2}} is ready",
      approvalStatus: "approved",
    });
    const templateId = await templateWith({
      name: "order ready",
      body: "Hi {{first_name}}, your order is ready",
      contentSid: content.sid,
      contentVariables: { "1": "{{first_name|there}}", "2": "{{attributes.order|soon}}" },
    });
    const stale = await wroteOnWhatsApp(25, { firstName: "Ada" });
    const messageId = await sendThroughApi(api.current, tokens.a, {
      channel: "whatsapp",
      templateId,
      contactIds: [stale.contactId],
    });
    const done = await settled(db.current, messageId);
    expect(done.byReason).toEqual({});
    expect(sentTo(stale.phone)).toMatchObject([{ contentSid: content.sid, body: "Hi Ada, order soon is ready" }]);
  });

  it("a template's contentSid is checked where it is saved, naming the field", async () => {
    const bad = [
      [{ name: "t1", body: "x", contentSid: "HXnot-a-sid" }, "contentSid"],
      [{ name: "t2", body: "x", channel: "sms", contentSid: `HX${"a".repeat(32)}` }, "contentSid"],
      [{ name: "t3", body: "x", contentVariables: { "1": "x" } }, "contentVariables"],
      [
        { name: "t4", body: "x", contentSid: `HX${"a".repeat(32)}`, contentVariables: { "1": "{{nope}}" } },
        "contentVariables",
      ],
    ] as const;
    for (const [input, field] of bad) {
      const { body } = await graphql(
        api.current,
        tokens.a,
        `
          mutation ($t: TemplateInput!) {
            createTemplate(input: { template: $t }) {
              template {
                rowId
              }
            }
          }
        `,
        { t: { channel: "whatsapp", ...input } },
      );
      expect(body.errors?.[0], JSON.stringify(input)).toMatchObject({ extensions: { code: "INVALID_INPUT", field } });
    }
  });

  it("the provider's 63016 (free-form outside its window) fails the delivery for good, with the same reason", async () => {
    // Herald saw the contact write 2 hours ago; the provider did not (its window is closed).
    const { phone, contactId } = await wroteOnWhatsApp(2, { sandboxKnows: false });
    const messageId = await sendThroughApi(api.current, tokens.a, {
      channel: "whatsapp",
      body: "Following up",
      contactIds: [contactId],
    });
    const row = await waitFor(async () => {
      const { rows } = await db.current.root.query(
        "select status, reason, error_code, attempts from herald_public.deliveries where message_id = $1",
        [messageId],
      );
      return rows[0]?.status === "failed" && rows[0];
    }, 20_000);
    expect(row).toEqual({ status: "failed", reason: "outside_session_window", error_code: "63016", attempts: 1 });
    expect(sentTo(phone)).toHaveLength(1);
  });
});

describe("approved templates synced from the account", () => {
  it("lists the account's templates with their approval status, shown on the template that references one", async () => {
    const approved = server.sandbox.whatsapp.addContent(aSid, {
      friendlyName: "appointment_reminder",
      language: "en",
      body: "Reminder: {{1}} at {{2}}",
      approvalStatus: "approved",
    });
    const pending = server.sandbox.whatsapp.addContent(aSid, {
      friendlyName: "new_offer",
      language: "es",
      body: "Oferta {{1}}",
      approvalStatus: "pending",
    });
    const templateId = await templateWith({ name: "offer", body: "An offer", contentSid: pending.sid });
    const APPROVAL = `query($t: UUID!) { allTemplates(condition: { rowId: $t }) { nodes { contentSid approvalStatus } } }`;
    expect((await graphql(api.current, tokens.a, APPROVAL, { t: templateId })).body.data!.allTemplates.nodes).toEqual([
      { contentSid: pending.sid, approvalStatus: null },
    ]);

    const SYNC = `mutation($id: UUID!) { syncContentTemplates(input: { providerAccountId: $id }) { providerAccount { rowId } } }`;
    // Another tenant's account does not exist for B; a plain member may not sync.
    expect((await graphql(api.current, tokens.b, SYNC, { id: a.providerAccountId })).body.errors?.[0]).toMatchObject({
      extensions: { code: "NOT_FOUND", field: "providerAccountId" },
    });
    expect((await graphql(api.current, tokens.a, SYNC, { id: a.providerAccountId })).body.errors).toBeDefined();
    const synced = await graphql(api.current, tokens.owner, SYNC, { id: a.providerAccountId });
    expect(synced.body.errors).toBeUndefined();

    const listed = await waitFor(async () => {
      const { body } = await graphql(
        api.current,
        tokens.a,
        `
          query {
            allProviderAccounts {
              nodes {
                rowId
                contentSyncedAt
                contentTemplates
              }
            }
          }
        `,
      );
      const account = body.data?.allProviderAccounts.nodes.find(
        (n: { rowId: string }) => n.rowId === a.providerAccountId,
      );
      return account?.contentSyncedAt && account.contentTemplates;
    }, 20_000);
    expect(listed).toEqual(
      expect.arrayContaining([
        expect.objectContaining({
          sid: approved.sid,
          friendlyName: "appointment_reminder",
          body: "Reminder: {{1}} at {{2}}",
          approvalStatus: "approved",
        }),
        expect.objectContaining({ sid: pending.sid, language: "es", approvalStatus: "pending" }),
      ]),
    );
    expect((await graphql(api.current, tokens.a, APPROVAL, { t: templateId })).body.data!.allTemplates.nodes).toEqual([
      { contentSid: pending.sid, approvalStatus: "pending" },
    ]);
  });

  it("a provider's refusal is kept as the account's last error; what was synced stays", async () => {
    const before = await db.current.root.query(
      "select content_synced_at, content_templates from herald_public.provider_accounts where id = $1",
      [a.providerAccountId],
    );
    server.sandbox.setFaults({ errorRate: 1 });
    try {
      const SYNC = `mutation($id: UUID!) { syncContentTemplates(input: { providerAccountId: $id }) { providerAccount { rowId } } }`;
      expect((await graphql(api.current, tokens.owner, SYNC, { id: a.providerAccountId })).body.errors).toBeUndefined();
      const error = await waitFor(async () => {
        const { rows } = await db.current.root.query(
          "select last_error from herald_public.provider_accounts where id = $1",
          [a.providerAccountId],
        );
        return rows[0].last_error as string | null;
      }, 20_000);
      expect(error).toMatch(/Internal Server Error|500/);
    } finally {
      server.sandbox.setFaults({});
    }
    const after = await db.current.root.query(
      "select content_synced_at, content_templates from herald_public.provider_accounts where id = $1",
      [a.providerAccountId],
    );
    expect(after.rows).toEqual(before.rows);
  });
});
