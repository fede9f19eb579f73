import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROLES } from "../src/db/urls.ts";
import { twimlMessages } from "../src/sandbox/inbound.ts";
import { twilioSignature } from "../src/sandbox/wire.ts";
import type { WorkerHandle } from "../src/worker/worker.ts";
import { graphql, useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import { asOwner, asRoot, asWorker, openSendWindowNow, readyToSend, sendThroughApi, startSandboxServer, startSendingWorker, waitFor, type SandboxServer } from "./helpers/messaging.ts";
import { contactWith as contactWithPhone, inboundText, PUBLIC_URL, postTwilio, SYSTEM_TWILIO, webhookEnv, writtenRows } from "./helpers/webhooks.ts";

/**
 * POST /webhooks/twilio/sms: signatures, tenant resolution by the receiving
 * number, keywords and their consent effects, and isolation between tenants
 * that share a contact's phone number. Requests are signed for the public URL
 * and sent to the local server, as through a TLS-terminating proxy.
 */

const db = useTestDatabase();
const api = useApiServer(db, { env: () => webhookEnv() });
let a: TenantFixture;
let b: TenantFixture;
/** Each tenant's number on its own Twilio account, and that account's auth token. */
const numbers = { a: "", b: "" };
const tokens = { a: "", b: "" };
/** A number of A's on the system account (assigned by an operator), signed for with the system's token. */
const A_SYSTEM_NUMBER = "+14155559900";
const A_WHATSAPP_NUMBER = "+14155559901";
/** The system's shared sender (HERALD_SMS_FROM's default). */
const SYSTEM_SENDER = "+15005550006";
const SMS = "/webhooks/twilio/sms";

let phoneCounter = 0;
/** A phone no earlier test has used. */
const freshPhone = () => `+1628555${String(1000 + ++phoneCounter).padStart(4, "0")}`;

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  const numberOf = async (t: TenantFixture) =>
    (await db.current.root.query("select phone_number from herald_public.sender_numbers where id = $1", [t.senderNumberId])).rows[0].phone_number as string;
  numbers.a = await numberOf(a);
  numbers.b = await numberOf(b);
  tokens.a = a.providerSecret;
  tokens.b = b.providerSecret;
  await asRoot(db.current, (c) =>
    c.query(
      "insert into herald_public.sender_numbers (tenant_id, phone_number, channel) values ($1, $2, 'sms'), ($1, $3, 'whatsapp')",
      [a.id, A_SYSTEM_NUMBER, A_WHATSAPP_NUMBER],
    ),
  );
});

/** A texts in to one of A's numbers (signed with the token of the account that owns it). */
async function text(from: string, body: string, options: { to?: string; token?: string; sid?: string; channel?: "sms" | "whatsapp" } = {}) {
  const to = options.to ?? numbers.a;
  const token = options.token ?? (to === numbers.b ? tokens.b : to === numbers.a ? tokens.a : SYSTEM_TWILIO.authToken);
  const result = await postTwilio(api.current, SMS, inboundText({ from, to, body, sid: options.sid, channel: options.channel }), { token });
  return { ...result, replies: result.status === 200 ? twimlMessages(result.body) : [] };
}

const contactWith = (t: TenantFixture, phone: string, firstName?: string) => contactWithPhone(db.current, t, phone, { firstName });

/** What the tenant's data says about this contact's consent. */
async function consentOf(t: TenantFixture, contactId: string) {
  return asWorker(db.current, t, async (c) => {
    const { rows } = await c.query(
      `select c.sms_subscribed, c.whatsapp_subscribed,
              exists (select 1 from herald_public.suppressions s where s.tenant_id = c.tenant_id and s.kind = 'phone' and s.address_hash = c.phone_hash) as suppressed,
              (select coalesce(json_agg(json_build_object('action', e.action, 'source', e.source, 'detail', e.detail, 'channel', e.channel) order by e.created_at), '[]')
                 from herald_public.consent_events e where e.tenant_id = c.tenant_id and e.contact_id = c.id) as events
         from herald_public.contacts c where c.id = $1`,
      [contactId],
    );
    return rows[0] as { sms_subscribed: boolean; whatsapp_subscribed: boolean; suppressed: boolean; events: { action: string; source: string; detail: string; channel: string }[] };
  });
}

