import http from "node:http";
import express from "express";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { findFreePort } from "../src/db/ports.ts";
import { ROLES } from "../src/db/urls.ts";
import { createLogger } from "../src/logger.ts";
import { sendgridSignature, twilioSignature } from "../src/sandbox/wire.ts";
import { webhooksRouter } from "../src/provider-callbacks/index.ts";
import { ProviderReports, type ProviderReport } from "../src/provider-callbacks/reports.ts";
import { isDatabaseUnavailable } from "../src/db/availability.ts";
import { startWorker, type WorkerHandle } from "../src/worker/worker.ts";
import { asRole, expectPgError, useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import { testKeyring } from "./helpers/keys.ts";
import { asRoot, asWorker, waitFor } from "./helpers/messaging.ts";
import { contactWith, deliveryState, inboundText, sendgridKeyPair, SYSTEM_TWILIO } from "./helpers/webhooks.ts";

/**
 * The journal behind status callbacks and SendGrid events: what was
 * acknowledged is applied even if the process that acknowledged it died
 * first; a batch applies as one-by-one would; tenants stay apart; and a
 * database that is down gets the provider a 503 to retry, not a 500.
 */

const db = useTestDatabase();
let a: TenantFixture;
let b: TenantFixture;
const silent = createLogger("silent", 2);

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
});

let phoneCounter = 0;
const freshPhone = () => `+1628557${String(1000 + ++phoneCounter)}`;
let sidCounter = 0;
const newSid = () => `SM${String(++sidCounter).padStart(32, "a")}`;

/** A delivery of the tenant's fixture message to a new contact, as the worker would have left it. */
async function delivery(t: TenantFixture, status: string, providerMessageId: string | null) {
  const phone = freshPhone();
  const contactId = await contactWith(db.current, t, phone);
  const { rows } = await asRoot(db.current, (c) =>
    c.query(
      `insert into herald_public.deliveries (tenant_id, message_id, contact_id, channel, status, provider_message_id, provider, provider_account_id)
       values ($1, $2, $3, 'sms', $4, $5, 'tenant', $6) returning id`,
      [t.id, t.messageId, contactId, status, providerMessageId, t.providerAccountId],
    ),
  );
  return { id: rows[0].id as string, phone, contactId };
}

const report = (fields: Partial<ProviderReport> & Pick<ProviderReport, "event" | "dedupe_key">): ProviderReport => ({
  provider: "twilio",
  delivery_id: null,
  provider_message_id: null,
  status: null,
  error_code: null,
  occurred_at: null,
  opt_out: null,
  channel: null,
  address: null,
  ...fields,
});

const twilioReport = (deliveryId: string | null, sid: string, status: string, extra: Partial<ProviderReport> = {}) =>
  report({
    delivery_id: deliveryId,
    provider_message_id: sid,
    event: status,
    status:
      (
        { sent: "sent", delivered: "delivered", failed: "failed", undelivered: "undelivered" } as Record<string, string>
      )[status] ?? null,
    dedupe_key: `twilio:${sid}:${status}`,
    ...extra,
  });

const waiting = async (t: TenantFixture) =>
  (
    await db.current.root.query("select count(*)::int as n from herald_hidden.provider_reports where tenant_id = $1", [
      t.id,
    ])
  ).rows[0].n as number;

/** A journal whose process "dies" right after answering: it stores, and never applies. */
function crashingJournal() {
  const journal = new ProviderReports({ pool: db.current.authenticator, keyring: testKeyring() }, silent);
  journal.close();
  return journal;
}

