import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { htmlToText } from "../src/messages/html-text.ts";
import type { WorkerHandle } from "../src/worker/worker.ts";
import { graphql, tokenFor, useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedExtraTenant, type TenantFixture } from "./helpers/fixtures.ts";
import {
  readyToSend,
  sendThroughApi,
  startSandboxServer,
  startSendingWorker,
  waitFor,
  type SandboxServer,
} from "./helpers/messaging.ts";
import { contactWith, webhookEnv } from "./helpers/webhooks.ts";

/**
 * Safe HTML: a contact's values are HTML-escaped in an email's HTML part and
 * verbatim in its subject and text part, as the sandbox received them through
 * the real SendGrid SDK; a template's HTML is stored as given; an email given
 * only HTML gets a text part derived from it.
 */

const db = useTestDatabase();
const api = useApiServer(db, { env: () => webhookEnv() });
let server: SandboxServer;
let worker: WorkerHandle;
let t: TenantFixture;
let token: string;
let contactId: string;

const SCRIPT = "<script>alert(1)</script>";
const BREAKOUT = `"><img src=x onerror=alert(1)>`;
const TO = "hostile@example.com";

beforeAll(async () => {
  server = await startSandboxServer();
  t = await seedExtraTenant(db.current, "safehtml");
  await readyToSend(db.current, server, t);
  token = await tokenFor(api.current, t, "member");
  contactId = await contactWith(db.current, t, null, { email: TO, firstName: SCRIPT });
  await db.current.root.query("update herald_public.contacts set last_name = $2 where id = $1", [contactId, BREAKOUT]);
  worker = await startSendingWorker(db.current, server, 4);
});

afterAll(async () => {
  await worker?.stop();
  await server?.close();
});

/** The sandbox's copy of the email with this subject (as SendGrid received it). */
const received = (subject: string) =>
  waitFor(async () => server.sandbox.messages.find((m) => m.to === TO && m.subject === subject), 30_000, subject);

describe("a hostile contact name", () => {
  it("is escaped in the HTML part and verbatim in the subject and text part", async () => {
    await sendThroughApi(api.current, token, {
      channel: "email",
      subject: "Hello {{first_name}} {{last_name}}",
      body: "Dear {{first_name}} {{last_name}},\nthe news.",
      htmlBody: `<p>Dear <b>{{first_name}}</b></p><a href="https://example.com/?who={{last_name}}" title="{{last_name}}">news</a>`,
      contactIds: [contactId],
      // Transactional: no unsubscribe footer, so each part can be compared whole.
      purpose: "transactional",
    });
    const m = await received(`Hello ${SCRIPT} ${BREAKOUT}`);
    expect(m.body).toBe(`Dear ${SCRIPT} ${BREAKOUT},\nthe news.`);
    expect(m.html).toBe(
      `<p>Dear <b>&lt;script&gt;alert(1)&lt;/script&gt;</b></p>` +
        `<a href="https://example.com/?who=&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" title="&quot;&gt;&lt;img src=x onerror=alert(1)&gt;">news</a>`,
    );
    // No tag but the template's own: the values opened none and left no attribute.
    expect(m.html!.match(/<[a-z/][^>]*>/gi)).toEqual([
      "<p>",
      "<b>",
      "</b>",
      "</p>",
      expect.stringMatching(/^<a href="[^"]*" title="[^"]*">$/),
      "</a>",
    ]);
  });

  it("is escaped in an attribute's JSON value too (an object attribute rendered into HTML)", async () => {
    await db.current.root.query("update herald_public.contacts set attributes = $2 where id = $1", [
      contactId,
      JSON.stringify({ profile: { bio: SCRIPT } }),
    ]);
    try {
      await sendThroughApi(api.current, token, {
        channel: "email",
        subject: "Profile",
        body: "Bio: {{attributes.profile}}",
        htmlBody: "<div>{{attributes.profile}}</div>",
        contactIds: [contactId],
        purpose: "transactional",
      });
      const m = await received("Profile");
      expect(m.body).toBe(`Bio: {"bio":"${SCRIPT}"}`);
      expect(m.html).toBe("<div>{&quot;bio&quot;:&quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot;}</div>");
    } finally {
      await db.current.root.query("update herald_public.contacts set attributes = '{}' where id = $1", [contactId]);
    }
  });
});