/** Herald's default replies, for a tenant that set none of its own (tenant A until the HELP tests, which restore it). */
const DEFAULT_STOP = "Tenant A: You are unsubscribed and will receive no more messages. Reply START to resubscribe.";
const DEFAULT_START = "Tenant A: You are resubscribed. Msg frequency varies. Msg&data rates may apply. Reply HELP for help, STOP to cancel.";
const DEFAULT_HELP = "Tenant A: account notifications. Msg frequency varies. Msg&data rates may apply. Reply STOP to cancel.";

describe("signatures", () => {
  it("refuses a missing, forged, wrongly keyed, tampered or re-signed-for-another-host request with 403, writing nothing", async () => {
    const before = await writtenRows(db.current);
    const params = inboundText({ from: freshPhone(), to: numbers.a, body: "STOP" });
    const attempts: [string, Parameters<typeof postTwilio>[3], Record<string, string>?][] = [
      ["no signature", { token: tokens.a, signature: null }],
      ["a made-up signature", { token: tokens.a, signature: "bm90IGEgc2lnbmF0dXJl" }],
      ["tenant B's token", { token: tokens.b }],
      ["the system's token, for a number on A's own account", { token: SYSTEM_TWILIO.authToken }],
      ["signed for another host", { token: tokens.a, signedFor: `https://evil.example.com${SMS}` }],
      ["signed for the local address, not the public URL", { token: tokens.a, signedFor: `${api.current.url}${SMS}` }],
      ["signed for http instead of https", { token: tokens.a, signedFor: `${PUBLIC_URL.replace("https:", "http:")}${SMS}` }],
    ];
    for (const [label, options] of attempts) {
      const result = await postTwilio(api.current, SMS, params, options);
      expect(result.status, label).toBe(403);
      expect(JSON.parse(result.body).error.code, label).toMatch(/^(MISSING|INVALID)_SIGNATURE$/);
    }
    // Signed properly, then changed on the way.
    const tampered = await postTwilio(api.current, SMS, { ...params, Body: "START" }, { token: tokens.a, signature: twilioSignature(tokens.a, `${PUBLIC_URL}${SMS}`, params) });
    expect(tampered.status, "a tampered body").toBe(403);
    expect(await writtenRows(db.current)).toEqual(before);
  });

  it("accepts the same request signed for the public URL, though it arrives at the local address", async () => {
    const before = await writtenRows(db.current);
    const result = await postTwilio(api.current, SMS, inboundText({ from: freshPhone(), to: numbers.a, body: "hello" }), { token: tokens.a });
    expect(result.status).toBe(200);
    expect((await writtenRows(db.current))["herald_public.inbound_messages"]).toBe(Number(before["herald_public.inbound_messages"]) + 1);
  });

  it("answers 404 for a number no tenant has, and writes nothing", async () => {
    const before = await writtenRows(db.current);
    const result = await text(freshPhone(), "STOP", { to: "+14155550999", token: SYSTEM_TWILIO.authToken });
    expect(result.status).toBe(404);
    expect(JSON.parse(result.body).error.code).toBe("UNKNOWN_NUMBER");
    expect(await writtenRows(db.current)).toEqual(before);
  });

  it("finds a number's tenant as soon as an operator assigns it (a 404 is not remembered)", async () => {
    const number = "+14155550998";
    expect((await text(freshPhone(), "hi", { to: number, token: SYSTEM_TWILIO.authToken })).status).toBe(404);
    await asRoot(db.current, (c) => c.query("insert into herald_public.sender_numbers (tenant_id, phone_number) values ($1, $2)", [a.id, number]));
    expect((await text(freshPhone(), "hi", { to: number, token: SYSTEM_TWILIO.authToken })).status).toBe(200);
  });

  it("status callbacks, too, are verified against the public URL, not the address they arrive at", async () => {
    const path = `/webhooks/twilio/status?tenant=${a.id}`;
    const params = { AccountSid: SYSTEM_TWILIO.accountSid, MessageSid: `SM${"e".repeat(32)}`, MessageStatus: "delivered", To: freshPhone() };
    expect((await postTwilio(api.current, path, params, { token: SYSTEM_TWILIO.authToken, signedFor: `${api.current.url}${path}` })).status).toBe(403);
    // Properly signed, it is accepted (and names no delivery Herald knows).
    expect((await postTwilio(api.current, path, params, { token: SYSTEM_TWILIO.authToken })).status).toBe(204);
  });

  it("cannot verify a number on an account that authenticates with an API key (Twilio signs with the auth token): 403", async () => {
    // One active Twilio account per tenant: B's usual one steps aside meanwhile.
    const setB = (status: string) => asRoot(db.current, (c) => c.query("update herald_public.provider_accounts set status = $2 where id = $1", [b.providerAccountId, status]));
    await setB("disabled");
    let apiKeyAccount: string | undefined;
    try {
      apiKeyAccount = await asOwner(db.current, b, async (c) => {
        const { rows } = await c.query("select id from herald_public.create_provider_account('twilio', 'API key', 'api-key-secret', $1, $2)", [`AC${"6".repeat(32)}`, `SK${"6".repeat(32)}`]);
        await c.query("insert into herald_public.sender_numbers (phone_number, provider_account_id) values ('+14155559902', $1)", [rows[0].id]);
        return rows[0].id as string;
      });
      const before = await writtenRows(db.current);
      expect((await text(freshPhone(), "hello", { to: "+14155559902", token: "api-key-secret" })).status).toBe(403);
      expect(await writtenRows(db.current)).toEqual(before);
    } finally {
      await asRoot(db.current, (c) => c.query("update herald_public.provider_accounts set status = 'disabled' where id = $1", [apiKeyAccount ?? null]));
      await setB("active");
    }
  });

  it("verifies a number on the system account with the system's token, and only with it", async () => {
    const phone = freshPhone();
    expect((await text(phone, "hi", { to: A_SYSTEM_NUMBER, token: tokens.a })).status).toBe(403);
    const ok = await text(phone, "hi", { to: A_SYSTEM_NUMBER, token: SYSTEM_TWILIO.authToken });
    expect(ok.status).toBe(200);
    expect(ok.body).toMatch(/<Response\/>|<Response><\/Response>/);
  });
});

