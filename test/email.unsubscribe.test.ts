import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readUnsubscribeToken, unsubscribeToken } from "../src/messages/unsubscribe.ts";
import type { SandboxMessage } from "../src/sandbox/core.ts";
import type { WorkerHandle } from "../src/worker/worker.ts";
import { tokenFor, useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedExtraTenant, type TenantFixture } from "./helpers/fixtures.ts";
import {
  asWorker,
  readyToSend,
  sendThroughApi,
  settled,
  startSandboxServer,
  startSendingWorker,
  type SandboxServer,
} from "./helpers/messaging.ts";

/**
 * One-click unsubscribe (RFC 8058) end to end: a marketing email through the
 * worker, the real SendGrid SDK and the sandbox carries List-Unsubscribe (an
 * https link) and List-Unsubscribe-Post, a visible link and the from name
 * and reply-to; a POST of the link unsubscribes (flag, consent event,
 * suppression) in that tenant only; the next marketing email skips the
 * contact while a transactional one still goes; forged, altered and
 * other-tenant tokens write nothing.
 */

const PUBLIC = "https://herald.example.test";
const db = useTestDatabase();
let server: SandboxServer;
beforeAll(async () => {
  server = await startSandboxServer(10_000);
});
const api = useApiServer(db);
let worker: WorkerHandle | undefined;
let a: TenantFixture;
let b: TenantFixture;
/** The same address, a contact of each tenant; and a bounced address, a contact of A. */
const SHARED = "shared@example.com";
const BOUNCED = "bounced@example.com";
let sharedA: string;
let sharedB: string;
let bouncedA: string;

const contactOf = async (t: TenantFixture, email: string) =>
  asWorker(db.current, t, async (c) => {
    const { rows } = await c.query("select contact_id from herald_hidden.upsert_contacts($1)", [
      JSON.stringify([{ first_name: "Sam", email }]),
    ]);
    return rows[0].contact_id as string;
  });

beforeAll(async () => {
  // The links point at Herald's public https address; the API checks them with its own key.
  server.clients.system.unsubscribe = { baseUrl: PUBLIC, key: api.config.unsubscribeKey };
  a = await seedExtraTenant(db.current, "acme-shop");
  b = await seedExtraTenant(db.current, "globex-shop");
  for (const t of [a, b]) await readyToSend(db.current, server, t);
  sharedA = await contactOf(a, SHARED);
  sharedB = await contactOf(b, SHARED);
  bouncedA = await contactOf(a, BOUNCED);
  await asWorker(db.current, a, (c) =>
    c.query("select herald_public.add_suppression('email', $1, 'bounce')", [BOUNCED]),
  );
  worker = await startSendingWorker(db.current, server, 4);
});

afterAll(async () => {
  await worker?.stop();
  await server?.close();
});

/** Sends an email (through GraphQL, as the tenant's member) and waits for every delivery to end; its deliveries by contact. */
async function sendEmail(t: TenantFixture, input: Record<string, unknown>) {
  const messageId = await sendThroughApi(api.current, await tokenFor(api.current, t, "member"), {
    channel: "email",
    ...input,
  });
  await settled(db.current, messageId, 30_000);
  const { rows } = await db.current.root.query<{ contact_id: string; status: string; reason: string | null }>(
    "select contact_id, status, reason from herald_public.deliveries where message_id = $1",
    [messageId],
  );
  return new Map(rows.map((r) => [r.contact_id, r]));
}

const received = (to: string, subject: string): SandboxMessage[] =>
  server.sandbox.messages.filter((m) => m.provider === "sendgrid" && m.to === to && m.subject === subject);

async function counts() {
  const { rows } = await db.current.root.query<{ consent: number; suppressions: number; unsubscribed: number }>(
    `select (select count(*)::int from herald_public.consent_events) as consent,
            (select count(*)::int from herald_public.suppressions) as suppressions,
            (select count(*)::int from herald_public.contacts where not email_subscribed) as unsubscribed`,
  );
  return rows[0]!;
}