describe("acknowledged, then the process died before applying", () => {
  let worker: WorkerHandle;
  afterAll(async () => {
    await worker?.stop();
  });

  it("loses nothing: the sweep applies what was acknowledged, opt-outs included, exactly once", async () => {
    const sid = newSid();
    const ok = await delivery(a, "sent", sid);
    const optedOutSid = newSid();
    const optedOut = await delivery(a, "sent", optedOutSid);
    const before = await deliveryState(db.current, ok.id);

    // Acknowledged (the provider got its answer): stored in the journal.
    await crashingJournal().acknowledge(a.id, [
      twilioReport(ok.id, sid, "delivered"),
      twilioReport(optedOut.id, optedOutSid, "failed", {
        error_code: "21610",
        opt_out: "carrier_opt_out",
        channel: "sms",
        address: optedOut.phone,
      }),
    ]);
    expect(await waiting(a)).toBe(2);
    // No plaintext address in the journal.
    const { rows: stored } = await db.current.root.query(
      "select address_encrypted::text as raw from herald_hidden.provider_reports where opt_out is not null",
    );
    expect(stored[0].raw).not.toContain(optedOut.phone.slice(1));
    // Nothing applied yet: the process that would have applied them is gone.
    expect(await deliveryState(db.current, ok.id)).toEqual(before);

    // The next worker's sweep applies them.
    worker = await startWorker({
      ownerUrl: db.current.urls.owner,
      authenticatorUrl: db.current.urls.authenticator,
      concurrency: 2,
      keyring: testKeyring(),
      tasks: ["provider_reports__sweep"],
      logger: silent,
    });
    await db.current.root.query(
      "select graphile_worker.add_job('provider_reports__sweep', json_build_object('olderThanSeconds', 0))",
    );
    await waitFor(async () => (await waiting(a)) === 0, 20_000, "the sweep to apply the journal");
    expect(await deliveryState(db.current, ok.id)).toMatchObject({
      status: "delivered",
      completed: true,
      events: [{ event: "delivered", applied: true }],
    });
    expect(await deliveryState(db.current, optedOut.id)).toMatchObject({
      status: "failed",
      events: [{ event: "failed", applied: true }],
    });
    const { rows } = await db.current.root.query(
      `select c.sms_subscribed, (select count(*)::int from herald_public.consent_events e where e.contact_id = c.id) as consents
         from herald_public.contacts c where c.id = $1`,
      [optedOut.contactId],
    );
    expect(rows[0]).toEqual({ sms_subscribed: false, consents: 1 });

    // Twilio retrying the same callbacks later changes nothing more.
    await crashingJournal().acknowledge(a.id, [
      twilioReport(optedOut.id, optedOutSid, "failed", {
        error_code: "21610",
        opt_out: "carrier_opt_out",
        channel: "sms",
        address: optedOut.phone,
      }),
    ]);
    const tally = await asWorker(
      db.current,
      a,
      async (c) => (await c.query("select * from herald_hidden.apply_provider_reports(100)")).rows[0],
    );
    expect(tally).toMatchObject({ reports_taken: 1, reports_duplicate: 1, reports_applied: 0 });
    const { rows: again } = await db.current.root.query(
      "select count(*)::int as n from herald_public.consent_events where contact_id = $1",
      [optedOut.contactId],
    );
    expect(again[0].n).toBe(1);
  });
});

describe("a batch applies as one report after another would", () => {
  it("out of order and repeated: never backwards, each once, in the order received", async () => {
    const sid = newSid();
    const d = await delivery(a, "sending", null);
    const late = await delivery(a, "delivered", newSid());
    await crashingJournal().acknowledge(a.id, [
      twilioReport(d.id, sid, "sent"),
      twilioReport(d.id, sid, "delivered"),
      twilioReport(d.id, sid, "sent"),
      twilioReport(d.id, sid, "failed", { error_code: "30003" }),
      twilioReport(d.id, newSid(), "undelivered"),
      // A final status that outran the send's answer stays: a late 'sent' is only recorded.
      twilioReport(late.id, null as unknown as string, "sent", {
        provider_message_id: null,
        dedupe_key: `late:${late.id}`,
      }),
    ]);
    const tally = await asWorker(
      db.current,
      a,
      async (c) => (await c.query("select * from herald_hidden.apply_provider_reports(1000)")).rows[0],
    );
    expect(tally).toEqual({
      reports_taken: 6,
      reports_applied: 2,
      reports_recorded: 3,
      reports_duplicate: 1,
      reports_not_found: 0,
    });
    expect(await deliveryState(db.current, d.id)).toMatchObject({
      status: "delivered",
      error_code: null,
      provider_message_id: sid,
      completed: true,
      events: [
        { event: "sent", applied: true },
        { event: "delivered", applied: true },
        { event: "failed", applied: false },
        { event: "undelivered", applied: false },
      ],
    });
    const { rows } = await db.current.root.query(
      "select event, status from herald_public.delivery_events where delivery_id = $1 order by received_at",
      [d.id],
    );
    // Each event records the status the delivery had after it.
    expect(rows).toEqual([
      { event: "sent", status: "sent" },
      { event: "delivered", status: "delivered" },
      { event: "failed", status: "delivered" },
      { event: "undelivered", status: "delivered" },
    ]);
    expect(await deliveryState(db.current, late.id)).toMatchObject({
      status: "delivered",
      events: [{ event: "sent", applied: false }],
    });
  });
});