describe("malformed requests", () => {
  it("refuses a repeated parameter or an id out of shape with 400, even when the signature verifies, and writes nothing", async () => {
    const before = await writtenRows(db.current);
    const params = inboundText({ from: freshPhone(), to: numbers.a, body: "START" });
    // The signature joins names and values: moving NumMedia into MessageSid keeps it valid.
    const { NumMedia, ...rest } = params;
    const reshaped = { ...rest, MessageSid: `${params.MessageSid}NumMedia${NumMedia}` };
    const result = await postTwilio(api.current, SMS, reshaped, { token: tokens.a, signature: twilioSignature(tokens.a, `${PUBLIC_URL}${SMS}`, params) });
    expect(result.status).toBe(400);
    // A parameter twice.
    const body = `${new URLSearchParams(params)}&To=${encodeURIComponent(numbers.b)}`;
    const repeated = await fetch(`${api.current.url}${SMS}`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", "x-twilio-signature": twilioSignature(tokens.a, `${PUBLIC_URL}${SMS}`, params) },
      body,
    });
    expect(repeated.status).toBe(400);
    expect(await writtenRows(db.current)).toEqual(before);
  });

  it("stores a text with a NUL character without it, and it takes no message sharing its transaction down", async () => {
    const phones = Array.from({ length: 8 }, () => freshPhone());
    await Promise.all(phones.map((p) => contactWith(a, p)));
    const results = await Promise.all(phones.map((p, i) => text(p, i === 3 ? "hi\u0000there" : "STOP")));
    expect(results.map((r) => r.status)).toEqual(phones.map(() => 200));
    const { rows } = await asWorker(db.current, a, (c) =>
      c.query("select herald_public.inbound_messages_body(m) as body from herald_public.inbound_messages m join herald_public.contacts c on c.id = m.contact_id where herald_public.contacts_phone(c) = $1", [phones[3]]),
    );
    expect(rows).toEqual([{ body: "hithere" }]);
  });
});

