import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { WorkerHandle } from "../src/worker/worker.ts";
import { graphql, tokenFor, useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedExtraTenant, type TenantFixture } from "./helpers/fixtures.ts";
import {
  asOwner,
  asRoot,
  asWorker,
  readyToSend,
  sendThroughApi,
  settled,
  startSandboxServer,
  startSendingWorker,
  type SandboxServer,
} from "./helpers/messaging.ts";

/**
 * Who a tenant's email is from (docs/email.md): its own SendGrid account sends
 * only from its verified sender, with the sender's from name and reply-to (or
 * the message's); without a verified sender it skips with a reason, never
 * sending from the system address — unless the tenant opted into the
 * fallback, which sends through the system account.
 */

const SYSTEM_FROM = "herald@sandbox.test";
const db = useTestDatabase();
let server: SandboxServer;
beforeAll(async () => {
  server = await startSandboxServer(10_000);
});
const api = useApiServer(db);
let worker: WorkerHandle | undefined;
/** With a SendGrid account and a sender on a verified domain. */
let verified: TenantFixture;
/** With a SendGrid account whose only sender's domain is not verified. */
let unverified: TenantFixture;
const contacts = new Map<string, string>();

/** A SendGrid account of the tenant, a sender on it (with name and reply-to), and its domain in `status`. */
async function sendgridSetup(t: TenantFixture, domain: string, status: "verified" | "pending") {
  await asOwner(db.current, t, async (c) => {
    const { rows } = await c.query("select id from herald_public.create_provider_account('sendgrid', 'Mail', $1)", [
      `SG.sandbox.${t.slug}`,
    ]);
    await c.query(
      "insert into herald_public.email_senders (from_email, from_name, reply_to, provider_account_id) values ($1, $2, $3, $4)",
      [`news@${domain}`, `${t.slug} News`, `care@${domain}`, rows[0].id],
    );
    await c.query("insert into herald_public.email_domains (domain, provider_account_id) values ($1, $2)", [
      domain,
      rows[0].id,
    ]);
  });
  // As SendGrid's check would leave it (its job is not run here).
  await asRoot(db.current, async (c) => {
    await c.query("update herald_public.email_domains set status = $2 where tenant_id = $1", [t.id, status]);
    await c.query(
      `delete from graphile_worker._private_jobs j using graphile_worker._private_tasks k
        where k.id = j.task_id and k.identifier like 'email_domains__%'`,
    );
  });
}

beforeAll(async () => {
  server.clients.system.unsubscribe = { baseUrl: "https://herald.example.test", key: api.config.unsubscribeKey };
  verified = await seedExtraTenant(db.current, "verified-co");
  unverified = await seedExtraTenant(db.current, "unverified-co");
  await sendgridSetup(verified, "verified-co.example", "verified");
  await sendgridSetup(unverified, "unverified-co.example", "pending");
  for (const t of [verified, unverified]) {
    await readyToSend(db.current, server, t);
    contacts.set(
      t.id,
      await asWorker(db.current, t, async (c) => {
        const { rows } = await c.query("select contact_id from herald_hidden.upsert_contacts($1)", [
          JSON.stringify([{ first_name: "Ida", email: `ida@${t.slug}.example.com` }]),
        ]);
        return rows[0].contact_id as string;
      }),
    );
  }
  worker = await startSendingWorker(db.current, server, 4);
});

afterAll(async () => {
  await worker?.stop();
  await server?.close();
});

async function send(t: TenantFixture, subject: string, metadata?: Record<string, unknown>) {
  const messageId = await sendThroughApi(api.current, await tokenFor(api.current, t, "member"), {
    channel: "email",
    subject,
    body: "Hello.",
    contactIds: [contacts.get(t.id)],
    purpose: "transactional",
    ...(metadata ? { metadata } : {}),
  });
  await settled(db.current, messageId, 30_000);
  const { rows } = await db.current.root.query(
    "select status, reason, provider, from_address from herald_public.deliveries where message_id = $1",
    [messageId],
  );
  return { delivery: rows[0], copies: server.sandbox.messages.filter((m) => m.subject === subject) };
}

