import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROLES } from "../src/db/urls.ts";
import type { WorkerHandle } from "../src/worker/worker.ts";
import { graphql, tokenFor } from "./helpers/api.ts";
import { runCli } from "./helpers/cli.ts";
import { asRole, useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import {
  asRoot,
  readyToSend,
  sendThroughApi,
  startSandboxServer,
  startSendingWorker,
  waitFor,
  type SandboxServer,
} from "./helpers/messaging.ts";
import { contactWith, textIn, useCallableApiServer } from "./helpers/webhooks.ts";

/**
 * Usage: what a real send and real inbound traffic produced, counted per day,
 * channel and account, must match the deliveries themselves; tenants see
 * their own, operators everyone's; the CLI prints the same.
 */

const db = useTestDatabase();
const { api, endpoint } = useCallableApiServer(db);
let a: TenantFixture;
let b: TenantFixture;
let server: SandboxServer;
let worker: WorkerHandle;
let messageId: string;
// The UTC day the message was created on, by the database's clock (what usage counts by).
let today: string;

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  server = await startSandboxServer();
  await readyToSend(db.current, server, a);
  server.clients.system.callbackBaseUrl = endpoint.publicUrl;
  worker = await startSendingWorker(db.current, server, 4);

  // Two delivered, one failed at the carrier (…0001), one undelivered (…0002), one unsubscribed (skipped).
  const phones = ["+16285561101", "+16285561102", "+16285560001", "+16285560002"];
  const ids = await Promise.all(phones.map((p) => contactWith(db.current, a, p)));
  const unsubscribed = await contactWith(db.current, a, "+16285561103");
  await db.current.root.query("update herald_public.contacts set sms_subscribed = false where id = $1", [unsubscribed]);
  const token = await tokenFor(api.current, a, "member");
  // 200 GSM-7 characters: two segments each.
  messageId = await sendThroughApi(api.current, token, {
    channel: "sms",
    body: "x".repeat(200),
    contactIds: [...ids, unsubscribed],
  });
  await waitFor(async () => {
    const { rows } = await db.current.root.query(
      "select count(*) filter (where status in ('delivered', 'failed', 'undelivered', 'skipped'))::int as n from herald_public.deliveries where message_id = $1",
      [messageId],
    );
    return rows[0].n === 5;
  }, 30_000);
  await server.sandbox.settled();
  today = (
    await db.current.root.query(
      "select to_char(created_at at time zone 'UTC', 'YYYY-MM-DD') as day from herald_public.messages where id = $1",
      [messageId],
    )
  ).rows[0].day;
  // Two messages in, one of them an opt-out.
  for (const body of ["see you then", "STOP"]) {
    const result = await textIn(api.current, a, {
      from: "+16285561101",
      body,
      signedFor: `${endpoint.publicUrl}/webhooks/twilio/sms`,
    });
    expect(result.status).toBe(200);
  }
});

afterAll(async () => {
  await worker?.stop();
  await server?.close();
});

const USAGE = `query($from: Date!, $to: Date!) { usage(fromDay: $from, toDay: $to) { nodes { day channel account provider messages deliveries sent delivered undelivered failed skipped segments inbound optOuts } } }`;
const usageOf = async (token: string, day = today) => {
  const { body } = await graphql(api.current, token, USAGE, { from: day, to: day });
  expect(body.errors).toBeUndefined();
  return body.data!.usage.nodes as Record<string, unknown>[];
};

/**
 * `herald usage`'s table (src/cli/usage.ts) as rows keyed by the header's
 * column names. No cell holds a space; the total row leaves its channel and
 * account blank.
 */