describe("who owns a number", () => {
  it("a tenant cannot make a number a system number by deleting its own account: the number goes with the account", async () => {
    const owner = await api.current.authenticator.sign({ role: ROLES.member, tenant_id: a.id, sub: a.ownerId });
    // A registers the system's shared sender on an account of its own (one active account per kind:
    // its usual one steps aside meanwhile)…
    const setFixtureAccount = (status: string) =>
      asRoot(db.current, (c) => c.query("update herald_public.provider_accounts set status = $2 where id = $1", [a.providerAccountId, status]));
    await setFixtureAccount("disabled");
    const account = await graphql(api.current, owner, `mutation { createProviderAccount(input: {kind: "twilio", name: "Squat", secret: "squatting-secret", twilioAccountSid: "AC${"5".repeat(32)}"}) { result { rowId } } }`);
    expect(account.body.errors).toBeUndefined();
    const accountId = account.body.data!.createProviderAccount.result.rowId;
    const number = await graphql(api.current, owner, `mutation($acc: UUID!) { createSenderNumber(input: {senderNumber: {phoneNumber: "${SYSTEM_SENDER}", providerAccountId: $acc}}) { senderNumber { rowId } } }`, { acc: accountId });
    expect(number.body.errors).toBeUndefined();
    // …and deletes the account: the number is deleted with it, not handed to the system account.
    const deleted = await graphql(api.current, owner, `mutation($acc: UUID!) { deleteProviderAccountByTenantIdAndRowId(input: {tenantId: "${a.id}", rowId: $acc}) { providerAccount { rowId } } }`, { acc: accountId });
    expect(deleted.body.errors).toBeUndefined();
    await setFixtureAccount("active");
    const { rows } = await db.current.root.query("select tenant_id, provider_account_id from herald_public.sender_numbers where phone_number = $1", [SYSTEM_SENDER]);
    expect(rows).toEqual([]);
    // Texts to the shared number, signed by the system's account, belong to no tenant.
    const reply = await text(freshPhone(), "STOP", { to: SYSTEM_SENDER, token: SYSTEM_TWILIO.authToken });
    expect(reply.status).toBe(404);
  });
});

describe("receiving a message", () => {
  it("stores it encrypted for the number's tenant, matched to the contact by phone hash, once per MessageSid", async () => {
    const phone = freshPhone();
    const contactId = await contactWith(a, phone, "Ada");
    const sid = "SM" + "a".repeat(32);
    const first = await text(phone, "Running 10 minutes late", { sid });
    const again = await text(phone, "Running 10 minutes late", { sid });
    expect([first.status, again.status]).toEqual([200, 200]);
    const { rows } = await db.current.root.query(
      "select tenant_id, contact_id, to_number, keyword, encode(from_encrypted, 'escape') as from_raw, encode(body_encrypted, 'escape') as body_raw from herald_public.inbound_messages where provider_message_id = $1",
      [sid],
    );
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ tenant_id: a.id, contact_id: contactId, to_number: numbers.a, keyword: null });
    expect(rows[0].from_raw).not.toContain(phone.slice(1));
    expect(rows[0].body_raw).not.toContain("late");
    // The tenant reads it in plain text; tenant B sees nothing.
    const tokenA = await api.current.authenticator.sign({ role: ROLES.member, tenant_id: a.id, sub: a.memberId });
    const tokenB = await api.current.authenticator.sign({ role: ROLES.member, tenant_id: b.id, sub: b.memberId });
    const query = `{ allInboundMessages(condition: { providerMessageId: "${sid}" }) { nodes { from body contact { firstName } senderNumber { phoneNumber } } } }`;
    const seen = await graphql(api.current, tokenA, query);
    expect(seen.body.errors).toBeUndefined();
    expect(seen.body.data!.allInboundMessages.nodes).toEqual([{ from: phone, body: "Running 10 minutes late", contact: { firstName: "Ada" }, senderNumber: { phoneNumber: numbers.a } }]);
    expect((await graphql(api.current, tokenB, query)).body.data!.allInboundMessages.nodes).toEqual([]);
  });

  it("makes an unknown sender a contact, flagged as created by the inbound message", async () => {
    const phone = freshPhone();
    expect((await text(phone, "Hello? Who is this")).status).toBe(200);
    const tokenA = await api.current.authenticator.sign({ role: ROLES.member, tenant_id: a.id, sub: a.memberId });
    const { body } = await graphql(api.current, tokenA, `{ contactByPhone(phone: "${phone}") { phone createdByInbound smsSubscribed inboundMessages { totalCount } } }`);
    expect(body.data!.contactByPhone).toEqual({ phone, createdByInbound: true, smsSubscribed: true, inboundMessages: { totalCount: 1 } });
  });
});

