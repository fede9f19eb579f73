import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { withSession } from "../src/db/session.ts";
import { ROLES } from "../src/db/urls.ts";
import { createLogger } from "../src/logger.ts";
import type { ProviderClients } from "../src/providers/clients.ts";
import { SendError } from "../src/providers/errors.ts";
import { sendEmail, sendSms } from "../src/providers/send.ts";
import { SANDBOX_SYSTEM_TWILIO, sandboxTwilioToken, type Sandbox } from "../src/sandbox/sandbox.ts";
import { startSandboxServer, type SandboxServer } from "../src/sandbox/server.ts";
import { startWorker, type WorkerHandle } from "../src/worker/worker.ts";
import { graphql, tokenFor, useApiServer } from "./helpers/api.ts";
import { asRole, useTestDatabase, withRootDb } from "./helpers/db.ts";
import { seedExtraTenant, seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import { testKeyring } from "./helpers/keys.ts";
import { proveSenderNumbers } from "./helpers/numbers.ts";

/**
 * Provider selection through the real SDKs and the sandbox: the tenant's account, the system's,
 * fallback when the tenant's fails, and the test-send task. Nothing is mocked below the SDK.
 */

/** Everything the API server and the worker log during this file, at debug level. */
const logLines: string[] = [];
const capturingLogger = createLogger("debug", { write: (line: string) => void logLines.push(line) });
const db = useTestDatabase();
const api = useApiServer(db, { logger: capturingLogger });
let a: TenantFixture;
let b: TenantFixture;
let c: TenantFixture;
let sandbox: Sandbox;
let server: SandboxServer;
let clients: ProviderClients;
let worker: WorkerHandle;

const twilioSid = async (t: TenantFixture) =>
  withRootDb(
    db.current,
    async (q) =>
      (
        await q.query("select twilio_account_sid from herald_public.provider_accounts where id = $1", [
          t.providerAccountId,
        ])
      ).rows[0].twilio_account_sid as string,
  );

/** As the tenant's owner (credentials and settings are theirs to change). */
const asOwner = <T>(t: TenantFixture, fn: (client: pg.PoolClient) => Promise<T>) =>
  testKeyring()
    .sessionSettings(db.current.root, t.id)
    .then((settings) =>
      withSession(db.current.authenticator, { role: ROLES.member, tenantId: t.id, userId: t.ownerId, settings }, fn),
    );

/** As a worker job of the tenant, committed (sendSms records errors on the account). */
const asJob = <T>(t: TenantFixture, fn: (client: pg.PoolClient) => Promise<T>) =>
  testKeyring()
    .sessionSettings(db.current.root, t.id)
    .then((settings) => withSession(db.current.authenticator, { role: ROLES.worker, tenantId: t.id, settings }, fn));

const accountState = (t: TenantFixture) =>
  withRootDb(
    db.current,
    async (q) =>
      (
        await q.query("select last_error, last_tested_at from herald_public.provider_accounts where id = $1", [
          t.providerAccountId,
        ])
      ).rows[0],
  );

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  c = await seedExtraTenant(db.current, "tenant-c");
  server = await startSandboxServer();
  ({ sandbox, clients } = server);
  // A: a working Twilio account (the sandbox's credential for its SID) and a SendGrid one.
  const aSid = await twilioSid(a);
  await asOwner(a, async (q) => {
    await q.query("select herald_public.set_provider_account_secret($1, $2)", [
      a.providerAccountId,
      sandboxTwilioToken(aSid),
    ]);
    await q.query("select herald_public.create_provider_account('sendgrid', 'Mail', 'SG.sandbox.tenant-a')");
    await q.query(
      "insert into herald_public.sender_numbers (phone_number, channel, provider_account_id) values ('+14155550190', 'whatsapp', $1)",
      [a.providerAccountId],
    );
  });
  await proveSenderNumbers(db.current, { phoneNumbers: ["+14155550190"], sandbox: server });
  // B keeps its fixture credential, which the sandbox refuses. C has no active account.
  await asOwner(c, (q) =>
    q.query("update herald_public.provider_accounts set status = 'disabled' where id = $1", [c.providerAccountId]),
  );
  worker = await startWorker({
    ownerUrl: db.current.urls.owner,
    authenticatorUrl: db.current.urls.authenticator,
    concurrency: 2,
    keyring: testKeyring(),
    providers: clients,
    logger: capturingLogger,
  });
});

afterAll(async () => {
  await worker?.stop();
  await server?.close();
});