describe("what waits for the disk", () => {
  it("an acknowledgement commits durably; an apply does not wait for its flush (a crash takes it back whole)", async () => {
    // A pool whose clients note synchronous_commit at each journal insert and each apply, inside their transaction.
    const seen: string[] = [];
    // (Sessions that wait for the disk, as a production server's do: the test cluster does not.)
    const pool = new pg.Pool({
      connectionString: db.current.urls.authenticator,
      max: 4,
      options: "-c synchronous_commit=on",
    });
    const connect = pool.connect.bind(pool);
    (pool as unknown as { connect: () => Promise<pg.PoolClient> }).connect = async () => {
      const client = await connect();
      const query = client.query.bind(client) as (...args: unknown[]) => Promise<pg.QueryResult>;
      (client as unknown as { query: (...args: unknown[]) => Promise<pg.QueryResult> }).query = async (...args) => {
        const text = typeof args[0] === "string" ? args[0] : "";
        const what = text.includes("insert into herald_hidden.provider_reports")
          ? "acknowledge"
          : text.includes("apply_provider_reports")
            ? "apply"
            : undefined;
        if (what) seen.push(`${what}: ${(await query("show synchronous_commit")).rows[0].synchronous_commit}`);
        return query(...args);
      };
      return client;
    };
    try {
      const journal = new ProviderReports({ pool, keyring: testKeyring() }, silent);
      const d = await delivery(a, "sending", null);
      const sid = newSid();
      await journal.acknowledge(a.id, [twilioReport(d.id, sid, "delivered")]);
      await waitFor(async () => (await deliveryState(db.current, d.id)).status === "delivered", 10_000);
      journal.close();
      expect(new Set(seen)).toEqual(new Set(["acknowledge: on", "apply: off"]));
    } finally {
      await pool.end();
    }
  });
});

describe("tenants stay apart", () => {
  it("B's reports cannot touch A's deliveries, by id or by MessageSid, and B cannot reach A's journal", async () => {
    const sid = newSid();
    const victim = await delivery(a, "sent", sid);
    await crashingJournal().acknowledge(a.id, [twilioReport(victim.id, sid, "delivered", { dedupe_key: "a-pending" })]);
    await crashingJournal().acknowledge(b.id, [
      twilioReport(victim.id, sid, "failed"),
      twilioReport(null, sid, "undelivered"),
    ]);
    const tally = await asWorker(
      db.current,
      b,
      async (c) => (await c.query("select * from herald_hidden.apply_provider_reports(1000)")).rows[0],
    );
    // B's applier saw only B's two reports, and neither found a delivery.
    expect(tally).toMatchObject({ reports_taken: 2, reports_not_found: 2, reports_applied: 0 });
    expect(await deliveryState(db.current, victim.id)).toMatchObject({ status: "sent", events: [] });
    expect(await waiting(a)).toBe(1);

    // As B's worker: A's pending report is invisible, undeletable, and B cannot write into A's journal.
    await asRole(db.current, { role: ROLES.worker, tenantId: b.id }, async (c) => {
      expect((await c.query("select * from herald_hidden.provider_reports")).rows).toEqual([]);
      expect((await c.query("delete from herald_hidden.provider_reports returning id")).rows).toEqual([]);
      const error = await expectPgError(c, () =>
        c.query(
          "insert into herald_hidden.provider_reports (tenant_id, provider, event, dedupe_key) values ($1, 'twilio', 'sent', 'evil')",
          [a.id],
        ),
      );
      expect(error?.message).toMatch(/row-level security/);
    });
    // Members and API requests have no business in it at all.
    await asRole(db.current, { role: ROLES.member, tenantId: a.id, userId: a.ownerId }, async (c) => {
      expect((await expectPgError(c, () => c.query("select * from herald_hidden.provider_reports")))?.message).toMatch(
        /permission denied/,
      );
    });
    expect(await waiting(a)).toBe(1);
    await asWorker(db.current, a, (c) => c.query("select * from herald_hidden.apply_provider_reports(1000)"));
    expect((await deliveryState(db.current, victim.id)).status).toBe("delivered");
  });
});