describe("a template given only HTML", () => {
  const HTML =
    `<html><head><style>p { color: red }</style><title>ignored</title></head><body>` +
    `<h1>Hello {{first_name}}</h1><p>Read <a href="https://example.com/news?a=1&amp;b=2">the news</a> &amp; more&nbsp;&eacute;t&eacute;.</p>` +
    `<ul><li>one</li><li>two</li></ul><img src="https://example.com/logo.png" alt="logo"><p>Bye<br>{{last_name|friend}}</p>` +
    `<script>track()</script></body></html>`;

  it("keeps its HTML exactly as given, and the email's text part is derived from the rendered HTML", async () => {
    const { body } = await graphql(
      api.current,
      token,
      `
        mutation ($t: TemplateInput!) {
          createTemplate(input: { template: $t }) {
            template {
              rowId
              htmlBody
              body
            }
          }
        }
      `,
      { t: { channel: "email", name: "html only", subject: "Derived {{first_name}}", body: "", htmlBody: HTML } },
    );
    expect(body.errors).toBeUndefined();
    const template = body.data!.createTemplate.template;
    expect(template.htmlBody).toBe(HTML);
    expect(template.body).toBe("");

    await sendThroughApi(api.current, token, { channel: "email", templateId: template.rowId, contactIds: [contactId] });
    const m = await received(`Derived ${SCRIPT}`);
    expect(m.html).toContain("<h1>Hello &lt;script&gt;alert(1)&lt;/script&gt;</h1>");
    // Tags gone, entities decoded, links as text (url), blocks on lines of their own; the name as the person wrote it.
    const derived = `Hello ${SCRIPT}\n\nRead the news (https://example.com/news?a=1&b=2) & more\u00a0été.\n\n * one\n * two\n\nBye\n${BREAKOUT}`;
    expect(m.body.slice(0, derived.length)).toBe(derived);
    // A marketing email: the HTML's unsubscribe footer, derived like the rest (and only once).
    expect(m.body.slice(derived.length)).toMatch(
      /^\n\nDon't want these emails\? Unsubscribe \(https?:\/\/[^\s()]+\/unsubscribe\/[^\s()]+\)\.$/,
    );
  });
});

describe("an inline email given only HTML", () => {
  it("is accepted without a body, and its text part is derived from the rendered HTML", async () => {
    await sendThroughApi(api.current, token, {
      channel: "email",
      subject: "Inline HTML",
      htmlBody: '<p>Hi <b>{{first_name}}</b>,</p><p>see <a href="https://example.com/a">this</a>.</p>',
      contactIds: [contactId],
      purpose: "transactional",
    });
    const m = await received("Inline HTML");
    expect(m.html).toBe(
      '<p>Hi <b>&lt;script&gt;alert(1)&lt;/script&gt;</b>,</p><p>see <a href="https://example.com/a">this</a>.</p>',
    );
    expect(m.body).toBe(`Hi ${SCRIPT},\n\nsee this (https://example.com/a).`);
  });
});

describe("an email template with neither text nor HTML", () => {
  it("is refused when saved, naming body", async () => {
    const { body } = await graphql(
      api.current,
      token,
      `
        mutation ($t: TemplateInput!) {
          createTemplate(input: { template: $t }) {
            template {
              rowId
            }
          }
        }
      `,
      { t: { channel: "email", name: "empty", subject: "Nothing", body: "" } },
    );
    expect(body.errors?.[0]).toMatchObject({ extensions: { code: "INVALID_INPUT", field: "body" } });
  });
});

describe("htmlToText", () => {
  it("is bounded: deep nesting is cut off, a long input is converted in time", () => {
    const deep = "<div>".repeat(5000) + "deep" + "</div>".repeat(5000);
    expect(htmlToText(deep)).toBe("…");
    const long = "<p>word &amp; <a href='https://example.com/x'>link</a></p>".repeat(8000); // ~450 kB
    const started = performance.now();
    const text = htmlToText(long);
    expect(performance.now() - started).toBeLessThan(5000);
    expect(text.split("\n\n")).toHaveLength(8000);
    expect(text.startsWith("word & link (https://example.com/x)")).toBe(true);
  });

  it("keeps a link whose text is its URL once", () => {
    expect(htmlToText('<a href="https://example.com/">https://example.com/</a>')).toBe("https://example.com/");
  });
});