describe("keywords", () => {
  // Every opt-out word, in the forms people type them.
  const STOP = ["STOP", "stop", "Stop.", "  STOP  ", "STOPALL", "stop all", "UNSUBSCRIBE", "Unsubscribe!", "CANCEL", "end", "QUIT", "REVOKE",
    "OPTOUT", "opt out", "Opt-Out", "stop please", "Please STOP", "stop texting me", "S.T.O.P", "ＳＴＯＰ"];

  it.each(STOP)("%j opts out: unsubscribed, suppressed, recorded, confirmed", async (word) => {
    const phone = freshPhone();
    const contactId = await contactWith(a, phone);
    const result = await text(phone, word);
    expect(result.status).toBe(200);
    expect(result.replies).toEqual([DEFAULT_STOP]);
    const consent = await consentOf(a, contactId);
    expect(consent).toMatchObject({ sms_subscribed: false, suppressed: true });
    expect(consent.events).toEqual([{ action: "opt_out", source: "keyword", detail: expect.stringMatching(/^(STOP|STOPALL|UNSUBSCRIBE|CANCEL|END|QUIT|REVOKE|OPTOUT)$/), channel: "sms" }]);
  });

  it.each(["START", "start", "Unstop", "YES", "yes please"])("%j after an opt-out opts back in", async (word) => {
    const phone = freshPhone();
    const contactId = await contactWith(a, phone);
    await text(phone, "STOP");
    const result = await text(phone, word);
    expect(result.replies).toEqual([DEFAULT_START]);
    const consent = await consentOf(a, contactId);
    expect(consent).toMatchObject({ sms_subscribed: true, suppressed: false });
    expect(consent.events.map((e) => e.action)).toEqual(["opt_out", "opt_in"]);
  });

  it("YES from a subscribed contact is an answer, not an opt-in", async () => {
    const phone = freshPhone();
    const contactId = await contactWith(a, phone);
    const result = await text(phone, "Yes");
    expect(result.replies).toEqual([]);
    expect((await consentOf(a, contactId)).events).toEqual([]);
    const { rows } = await db.current.root.query("select keyword from herald_public.inbound_messages where contact_id = $1", [contactId]);
    expect(rows).toEqual([{ keyword: null }]);
  });

  it.each(["HELP", "help", "Info", "help me", "HELP!"])("%j gets the HELP text and changes no subscription", async (word) => {
    const phone = freshPhone();
    const contactId = await contactWith(a, phone);
    const result = await text(phone, word);
    expect(result.replies).toEqual([DEFAULT_HELP]);
    expect(await consentOf(a, contactId)).toMatchObject({ sms_subscribed: true, suppressed: false, events: [{ action: "help", source: "keyword" }] });
  });

  it.each([
    "Can you stop by at 5?",
    "Please don't stop the reminders",
    "I need to cancel my appointment tomorrow",
    "stopping by later",
    "The end of the week works",
    "Thank you!",
    "yes I will be there at 10 thanks",
  ])("%j is an ordinary message: no reply, nothing changes", async (body) => {
    const phone = freshPhone();
    const contactId = await contactWith(a, phone);
    const result = await text(phone, body);
    expect(result.status).toBe(200);
    expect(result.replies).toEqual([]);
    expect(await consentOf(a, contactId)).toEqual({ sms_subscribed: true, whatsapp_subscribed: true, suppressed: false, events: [] });
  });

  it("STOP then START: the suppression it added goes, an operator's manual one stays", async () => {
    const phone = freshPhone();
    const contactId = await contactWith(a, phone);
    expect((await text(phone, "STOP")).replies).toHaveLength(1);
    expect(await consentOf(a, contactId)).toMatchObject({ sms_subscribed: false, suppressed: true });
    expect((await text(phone, "START")).replies).toHaveLength(1);
    expect(await consentOf(a, contactId)).toMatchObject({ sms_subscribed: true, suppressed: false });

    const other = freshPhone();
    const otherId = await contactWith(a, other);
    await asWorker(db.current, a, (c) => c.query("select herald_public.add_suppression('phone', $1, 'manual', 'asked by phone')", [other]));
    expect((await text(other, "STOP")).replies).toEqual([DEFAULT_STOP]);
    expect((await text(other, "START")).replies).toEqual([DEFAULT_START]);
    const after = await consentOf(a, otherId);
    expect(after).toMatchObject({ sms_subscribed: true, suppressed: true });
    expect(after.events.map((e) => e.action)).toEqual(["opt_out", "opt_in"]);
  });

  it("START also lifts a carrier opt-out (Twilio 21610), since the person opted back in at the carrier too", async () => {
    const phone = freshPhone();
    const contactId = await contactWith(a, phone);
    await asWorker(db.current, a, (c) => c.query("select herald_hidden.record_opt_out('phone', $1, 'sms', 'carrier', '21610')", [phone]));
    expect(await consentOf(a, contactId)).toMatchObject({ sms_subscribed: false, suppressed: true });
    expect((await text(phone, "START")).replies).toEqual([DEFAULT_START]);
    expect(await consentOf(a, contactId)).toMatchObject({ sms_subscribed: true, suppressed: false });
  });

  it("YES from a subscribed contact whose phone is suppressed is an opt-in (what it lifts is theirs alone)", async () => {
    const phone = freshPhone();
    const contactId = await contactWith(a, phone);
    await asWorker(db.current, a, (c) => c.query("select herald_public.add_suppression('phone', $1, 'unsubscribe', 'by the tenant')", [phone]));
    expect((await text(phone, "YES")).replies).toEqual([DEFAULT_START]);
    expect(await consentOf(a, contactId)).toMatchObject({ sms_subscribed: true, suppressed: false, events: [{ action: "opt_in", detail: "YES" }] });
  });

  it("a keyword from a sender that is no phone number (a short code) is stored and changes no one", async () => {
    const before = (await db.current.root.query("select count(*)::int as n from herald_public.consent_events where tenant_id = $1", [a.id])).rows[0].n;
    const result = await postTwilio(api.current, SMS, { ...inboundText({ from: "+1", to: numbers.a, body: "STOP" }), From: "72345" }, { token: tokens.a });
    expect(result.status).toBe(200);
    expect(twimlMessages(result.body)).toEqual([]);
    const { rows } = await db.current.root.query("select contact_id, keyword from herald_public.inbound_messages where tenant_id = $1 order by received_at desc limit 1", [a.id]);
    expect(rows[0]).toEqual({ contact_id: null, keyword: null });
    expect((await db.current.root.query("select count(*)::int as n from herald_public.consent_events where tenant_id = $1", [a.id])).rows[0].n).toBe(before);
  });

  it("an opt-out from someone Herald did not know creates them opted out, and suppressed", async () => {
    const phone = freshPhone();
    expect((await text(phone, "UNSUBSCRIBE")).replies).toEqual([DEFAULT_STOP]);
    const contact = await asWorker(db.current, a, async (c) =>
      (await c.query("select id, created_by_inbound from herald_public.contacts where phone_hash = any (herald_hidden.pii_hashes('phone', $1))", [phone])).rows[0],
    );
    expect(contact.created_by_inbound).toBe(true);
    expect(await consentOf(a, contact.id)).toMatchObject({ sms_subscribed: false, suppressed: true });
  });

  it("a duplicate STOP (same MessageSid) records one opt-out and answers the same", async () => {
    const phone = freshPhone();
    const contactId = await contactWith(a, phone);
    const sid = "SM" + "d".repeat(32);
    const first = await text(phone, "STOP", { sid });
    const second = await text(phone, "STOP", { sid });
    expect(second.replies).toEqual(first.replies);
    expect((await consentOf(a, contactId)).events).toHaveLength(1);
  });

  it("on WhatsApp, STOP unsubscribes from WhatsApp only (no phone suppression)", async () => {
    const phone = freshPhone();
    const contactId = await contactWith(a, phone);
    const result = await text(phone, "stop", { to: A_WHATSAPP_NUMBER, token: SYSTEM_TWILIO.authToken, channel: "whatsapp" });
    expect(result.replies).toEqual([DEFAULT_STOP]);
    expect(await consentOf(a, contactId)).toMatchObject({ sms_subscribed: true, whatsapp_subscribed: false, suppressed: false, events: [{ channel: "whatsapp" }] });
  });
});