describe("a tenant's own SendGrid account", () => {
  it("sends from its verified sender, with the sender's from name and reply-to", async () => {
    const { delivery, copies } = await send(verified, "From the verified sender");
    expect(delivery).toMatchObject({ status: "sent", provider: "tenant", from_address: "news@verified-co.example" });
    expect(copies).toHaveLength(1);
    expect(copies[0]).toMatchObject({
      from: "news@verified-co.example",
      fromName: "verified-co News",
      replyTo: "care@verified-co.example",
      account: "…d-co",
    });
  });

  it("takes the message's fromName and replyTo over the sender's", async () => {
    const { copies } = await send(verified, "Overridden", {
      fromName: "Billing",
      replyTo: "billing@verified-co.example",
    });
    expect(copies[0]).toMatchObject({ fromName: "Billing", replyTo: "billing@verified-co.example" });
  });

  it("without a verified sender: skipped with a clear reason, nothing sent from the system address", async () => {
    const { delivery, copies } = await send(unverified, "No verified sender");
    expect(delivery.status).toBe("skipped");
    expect(delivery.reason).toMatch(/^no_verified_sender: .*verified domain/);
    expect(copies).toHaveLength(0);
    // Naming the system sender does not get around it: refused when the message is written.
    const { body } = await graphql(
      api.current,
      await tokenFor(api.current, unverified, "member"),
      "mutation($input: SendMessageInput!) { sendMessage(input: $input) { message { rowId } } }",
      {
        input: {
          channel: "email",
          subject: "Naming the system sender",
          body: "Hello.",
          contactIds: [contacts.get(unverified.id)],
          metadata: { from: SYSTEM_FROM },
        },
      },
    );
    expect(body.errors?.[0]?.extensions).toMatchObject({ code: "NOT_OWN_SENDER", field: "metadata" });
  });

  it("with fallback_to_system: the system's account sends, from the system sender", async () => {
    await asRoot(db.current, (c) =>
      c.query("update herald_public.tenant_settings set fallback_to_system = true where tenant_id = $1", [
        unverified.id,
      ]),
    );
    try {
      const { delivery, copies } = await send(unverified, "Through the fallback");
      expect(delivery).toMatchObject({ status: "sent", provider: "system", from_address: SYSTEM_FROM });
      expect(copies[0]).toMatchObject({ from: SYSTEM_FROM, account: "SG.sandbox.system" });
    } finally {
      await asRoot(db.current, (c) =>
        c.query("update herald_public.tenant_settings set fallback_to_system = false where tenant_id = $1", [
          unverified.id,
        ]),
      );
    }
  });
});

describe("metadata.fromName and metadata.replyTo", () => {
  it.each([
    [{ replyTo: "not an address" }, "metadata.replyTo must be one email address"],
    [{ replyTo: "a@b.example, c@d.example" }, "metadata.replyTo must be one email address"],
    [{ fromName: "Line\r\nBcc: x@y.example" }, "metadata.fromName must be a name"],
    [{ fromName: "x".repeat(101) }, "metadata.fromName must be a name"],
    [{ fromName: 7 }, "metadata.fromName must be a name"],
  ])("%o is refused, naming metadata", async (metadata, message) => {
    const { body } = await graphql(
      api.current,
      await tokenFor(api.current, verified, "member"),
      "mutation($input: SendMessageInput!) { sendMessage(input: $input) { message { rowId } } }",
      {
        input: {
          channel: "email",
          subject: "Refused",
          body: "Hello.",
          contactIds: [contacts.get(verified.id)],
          metadata,
        },
      },
    );
    expect(body.errors?.[0]?.message).toContain(message);
    expect(body.errors?.[0]?.extensions).toMatchObject({ field: "metadata" });
  });

  it("is for email only", async () => {
    const { body } = await graphql(
      api.current,
      await tokenFor(api.current, verified, "member"),
      "mutation($input: SendMessageInput!) { sendMessage(input: $input) { message { rowId } } }",
      { input: { channel: "sms", body: "Hello.", contactIds: [verified.contactId], metadata: { fromName: "X" } } },
    );
    expect(body.errors?.[0]?.message).toContain("for email only");
  });
});

describe("testProviderAccount on a SendGrid account", () => {
  async function runTest(t: TenantFixture, to: string) {
    const { rows } = await db.current.root.query(
      "select id from herald_public.provider_accounts where tenant_id = $1 and kind = 'sendgrid'",
      [t.id],
    );
    const { body } = await graphql(
      api.current,
      await tokenFor(api.current, t, "owner"),
      "mutation($id: UUID!, $to: String!) { testProviderAccount(input: { providerAccountId: $id, toAddress: $to }) { result } }",
      { id: rows[0].id, to },
    );
    const testId = body.data?.testProviderAccount?.result as string;
    expect(testId, JSON.stringify(body)).toMatch(/^[0-9a-f-]{36}$/);
    for (let i = 0; i < 150; i++) {
      const { rows: done } = await db.current.root.query(
        "select finished_at, error from herald_hidden.provider_tests where id = $1",
        [testId],
      );
      if (done[0]?.finished_at) return done[0].error as string | null;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error("the account test did not finish");
  }

  it("sends from the account's verified sender", async () => {
    expect(await runTest(verified, "tester@verified-co.example")).toBeNull();
    expect(server.sandbox.messages.filter((m) => m.to === "tester@verified-co.example")).toMatchObject([
      { from: "news@verified-co.example", fromName: "verified-co News" },
    ]);
  });

  it("without a verified sender: fails saying so, nothing sent from the system address", async () => {
    expect(await runTest(unverified, "tester@unverified-co.example")).toMatch(/^no_verified_sender/);
    expect(server.sandbox.messages.filter((m) => m.to === "tester@unverified-co.example")).toEqual([]);
  });
});