describe("sending with the tenant's account or the system's", () => {
  it("uses the tenant's active Twilio account, from its sender number, for SMS and WhatsApp", async () => {
    const sid = await twilioSid(a);
    const sms = await asJob(a, (q) => sendSms(q, clients, { to: "+14155550140", body: "hello" }));
    expect(sms).toMatchObject({ provider: "tenant", accountId: a.providerAccountId });
    expect(sms.providerMessageId).toMatch(/^SM/);
    expect(sandbox.messages.at(-1)).toMatchObject({
      id: sms.providerMessageId,
      account: sid,
      channel: "sms",
      to: "+14155550140",
      from: sms.from,
    });
    const whatsapp = await asJob(a, (q) =>
      sendSms(q, clients, { to: "+14155550140", body: "hola", channel: "whatsapp" }),
    );
    expect(sandbox.messages.at(-1)).toMatchObject({
      id: whatsapp.providerMessageId,
      account: sid,
      channel: "whatsapp",
      to: "whatsapp:+14155550140",
      from: "whatsapp:+14155550190",
    });
  });

  it("uses the tenant's SendGrid account for email, and the system's where a tenant has none", async () => {
    const mine = await asJob(a, (q) => sendEmail(q, clients, { to: "ada@example.com", subject: "Hi", text: "Hello" }));
    expect(mine.provider).toBe("tenant");
    expect(sandbox.messages.at(-1)).toMatchObject({
      id: mine.providerMessageId,
      account: "…nt-a",
      to: "ada@example.com",
    });
    const system = await asJob(c, (q) =>
      sendEmail(q, clients, { to: "grace@example.com", subject: "Hi", text: "Hello" }),
    );
    expect(system).toMatchObject({ provider: "system", from: "herald@sandbox.test" });
    const sms = await asJob(c, (q) => sendSms(q, clients, { to: "+14155550141", body: "from the system" }));
    expect(sms).toMatchObject({ provider: "system", from: "+15005550006" });
    expect(sandbox.messages.at(-1)).toMatchObject({ account: SANDBOX_SYSTEM_TWILIO.accountSid, to: "+14155550141" });
  });

  it("wrong tenant credentials: the error is recorded; without fallback the send fails clearly", async () => {
    const before = sandbox.messages.length;
    // As a delivery task does: catch the failure and commit, so the account keeps the error.
    const error = await asJob(b, (q) =>
      sendSms(q, clients, { to: "+14155550142", body: "x" }).catch((e: unknown) => e),
    );
    expect(error).toBeInstanceOf(SendError);
    expect(error).toMatchObject({
      provider: "tenant",
      code: 20003,
      message: "the tenant's twilio account failed: Authenticate",
    });
    expect((await accountState(b)).last_error).toBe("Authenticate");
    expect(sandbox.messages.length).toBe(before);
  });

  it("with fallback_to_system on, the system sends and the result says so; a bad recipient is not retried elsewhere", async () => {
    await asOwner(b, (q) =>
      q.query("update herald_public.tenant_settings set fallback_to_system = true where tenant_id = $1", [b.id]),
    );
    const sent = await asJob(b, (q) => sendSms(q, clients, { to: "+14155550143", body: "fallback" }));
    // The system account sends from the system's number: B's number belongs to B's account.
    expect(sent).toMatchObject({ provider: "system", from: "+15005550006" });
    expect(sent.accountId).toBeUndefined();
    expect(sandbox.messages.at(-1)).toMatchObject({
      id: sent.providerMessageId,
      account: SANDBOX_SYSTEM_TWILIO.accountSid,
      to: "+14155550143",
    });
    expect((await accountState(b)).last_error).toBe("Authenticate");
    // 21211 is the recipient's fault: another provider would fail alike, so no fallback.
    const bSid = await twilioSid(b);
    await asOwner(b, (q) =>
      q.query("select herald_public.set_provider_account_secret($1, $2)", [
        b.providerAccountId,
        sandboxTwilioToken(bSid),
      ]),
    );
    await asJob(b, (q) => sendSms(q, clients, { to: "+14155550148", body: "works again" }));
    expect((await accountState(b)).last_error).toBeNull(); // a send that worked clears the old error
    const invalid = await asJob(b, (q) => sendSms(q, clients, { to: "+1999", body: "x" }).catch((e: unknown) => e));
    expect(invalid).toMatchObject({ provider: "tenant", code: 21211 });
    expect((await accountState(b)).last_error).toBeNull(); // the recipient's fault, not the account's
    // Twilio's message quotes the number; what Herald keeps on the delivery and logs does not.
    const quoted = (await asJob(b, (q) =>
      sendSms(q, clients, { to: "+1 415 555 0199", body: "x" }).catch((e: unknown) => e),
    )) as Error;
    expect(quoted).toMatchObject({ code: 21211 });
    expect(quoted.message).toContain("[number]");
    expect(quoted.message).not.toMatch(/415|0199/);
  });

  it("a 5xx or a timeout may hide an accepted message: no fallback, so nothing is sent twice", async () => {
    sandbox.setFaults({ errorRate: 1 });
    try {
      const before = sandbox.messages.length;
      const error = await asJob(b, (q) =>
        sendSms(q, clients, { to: "+14155550149", body: "x" }).catch((e: unknown) => e),
      );
      expect(error).toMatchObject({ provider: "tenant" });
      expect(sandbox.messages.length).toBe(before);
    } finally {
      sandbox.setFaults({});
    }
  });
});