describe("HELP text", () => {
  afterAll(() =>
    asRoot(db.current, (c) =>
      c.query(
        `update herald_public.tenant_settings set business_name = null, program_description = null, support_phone = null, support_email = null,
                support_website = null, message_frequency = null, help_disclaimer = null, stop_reply = null, start_reply = null, help_text = null
          where tenant_id = $1`,
        [a.id],
      ),
    ),
  );

  it("uses Herald's defaults, then each of the tenant's fields, then the tenant's whole text", async () => {
    const phone = freshPhone();
    await contactWith(a, phone);
    const help = async () => (await text(phone, "HELP")).replies[0];
    expect(await help()).toBe(DEFAULT_HELP);

    await asRoot(db.current, (c) =>
      c.query(
        `update herald_public.tenant_settings set business_name = 'Acme Dental', program_description = 'Appointment reminders',
                support_phone = '+1 415 555 0100', support_email = 'help@acme.test', support_website = 'acme.test/sms',
                message_frequency = 'Up to 4 msgs/month', help_disclaimer = 'Terms: acme.test/terms',
                stop_reply = 'Acme: you will get no more texts.', start_reply = 'Acme: welcome back.'
          where tenant_id = $1`,
        [a.id],
      ),
    );
    expect(await help()).toBe(
      "Acme Dental: Appointment reminders. Help: +1 415 555 0100, help@acme.test, acme.test/sms. Up to 4 msgs/month. Msg&data rates may apply. Reply STOP to cancel. Terms: acme.test/terms",
    );
    expect((await text(phone, "STOP")).replies).toEqual(["Acme: you will get no more texts."]);
    expect((await text(phone, "START")).replies).toEqual(["Acme: welcome back."]);

    await asRoot(db.current, (c) => c.query("update herald_public.tenant_settings set help_text = 'Acme: call us at 555-0100. Reply STOP to opt out.' where tenant_id = $1", [a.id]));
    expect(await help()).toBe("Acme: call us at 555-0100. Reply STOP to opt out.");
    // What the API shows the tenant's admins is what is sent.
    const tokenA = await api.current.authenticator.sign({ role: ROLES.member, tenant_id: a.id, sub: a.ownerId });
    const { body } = await graphql(api.current, tokenA, "{ allTenantSettings { nodes { keywordReplies { help stop start } } } }");
    expect(body.data!.allTenantSettings.nodes[0].keywordReplies).toEqual({ help: await help(), stop: "Acme: you will get no more texts.", start: "Acme: welcome back." });

    // Tenant B, which set nothing, still answers with its own name and Herald's defaults.
    const other = freshPhone();
    await contactWith(b, other);
    expect((await text(other, "INFO", { to: numbers.b })).replies[0]).toMatch(/^Tenant B: account notifications\. .*Reply STOP to cancel\.$/);
  });
});

