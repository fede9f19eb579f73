import type pg from "pg";
import type { ApiServer } from "../../src/api/server.ts";
import { inTransaction, withSession } from "../../src/db/session.ts";
import { ROLES } from "../../src/db/urls.ts";
import { startSandboxServer, type SandboxServer } from "../../src/sandbox/server.ts";
import { createLogger } from "../../src/logger.ts";
import { startWorker, type WorkerHandle } from "../../src/worker/worker.ts";
import type { TestDb } from "./db.ts";
import type { TenantFixture } from "./fixtures.ts";
import { graphql } from "./api.ts";
import { testKeyring } from "./keys.ts";

/** Sending tests: a sandbox on its own HTTP server, audiences of many contacts, and waiting for the worker. */

export { startSandboxServer, type SandboxServer };

/** An in-process worker sending through this file's sandbox. */
export const startSendingWorker = (db: TestDb, server: SandboxServer, concurrency: number): Promise<WorkerHandle> =>
  startWorker({
    ownerUrl: db.urls.owner,
    authenticatorUrl: db.urls.authenticator,
    concurrency,
    keyring: testKeyring(),
    providers: server.clients,
    logger: createLogger("silent", 2),
  });

/** Committed, as the superuser (arranging data the API would not let a test write directly). */
export const asRoot = <T>(db: TestDb, fn: (client: pg.PoolClient) => Promise<T>) => inTransaction(db.root, fn);

/** Committed, as the tenant's owner, with the tenant's keys. */
export const asOwner = async <T>(db: TestDb, t: TenantFixture, fn: (client: pg.PoolClient) => Promise<T>) =>
  withSession(
    db.authenticator,
    {
      role: ROLES.member,
      tenantId: t.id,
      userId: t.ownerId,
      settings: await testKeyring().sessionSettings(db.root, t.id),
    },
    fn,
  );

/** Committed, as a worker job of the tenant. */
export const asWorker = async <T>(db: TestDb, t: TenantFixture, fn: (client: pg.PoolClient) => Promise<T>) =>
  withSession(
    db.authenticator,
    { role: ROLES.worker, tenantId: t.id, settings: await testKeyring().sessionSettings(db.root, t.id) },
    fn,
  );

/**
 * Lets the fixture's Twilio account send through the sandbox (its credential
 * becomes valid there), and makes the tenant fast unless told otherwise: tests
 * of pacing set their own rates. Quiet hours are off (the window is the whole
 * day), so that a test does not depend on the hour it runs at; tests of quiet
 * hours set their own window.
 */
export async function readyToSend(
  db: TestDb,
  server: SandboxServer,
  t: TenantFixture,
  rates = { perSecond: 1000, senderMps: 1000 },
) {
  const { rows } = await db.root.query("select twilio_account_sid from herald_public.provider_accounts where id = $1", [
    t.providerAccountId,
  ]);
  server.sandbox.addTwilioAccount(rows[0].twilio_account_sid, t.providerSecret);
  await setRates(db, t, rates);
  await openSendWindow(db, t.id);
  return rows[0].twilio_account_sid as string;
}

export async function setRates(
  db: TestDb,
  t: TenantFixture,
  rates: { perSecond: number; senderMps: number; intervalSeconds?: number },
) {
  await asRoot(db, async (c) => {
    await c.query(
      "update herald_public.tenant_settings set rate_batch_size = $2, rate_batch_interval_seconds = $3 where tenant_id = $1",
      [t.id, rates.perSecond * (rates.intervalSeconds ?? 1), rates.intervalSeconds ?? 1],
    );
    await c.query("update herald_public.sender_numbers set messages_per_second = $2 where tenant_id = $1", [
      t.id,
      rates.senderMps,
    ]);
  });
}

/** Numbers the sandbox delivers (none ends in 0001–0003, its failure rules) and libphonenumber accepts. */
export const audiencePhone = (exchange: number, i: number) => `+1415${exchange}${String(1000 + i).padStart(4, "0")}`;

/** `count` contacts on a new list, written as the worker writes them (encrypted, hashed). */
export async function seedAudience(
  db: TestDb,
  t: TenantFixture,
  options: { count: number; exchange: number; list: string; firstName?: (i: number) => string },
): Promise<{ listId: string; contacts: { id: string; phone: string }[] }> {
  const docs = Array.from({ length: options.count }, (_, i) => ({
    phone: audiencePhone(options.exchange, i),
    first_name: options.firstName?.(i) ?? `Person${i}`,
  }));
  return asWorker(db, t, async (c) => {
    const { rows } = await c.query<{ ordinal: number; contact_id: string }>(
      "select ordinal, contact_id from herald_hidden.upsert_contacts($1)",
      [JSON.stringify(docs)],
    );
    const list = await c.query("insert into herald_public.lists (name) values ($1) returning id", [options.list]);
    await c.query("insert into herald_public.list_members (list_id, contact_id) select $1, unnest($2::uuid[])", [
      list.rows[0].id,
      rows.map((r) => r.contact_id),
    ]);
    return {
      listId: list.rows[0].id,
      contacts: rows.map((r) => ({ id: r.contact_id, phone: docs[r.ordinal]!.phone })),
    };
  });
}

