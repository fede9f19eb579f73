import { beforeAll, describe, expect, it } from "vitest";
import { twimlMessages } from "../src/sandbox/inbound.ts";
import { twilioSignature } from "../src/sandbox/wire.ts";
import { graphql, tokenFor, useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import type { TenantFixture } from "./helpers/fixtures.ts";
import { A_SYSTEM_NUMBER, DEFAULT_HELP, SYSTEM_SENDER, useInboundTenants } from "./helpers/inbound.ts";
import { asOwner, asRoot, asWorker } from "./helpers/messaging.ts";
import { proveSenderNumbers } from "./helpers/numbers.ts";
import {
  inboundText,
  PUBLIC_URL,
  postTwilio,
  SMS,
  SYSTEM_TWILIO,
  webhookEnv,
  writtenRows,
} from "./helpers/webhooks.ts";

/**
 * POST /webhooks/twilio/sms, the request: signatures, malformed requests,
 * tenant resolution by the receiving number, storing a message, and many at
 * once. Requests are signed for the public URL and sent to the local server,
 * as through a TLS-terminating proxy. (Keywords: webhooks.keywords.test.ts.)
 */

const db = useTestDatabase();
const api = useApiServer(db, { env: () => webhookEnv() });
const { tenants, numbers, tokens, freshPhone, text, contactWith } = useInboundTenants(db, api);
let a: TenantFixture;
let b: TenantFixture;
beforeAll(() => {
  ({ a, b } = tenants);
});

describe("signatures", () => {
  it("refuses a missing, forged, wrongly keyed, tampered or re-signed-for-another-host request with 403, writing nothing", async () => {
    const before = await writtenRows(db.current);
    const params = inboundText({ from: freshPhone(), to: numbers.a, body: "STOP" });
    // Only a request without the header is MISSING_SIGNATURE; any other is checked against the number's account, and INVALID.
    const attempts: [string, Parameters<typeof postTwilio>[3], string][] = [
      ["no signature", { token: tokens.a, signature: null }, "MISSING_SIGNATURE"],
      ["a made-up signature", { token: tokens.a, signature: "bm90IGEgc2lnbmF0dXJl" }, "INVALID_SIGNATURE"],
      ["tenant B's token", { token: tokens.b }, "INVALID_SIGNATURE"],
      ["the system's token, for a number on A's own account", { token: SYSTEM_TWILIO.authToken }, "INVALID_SIGNATURE"],
      [
        "signed for another host",
        { token: tokens.a, signedFor: `https://evil.example.com${SMS}` },
        "INVALID_SIGNATURE",
      ],
      [
        "signed for the local address, not the public URL",
        { token: tokens.a, signedFor: `${api.current.url}${SMS}` },
        "INVALID_SIGNATURE",
      ],
      [
        "signed for http instead of https",
        { token: tokens.a, signedFor: `${PUBLIC_URL.replace("https:", "http:")}${SMS}` },
        "INVALID_SIGNATURE",
      ],
    ];
    for (const [label, options, code] of attempts) {
      const result = await postTwilio(api.current, SMS, params, options);
      expect(result.status, label).toBe(403);
      expect(JSON.parse(result.body).error.code, label).toBe(code);
    }
    // Signed properly, then changed on the way.
    const tampered = await postTwilio(
      api.current,
      SMS,
      { ...params, Body: "START" },
      { token: tokens.a, signature: twilioSignature(tokens.a, `${PUBLIC_URL}${SMS}`, params) },
    );
    expect(tampered.status, "a tampered body").toBe(403);
    expect(await writtenRows(db.current)).toEqual(before);
  });

  it("accepts the same request signed for the public URL, though it arrives at the local address", async () => {
    const before = await writtenRows(db.current);
    const result = await postTwilio(
      api.current,
      SMS,
      inboundText({ from: freshPhone(), to: numbers.a, body: "hello" }),
      { token: tokens.a },
    );
    expect(result.status).toBe(200);
    expect((await writtenRows(db.current))["herald_public.inbound_messages"]).toBe(
      Number(before["herald_public.inbound_messages"]) + 1,
    );
  });

  it("answers 404 for a number no tenant has, and writes nothing", async () => {
    const before = await writtenRows(db.current);
    const result = await text(freshPhone(), "STOP", { to: "+14155550999", token: SYSTEM_TWILIO.authToken });
    expect(result.status).toBe(404);
    expect(JSON.parse(result.body).error.code).toBe("UNKNOWN_NUMBER");
    expect(await writtenRows(db.current)).toEqual(before);
  });

  it("finds a number's tenant as soon as an operator's assignment is verified (a 404 is not remembered)", async () => {
    const number = "+14155550998";
    expect((await text(freshPhone(), "hi", { to: number, token: SYSTEM_TWILIO.authToken })).status).toBe(404);
    await asRoot(db.current, (c) =>
      c.query("insert into herald_public.sender_numbers (tenant_id, phone_number) values ($1, $2)", [a.id, number]),
    );
    // Assigned, not yet verified: still no tenant's.
    expect((await text(freshPhone(), "hi", { to: number, token: SYSTEM_TWILIO.authToken })).status).toBe(404);
    await proveSenderNumbers(db.current, { phoneNumbers: [number] });
    expect((await text(freshPhone(), "hi", { to: number, token: SYSTEM_TWILIO.authToken })).status).toBe(200);
  });

  it("status callbacks, too, are verified against the public URL, not the address they arrive at", async () => {
    const path = `/webhooks/twilio/status?tenant=${a.id}`;
    const params = {
      AccountSid: SYSTEM_TWILIO.accountSid,
      MessageSid: `SM${"e".repeat(32)}`,
      MessageStatus: "delivered",
      To: freshPhone(),
    };
    expect(
      (
        await postTwilio(api.current, path, params, {
          token: SYSTEM_TWILIO.authToken,
          signedFor: `${api.current.url}${path}`,
        })
      ).status,
    ).toBe(403);
    // Properly signed, it is accepted (and names no delivery Herald knows).
    expect((await postTwilio(api.current, path, params, { token: SYSTEM_TWILIO.authToken })).status).toBe(204);
  });

  it("cannot verify a number on an account that authenticates with an API key (Twilio signs with the auth token): 403", async () => {
    // One active Twilio account per tenant: B's usual one steps aside meanwhile.
    const setB = (status: string) =>
      asRoot(db.current, (c) =>
        c.query("update herald_public.provider_accounts set status = $2 where id = $1", [b.providerAccountId, status]),
      );
    await setB("disabled");
    let apiKeyAccount: string | undefined;
    try {
      apiKeyAccount = await asOwner(db.current, b, async (c) => {
        const { rows } = await c.query(
          "select id from herald_public.create_provider_account('twilio', 'API key', 'api-key-secret', $1, $2)",
          [`AC${"6".repeat(32)}`, `SK${"6".repeat(32)}`],
        );
        await c.query(
          "insert into herald_public.sender_numbers (phone_number, provider_account_id) values ('+14155559902', $1)",
          [rows[0].id],
        );
        return rows[0].id as string;
      });
      await proveSenderNumbers(db.current, { phoneNumbers: ["+14155559902"] });
      const before = await writtenRows(db.current);
      expect((await text(freshPhone(), "hello", { to: "+14155559902", token: "api-key-secret" })).status).toBe(403);
      expect(await writtenRows(db.current)).toEqual(before);
    } finally {
      await asRoot(db.current, (c) =>
        c.query("update herald_public.provider_accounts set status = 'disabled' where id = $1", [
          apiKeyAccount ?? null,
        ]),
      );
      await setB("active");
    }
  });

  it("verifies a number on the system account with the system's token, and only with it", async () => {
    const phone = freshPhone();
    expect((await text(phone, "hi", { to: A_SYSTEM_NUMBER, token: tokens.a })).status).toBe(403);
    const ok = await text(phone, "hi", { to: A_SYSTEM_NUMBER, token: SYSTEM_TWILIO.authToken });
    expect(ok.status).toBe(200);
    // TwiML that says nothing: "hi" is no keyword.
    expect(ok.body).toMatch(/^<\?xml [^>]*\?>\s*<Response\b/);
    expect(twimlMessages(ok.body)).toEqual([]);
  });
});

describe("malformed requests", () => {
  it("refuses a repeated parameter or an id out of shape with 400, even when the signature verifies, and writes nothing", async () => {
    const before = await writtenRows(db.current);
    const params = inboundText({ from: freshPhone(), to: numbers.a, body: "START" });
    // The signature joins names and values: moving NumMedia into MessageSid keeps it valid.
    const { NumMedia, ...rest } = params;
    const reshaped = { ...rest, MessageSid: `${params.MessageSid}NumMedia${NumMedia}` };
    const result = await postTwilio(api.current, SMS, reshaped, {
      token: tokens.a,
      signature: twilioSignature(tokens.a, `${PUBLIC_URL}${SMS}`, params),
    });
    expect(result.status).toBe(400);
    // A parameter twice.
    const body = `${new URLSearchParams(params)}&To=${encodeURIComponent(numbers.b)}`;
    const repeated = await fetch(`${api.current.url}${SMS}`, {
      method: "POST",
      headers: {
        "content-type": "application/x-www-form-urlencoded",
        "x-twilio-signature": twilioSignature(tokens.a, `${PUBLIC_URL}${SMS}`, params),
      },
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
      c.query(
        "select herald_public.inbound_messages_body(m) as body from herald_public.inbound_messages m join herald_public.contacts c on c.id = m.contact_id where herald_public.contacts_phone(c) = $1",
        [phones[3]],
      ),
    );
    expect(rows).toEqual([{ body: "hithere" }]);
  });
});

describe("who owns a number", () => {
  it("a tenant cannot make a number a system number by deleting its own account: the number goes with the account", async () => {
    const owner = await tokenFor(api.current, a, "owner");
    // A registers the system's shared sender on an account of its own (one active account per kind:
    // its usual one steps aside meanwhile)…
    const setFixtureAccount = (status: string) =>
      asRoot(db.current, (c) =>
        c.query("update herald_public.provider_accounts set status = $2 where id = $1", [a.providerAccountId, status]),
      );
    await setFixtureAccount("disabled");
    const account = await graphql(
      api.current,
      owner,
      `mutation { createProviderAccount(input: {kind: "twilio", name: "Squat", secret: "squatting-secret", twilioAccountSid: "AC${"5".repeat(32)}"}) { result { rowId } } }`,
    );
    expect(account.body.errors).toBeUndefined();
    const accountId = account.body.data!.createProviderAccount.result.rowId;
    const number = await graphql(
      api.current,
      owner,
      `mutation($acc: UUID!) { createSenderNumber(input: {senderNumber: {phoneNumber: "${SYSTEM_SENDER}", providerAccountId: $acc}}) { senderNumber { rowId } } }`,
      { acc: accountId },
    );
    expect(number.body.errors).toBeUndefined();
    // …and deletes the account: the number is deleted with it, not handed to the system account.
    const deleted = await graphql(
      api.current,
      owner,
      `mutation($acc: UUID!) { deleteProviderAccountByTenantIdAndRowId(input: {tenantId: "${a.id}", rowId: $acc}) { providerAccount { rowId } } }`,
      { acc: accountId },
    );
    expect(deleted.body.errors).toBeUndefined();
    await setFixtureAccount("active");
    const { rows } = await db.current.root.query(
      "select tenant_id, provider_account_id from herald_public.sender_numbers where phone_number = $1",
      [SYSTEM_SENDER],
    );
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
    const tokenA = await tokenFor(api.current, a, "member");
    const tokenB = await tokenFor(api.current, b, "member");
    const query = `{ allInboundMessages(condition: { providerMessageId: "${sid}" }) { nodes { from body contact { firstName } senderNumber { phoneNumber } } } }`;
    const seen = await graphql(api.current, tokenA, query);
    expect(seen.body.errors).toBeUndefined();
    expect(seen.body.data!.allInboundMessages.nodes).toEqual([
      {
        from: phone,
        body: "Running 10 minutes late",
        contact: { firstName: "Ada" },
        senderNumber: { phoneNumber: numbers.a },
      },
    ]);
    expect((await graphql(api.current, tokenB, query)).body.data!.allInboundMessages.nodes).toEqual([]);
  });

  it("makes an unknown sender a contact, flagged as created by the inbound message", async () => {
    const phone = freshPhone();
    expect((await text(phone, "Hello? Who is this")).status).toBe(200);
    const tokenA = await tokenFor(api.current, a, "member");
    const { body } = await graphql(
      api.current,
      tokenA,
      `{ contactByPhone(phone: "${phone}") { phone createdByInbound smsSubscribed inboundMessages { totalCount } } }`,
    );
    expect(body.data!.contactByPhone).toEqual({
      phone,
      createdByInbound: true,
      smsSubscribed: true,
      inboundMessages: { totalCount: 1 },
    });
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
    results.forEach((r, i) => expect(r.replies, `request ${i}`).toEqual((i % 20) % 5 === 0 ? [help] : []));
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
    const message = (to: string, sid: string) => ({
      channel: "sms",
      to_number: to,
      from_phone: phone,
      body: "hi",
      provider_message_id: sid,
      media_count: 0,
      keyword: null,
      keyword_word: null,
    });
    const rows = await asWorker(
      db.current,
      a,
      async (c) =>
        (
          await c.query(
            "select ordinal, error_code, inbound_message_id is not null as stored from herald_hidden.receive_inbound_batch($1) order by ordinal",
            [
              JSON.stringify([
                message(numbers.a, "SMshared1"),
                message(numbers.b, "SMshared2"),
                message(numbers.a, "SMshared3"),
              ]),
            ],
          )
        ).rows,
    );
    // B's number is not A's: that one alone is refused (the webhook answers it 404).
    expect(rows).toEqual([
      { ordinal: 0, error_code: null, stored: true },
      { ordinal: 1, error_code: "NTFND", stored: false },
      { ordinal: 2, error_code: null, stored: true },
    ]);
    const { rows: stored } = await db.current.root.query(
      "select provider_message_id from herald_public.inbound_messages where provider_message_id like 'SMshared%' order by 1",
    );
    expect(stored.map((r) => r.provider_message_id)).toEqual(["SMshared1", "SMshared3"]);
  });

  it("in one batch: keywords apply in the order received, a repeated MessageSid is stored once, an unknown sender becomes one contact", async () => {
    const phone = freshPhone();
    const message = (sid: string, body: string, keyword: string | null) => ({
      channel: "sms",
      to_number: numbers.a,
      from_phone: phone,
      body,
      provider_message_id: sid,
      media_count: 0,
      keyword,
      keyword_word: keyword ? body : null,
    });
    const batch = [
      message("SMset1", "STOP", "stop"),
      message("SMset2", "hello", null),
      message("SMset1", "STOP", "stop"), // Twilio's retry, in the same batch
      message("SMset3", "START", "start"),
      message("SMset4", "STOP", "stop"),
    ];
    const rows = await asWorker(
      db.current,
      a,
      async (c) =>
        (
          await c.query(
            "select ordinal, duplicate, keyword, reply is not null as replied, error_code from herald_hidden.receive_inbound_batch($1) order by ordinal",
            [JSON.stringify(batch)],
          )
        ).rows,
    );
    expect(rows).toEqual([
      { ordinal: 0, duplicate: false, keyword: "stop", replied: true, error_code: null },
      { ordinal: 1, duplicate: false, keyword: null, replied: false, error_code: null },
      { ordinal: 2, duplicate: true, keyword: "stop", replied: true, error_code: null },
      { ordinal: 3, duplicate: false, keyword: "start", replied: true, error_code: null },
      { ordinal: 4, duplicate: false, keyword: "stop", replied: true, error_code: null },
    ]);
    const state = await asWorker(
      db.current,
      a,
      async (c) =>
        (
          await c.query(
            `select count(*)::int as contacts, bool_and(c.sms_subscribed) as subscribed, bool_and(c.created_by_inbound) as created,
                  (select array_agg(e.action order by m.provider_message_id) from herald_public.consent_events e
                     join herald_public.inbound_messages m on m.id = e.inbound_message_id where m.provider_message_id like 'SMset%') as consent,
                  (select count(*)::int from herald_public.suppressions s where s.kind = 'phone' and s.address_hash = any (herald_hidden.pii_hashes('phone', $1))) as suppressions,
                  (select count(*)::int from herald_public.inbound_messages m where m.provider_message_id like 'SMset%') as stored
             from herald_public.contacts c where c.phone_hash = any (herald_hidden.pii_hashes('phone', $1))`,
            [phone],
          )
        ).rows[0],
    );
    // STOP, START, STOP: unsubscribed and suppressed, as one after another would leave it.
    expect(state).toEqual({
      contacts: 1,
      subscribed: false,
      created: true,
      consent: ["opt_out", "opt_in", "opt_out"],
      suppressions: 1,
      stored: 4,
    });
  });
});