describe("two tenants with the same contact", () => {
  it("a STOP to A's number changes A's contact only; B's rows are untouched", async () => {
    const phone = freshPhone();
    const inA = await contactWith(a, phone);
    const inB = await contactWith(b, phone);
    const rowsOfB = () =>
      db.current.root.query(
        `select (select count(*)::int from herald_public.inbound_messages where tenant_id = $1) as inbound,
                (select count(*)::int from herald_public.consent_events where tenant_id = $1) as consent,
                (select count(*)::int from herald_public.suppressions where tenant_id = $1) as suppressions,
                (select count(*)::int from herald_public.contacts where tenant_id = $1) as contacts`,
        [b.id],
      );
    const before = (await rowsOfB()).rows[0];
    expect((await text(phone, "STOP", { to: numbers.a })).replies).toHaveLength(1);
    expect((await rowsOfB()).rows[0]).toEqual(before);
    expect(await consentOf(a, inA)).toMatchObject({ sms_subscribed: false, suppressed: true });
    expect(await consentOf(b, inB)).toEqual({ sms_subscribed: true, whatsapp_subscribed: true, suppressed: false, events: [] });

    // And the other way round: a message to B's number is B's.
    await text(phone, "hello B", { to: numbers.b });
    const { rows } = await db.current.root.query("select tenant_id, contact_id from herald_public.inbound_messages where to_number = $1 order by received_at desc limit 1", [numbers.b]);
    expect(rows[0]).toEqual({ tenant_id: b.id, contact_id: inB });
  });
});