describe("senders", () => {
  it("a tenant cannot send from another tenant's number or address, only its own or the system's", async () => {
    const before = sandbox.messages.length;
    await expect(
      asJob(c, (q) => sendSms(q, clients, { to: "+14155550147", body: "spoof", from: a.senderNumber })),
    ).rejects.toMatchObject({ code: "NOT_OWN_SENDER" });
    await expect(
      asJob(c, (q) =>
        sendEmail(q, clients, { to: "x@example.com", subject: "s", text: "t", from: "hello@tenant-a.test" }),
      ),
    ).rejects.toMatchObject({
      code: "NOT_OWN_SENDER",
    });
    // Registering the address as its own sender changes nothing: it is not on a domain C verified.
    await asOwner(c, (q) =>
      q.query("insert into herald_public.email_senders (from_email) values ('hello@tenant-a.test')"),
    );
    await expect(
      asJob(c, (q) =>
        sendEmail(q, clients, { to: "x@example.com", subject: "s", text: "t", from: "hello@tenant-a.test" }),
      ),
    ).rejects.toMatchObject({
      code: "NOT_OWN_SENDER",
    });
    expect(sandbox.messages.length).toBe(before);
    expect(
      await asJob(c, (q) => sendSms(q, clients, { to: "+14155550147", body: "ok", from: "+15005550006" })),
    ).toMatchObject({ provider: "system" });
  });

  it("the API and the worker refuse another tenant's sender by one rule, with one error", async () => {
    const token = await tokenFor(api.current, c, "owner");
    const viaApi = async (input: Record<string, unknown>) =>
      (
        await graphql(
          api.current,
          token,
          `
            mutation ($input: SendMessageInput!) {
              sendMessage(input: $input) {
                message {
                  rowId
                }
              }
            }
          `,
          { input: { contactIds: [c.contactId], ...input } },
        )
      ).body;
    const cases = [
      {
        api: { channel: "sms", body: "spoof", metadata: { from: a.senderNumber } },
        worker: (q: pg.PoolClient) => sendSms(q, clients, { to: "+14155550147", body: "spoof", from: a.senderNumber }),
      },
      {
        api: { channel: "email", subject: "s", body: "t", metadata: { from: "hello@tenant-a.test" } },
        worker: (q: pg.PoolClient) =>
          sendEmail(q, clients, { to: "x@example.com", subject: "s", text: "t", from: "hello@tenant-a.test" }),
      },
    ];
    const before = sandbox.messages.length;
    for (const { api: input, worker } of cases) {
      const refused = (await asJob(c, (q) => worker(q).catch((e: unknown) => e))) as SendError;
      expect(refused).toMatchObject({ name: "SendError", code: "NOT_OWN_SENDER" });
      const answer = await viaApi(input);
      expect(answer.data?.sendMessage ?? null).toBeNull();
      expect(answer.errors?.[0], input.channel).toMatchObject({
        message: refused.message,
        extensions: { code: "NOT_OWN_SENDER", field: "metadata" },
      });
    }
    expect(sandbox.messages.length).toBe(before);
  });

  it("WhatsApp sends from a WhatsApp number even when the tenant's sms_from is set", async () => {
    const smsNumber = a.senderNumber;
    await asOwner(a, (q) =>
      q.query("update herald_public.tenant_settings set sms_from = $2 where tenant_id = $1", [a.id, smsNumber]),
    );
    const sent = await asJob(a, (q) => sendSms(q, clients, { to: "+14155550160", body: "hola", channel: "whatsapp" }));
    expect(sent.from).toBe("+14155550190");
    expect((await asJob(a, (q) => sendSms(q, clients, { to: "+14155550161", body: "sms" }))).from).toBe(smsNumber);
  });
});

