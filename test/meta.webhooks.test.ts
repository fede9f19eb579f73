import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { graphql, tokenFor } from "./helpers/api.ts";
import { expectPgError, useTestDatabase } from "./helpers/db.ts";
import { proveSenderNumbers } from "./helpers/numbers.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import { createMetaAccount, inboundText, notification, postMeta, wamid, type MetaFixture } from "./helpers/meta.ts";
import {
  asOwner,
  asRoot,
  asWorker as asWorkerOf0,
  startSandboxServer,
  waitFor,
  type SandboxServer,
} from "./helpers/messaging.ts";
import { contactWith, reportsApplied, useCallableApiServer, writtenRows } from "./helpers/webhooks.ts";

/**
 * Meta's WhatsApp Cloud API webhooks (/webhooks/meta/<account id>): the
 * subscription handshake, signed inbound texts and the consent keywords,
 * forged and other-tenant signatures, statuses aimed at another tenant's
 * message, and the isolation of the Meta account's fields.
 */

const db = useTestDatabase();
let server: SandboxServer;
// Before the API server: keyword replies go to the sandbox's Graph API.
beforeAll(async () => {
  server = await startSandboxServer();
});
afterAll(async () => {
  await server?.close();
});
const { api } = useCallableApiServer(db, () => ({ HERALD_META_GRAPH_URL: `${server.url}/meta` }));
let a: TenantFixture;
let b: TenantFixture;
let metaA: MetaFixture;
let metaB: MetaFixture;

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  metaA = await createMetaAccount(db.current, a);
  metaB = await createMetaAccount(db.current, b);
  // The sandbox's Graph API knows A's access token (keyword replies).
  server.sandbox.addMetaAccount(metaA.phoneNumberId, {
    accessToken: metaA.accessToken,
    appSecret: metaA.appSecret,
    displayPhoneNumber: metaA.number.slice(1),
  });
  expect(await proveSenderNumbers(db.current, { phoneNumbers: [metaA.number], sandbox: server })).toEqual({
    [`whatsapp:${metaA.number}`]: "verified",
  });
});

const asWorkerOf = <T>(t: TenantFixture, fn: Parameters<typeof asWorkerOf0<T>>[2]) => asWorkerOf0(db.current, t, fn);

let phoneCounter = 0;
const freshPhone = () => `+1628557${String(1000 + ++phoneCounter).padStart(4, "0")}`;

const challenge = (path: string, query: Record<string, string>) =>
  fetch(`${api.current.url}${path}?${new URLSearchParams(query)}`).then(async (r) => ({
    status: r.status,
    body: await r.text(),
  }));

