import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { twimlMessages } from "../src/sandbox/inbound.ts";
import type { WorkerHandle } from "../src/worker/worker.ts";
import { graphql, tokenFor, useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import type { TenantFixture } from "./helpers/fixtures.ts";
import { A_WHATSAPP_NUMBER, DEFAULT_HELP, DEFAULT_START, DEFAULT_STOP, useInboundTenants } from "./helpers/inbound.ts";
import {
  asRoot,
  asWorker,
  closeSendWindowForAnHour,
  openSendWindowNow,
  readyToSend,
  sendThroughApi,
  startSandboxServer,
  startSendingWorker,
  waitFor,
  type SandboxServer,
} from "./helpers/messaging.ts";
import { inboundText, postTwilio, SMS, SYSTEM_TWILIO, webhookEnv } from "./helpers/webhooks.ts";

/**
 * Inbound SMS keywords and their consent effects: every STOP, START and HELP
 * variant (and sentences that merely contain one), the tenant's HELP text,
 * isolation between tenants that share a contact's phone, and an opt-out
 * beating deliveries already queued. (The request itself: webhooks.inbound.test.ts.)
 */

const db = useTestDatabase();
const api = useApiServer(db, { env: () => webhookEnv() });
const { tenants, numbers, tokens, freshPhone, text, contactWith, consentOf } = useInboundTenants(db, api);
let a: TenantFixture;
let b: TenantFixture;
beforeAll(() => {
  ({ a, b } = tenants);
});

describe("keywords", () => {
  // Every opt-out word, in the forms people type them, and the keyword recorded for it
  // (src/provider-callbacks/keywords.ts: case, spacing, punctuation and politeness go; "ALL" is politeness).
  const STOP: [string, string][] = [
    ["STOP", "STOP"],
    ["stop", "STOP"],
    ["Stop.", "STOP"],
    ["  STOP  ", "STOP"],
    ["STOPALL", "STOPALL"],
    ["stop all", "STOP"],
    ["UNSUBSCRIBE", "UNSUBSCRIBE"],
    ["Unsubscribe!", "UNSUBSCRIBE"],
    ["CANCEL", "CANCEL"],
    ["end", "END"],
    ["QUIT", "QUIT"],
    ["REVOKE", "REVOKE"],
    ["OPTOUT", "OPTOUT"],
    ["opt out", "OPTOUT"],
    ["Opt-Out", "OPTOUT"],
    ["stop please", "STOP"],
    ["Please STOP", "STOP"],
    ["stop texting me", "STOP"],
    ["S.T.O.P", "STOP"],
    ["ＳＴＯＰ", "STOP"],
  ];

  it.each(STOP)("%j opts out as %s: unsubscribed, suppressed, recorded, confirmed", async (word, keyword) => {
    const phone = freshPhone();
    const contactId = await contactWith(a, phone);
    const result = await text(phone, word);
    expect(result.status).toBe(200);
    expect(result.replies).toEqual([DEFAULT_STOP]);
    const consent = await consentOf(a, contactId);
    expect(consent).toMatchObject({ sms_subscribed: false, suppressed: true });
    expect(consent.events).toEqual([{ action: "opt_out", source: "keyword", detail: keyword, channel: "sms" }]);
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
    const { rows } = await db.current.root.query(
      "select keyword from herald_public.inbound_messages where contact_id = $1",
      [contactId],
    );
    expect(rows).toEqual([{ keyword: null }]);
  });

  it.each(["HELP", "help", "Info", "help me", "HELP!"])(
    "%j gets the HELP text and changes no subscription",
    async (word) => {
      const phone = freshPhone();
      const contactId = await contactWith(a, phone);
      const result = await text(phone, word);
      expect(result.replies).toEqual([DEFAULT_HELP]);
      expect(await consentOf(a, contactId)).toMatchObject({
        sms_subscribed: true,
        suppressed: false,
        events: [{ action: "help", source: "keyword" }],
      });
    },
  );

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
    expect(await consentOf(a, contactId)).toEqual({
      sms_subscribed: true,
      whatsapp_subscribed: true,
      suppressed: false,
      events: [],
    });
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
    await asWorker(db.current, a, (c) =>
      c.query("select herald_public.add_suppression('phone', $1, 'manual', 'asked by phone')", [other]),
    );
    expect((await text(other, "STOP")).replies).toEqual([DEFAULT_STOP]);
    expect((await text(other, "START")).replies).toEqual([DEFAULT_START]);
    const after = await consentOf(a, otherId);
    expect(after).toMatchObject({ sms_subscribed: true, suppressed: true });
    expect(after.events.map((e) => e.action)).toEqual(["opt_out", "opt_in"]);
  });

  it("START also lifts a carrier opt-out (Twilio 21610), since the person opted back in at the carrier too", async () => {
    const phone = freshPhone();
    const contactId = await contactWith(a, phone);
    await asWorker(db.current, a, (c) =>
      c.query("select herald_hidden.record_opt_out('phone', $1, 'sms', 'carrier', '21610')", [phone]),
    );
    expect(await consentOf(a, contactId)).toMatchObject({ sms_subscribed: false, suppressed: true });
    expect((await text(phone, "START")).replies).toEqual([DEFAULT_START]);
    expect(await consentOf(a, contactId)).toMatchObject({ sms_subscribed: true, suppressed: false });
  });

  it("YES from a subscribed contact whose phone is suppressed is an opt-in (what it lifts is theirs alone)", async () => {
    const phone = freshPhone();
    const contactId = await contactWith(a, phone);
    await asWorker(db.current, a, (c) =>
      c.query("select herald_public.add_suppression('phone', $1, 'unsubscribe', 'by the tenant')", [phone]),
    );
    expect((await text(phone, "YES")).replies).toEqual([DEFAULT_START]);
    expect(await consentOf(a, contactId)).toMatchObject({
      sms_subscribed: true,
      suppressed: false,
      events: [{ action: "opt_in", detail: "YES" }],
    });
  });

  it("a keyword from a sender that is no phone number (a short code) is stored and changes no one", async () => {
    const before = (
      await db.current.root.query("select count(*)::int as n from herald_public.consent_events where tenant_id = $1", [
        a.id,
      ])
    ).rows[0].n;
    const result = await postTwilio(
      api.current,
      SMS,
      { ...inboundText({ from: "+1", to: numbers.a, body: "STOP" }), From: "72345" },
      { token: tokens.a },
    );
    expect(result.status).toBe(200);
    expect(twimlMessages(result.body)).toEqual([]);
    const { rows } = await db.current.root.query(
      "select contact_id, keyword from herald_public.inbound_messages where tenant_id = $1 order by received_at desc limit 1",
      [a.id],
    );
    expect(rows[0]).toEqual({ contact_id: null, keyword: null });
    expect(
      (
        await db.current.root.query(
          "select count(*)::int as n from herald_public.consent_events where tenant_id = $1",
          [a.id],
        )
      ).rows[0].n,
    ).toBe(before);
  });

  it("an opt-out from someone Herald did not know creates them opted out, and suppressed", async () => {
    const phone = freshPhone();
    expect((await text(phone, "UNSUBSCRIBE")).replies).toEqual([DEFAULT_STOP]);
    const contact = await asWorker(
      db.current,
      a,
      async (c) =>
        (
          await c.query(
            "select id, created_by_inbound from herald_public.contacts where phone_hash = any (herald_hidden.pii_hashes('phone', $1))",
            [phone],
          )
        ).rows[0],
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
    const result = await text(phone, "stop", {
      to: A_WHATSAPP_NUMBER,
      token: SYSTEM_TWILIO.authToken,
      channel: "whatsapp",
    });
    expect(result.replies).toEqual([DEFAULT_STOP]);
    expect(await consentOf(a, contactId)).toMatchObject({
      sms_subscribed: true,
      whatsapp_subscribed: false,
      suppressed: false,
      events: [{ channel: "whatsapp" }],
    });
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

    await asRoot(db.current, (c) =>
      c.query(
        "update herald_public.tenant_settings set help_text = 'Acme: call us at 555-0100. Reply STOP to opt out.' where tenant_id = $1",
        [a.id],
      ),
    );
    expect(await help()).toBe("Acme: call us at 555-0100. Reply STOP to opt out.");
    // What the API shows the tenant's admins is what is sent.
    const tokenA = await tokenFor(api.current, a, "owner");
    const { body } = await graphql(
      api.current,
      tokenA,
      "{ allTenantSettings { nodes { keywordReplies { help stop start } } } }",
    );
    expect(body.data!.allTenantSettings.nodes[0].keywordReplies).toEqual({
      help: await help(),
      stop: "Acme: you will get no more texts.",
      start: "Acme: welcome back.",
    });

    // Tenant B, which set nothing, still answers with its own name and Herald's defaults.
    const other = freshPhone();
    await contactWith(b, other);
    expect((await text(other, "INFO", { to: numbers.b })).replies[0]).toMatch(
      /^Tenant B: account notifications\. .*Reply STOP to cancel\.$/,
    );
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
    expect(await consentOf(b, inB)).toEqual({
      sms_subscribed: true,
      whatsapp_subscribed: true,
      suppressed: false,
      events: [],
    });

    // And the other way round: a message to B's number is B's.
    await text(phone, "hello B", { to: numbers.b });
    const { rows } = await db.current.root.query(
      "select tenant_id, contact_id from herald_public.inbound_messages where to_number = $1 order by received_at desc limit 1",
      [numbers.b],
    );
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
    // Quiet hours hold the delivery, queued, before the STOP.
    await closeSendWindowForAnHour(db.current, a.id);
    const token = await tokenFor(api.current, a, "member");
    const messageId = await sendThroughApi(api.current, token, {
      channel: "sms",
      body: "Your reminder",
      contactIds: [contactId],
    });
    const held = await waitFor(async () => {
      const { rows } = await db.current.root.query(
        "select id, status, reason from herald_public.deliveries where message_id = $1",
        [messageId],
      );
      return rows[0]?.reason === "quiet_hours" && rows[0];
    });
    expect(held.status).toBe("queued");

    expect((await text(phone, "STOP")).replies).toEqual([DEFAULT_STOP]);
    await openSendWindowNow(db.current, a.id, held.id);
    const done = await waitFor(async () => {
      const { rows } = await db.current.root.query(
        "select status, reason from herald_public.deliveries where id = $1",
        [held.id],
      );
      return rows[0].status !== "queued" && rows[0];
    });
    expect(done).toEqual({ status: "skipped", reason: "unsubscribed" });
    expect(server.sandbox.messages.filter((m) => m.to === phone)).toEqual([]);
  });
});