describe("testProviderAccount", () => {
  const waitForTest = async (t: TenantFixture) => {
    for (let i = 0; i < 150; i++) {
      const state = await accountState(t);
      if (state.last_tested_at) return state;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error("the test send never ran");
  };

  it("queues one message through the account and records the outcome on it", async () => {
    const token = await tokenFor(api.current, a, "owner");
    const { body } = await graphql(
      api.current,
      token,
      `
        mutation ($id: UUID!) {
          testProviderAccount(input: { providerAccountId: $id, toAddress: "+14155550144" }) {
            result
          }
        }
      `,
      {
        id: a.providerAccountId,
      },
    );
    expect(body.data?.testProviderAccount?.result, JSON.stringify(body)).toMatch(/^[0-9a-f-]{36}$/);
    expect(await waitForTest(a)).toMatchObject({ last_error: null });
    expect(sandbox.messages.at(-1)).toMatchObject({ to: "+14155550144", account: await twilioSid(a) });
  });

  it("stores the address encrypted under the tenant's key, and not at all once the test has run", async () => {
    const token = await tokenFor(api.current, a, "owner");
    const row = (id: string) =>
      withRootDb(
        db.current,
        async (q) =>
          (
            await q.query(
              "select to_jsonb(p)::text as json, finished_at from herald_hidden.provider_tests p where id = $1",
              [id],
            )
          ).rows[0],
      );
    const { body } = await graphql(
      api.current,
      token,
      `
        mutation ($id: UUID!) {
          testProviderAccount(input: { providerAccountId: $id, toAddress: "+14155550147" }) {
            result
          }
        }
      `,
      {
        id: a.providerAccountId,
      },
    );
    const testId = body.data?.testProviderAccount?.result as string;
    expect(testId, JSON.stringify(body)).toMatch(/^[0-9a-f-]{36}$/);
    // Whatever the worker has done by now, no column holds the address in plaintext.
    expect((await row(testId)).json).not.toContain("4155550147");
    for (let i = 0; i < 150 && !(await row(testId)).finished_at; i++) await new Promise((r) => setTimeout(r, 100));
    const finished = await row(testId);
    expect(finished.finished_at).not.toBeNull();
    expect(JSON.parse(finished.json)).toMatchObject({ to_address_encrypted: null, key_version: null, error: null });
    expect(sandbox.messages.some((m) => m.to === "+14155550147")).toBe(true);
  });

  it("encrypts what is queued: only a session with the tenant's data key reads it back", async () => {
    const settings = await testKeyring().sessionSettings(db.current.root, a.id);
    // Rolled back: nothing is sent.
    const [ciphertext, plain] = await asRole(
      db.current,
      { role: ROLES.member, tenantId: a.id, userId: a.ownerId, settings },
      async (q) => {
        const { rows } = await q.query("select herald_public.test_provider_account($1, '+14155550148') as id", [
          a.providerAccountId,
        ]);
        const stored = await q.query(
          "select to_address_encrypted, herald_hidden.decrypt_pii(to_address_encrypted, key_version) as plain from herald_hidden.provider_tests where id = $1",
          [rows[0].id],
        );
        return [stored.rows[0].to_address_encrypted as Buffer, stored.rows[0].plain as string];
      },
    );
    expect(plain).toBe("+14155550148");
    expect(ciphertext.toString("latin1")).not.toContain("4155550148");
  });

  it("records the provider's error for an account whose credential is wrong; B cannot test A's account", async () => {
    await asOwner(c, (q) =>
      q.query("update herald_public.provider_accounts set status = 'active' where id = $1", [c.providerAccountId]),
    );
    const token = await tokenFor(api.current, c, "owner");
    await graphql(
      api.current,
      token,
      `
        mutation ($id: UUID!) {
          testProviderAccount(input: { providerAccountId: $id, toAddress: "+14155550145" }) {
            result
          }
        }
      `,
      { id: c.providerAccountId },
    );
    expect((await waitForTest(c)).last_error).toBe("Authenticate");
    const asC = await graphql(
      api.current,
      token,
      `
        mutation ($id: UUID!) {
          testProviderAccount(input: { providerAccountId: $id, toAddress: "+14155550146" }) {
            result
          }
        }
      `,
      { id: a.providerAccountId },
    );
    expect(asC.body.errors?.[0]?.extensions?.code).toBe("NOT_FOUND");
  });
});

describe("email domain authentication (SendGrid, through the tenant's account)", () => {
  const domainState = (id: string) =>
    withRootDb(
      db.current,
      async (q) =>
        (
          await q.query(
            "select status, dns_records, last_error, last_checked_at from herald_public.email_domains where id = $1",
            [id],
          )
        ).rows[0],
    );
  const waitFor = async (
    id: string,
    done: (row: { status: string; last_checked_at: Date | null; last_error: string | null }) => boolean,
  ) => {
    for (let i = 0; i < 150; i++) {
      const row = await domainState(id);
      if (done(row)) return row;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`email domain ${id} never reached the expected state`);
  };

  it("authenticateEmailDomain stores the DNS records to publish; verifyEmailDomain records SendGrid's check", async () => {
    const token = await tokenFor(api.current, a, "owner");
    const gql = (query: string, variables?: Record<string, unknown>) => graphql(api.current, token, query, variables);
    const created = await gql(
      `mutation { authenticateEmailDomain(input: {domain: "Mail.Tenant-A.test"}) { result { rowId domain status } } }`,
    );
    const { rowId, domain, status } = created.body.data!.authenticateEmailDomain.result;
    expect([domain, status]).toEqual(["mail.tenant-a.test", "requested"]);
    const pending = await waitFor(rowId, (r) => r.status !== "requested");
    expect(pending.status).toBe("pending");
    expect(pending.dns_records.map((r: { type: string; host: string }) => [r.type, r.host])).toEqual([
      ["cname", expect.stringMatching(/^em\d+\.mail\.tenant-a\.test$/)],
      ["cname", "s1._domainkey.mail.tenant-a.test"],
      ["cname", "s2._domainkey.mail.tenant-a.test"],
    ]);
    await gql(`mutation($id: UUID!) { verifyEmailDomain(input: {emailDomainId: $id}) { result { rowId } } }`, {
      id: rowId,
    });
    expect(await waitFor(rowId, (r) => r.status === "verified")).toMatchObject({
      status: "verified",
      last_error: null,
    });
    // An address on the verified domain is now the tenant's to send from.
    const fromDomain = await asJob(a, (q) =>
      sendEmail(q, clients, { to: "ada@example.com", subject: "s", text: "t", from: "news@mail.tenant-a.test" }),
    );
    expect(fromDomain).toMatchObject({ provider: "tenant", from: "news@mail.tenant-a.test" });

    // A domain whose records are not published stays pending, with SendGrid's reason.
    const other = await gql(
      `mutation { authenticateEmailDomain(input: {domain: "unverified.tenant-a.test"}) { result { rowId } } }`,
    );
    const otherId = other.body.data!.authenticateEmailDomain.result.rowId;
    await waitFor(otherId, (r) => r.status === "pending");
    await gql(`mutation($id: UUID!) { verifyEmailDomain(input: {emailDomainId: $id}) { result { rowId } } }`, {
      id: otherId,
    });
    const unverified = await waitFor(otherId, (r) => r.last_error !== null);
    expect(unverified.status).toBe("pending");
    expect(unverified.last_error).toMatch(/Expected CNAME/);

    // Tenant C (no active SendGrid account) cannot start one; B cannot verify or see A's.
    const tokenB = await tokenFor(api.current, b, "owner");
    const verifyA = await graphql(
      api.current,
      tokenB,
      `
        mutation ($id: UUID!) {
          verifyEmailDomain(input: { emailDomainId: $id }) {
            result {
              rowId
            }
          }
        }
      `,
      { id: rowId },
    );
    expect(verifyA.body.errors?.[0]?.extensions?.code).toBe("NOT_FOUND");
    const listB = await graphql(
      api.current,
      tokenB,
      `
        {
          allEmailDomains {
            totalCount
          }
        }
      `,
    );
    expect(listB.body.data!.allEmailDomains.totalCount).toBe(0);
    const none = await graphql(
      api.current,
      tokenB,
      `
        mutation {
          authenticateEmailDomain(input: { domain: "b.example.com" }) {
            result {
              rowId
            }
          }
        }
      `,
    );
    expect(none.body.errors?.[0]?.message).toMatch(/SendGrid account first/);
  });
});

describe("logs", () => {
  it("carry no provider credential, no tenant key and no recipient body from any of the above", async () => {
    expect(logLines.length).toBeGreaterThan(10); // the capture works: requests and jobs were logged
    const logs = logLines.join("\n");
    const settingsA = await testKeyring().sessionSettings(db.current.root, a.id);
    for (const secret of [
      sandboxTwilioToken(await twilioSid(a)),
      b.providerSecret,
      c.providerSecret,
      "SG.sandbox.tenant-a",
      settingsA["herald.data_key"]!,
      settingsA["herald.hash_key"]!,
      "from the system",
    ]) {
      expect(logs).not.toContain(secret);
    }
  });
});