function usageTable(stdout: string): Record<string, string>[] {
  const lines = stdout.split("\n");
  const at = lines.findIndex((line) => /^day\s/.test(line));
  expect(at, stdout).toBeGreaterThanOrEqual(0);
  const header = lines[at]!.trim().split(/\s+/);
  return lines
    .slice(at + 1)
    .filter((line) => /^(\d{4}-\d\d-\d\d|total)\s/.test(line))
    .map((line) => {
      const cells = line.trim().split(/\s+/);
      if (cells[0] === "total") cells.splice(1, 0, "", "");
      expect(cells, line).toHaveLength(header.length);
      return Object.fromEntries(header.map((column, i) => [column, cells[i]!]));
    });
}

describe("daily usage", () => {
  it("matches the deliveries, per status and segment, and counts inbound messages and opt-outs", async () => {
    const token = await tokenFor(api.current, a, "member");
    const rows = await usageOf(token);
    const row = (channel: string, account: string | null) =>
      rows.find((r) => r.channel === channel && r.account === account);
    // What the deliveries themselves say (the fixture's own delivery is a skipped one of another message).
    const {
      rows: [truth],
    } = await db.current.root.query(
      `select count(*) filter (where status = 'delivered')::int as delivered, count(*) filter (where status = 'failed')::int as failed,
              count(*) filter (where status = 'undelivered')::int as undelivered, sum(segments)::int as segments
         from herald_public.deliveries where message_id = $1 and provider = 'tenant'`,
      [messageId],
    );
    expect(truth).toEqual({ delivered: 2, failed: 1, undelivered: 1, segments: 8 });
    // Inbound: the two above and the fixture's own HELP.
    expect(row("sms", "tenant")).toMatchObject({
      provider: "twilio",
      messages: 1,
      deliveries: 4,
      sent: 0,
      ...truth,
      skipped: 0,
      inbound: 3,
    });
    // Never handed to a provider: the unsubscribed contact (and the fixture's own skipped delivery), and the opt-out.
    expect(row("sms", null)).toMatchObject({ skipped: 2, deliveries: 2, segments: 0, optOuts: 1 });
    expect(rows.map((r) => r.day)).toEqual(rows.map(() => today));
  });

  it("refuses a range it would not answer quickly", async () => {
    const token = await tokenFor(api.current, a, "member");
    const { body } = await graphql(api.current, token, USAGE, { from: "2020-01-01", to: today });
    expect(body.errors?.[0]?.extensions).toMatchObject({ code: "INVALID_INPUT", field: "toDay" });
  });

  it("shows month to date against the cap, and no remainder without one", async () => {
    const token = await tokenFor(api.current, a, "member");
    const month = async () =>
      (await graphql(api.current, token, "{ currentTenant { usageThisMonth { month messages cap remaining } } }")).body
        .data!.currentTenant.usageThisMonth;
    await db.current.root.query(
      "update herald_public.tenant_settings set monthly_message_cap = null where tenant_id = $1",
      [a.id],
    );
    expect(await month()).toEqual({ month: `${today.slice(0, 7)}-01`, messages: 4, cap: null, remaining: null });
    await db.current.root.query(
      "update herald_public.tenant_settings set monthly_message_cap = 10 where tenant_id = $1",
      [a.id],
    );
    expect(await month()).toEqual({ month: `${today.slice(0, 7)}-01`, messages: 4, cap: 10, remaining: 6 });
  });

  it("is each tenant's own; operators read every tenant's in the daily_usage view", async () => {
    const tokenB = await tokenFor(api.current, b, "owner");
    // B sent nothing through a provider: its only rows are its fixture's, the HELP it was sent and the delivery it skipped.
    const nothingSent = { sent: 0, delivered: 0, undelivered: 0, failed: 0, segments: 0, optOuts: 0 };
    expect(await usageOf(tokenB)).toEqual([
      {
        day: today,
        channel: "sms",
        account: "tenant",
        provider: "twilio",
        messages: 0,
        deliveries: 0,
        skipped: 0,
        inbound: 1,
        ...nothingSent,
      },
      {
        day: today,
        channel: "sms",
        account: null,
        provider: "twilio",
        messages: 1,
        deliveries: 1,
        skipped: 1,
        inbound: 0,
        ...nothingSent,
      },
    ]);
    // The view under RLS: a member of B sees B's rows only; an operator every tenant's.
    const ofB = await asRole(
      db.current,
      { role: ROLES.member, tenantId: b.id, userId: b.ownerId },
      async (c) => (await c.query("select distinct tenant_id from herald_public.daily_usage")).rows,
    );
    expect(ofB).toEqual([{ tenant_id: b.id }]);
    const all = await asRole(
      db.current,
      { role: ROLES.admin },
      async (c) => (await c.query("select distinct tenant_id from herald_public.daily_usage order by 1")).rows,
    );
    expect(new Set(all.map((r) => r.tenant_id))).toEqual(new Set([a.id, b.id]));
  });

  it("`herald usage --tenant` prints the same numbers, with totals; every status has its column", async () => {
    // One canceled delivery (of the fixture's other message, to a contact it did not reach).
    await db.current.root.query(
      `insert into herald_public.deliveries (tenant_id, message_id, contact_id, channel, status, reason, completed_at)
       select d.tenant_id, d.message_id, c.id, 'sms', 'canceled', 'message canceled', now()
         from herald_public.deliveries d join herald_public.contacts c on c.tenant_id = d.tenant_id and c.id <> d.contact_id
        where d.tenant_id = $1 and d.message_id <> $2 limit 1`,
      [a.id, messageId],
    );
    const { code, stdout, stderr } = await runCli(db.current, ["usage", "--tenant", "tenant-a"]);
    expect(code, stderr).toBe(0);
    const table = usageTable(stdout);
    const tenantRow = table.find((r) => r.day === today && r.channel === "sms" && r.account === "tenant");
    expect(tenantRow).toMatchObject({
      deliveries: "4",
      delivered: "2",
      failed: "1",
      undelivered: "1",
      segments: "8",
      inbound: "3",
    });
    // Messages are counted, not summed: one message whose deliveries took two routes is one.
    expect(table.find((r) => r.day === "total")).toMatchObject({
      messages: "2",
      deliveries: "7",
      skipped: "2",
      canceled: "1",
      segments: "8",
      inbound: "3",
      "opt-outs": "1",
    });
    // Each row's statuses add up to its deliveries.
    const statuses = [
      "queued",
      "sending",
      "sent",
      "delivered",
      "undelivered",
      "failed",
      "skipped",
      "canceled",
      "unknown",
    ];
    for (const row of table)
      expect(
        statuses.reduce((sum, status) => sum + Number(row[status]), 0),
        JSON.stringify(row),
      ).toBe(Number(row.deliveries));
    // The cap counts deliveries handed to a provider (4), not messages (2).
    expect(stdout).toMatch(
      /This month so far: 4 deliveries handed to a provider, against the monthly cap 10 \(6 left\)\./,
    );
  });

  // Last: it moves the message to the day before.
  it("counts a message's deliveries on the day it was created, whenever they were delivered; inbound on the day it arrived", async () => {
    // The timestamps trigger keeps created_at as it was; replica mode skips it.
    await asRoot(db.current, async (c) => {
      await c.query("set local session_replication_role = replica");
      await c.query("update herald_public.messages set created_at = created_at - interval '1 day' where id = $1", [
        messageId,
      ]);
    });
    const yesterday = new Date(Date.parse(`${today}T00:00:00Z`) - 86_400_000).toISOString().slice(0, 10);
    const token = await tokenFor(api.current, a, "member");
    const before = (await usageOf(token, yesterday)).find((r) => r.channel === "sms" && r.account === "tenant");
    expect(before).toMatchObject({ day: yesterday, messages: 1, deliveries: 4, delivered: 2, segments: 8, inbound: 0 });
    const after = (await usageOf(token)).find((r) => r.channel === "sms" && r.account === "tenant");
    expect(after).toMatchObject({ day: today, messages: 0, deliveries: 0, inbound: 3 });
  });
});
