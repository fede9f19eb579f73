import http from "node:http";
import express from "express";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../src/config.ts";
import { withSession } from "../src/db/session.ts";
import { ROLES } from "../src/db/urls.ts";
import { createLogger } from "../src/logger.ts";
import { ProviderClients, sendEmail, sendSms, SendError, systemProviders } from "../src/providers/send.ts";
import { createSandbox, SANDBOX_SYSTEM_TWILIO, sandboxTwilioToken, type Sandbox } from "../src/sandbox/sandbox.ts";
import { startWorker, type WorkerHandle } from "../src/worker/worker.ts";
import { graphql, useApiServer } from "./helpers/api.ts";
import { useTestDatabase, withRootDb } from "./helpers/db.ts";
import { seedExtraTenant, seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import { testKeyring } from "./helpers/keys.ts";

/**
 * Provider selection through the real SDKs and the sandbox: the tenant's account, the system's,
 * fallback when the tenant's fails, and the test-send task. Nothing is mocked below the SDK.
 */

const db = useTestDatabase();
const api = useApiServer(db);
let a: TenantFixture;
let b: TenantFixture;
let c: TenantFixture;
let sandbox: Sandbox;
let server: http.Server;
let clients: ProviderClients;
let worker: WorkerHandle;

const twilioSid = async (t: TenantFixture) =>
  withRootDb(db.current, async (q) => (await q.query("select twilio_account_sid from herald_public.provider_accounts where id = $1", [t.providerAccountId])).rows[0].twilio_account_sid as string);

/** As the tenant's owner (credentials and settings are theirs to change). */
const asOwner = <T>(t: TenantFixture, fn: (client: pg.PoolClient) => Promise<T>) =>
  testKeyring()
    .sessionSettings(db.current.root, t.id)
    .then((settings) => withSession(db.current.authenticator, { role: ROLES.member, tenantId: t.id, userId: t.ownerId, settings }, fn));

/** As a worker job of the tenant, committed (sendSms records errors on the account). */
const asJob = <T>(t: TenantFixture, fn: (client: pg.PoolClient) => Promise<T>) =>
  testKeyring()
    .sessionSettings(db.current.root, t.id)
    .then((settings) => withSession(db.current.authenticator, { role: ROLES.worker, tenantId: t.id, settings }, fn));

const accountState = (t: TenantFixture) =>
  withRootDb(db.current, async (q) => (await q.query("select last_error, last_tested_at from herald_public.provider_accounts where id = $1", [t.providerAccountId])).rows[0]);

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  c = await seedExtraTenant(db.current, "tenant-c");
  sandbox = createSandbox();
  const app = express();
  app.use("/sandbox", sandbox.router);
  server = http.createServer(app);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const sandboxUrl = `http://127.0.0.1:${(server.address() as { port: number }).port}/sandbox`;
  // No TWILIO_* / SENDGRID_API_KEY here: the system accounts are the sandbox's.
  clients = new ProviderClients(systemProviders({ ...loadConfig(), twilio: undefined, sendgrid: undefined }, sandboxUrl));
  // A: a working Twilio account (the sandbox's credential for its SID) and a SendGrid one.
  const aSid = await twilioSid(a);
  await asOwner(a, async (q) => {
    await q.query("select herald_public.set_provider_account_secret($1, $2)", [a.providerAccountId, sandboxTwilioToken(aSid)]);
    await q.query("select herald_public.create_provider_account('sendgrid', 'Mail', 'SG.sandbox.tenant-a')");
  });
  // B keeps its fixture credential, which the sandbox refuses. C has no active account.
  await asOwner(c, (q) => q.query("update herald_public.provider_accounts set status = 'disabled' where id = $1", [c.providerAccountId]));
  worker = await startWorker({
    ownerUrl: db.current.urls.owner,
    authenticatorUrl: db.current.urls.authenticator,
    concurrency: 2,
    keyring: testKeyring(),
    providers: clients,
    logger: createLogger("silent", 2),
  });
});

afterAll(async () => {
  await worker?.stop();
  await new Promise((resolve) => server?.close(resolve));
});

