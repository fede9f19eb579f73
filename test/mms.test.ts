import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROLES } from "../src/db/urls.ts";
import type { WorkerHandle } from "../src/worker/worker.ts";
import { graphql, tokenFor } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import {
  readyToSend,
  sendThroughApi,
  settled,
  startSandboxServer,
  startSendingWorker,
  type SandboxServer,
} from "./helpers/messaging.ts";
import { contactWith, useCallableApiServer } from "./helpers/webhooks.ts";

/**
 * Media (issue 16): an MMS's media reach the provider (the sandbox, through
 * the real SDK), media that break a channel's rules are refused naming
 * `mediaUrls`, and an inbound MMS's media are kept with it, shown in the
 * conversation and fetched through Herald by the tenant's members only.
 */

const db = useTestDatabase();
// Before the API server starts: it may fetch media from this sandbox.
beforeAll(async () => {
  server = await startSandboxServer();
});
const { api, endpoint } = useCallableApiServer(db, () => ({ HERALD_TWILIO_MEDIA_ORIGINS: server.origin }));
let a: TenantFixture;
let b: TenantFixture;
let aSid: string;
let server: SandboxServer;
let worker: WorkerHandle;
const tokens = { a: "", b: "", admin: "" };

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  aSid = await readyToSend(db.current, server, a);
  await readyToSend(db.current, server, b);
  server.clients.system.callbackBaseUrl = endpoint.publicUrl;
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
const freshPhone = () => `+1628558${String(1000 + ++phones)}`;

const SEND = "mutation($input: SendMessageInput!) { sendMessage(input: $input) { message { rowId } } }";

describe("outbound media", () => {
  it("an MMS with two images reaches the provider with both, in order", async () => {
    const phone = freshPhone();
    const contactId = await contactWith(db.current, a, phone);
    const media = ["https://cdn.example.test/menu.jpg", "https://cdn.example.test/map.png?size=large"];
    const messageId = await sendThroughApi(api.current, tokens.a, {
      channel: "sms",
      body: "Tonight's menu and how to find us",
      mediaUrls: media,
      contactIds: [contactId],
    });
    expect((await settled(db.current, messageId)).byStatus).toEqual({ sent: 1 });
    const sent = server.sandbox.messages.filter((m) => m.to === phone);
    expect(sent).toHaveLength(1);
    expect(sent[0]).toMatchObject({ account: aSid, channel: "sms", media, body: "Tonight's menu and how to find us" });
  });

  it("a template's media go with it; a message's own media replace them", async () => {
    const phone = freshPhone();
    const contactId = await contactWith(db.current, a, phone);
    const { body: created } = await graphql(
      api.current,
      tokens.a,
      `
        mutation ($t: TemplateInput!) {
          createTemplate(input: { template: $t }) {
            template {
              rowId
              mediaUrls
            }
          }
        }
      `,
      {
        t: {
          channel: "sms",
          name: "flyer",
          body: "Hi {{first_name}}, our flyer",
          mediaUrls: ["https://cdn.example.test/f.gif"],
        },
      },
    );
    expect(created.errors).toBeUndefined();
    const templateId = created.data!.createTemplate.template.rowId;
    const first = await sendThroughApi(api.current, tokens.a, { channel: "sms", templateId, contactIds: [contactId] });
    await settled(db.current, first);
    const second = await sendThroughApi(api.current, tokens.a, {
      channel: "sms",
      templateId,
      mediaUrls: ["https://cdn.example.test/other.png"],
      contactIds: [contactId],
    });
    await settled(db.current, second);
    expect(server.sandbox.messages.filter((m) => m.to === phone).map((m) => [m.body, m.media])).toEqual([
      ["Hi Known, our flyer", ["https://cdn.example.test/f.gif"]],
      ["Hi Known, our flyer", ["https://cdn.example.test/other.png"]],
    ]);
  });

  it("refuses media a channel cannot carry, naming mediaUrls, and sends nothing", async () => {
    const contactId = await contactWith(db.current, a, freshPhone());
    const https = (i: number) => `https://cdn.example.test/${i}.jpg`;
    const cases: [string, Record<string, unknown>][] = [
      ["plain http", { channel: "sms", body: "x", mediaUrls: ["http://cdn.example.test/a.jpg"] }],
      ["credentials in the URL", { channel: "sms", body: "x", mediaUrls: ["https://u:p@cdn.example.test/a.jpg"] }],
      ["eleven on MMS", { channel: "sms", body: "x", mediaUrls: Array.from({ length: 11 }, (_, i) => https(i)) }],
      ["two on WhatsApp", { channel: "whatsapp", body: "x", mediaUrls: [https(1), https(2)] }],
      [
        "a type WhatsApp does not carry",
        { channel: "whatsapp", body: "x", mediaUrls: ["https://cdn.example.test/a.gif"] },
      ],
      ["an executable on MMS", { channel: "sms", body: "x", mediaUrls: ["https://cdn.example.test/setup.exe"] }],
      ["any on email", { channel: "email", body: "x", subject: "s", mediaUrls: [https(1)] }],
    ];
    const before = server.sandbox.messages.length;
    for (const [what, input] of cases) {
      const { body } = await graphql(api.current, tokens.a, SEND, { input: { ...input, contactIds: [contactId] } });
      expect(body.errors?.[0], what).toMatchObject({ extensions: { code: "INVALID_INPUT", field: "mediaUrls" } });
    }
    const template = await graphql(
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
      { t: { channel: "whatsapp", name: "two media", body: "x", mediaUrls: [https(1), https(2)] } },
    );
    expect(template.body.errors?.[0]).toMatchObject({ extensions: { code: "INVALID_INPUT", field: "mediaUrls" } });
    expect(server.sandbox.messages.length).toBe(before);
  });
});