describe("an opt-out and the deliveries already queued", () => {
  let server: SandboxServer;
  let worker: WorkerHandle;
  beforeAll(async () => {
    server = await startSandboxServer();
    await readyToSend(db.current, server, a);
    worker = await startSendingWorker(db.current, server, 4);
  });
  afterAll(async () => {
    await worker?.stop();
    await server?.close();
  });

  it("beats them: a delivery already queued when the STOP arrives is skipped when its time comes, and nothing is sent", async () => {
    const phone = freshPhone();
    const contactId = await contactWith(a, phone);
    // Quiet hours (a window that opens in an hour) hold the delivery, queued, before the STOP.
    const opens = new Date(Date.now() + 3_600_000);
    const hhmm = (d: Date) => d.toISOString().slice(11, 16);
    await asRoot(db.current, (c) =>
      c.query("update herald_public.tenant_settings set timezone = 'UTC', send_window_start = $2, send_window_end = $3 where tenant_id = $1", [a.id, hhmm(opens), hhmm(new Date(opens.getTime() + 60_000))]),
    );
    const token = await api.current.authenticator.sign({ role: ROLES.member, tenant_id: a.id, sub: a.memberId });
    const messageId = await sendThroughApi(api.current, token, { channel: "sms", body: "Your reminder", contactIds: [contactId] });
    const held = await waitFor(async () => {
      const { rows } = await db.current.root.query("select id, status, reason from herald_public.deliveries where message_id = $1", [messageId]);
      return rows[0]?.reason === "quiet_hours" && rows[0];
    });
    expect(held.status).toBe("queued");

    expect((await text(phone, "STOP")).replies).toEqual([DEFAULT_STOP]);
    await openSendWindowNow(db.current, a.id, held.id);
    const done = await waitFor(async () => {
      const { rows } = await db.current.root.query("select status, reason from herald_public.deliveries where id = $1", [held.id]);
      return rows[0].status !== "queued" && rows[0];
    });
    expect(done).toEqual({ status: "skipped", reason: "unsubscribed" });
    expect(server.sandbox.messages.filter((m) => m.to === phone)).toEqual([]);
  });
});

describe("many at once", () => {
  it("answers concurrent messages of one tenant, sharing transactions: each stored once, a repeated MessageSid once", async () => {
    const phones = Array.from({ length: 20 }, () => freshPhone());
    await Promise.all(phones.map((p) => contactWith(a, p)));
    const sid = (i: number) => `SM${"c".repeat(20)}${String(i).padStart(12, "0")}`;
    const body = (i: number) => (i % 5 === 0 ? "HELP" : `hello ${i}`);
    // Twenty messages and, at the same time, Twilio's retry of the first ten.
    const results = await Promise.all([
      ...phones.map((p, i) => text(p, body(i), { sid: sid(i) })),
      ...phones.slice(0, 10).map((p, i) => text(p, body(i), { sid: sid(i) })),
    ]);
    expect(results.map((r) => r.status)).toEqual(results.map(() => 200));
    const help = DEFAULT_HELP;
    results.forEach((r, i) => expect(r.replies, `request ${i}`).toEqual(i % 20 % 5 === 0 ? [help] : []));
    const { rows } = await db.current.root.query(
      `select count(*)::int as n, count(distinct provider_message_id)::int as sids, count(distinct received_at)::int as transactions
         from herald_public.inbound_messages where provider_message_id like 'SMcccc%'`,
    );
    expect(rows[0]).toMatchObject({ n: 20, sids: 20 });
    // Messages that arrived while a transaction was under way shared the next one
    // (received_at is now(): the time its transaction started).
    expect(rows[0].transactions).toBeLessThan(20);
    const { rows: consent } = await db.current.root.query(
      "select count(*)::int as n from herald_public.consent_events e join herald_public.inbound_messages m on m.id = e.inbound_message_id where m.provider_message_id like 'SMcccc%'",
    );
    expect(consent[0].n).toBe(4);
  });

  it("in a shared transaction, a message that fails takes no other with it", async () => {
    const phone = freshPhone();
    const message = (to: string, sid: string) => ({ channel: "sms", to_number: to, from_phone: phone, body: "hi", provider_message_id: sid, media_count: 0, keyword: null, keyword_word: null });
    const rows = await asWorker(db.current, a, async (c) =>
      (
        await c.query("select ordinal, error_code, inbound_message_id is not null as stored from herald_hidden.receive_inbound_batch($1) order by ordinal", [
          JSON.stringify([message(numbers.a, "SMshared1"), message(numbers.b, "SMshared2"), message(numbers.a, "SMshared3")]),
        ])
      ).rows,
    );
    // B's number is not A's: that one alone is refused (the webhook answers it 404).
    expect(rows).toEqual([
      { ordinal: 0, error_code: null, stored: true },
      { ordinal: 1, error_code: "NTFND", stored: false },
      { ordinal: 2, error_code: null, stored: true },
    ]);
    const { rows: stored } = await db.current.root.query("select provider_message_id from herald_public.inbound_messages where provider_message_id like 'SMshared%' order by 1");
    expect(stored.map((r) => r.provider_message_id)).toEqual(["SMshared1", "SMshared3"]);
  });
});