async function emailState(t: TenantFixture, contactId: string) {
  return asWorker(db.current, t, async (c) => {
    const { rows } = await c.query(
      `select c.email_subscribed,
              (select array_agg(e.action || '/' || e.source || '/' || e.detail order by e.created_at) from herald_public.consent_events e
                where e.contact_id = c.id and e.channel = 'email') as events,
              (select array_agg(s.reason) from herald_public.suppressions s
                where s.kind = 'email' and s.address_hash = any (herald_hidden.pii_hashes('email', herald_public.contacts_email(c)))) as suppressions
         from herald_public.contacts c where c.id = $1`,
      [contactId],
    );
    return rows[0] as { email_subscribed: boolean; events: string[] | null; suppressions: string[] | null };
  });
}

const post = (path: string, body = "List-Unsubscribe=One-Click") =>
  fetch(`${api.current.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body,
    redirect: "manual",
  });

let token: string;

describe("a marketing email", () => {
  it("carries RFC 8058's headers with an https link, a visible link in text and HTML, the from name and reply-to", async () => {
    const deliveries = await sendEmail(a, {
      subject: "Spring sale",
      body: "Hello {{first_name}}, everything is 20% off.",
      htmlBody: "<html><body><p>Hello {{first_name}}, everything is 20% off.</p></body></html>",
      contactIds: [sharedA],
      metadata: { fromName: "Acme Shop", replyTo: "help@acme-shop.test" },
    });
    expect(deliveries.get(sharedA)?.status).toBe("sent");
    const [copy] = received(SHARED, "Spring sale");
    expect(copy).toBeDefined();
    const header = copy!.headers?.["List-Unsubscribe"];
    expect(header).toMatch(/^<https:\/\/herald\.example\.test\/unsubscribe\/[A-Za-z0-9_-]+>$/);
    expect(copy!.headers?.["List-Unsubscribe-Post"]).toBe("List-Unsubscribe=One-Click");
    const link = header!.slice(1, -1);
    expect(copy!.body).toContain("Hello Sam, everything is 20% off.");
    expect(copy!.body).toContain(`Unsubscribe: ${link}`);
    expect(copy!.html).toContain(`<a href="${link}">Unsubscribe</a>`);
    expect(copy!.html).toMatch(/Unsubscribe<\/a>\.<\/p><\/body><\/html>$/);
    expect(copy!.fromName).toBe("Acme Shop");
    expect(copy!.replyTo).toBe("help@acme-shop.test");
    token = link.slice(`${PUBLIC}/unsubscribe/`.length);
    // Neither the contact's id nor the address is in the token.
    expect(Buffer.from(token, "base64url").toString("hex")).not.toContain(sharedA.replace(/-/g, ""));
    expect(token).not.toContain("shared");
    expect(readUnsubscribeToken(api.config.unsubscribeKey, token)).toEqual({ tenantId: a.id, contactId: sharedA });
  });

  it("a template's own {{unsubscribe_url}} is the link, and no footer is added", async () => {
    await sendEmail(a, {
      subject: "Own link",
      body: "Leave any time: {{unsubscribe_url}}",
      contactIds: [sharedA],
    });
    const [copy] = received(SHARED, "Own link");
    expect(copy!.body).toBe(`Leave any time: ${PUBLIC}/unsubscribe/${token}`);
  });
});

describe("forged and foreign tokens", () => {
  it("an altered, truncated or re-signed token is a 404 and writes nothing", async () => {
    const before = await counts();
    const flipped = (token[5] === "A" ? "B" : "A") + "";
    const altered = token.slice(0, 5) + flipped + token.slice(6);
    const bytes = Buffer.from(token, "base64url");
    // Tenant B's id spliced in: the signature no longer matches.
    const spliced = Buffer.concat([
      bytes.subarray(0, 1),
      Buffer.from(b.id.replace(/-/g, ""), "hex"),
      bytes.subarray(17),
    ]).toString("base64url");
    const otherKey = unsubscribeToken(Buffer.alloc(32, 7), a.id, sharedA);
    // Only the signature altered: the tenant and the contact are still right.
    const macAltered = token.slice(0, 60) + (token[60] === "A" ? "B" : "A") + token.slice(61);
    for (const bad of [altered, macAltered, token.slice(0, -2), spliced, otherKey, "x", `${token}A`]) {
      expect((await post(`/unsubscribe/${bad}`)).status, bad).toBe(404);
      expect((await fetch(`${api.current.url}/unsubscribe/${bad}`)).status, bad).toBe(404);
      expect((await post(`/unsubscribe/${bad}/resubscribe`, "")).status, bad).toBe(404);
    }
    expect(await counts()).toEqual(before);
  });

  it("tenant B's token cannot name A's contact: 404, nothing written in either tenant", async () => {
    const before = await counts();
    const foreign = unsubscribeToken(api.config.unsubscribeKey, b.id, sharedA);
    expect((await post(`/unsubscribe/${foreign}`)).status).toBe(404);
    expect(await counts()).toEqual(before);
    expect((await emailState(a, sharedA)).email_subscribed).toBe(true);
  });

  it("a POST without List-Unsubscribe=One-Click changes nothing", async () => {
    const before = await counts();
    expect((await post(`/unsubscribe/${token}`, "")).status).toBe(400);
    expect(await counts()).toEqual(before);
  });
});

describe("one-click unsubscribe", () => {
  it("unsubscribes the contact in that tenant only: the flag, a consent event, an unsubscribe suppression", async () => {
    const response = await post(`/unsubscribe/${token}`);
    expect(response.status).toBe(200);
    const state = await emailState(a, sharedA);
    expect(state.email_subscribed).toBe(false);
    expect(state.events).toEqual(["opt_out/unsubscribe_link/one-click"]);
    expect(state.suppressions).toEqual(["unsubscribe"]);
    // The same address in tenant B is untouched.
    const other = await emailState(b, sharedB);
    expect(other).toEqual({ email_subscribed: true, events: null, suppressions: null });
    // A second click changes nothing.
    const before = await counts();
    expect((await post(`/unsubscribe/${token}`)).status).toBe(200);
    expect(await counts()).toEqual(before);
  });

  it("the next marketing email skips the contact; a transactional email still goes, without footer or headers; bounces still block it", async () => {
    const marketing = await sendEmail(a, {
      subject: "Summer sale",
      body: "Everything is 30% off.",
      contactIds: [sharedA],
    });
    expect(marketing.get(sharedA)).toMatchObject({ status: "skipped", reason: "unsubscribed" });
    expect(received(SHARED, "Summer sale")).toHaveLength(0);

    const receipt = await sendEmail(a, {
      subject: "Your receipt",
      body: "Thanks for your order.",
      purpose: "transactional",
      contactIds: [sharedA, bouncedA],
    });
    expect(receipt.get(sharedA)?.status).toBe("sent");
    expect(receipt.get(bouncedA)).toMatchObject({ status: "skipped", reason: "suppressed" });
    const [copy] = received(SHARED, "Your receipt");
    expect(copy!.body).toBe("Thanks for your order.");
    expect(copy!.headers?.["List-Unsubscribe"]).toBeUndefined();
    expect(received(BOUNCED, "Your receipt")).toHaveLength(0);

    // To every contact: for a transactional message that includes the unsubscribed one (fan-out leaves the rule to
    // the send-time decision), while a bounce still blocks.
    const notice = await sendEmail(a, {
      subject: "Terms changed",
      body: "We changed our terms.",
      purpose: "transactional",
      allContacts: true,
    });
    expect(notice.get(sharedA)?.status).toBe("sent");
    expect(notice.get(bouncedA)).toMatchObject({ status: "skipped", reason: "suppressed" });

    // Tenant B still mails the same address.
    const otherTenant = await sendEmail(b, { subject: "Globex news", body: "News.", contactIds: [sharedB] });
    expect(otherTenant.get(sharedB)?.status).toBe("sent");
  });

  it("resubscribing (the page's button) lifts the flag and the unsubscribe suppression, not a bounce", async () => {
    const response = await post(`/unsubscribe/${token}/resubscribe`, "");
    expect(response.status).toBe(200);
    const state = await emailState(a, sharedA);
    expect(state.email_subscribed).toBe(true);
    expect(state.events).toEqual(["opt_out/unsubscribe_link/one-click", "opt_in/unsubscribe_link/page"]);
    expect(state.suppressions).toBeNull();
    const again = await sendEmail(a, { subject: "Welcome back", body: "Hi.", contactIds: [sharedA] });
    expect(again.get(sharedA)?.status).toBe("sent");
  });
});