describe("the subscription handshake", () => {
  it("echoes hub.challenge for the account's verify token", async () => {
    const result = await challenge(metaA.path, {
      "hub.mode": "subscribe",
      "hub.verify_token": metaA.verifyToken,
      "hub.challenge": "1158201444",
    });
    expect(result).toEqual({ status: 200, body: "1158201444" });
  });

  it("refuses a wrong token, another account's token, another mode or an unknown account with 403", async () => {
    const attempts: [string, string, Record<string, string>][] = [
      ["a wrong token", metaA.path, { "hub.mode": "subscribe", "hub.verify_token": "hvt_guess", "hub.challenge": "1" }],
      [
        "tenant B's token on A's URL",
        metaA.path,
        { "hub.mode": "subscribe", "hub.verify_token": metaB.verifyToken, "hub.challenge": "1" },
      ],
      [
        "another mode",
        metaA.path,
        { "hub.mode": "unsubscribe", "hub.verify_token": metaA.verifyToken, "hub.challenge": "1" },
      ],
      ["no token", metaA.path, { "hub.mode": "subscribe", "hub.challenge": "1" }],
      [
        "an unknown account",
        "/webhooks/meta/00000000-0000-4000-8000-000000000000",
        { "hub.mode": "subscribe", "hub.verify_token": metaA.verifyToken, "hub.challenge": "1" },
      ],
    ];
    for (const [label, path, query] of attempts) {
      const result = await challenge(path, query);
      expect(result.status, label).toBe(403);
      expect(result.body, label).not.toContain('"1"');
    }
  });

  it("a reset token replaces the old one", async () => {
    const { rows } = await asOwner(db.current, a, (c) =>
      c.query("select herald_public.reset_meta_verify_token($1) as token", [metaA.accountId]),
    );
    const query = (token: string) => ({ "hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "42" });
    expect((await challenge(metaA.path, query(metaA.verifyToken))).status).toBe(403);
    expect(await challenge(metaA.path, query(rows[0].token))).toEqual({ status: 200, body: "42" });
    metaA.verifyToken = rows[0].token;
  });
});

async function consent(t: TenantFixture, contactId: string) {
  const { rows } = await db.current.root.query(
    `select c.whatsapp_subscribed,
            coalesce((select json_agg(json_build_object('action', e.action, 'channel', e.channel) order by e.created_at)
                        from herald_public.consent_events e where e.tenant_id = c.tenant_id and e.contact_id = c.id), '[]') as events
       from herald_public.contacts c where c.tenant_id = $1 and c.id = $2`,
    [t.id, contactId],
  );
  return rows[0];
}

describe("signed inbound messages", () => {
  it("stores a text signed with the account's app secret, for the account's tenant and number", async () => {
    const phone = freshPhone();
    const id = wamid();
    const result = await postMeta(api.current, metaA.path, inboundText(metaA.phoneNumberId, phone, "hello there", id), {
      appSecret: metaA.appSecret,
    });
    expect(result.status).toBe(200);
    const { rows } = await db.current.root.query(
      "select tenant_id, channel, to_number, provider_message_id, provider_account_id from herald_public.inbound_messages where provider_message_id = $1",
      [id],
    );
    expect(rows).toEqual([
      {
        tenant_id: a.id,
        channel: "whatsapp",
        to_number: metaA.number,
        provider_message_id: id,
        provider_account_id: metaA.accountId,
      },
    ]);
    // The same notification again (Meta retries): stored once.
    const again = await postMeta(api.current, metaA.path, inboundText(metaA.phoneNumberId, phone, "hello there", id), {
      appSecret: metaA.appSecret,
    });
    expect(again.status).toBe(200);
    const count = await db.current.root.query(
      "select count(*)::int as n from herald_public.inbound_messages where provider_message_id = $1",
      [id],
    );
    expect(count.rows[0].n).toBe(1);
  });

  it("STOP unsubscribes the contact from WhatsApp with a consent event, and answers through the Graph API", async () => {
    const phone = freshPhone();
    const contactId = await contactWith(db.current, a, phone);
    expect((await consent(a, contactId)).whatsapp_subscribed).toBe(true);
    const result = await postMeta(api.current, metaA.path, inboundText(metaA.phoneNumberId, phone, "Stop"), {
      appSecret: metaA.appSecret,
    });
    expect(result.status).toBe(200);
    const after = await consent(a, contactId);
    expect(after.whatsapp_subscribed).toBe(false);
    expect(after.events).toEqual([{ action: "opt_out", channel: "whatsapp" }]);
    // The confirmation went to the phone through A's account.
    const reply = await waitFor(async () =>
      server.sandbox.metaRequests.find((r) => r.phoneNumberId === metaA.phoneNumberId && r.body.to === phone.slice(1)),
    );
    expect(reply.body).toMatchObject({ messaging_product: "whatsapp", type: "text" });
    expect(String((reply.body.text as { body: string }).body)).toMatch(/unsubscribed/i);

    // START resubscribes.
    await postMeta(api.current, metaA.path, inboundText(metaA.phoneNumberId, phone, "START"), {
      appSecret: metaA.appSecret,
    });
    expect((await consent(a, contactId)).whatsapp_subscribed).toBe(true);
  });
});

describe("forged requests", () => {
  it("refuses a missing, forged, other-tenant or tampered signature with 403, writing nothing", async () => {
    const phone = freshPhone();
    const contactId = await contactWith(db.current, a, phone);
    const body = inboundText(metaA.phoneNumberId, phone, "STOP");
    const before = await writtenRows(db.current);
    const attempts: [string, Parameters<typeof postMeta>[3], string][] = [
      ["no signature", { signature: null }, "MISSING_SIGNATURE"],
      ["a made-up signature", { signature: `sha256=${"0".repeat(64)}` }, "INVALID_SIGNATURE"],
      ["not even the format", { signature: "garbage" }, "INVALID_SIGNATURE"],
      ["tenant B's app secret", { appSecret: metaB.appSecret }, "INVALID_SIGNATURE"],
      ["A's access token as the key", { appSecret: metaA.accessToken }, "INVALID_SIGNATURE"],
    ];
    for (const [label, signWith, code] of attempts) {
      const result = await postMeta(api.current, metaA.path, body, signWith);
      expect(result.status, label).toBe(403);
      expect(JSON.parse(result.body).error.code, label).toBe(code);
    }
    // Signed by A, then changed on the way.
    const tampered = await postMeta(api.current, metaA.path, body.replace("STOP", "HELP"), {
      signature: (await import("../src/sandbox/meta.ts")).metaHubSignature(metaA.appSecret, body),
    });
    expect(tampered.status, "a tampered body").toBe(403);
    // B's own secret, posted to A's URL naming A's number: still B's secret, not A's.
    const asB = await postMeta(api.current, metaA.path, body, { appSecret: metaB.appSecret });
    expect(asB.status).toBe(403);
    expect(await writtenRows(db.current)).toEqual(before);
    expect((await consent(a, contactId)).whatsapp_subscribed).toBe(true);
  });

  it("reads nothing a signed request says about a phone number id that is not the account's", async () => {
    // B signs properly with its own secret, at its own URL, but names A's phone number id (A's contact).
    const phone = freshPhone();
    const contactId = await contactWith(db.current, a, phone);
    const before = await writtenRows(db.current);
    const result = await postMeta(api.current, metaB.path, inboundText(metaA.phoneNumberId, phone, "STOP"), {
      appSecret: metaB.appSecret,
    });
    expect(result.status).toBe(200);
    expect(await writtenRows(db.current)).toEqual(before);
    expect((await consent(a, contactId)).whatsapp_subscribed).toBe(true);
  });

  it("answers 404 for a URL naming no Meta account (a Twilio account's id, say), writing nothing", async () => {
    const before = await writtenRows(db.current);
    const result = await postMeta(
      api.current,
      `/webhooks/meta/${a.providerAccountId}`,
      inboundText(metaA.phoneNumberId, freshPhone(), "STOP"),
      { appSecret: metaA.appSecret },
    );
    expect(result.status).toBe(404);
    expect(await writtenRows(db.current)).toEqual(before);
  });
});

describe("statuses", () => {
  /** A delivery of `t` as the engine leaves it after a Meta send: sent, known by its wamid. */
  async function sentDelivery(t: TenantFixture, id: string): Promise<string> {
    const contactId = await contactWith(db.current, t, freshPhone());
    return asRoot(db.current, async (c) => {
      const { rows } = await c.query(
        `insert into herald_public.deliveries (tenant_id, message_id, contact_id, channel, status, provider_message_id, sent_at)
         values ($1, $2, $3, 'whatsapp', 'sent', $4, now()) returning id`,
        [t.id, t.messageId, contactId, id],
      );
      return rows[0].id as string;
    });
  }
  const deliveryOf = async (id: string) =>
    (
      await db.current.root.query(
        "select status, error_code, (select count(*)::int from herald_public.delivery_events e where e.delivery_id = d.id) as events from herald_public.deliveries d where id = $1",
        [id],
      )
    ).rows[0];

  it("a status naming another tenant's message (its wamid, or its delivery id) changes nothing", async () => {
    const bWamid = wamid();
    const bDelivery = await sentDelivery(b, bWamid);
    const before = await deliveryOf(bDelivery);
    // A's account, properly signed, reports B's message failed.
    for (const status of [
      { id: bWamid, status: "failed", timestamp: "1700000000", errors: [{ code: 131026 }] },
      { id: wamid(), status: "failed", timestamp: "1700000000", biz_opaque_callback_data: bDelivery },
    ]) {
      const result = await postMeta(
        api.current,
        metaA.path,
        notification(metaA.phoneNumberId, { statuses: [status] }),
        {
          appSecret: metaA.appSecret,
        },
      );
      expect(result.status).toBe(200);
    }
    await reportsApplied(db.current);
    expect(await deliveryOf(bDelivery)).toEqual(before);
  });

  it("a status of the tenant's own message moves its delivery (read counts as delivered), never backwards", async () => {
    const aWamid = wamid();
    const aDelivery = await sentDelivery(a, aWamid);
    const post = (status: string) =>
      postMeta(
        api.current,
        metaA.path,
        notification(metaA.phoneNumberId, { statuses: [{ id: aWamid, status, timestamp: "1700000000" }] }),
        { appSecret: metaA.appSecret },
      );
    expect((await post("read")).status).toBe(200);
    await reportsApplied(db.current);
    expect((await deliveryOf(aDelivery)).status).toBe("delivered");
    await post("sent");
    await reportsApplied(db.current);
    expect((await deliveryOf(aDelivery)).status).toBe("delivered");
  });
});

describe("the Meta account's fields", () => {
  const ACCOUNTS = `{ allProviderAccounts { nodes { rowId kind metaPhoneNumberId metaWabaId secretHint } } }`;

  it("tenant B cannot see A's Meta account; A sees its ids and hint, never a secret", async () => {
    const asB = await graphql(api.current, await tokenFor(api.current, b, "owner"), ACCOUNTS);
    const bIds = asB.body.data!.allProviderAccounts.nodes.map((n: { rowId: string }) => n.rowId);
    expect(bIds).not.toContain(metaA.accountId);
    expect(bIds).toContain(metaB.accountId);
    const asA = await graphql(api.current, await tokenFor(api.current, a, "owner"), ACCOUNTS);
    const mine = asA.body.data!.allProviderAccounts.nodes.find((n: { rowId: string }) => n.rowId === metaA.accountId);
    expect(mine).toEqual({
      rowId: metaA.accountId,
      kind: "meta",
      metaPhoneNumberId: metaA.phoneNumberId,
      metaWabaId: "2000001",
      secretHint: metaA.accessToken.slice(-4),
    });
    // No field of the API holds the app secret, the token or the verify token's hash.
    for (const field of ["metaAppSecretEncrypted", "metaVerifyTokenHash", "secretEncrypted", "appSecret"]) {
      const result = await graphql(
        api.current,
        await tokenFor(api.current, a, "owner"),
        `{ allProviderAccounts { nodes { ${field} } } }`,
      );
      expect(result.body.errors?.[0]?.message, field).toMatch(/Cannot query field/);
    }
    const text = JSON.stringify(asA.body);
    expect(text).not.toContain(metaA.appSecret);
    expect(text).not.toContain(metaA.accessToken);
  });

  it("in SQL, members may not read the secrets, and B cannot change A's", async () => {
    for (const column of ["meta_app_secret_encrypted", "meta_verify_token_hash", "secret_encrypted"]) {
      const error = await asOwner(db.current, a, (c) =>
        expectPgError(c, () =>
          c.query(`select ${column} from herald_public.provider_accounts where id = $1`, [metaA.accountId]),
        ),
      );
      expect(error?.code, column).toBe("42501");
    }
    for (const call of [
      "select herald_public.set_meta_app_secret($1, 'a-new-secret-of-b')",
      "select herald_public.reset_meta_verify_token($1)",
      "select herald_public.set_provider_account_secret($1, 'a-new-token-of-b')",
    ]) {
      const error = await asOwner(db.current, b, (c) => expectPgError(c, () => c.query(call, [metaA.accountId])));
      expect(error?.code, call).toBe("NTFND");
    }
    // Nor can B decrypt A's credentials as a worker of its own tenant: the function sees only B's rows.
    const seen = await asWorkerOf(b, (c) =>
      c.query("select * from herald_hidden.meta_account_credentials($1)", [metaA.accountId]),
    );
    expect(seen.rows).toEqual([]);
  });

  it("names the field of a malformed account in the API's error", async () => {
    const result = await graphql(
      api.current,
      await tokenFor(api.current, a, "owner"),
      `
        mutation {
          createMetaAccount(
            input: {
              name: "x"
              phoneNumberId: "not-digits"
              wabaId: "1"
              accessToken: "EAAGtoken123"
              appSecret: "secret1234"
            }
          ) {
            createdMetaAccount {
              providerAccountId
            }
          }
        }
      `,
    );
    expect(result.body.errors?.[0]?.extensions).toMatchObject({ field: "phoneNumberId" });
    const short = await graphql(
      api.current,
      await tokenFor(api.current, a, "owner"),
      `
        mutation {
          createMetaAccount(
            input: { name: "x", phoneNumberId: "123", wabaId: "1", accessToken: "EAAGtoken123", appSecret: "short" }
          ) {
            createdMetaAccount {
              providerAccountId
            }
          }
        }
      `,
    );
    expect(short.body.errors?.[0]?.extensions).toMatchObject({ field: "appSecret" });
  });
});

describe("the Meta account's WhatsApp number", () => {
  it("is verified only when the account's phone number id sends from it, as the Graph API says", async () => {
    const other = "+14157779876";
    await asOwner(db.current, a, (c) =>
      c.query(
        "insert into herald_public.sender_numbers (phone_number, channel, provider_account_id) values ($1, 'whatsapp', $2)",
        [other, metaA.accountId],
      ),
    );
    expect(await proveSenderNumbers(db.current, { phoneNumbers: [other], sandbox: server })).toEqual({
      [`whatsapp:${other}`]: "failed",
    });
  });
});