describe("inbound media", () => {
  const png = Buffer.from("89504e470d0a1a0a0000000d49484452", "hex");
  const pdf = Buffer.from("%PDF-1.4\n% a menu\n");
  let inboundId: string;
  let contactId: string;

  beforeAll(async () => {
    const phone = freshPhone();
    contactId = await contactWith(db.current, a, phone);
    const answer = await server.sandbox.textIn({
      url: `${endpoint.publicUrl}/webhooks/twilio/sms`,
      accountSid: aSid,
      from: phone,
      to: a.senderNumber,
      body: "Is this still on the menu?",
      files: [
        { contentType: "image/png", bytes: png },
        { contentType: "application/pdf", bytes: pdf },
      ],
    });
    expect(answer.status).toBe(200);
    const { rows } = await db.current.root.query(
      "select id, media_count, media_types from herald_public.inbound_messages where contact_id = $1",
      [contactId],
    );
    expect(rows).toMatchObject([{ media_count: 2, media_types: ["image/png", "application/pdf"] }]);
    inboundId = rows[0].id;
  });

  const fetchMedium = (token: string | null, id: string, n: number) =>
    fetch(`${api.current.url}/media/inbound/${id}/${n}`, {
      headers: token ? { authorization: `Bearer ${token}` } : {},
    });

  it("shows the media's types in the conversation", async () => {
    const { body } = await graphql(
      api.current,
      tokens.a,
      `
        query ($c: UUID!) {
          allContacts(condition: { rowId: $c }) {
            nodes {
              conversation(first: 5) {
                nodes {
                  direction
                  body
                  inboundMessageId
                  mediaTypes
                }
              }
            }
          }
        }
      `,
      { c: contactId },
    );
    expect(body.errors).toBeUndefined();
    expect(body.data!.allContacts.nodes[0].conversation.nodes).toEqual([
      {
        direction: "inbound",
        body: "Is this still on the menu?",
        inboundMessageId: inboundId,
        mediaTypes: ["image/png", "application/pdf"],
      },
    ]);
  });

  it("serves each medium to the tenant's members, fetched with the account's credentials", async () => {
    const image = await fetchMedium(tokens.a, inboundId, 0);
    expect(image.status).toBe(200);
    expect(image.headers.get("content-type")).toBe("image/png");
    expect(image.headers.get("x-content-type-options")).toBe("nosniff");
    expect(Buffer.from(await image.arrayBuffer())).toEqual(png);
    const document = await fetchMedium(tokens.a, inboundId, 1);
    expect(document.status).toBe(200);
    expect(Buffer.from(await document.arrayBuffer())).toEqual(pdf);
  });

  it("is not found for another tenant, an operator, a medium that is not there; 401 without a token", async () => {
    for (const [who, token, n] of [
      ["tenant B", tokens.b, 0],
      ["an operator", tokens.admin, 0],
      ["a third medium", tokens.a, 2],
      ["no such index", tokens.a, 10],
    ] as const) {
      const response = await fetchMedium(token, inboundId, n);
      expect(response.status, who).toBe(404);
      expect(await response.json(), who).toEqual({ error: { code: "NOT_FOUND", message: "No such medium." } });
    }
    expect((await fetchMedium(tokens.a, b.inboundMessageId, 0)).status).toBe(404);
    expect((await fetchMedium(null, inboundId, 0)).status).toBe(401);
  });
});