describe("sending with the tenant's account or the system's", () => {
  it("uses the tenant's active Twilio account, from its sender number, for SMS and WhatsApp", async () => {
    const sid = await twilioSid(a);
    const sms = await asJob(a, (q) => sendSms(q, clients, { to: "+14155550140", body: "hello" }));
    expect(sms).toMatchObject({ provider: "tenant", accountId: a.providerAccountId });
    expect(sms.providerMessageId).toMatch(/^SM/);
    expect(sandbox.messages.at(-1)).toMatchObject({ id: sms.providerMessageId, account: sid, channel: "sms", to: "+14155550140", from: sms.from });
    const whatsapp = await asJob(a, (q) => sendSms(q, clients, { to: "+14155550140", body: "hola", from: "+14155550100", channel: "whatsapp" }));
    expect(sandbox.messages.at(-1)).toMatchObject({ id: whatsapp.providerMessageId, account: sid, channel: "whatsapp", to: "whatsapp:+14155550140" });
  });

  it("uses the tenant's SendGrid account for email, and the system's where a tenant has none", async () => {
    const mine = await asJob(a, (q) => sendEmail(q, clients, { to: "ada@example.com", subject: "Hi", text: "Hello" }));
    expect(mine.provider).toBe("tenant");
    expect(sandbox.messages.at(-1)).toMatchObject({ id: mine.providerMessageId, account: "…nt-a", to: "ada@example.com" });
    const system = await asJob(c, (q) => sendEmail(q, clients, { to: "grace@example.com", subject: "Hi", text: "Hello" }));
    expect(system).toMatchObject({ provider: "system", from: "herald@sandbox.test" });
    const sms = await asJob(c, (q) => sendSms(q, clients, { to: "+14155550141", body: "from the system" }));
    expect(sms).toMatchObject({ provider: "system", from: "+15005550006" });
    expect(sandbox.messages.at(-1)).toMatchObject({ account: SANDBOX_SYSTEM_TWILIO.accountSid, to: "+14155550141" });
  });

  it("wrong tenant credentials: the error is recorded; without fallback the send fails clearly", async () => {
    const before = sandbox.messages.length;
    // As a delivery task does: catch the failure and commit, so the account keeps the error.
    const error = await asJob(b, (q) => sendSms(q, clients, { to: "+14155550142", body: "x" }).catch((e: unknown) => e));
    expect(error).toBeInstanceOf(SendError);
    expect(error).toMatchObject({ provider: "tenant", code: 20003, message: "the tenant's twilio account failed: Authenticate" });
    expect((await accountState(b)).last_error).toBe("Authenticate");
    expect(sandbox.messages.length).toBe(before);
  });

  it("with fallback_to_system on, the system sends and the result says so; a bad recipient is not retried elsewhere", async () => {
    await asOwner(b, (q) => q.query("update herald_public.tenant_settings set fallback_to_system = true where tenant_id = $1", [b.id]));
    const sent = await asJob(b, (q) => sendSms(q, clients, { to: "+14155550143", body: "fallback" }));
    expect(sent).toMatchObject({ provider: "system" });
    expect(sent.accountId).toBeUndefined();
    expect(sandbox.messages.at(-1)).toMatchObject({ id: sent.providerMessageId, account: SANDBOX_SYSTEM_TWILIO.accountSid, to: "+14155550143" });
    expect((await accountState(b)).last_error).toBe("Authenticate");
    // 21211 is the recipient's fault: another provider would fail alike, so no fallback.
    const bSid = await twilioSid(b);
    await asOwner(b, (q) => q.query("select herald_public.set_provider_account_secret($1, $2)", [b.providerAccountId, sandboxTwilioToken(bSid)]));
    const invalid = await asJob(b, (q) => sendSms(q, clients, { to: "+1999", body: "x" })).catch((e: unknown) => e);
    expect(invalid).toMatchObject({ provider: "tenant", code: 21211 });
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
    const token = await api.current.authenticator.sign({ role: ROLES.member, tenant_id: a.id, sub: a.ownerId });
    const { body } = await graphql(api.current, token, `mutation($id: UUID!) { testProviderAccount(input: {providerAccountId: $id, toAddress: "+14155550144"}) { result } }`, {
      id: a.providerAccountId,
    });
    expect(body.data?.testProviderAccount?.result, JSON.stringify(body)).toMatch(/^[0-9a-f-]{36}$/);
    expect(await waitForTest(a)).toMatchObject({ last_error: null });
    expect(sandbox.messages.at(-1)).toMatchObject({ to: "+14155550144", account: await twilioSid(a) });
  });

  it("records the provider's error for an account whose credential is wrong; B cannot test A's account", async () => {
    await asOwner(c, (q) => q.query("update herald_public.provider_accounts set status = 'active' where id = $1", [c.providerAccountId]));
    const token = await api.current.authenticator.sign({ role: ROLES.member, tenant_id: c.id, sub: c.ownerId });
    await graphql(api.current, token, `mutation($id: UUID!) { testProviderAccount(input: {providerAccountId: $id, toAddress: "+14155550145"}) { result } }`, { id: c.providerAccountId });
    expect((await waitForTest(c)).last_error).toBe("Authenticate");
    const asC = await graphql(api.current, token, `mutation($id: UUID!) { testProviderAccount(input: {providerAccountId: $id, toAddress: "+14155550146"}) { result } }`, { id: a.providerAccountId });
    expect(asC.body.errors?.[0]?.extensions?.code).toBe("NOT_FOUND");
  });
});