export async function waitFor<T>(
  probe: () => Promise<T | null | undefined | false>,
  timeoutMs = 30_000,
  what: string | (() => Promise<string>) = "the worker",
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${typeof what === "string" ? what : await what()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export interface MessageSummary {
  messageStatus: string;
  byStatus: Record<string, number>;
  /** "status/reason" → count */
  byReason: Record<string, number>;
  total: number;
}

export async function summary(db: TestDb, messageId: string): Promise<MessageSummary> {
  const { rows: m } = await db.root.query("select status from herald_public.messages where id = $1", [messageId]);
  const { rows } = await db.root.query<{ status: string; reason: string | null; n: number }>(
    "select status, reason, count(*)::int as n from herald_public.deliveries where message_id = $1 group by 1, 2",
    [messageId],
  );
  const byStatus: Record<string, number> = {};
  const byReason: Record<string, number> = {};
  for (const r of rows) {
    byStatus[r.status] = (byStatus[r.status] ?? 0) + r.n;
    if (r.reason) byReason[`${r.status}/${r.reason}`] = (byReason[`${r.status}/${r.reason}`] ?? 0) + r.n;
  }
  return { messageStatus: m[0]?.status, byStatus, byReason, total: rows.reduce((n, r) => n + r.n, 0) };
}

/** Until the message is fanned out and every delivery has ended, or waits on quiet hours or the monthly cap. */
export const settled = (db: TestDb, messageId: string, timeoutMs = 60_000) =>
  waitFor(
    async () => {
      // One snapshot: the message's status and what is still open.
      const { rows } = await db.root.query(
        `select m.status,
                (select count(*)::int from herald_public.deliveries d
                  where d.message_id = m.id
                    and (d.status in ('sending', 'unknown')
                         or (d.status = 'queued' and d.reason is distinct from 'quiet_hours' and d.reason is distinct from 'monthly_cap'))) as open
           from herald_public.messages m where m.id = $1`,
        [messageId],
      );
      if (!rows[0] || !["fanned_out", "canceled"].includes(rows[0].status) || rows[0].open > 0) return false;
      // Read after the check: once nothing is open, the counts no longer move.
      return summary(db, messageId);
    },
    timeoutMs,
    async () => `the message to settle: ${JSON.stringify(await summary(db, messageId))}`,
  );

/** `sendMessage` through GraphQL with the given input; the new message's id (the test fails on a GraphQL error). */
export async function sendThroughApi(api: ApiServer, token: string, input: Record<string, unknown>): Promise<string> {
  const { body } = await graphql(
    api,
    token,
    "mutation($input: SendMessageInput!) { sendMessage(input: $input) { message { rowId } } }",
    { input },
  );
  if (body.errors) throw new Error(`sendMessage failed: ${JSON.stringify(body.errors)}`);
  return body.data!.sendMessage.message.rowId as string;
}

/** No quiet hours for the tenant: the window is the whole day. */
export const openSendWindow = (db: TestDb, tenantId: string) =>
  db.root.query(
    "update herald_public.tenant_settings set send_window_start = '00:00', send_window_end = '00:00' where tenant_id = $1",
    [tenantId],
  );

/**
 * Quiet hours for the tenant that hold any send now, whatever the time of day:
 * the window opens an hour from now (UTC) and lasts a minute.
 */
export async function closeSendWindowForAnHour(db: TestDb, tenantId: string) {
  const opens = new Date(Date.now() + 3_600_000);
  const hhmm = (d: Date) => d.toISOString().slice(11, 16);
  await db.root.query(
    "update herald_public.tenant_settings set timezone = 'UTC', send_window_start = $2, send_window_end = $3 where tenant_id = $1",
    [tenantId, hhmm(opens), hhmm(new Date(opens.getTime() + 60_000))],
  );
}

/** graphile-worker's delivery__send jobs (`j`, with its task `t`) for delivery $1: its own, or a run of deliveries naming it. */
const JOBS_OF_DELIVERY = `t.id = j.task_id and t.identifier = 'delivery__send'
  and (j.payload->>'id' = $1 or coalesce(j.payload::jsonb->'ids', '[]'::jsonb) ? $1)`;

/**
 * The delivery's jobs that wait for a later time (a hold, a retry, a
 * reconcile) are due now, as if the clock had moved on. Returns how many of
 * its jobs remain, waiting or running: none once the worker is done with it.
 */
export async function deliveryJobsDueNow(db: TestDb, deliveryId: string): Promise<number> {
  await db.root.query(
    `update graphile_worker._private_jobs j set run_at = now() from graphile_worker._private_tasks t where ${JOBS_OF_DELIVERY} and j.run_at > now()`,
    [deliveryId],
  );
  const { rows } = await db.root.query<{ n: number }>(
    `select count(*)::int as n from graphile_worker._private_jobs j, graphile_worker._private_tasks t where ${JOBS_OF_DELIVERY}`,
    [deliveryId],
  );
  return rows[0]!.n;
}

/**
 * The send window opens for the tenant, as if the clock had moved on: a
 * delivery held by quiet hours, and its waiting job, are due now.
 */
export async function openSendWindowNow(db: TestDb, tenantId: string, deliveryId: string) {
  await openSendWindow(db, tenantId);
  await db.root.query("update herald_public.deliveries set run_at = now() where id = $1", [deliveryId]);
  await deliveryJobsDueNow(db, deliveryId);
}

/**
 * A message scheduled for later is due now, as if its time had come: its
 * fan-out job runs, and plans its deliveries from now.
 */
export async function messageDueNow(db: TestDb, messageId: string) {
  await asRoot(db, async (c) => {
    await c.query("update herald_public.messages set scheduled_at = now() where id = $1", [messageId]);
    await c.query("update graphile_worker._private_jobs set run_at = now() where key = $1", [`message:${messageId}`]);
  });
}