describe("while the database is down", () => {
  let server: http.Server;
  let origin: string;
  let deadPool: pg.Pool;
  const publicUrl = "https://herald.example.test";
  const sendgrid = sendgridKeyPair();

  beforeAll(async () => {
    // A pool whose server refuses every connection.
    const port = await findFreePort();
    deadPool = new pg.Pool({
      connectionString: `postgres://nobody@127.0.0.1:${port}/nothing`,
      connectionTimeoutMillis: 2000,
    });
    deadPool.on("error", () => undefined);
    const app = express();
    app.use(
      "/webhooks",
      webhooksRouter({
        pool: deadPool,
        keyring: testKeyring(),
        publicUrl,
        systemTwilio: SYSTEM_TWILIO,
        systemSendgridPublicKey: sendgrid.publicKey,
        logger: silent,
      }),
    );
    server = http.createServer(app);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    origin = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  });
  afterAll(async () => {
    await new Promise((resolve) => server?.close(resolve));
    await deadPool?.end();
  });

  const postForm = async (path: string, params: Record<string, string>) => {
    const response = await fetch(`${origin}${path}`, {
      method: "POST",
      headers: {
        "content-type": "application/x-www-form-urlencoded",
        "x-twilio-signature": twilioSignature(SYSTEM_TWILIO.authToken, `${publicUrl}${path}`, params),
      },
      body: new URLSearchParams(params).toString(),
    });
    return { status: response.status, retryAfter: response.headers.get("retry-after"), body: await response.json() };
  };

  it("status callbacks, inbound texts and SendGrid events get 503 with Retry-After", async () => {
    const sid = newSid();
    const status = await postForm(`/webhooks/twilio/status?tenant=${a.id}`, {
      AccountSid: SYSTEM_TWILIO.accountSid,
      MessageSid: sid,
      MessageStatus: "delivered",
      To: freshPhone(),
    });
    expect(status).toMatchObject({ status: 503, retryAfter: "5", body: { error: { code: "DATABASE_UNAVAILABLE" } } });

    const inbound = await postForm(
      "/webhooks/twilio/sms",
      inboundText({ from: freshPhone(), to: a.senderNumber, body: "Hello" }),
    );
    expect(inbound).toMatchObject({ status: 503, retryAfter: "5", body: { error: { code: "DATABASE_UNAVAILABLE" } } });

    const events = JSON.stringify([
      { event: "delivered", email: "x@example.test", sg_event_id: "e1", herald_tenant_id: a.id },
    ]);
    const timestamp = String(Math.floor(Date.now() / 1000));
    const response = await fetch(`${origin}/webhooks/sendgrid/events`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "x-twilio-email-event-webhook-timestamp": timestamp,
        "x-twilio-email-event-webhook-signature": sendgridSignature(sendgrid.privateKey, timestamp, events),
      },
      body: events,
    });
    expect(response.status).toBe(503);
    expect(response.headers.get("retry-after")).toBe("5");
  });

  it("tells unavailability from other failures", () => {
    for (const code of ["08006", "08001", "57P01", "57P02", "57P03", "53300", "ECONNREFUSED", "ECONNRESET"]) {
      expect(isDatabaseUnavailable(Object.assign(new Error("x"), { code })), code).toBe(true);
    }
    expect(isDatabaseUnavailable(new Error("Connection terminated unexpectedly"))).toBe(true);
    for (const code of ["23505", "42501", "40P01", "22023", undefined]) {
      expect(isDatabaseUnavailable(Object.assign(new Error("x"), { code })), String(code)).toBe(false);
    }
  });
});
