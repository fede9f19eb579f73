import autocannon from "autocannon";
import { forkServer } from "../src/api/child-server.ts";
import { keyringFromConfig } from "../src/crypto/keyring.ts";
import { watchMigrations } from "../src/db/migrate.ts";
import { findFreePort } from "../src/db/ports.ts";
import { createLogger } from "../src/logger.ts";
import { withSession } from "../src/db/session.ts";
import { ROLES } from "../src/db/urls.ts";
import { verifySenderNumber } from "../src/numbers/verify.ts";
import { inboundParams } from "../src/sandbox/inbound.ts";
import { SANDBOX_SYSTEM_TWILIO } from "../src/sandbox/sandbox.ts";
import { startSandboxServer } from "../src/sandbox/server.ts";
import { sendgridSignature, twilioSignature } from "../src/sandbox/wire.ts";
import { withWorkerSession } from "../src/worker/tenant-context.ts";
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { runMigrations } from "graphile-worker";
import type pg from "pg";
import { say, withBenchDatabase } from "./common.ts";

/**
 * `npm run bench -- webhooks`, in one run, each server in a process of its own
 * (Herald's is the real API server, src/api/standalone.ts), autocannon
 * driving them from this one:
 * 1. signed Twilio inbound-SMS webhooks (from 1,000 known contacts, one in ten
 *    a HELP): a bare express handler that parses the same form and answers
 *    the same empty TwiML, and Herald's /webhooks/twilio/sms (signature check,
 *    tenant by number, the message stored encrypted, the keyword applied), at
 *    the same fixed concurrency, for requests per second and p99; then Herald
 *    held at a fixed rate (500 req/s by default), for p99. Every answered
 *    request must have stored exactly one inbound message.
 * 2. signed status callbacks (`sent`, then `delivered`, for DELIVERIES sent
 *    SMS): the bare handler (same form, 204) and Herald at the same
 *    concurrency, acknowledged per second; applied end to end (from the first
 *    request until no report waits in the journal); Herald held at the rate.
 * 3. signed SendGrid event batches (EVENTS_PER_POST each, `processed` then
 *    `delivered`, for DELIVERIES sent emails): applied end to end.
 * The last line is the figures as one JSON object ({"bench":"webhooks",…}).
 * Before the runs, the tenant gets 10,000 earlier inbound messages and the
 * tables are analysed: planned for an empty inbound_messages table, each
 * receive scanned it whole as it grew during the run (459 req/s instead of
 * ~880 on the same machine), which no running Herald would see.
 */

const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 20);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const RATE = Number(process.env.BENCH_RATE ?? 500);
const CONTACTS = 1000;
/** Inbound messages the tenant received before the run. */
const HISTORY = 10_000;
const NUMBER = "+14155550300";
const PATH = "/webhooks/twilio/sms";
/** Deliveries per channel the status callbacks and events report on (sent, then delivered). */
const DELIVERIES = Number(process.env.BENCH_DELIVERIES ?? 30_000);
/**
 * Deliveries per second the SMS pipeline sends on this machine (`npm run bench
 * -- pipeline`), if given: callbacks and events applied per second are then
 * also shown as multiples of it (every SMS brings two or three callbacks).
 */
const SMS_RATE = process.env.BENCH_SMS_RATE ? Number(process.env.BENCH_SMS_RATE) : undefined;
/** SendGrid posts events in batches. */
const EVENTS_PER_POST = 100;

const fmt = (n: number) => Math.round(n).toLocaleString("en-US");
const phoneOf = (i: number) => `+1628558${String(1000 + i)}`;

let sequence = 0;

interface Shot {
  path: string;
  headers: Record<string, string>;
  body: string;
}

/** Load on `origin`: each request what `next()` makes (signed as a provider would, for the public URL). */
async function load(origin: string, next: () => Shot, options: { seconds: number; rate?: number }) {
  const result = await autocannon({
    url: origin,
    connections: CONNECTIONS,
    duration: options.seconds,
    ...(options.rate ? { overallRate: options.rate } : {}),
    requests: [
      {
        method: "POST",
        setupRequest: (request) => {
          const shot = next();
          return { ...request, path: shot.path, headers: shot.headers, body: shot.body };
        },
      },
    ],
  });
  const seconds = result.duration;
  return {
    rps: result.requests.total / seconds,
    p50: result.latency.p50,
    p99: result.latency.p99,
    ok: result["2xx"],
    failed: result.non2xx + result.errors + result.timeouts,
  };
}

/** Signed inbound texts from the bench's contacts, one in ten a HELP. */
const inboundShot = (publicUrl: string) => (): Shot => {
  const i = ++sequence;
  const params = inboundParams(
    {
      url: "",
      authToken: "",
      accountSid: SANDBOX_SYSTEM_TWILIO.accountSid,
      from: phoneOf(i % CONTACTS),
      to: NUMBER,
      body: i % 10 === 0 ? "HELP" : "Thanks, see you then",
    },
    `SM${String(i).padStart(32, "0")}`,
  );
  return {
    path: PATH,
    headers: {
      "content-type": "application/x-www-form-urlencoded",
      "x-twilio-signature": twilioSignature(SANDBOX_SYSTEM_TWILIO.authToken, `${publicUrl}${PATH}`, params),
    },
    body: new URLSearchParams(params).toString(),
  };
};

/** Signed status callbacks: each delivery's `sent`, then its `delivered`, in turn. */
const statusShot = (publicUrl: string, tenantId: string, deliveries: { id: string; sid: string }[]) => {
  let k = 0;
  return (): Shot => {
    const n = k++;
    const d = deliveries[Math.floor(n / 2) % deliveries.length]!;
    const status = n % 2 === 0 ? "sent" : "delivered";
    const path = `/webhooks/twilio/status?tenant=${tenantId}&delivery=${d.id}`;
    const params = {
      AccountSid: SANDBOX_SYSTEM_TWILIO.accountSid,
      ApiVersion: "2010-04-01",
      From: NUMBER,
      MessageSid: d.sid,
      MessageStatus: status,
      SmsSid: d.sid,
      SmsStatus: status,
      To: phoneOf(n % CONTACTS),
    };
    return {
      path,
      headers: {
        "content-type": "application/x-www-form-urlencoded",
        "x-twilio-signature": twilioSignature(SANDBOX_SYSTEM_TWILIO.authToken, `${publicUrl}${path}`, params),
      },
      body: new URLSearchParams(params).toString(),
    };
  };
};

/** Signed SendGrid event batches: EVENTS_PER_POST events, each email's processed then delivered. */
const eventsShot = (key: KeyObject, tenantId: string, deliveries: { id: string; sid: string }[]) => {
  let k = 0;
  return (): Shot => {
    const events = Array.from({ length: EVENTS_PER_POST }, () => {
      const n = k++;
      const d = deliveries[Math.floor(n / 2) % deliveries.length]!;
      return {
        email: `person${n % CONTACTS}@example.com`,
        event: n % 2 === 0 ? "processed" : "delivered",
        timestamp: Math.floor(Date.now() / 1000),
        sg_event_id: `bench-${n}`,
        sg_message_id: `${d.sid}.filter0001.1.0`,
        herald_tenant_id: tenantId,
        herald_delivery_id: d.id,
      };
    });
    const body = JSON.stringify(events);
    const timestamp = String(Math.floor(Date.now() / 1000));
    return {
      path: "/webhooks/sendgrid/events",
      headers: {
        "content-type": "application/json",
        "x-twilio-email-event-webhook-timestamp": timestamp,
        "x-twilio-email-event-webhook-signature": sendgridSignature(key, timestamp, body),
      },
      body,
    };
  };
};

/** Waits until every acknowledged report is applied; the seconds since `since`. */
async function untilApplied(root: pg.Pool, since: number): Promise<number> {
  for (;;) {
    const { rows } = await root.query<{ n: number }>("select count(*)::int as n from herald_hidden.provider_reports");
    if (rows[0]!.n === 0) return (performance.now() - since) / 1000;
    await new Promise((r) => setTimeout(r, 20));
  }
}

const eventCount = async (root: pg.Pool, provider: string) =>
  (
    await root.query<{ n: number }>(
      "select count(*)::int as n from herald_public.delivery_events where provider = $1",
      [provider],
    )
  ).rows[0]!.n;

/** DELIVERIES sent deliveries on `channel`, spread over messages of the bench's contacts: their ids and provider message ids. */
async function seedDeliveries(root: pg.Pool, tenantId: string, channel: "sms" | "email") {
  const messages = Math.ceil(DELIVERIES / CONTACTS);
  const { rows } = await root.query<{ id: string; sid: string }>(
    `with m as (
       insert into herald_public.messages (tenant_id, channel, body, subject)
       select $1, $2, 'Bench', case when $2 = 'email' then 'Bench' end from generate_series(1, $3)
       returning id
     ), gone as (
       select graphile_worker.remove_job('message:' || m.id) from m
     )
     insert into herald_public.deliveries (tenant_id, message_id, contact_id, channel, status, provider, provider_message_id, sent_at)
     select $1, m.id, c.id, $2, 'sent', 'system',
            case when $2 = 'sms' then 'SM' || md5(m.id::text || c.id::text) else 'sg' || md5(m.id::text || c.id::text) end, now()
       from m, herald_public.contacts c
      where c.tenant_id = $1 and (select count(*) from gone) >= 0
     returning id, provider_message_id as sid`,
    [tenantId, channel, messages],
  );
  return rows;
}

export async function benchWebhooks() {
  await withBenchDatabase(async ({ config, db, root, app }) => {
    // The schema as it will be committed: migrations/current/ on top (the journal of provider reports lives there until then).
    await watchMigrations(db.urls, createLogger("warn", 2), true);
    const keyring = keyringFromConfig(config);
    const {
      rows: [tenant],
    } = await root.query<{ id: string }>(
      "insert into herald_public.tenants (slug, name) values ('bench-webhooks', 'Webhooks') returning id",
    );
    const tenantId = tenant!.id;
    const {
      rows: [number],
    } = await root.query<{ id: string }>(
      "insert into herald_public.sender_numbers (tenant_id, phone_number) values ($1, $2) returning id",
      [tenantId, NUMBER],
    );
    // A number routes only once the provider confirms it: asked of a sandbox,
    // whose system account holds every number no other account holds.
    const sandbox = await startSandboxServer(10);
    try {
      const status = await withWorkerSession(app, keyring, tenantId, (c) =>
        verifySenderNumber(c, sandbox.clients, number!.id),
      );
      if (status !== "verified") throw new Error(`the bench's number did not verify (${status})`);
    } finally {
      await sandbox.close();
    }
    say(`seeding ${fmt(CONTACTS)} contacts…`);
    await withSession(
      app,
      { role: ROLES.worker, tenantId, settings: await keyring.sessionSettings(app, tenantId) },
      (c) =>
        c.query("select count(*) from herald_hidden.upsert_contacts($1)", [
          JSON.stringify(Array.from({ length: CONTACTS }, (_, i) => ({ phone: phoneOf(i), first_name: `P${i}` }))),
        ]),
    );
    // A running Herald has history: the tenant's earlier inbound messages
    // (through the same function), so the planner sizes the tables as in
    // steady state rather than planning for empty ones.
    say(`seeding ${fmt(HISTORY)} earlier inbound messages…`);
    const settings = await keyring.sessionSettings(app, tenantId);
    for (let done = 0; done < HISTORY; done += 50) {
      const batch = Array.from({ length: 50 }, (_, k) => ({
        channel: "sms",
        to_number: NUMBER,
        from_phone: phoneOf((done + k) % CONTACTS),
        body: "Earlier message",
        provider_message_id: `SM${String(done + k).padStart(32, "f")}`,
        media_count: 0,
        keyword: null,
        keyword_word: null,
      }));
      await withSession(app, { role: ROLES.worker, tenantId, settings }, (c) =>
        c.query("select count(*) from herald_hidden.receive_inbound_batch($1)", [JSON.stringify(batch)]),
      );
    }
    // As autovacuum would have by the time a real tenant gets traffic: the planner knows the tables.
    await root.query("analyze herald_public.contacts, herald_public.inbound_messages, herald_public.consent_events");

    // The deliveries the status callbacks and events report on (graphile-worker's
    // schema first: a message's insert queues its fan-out, removed at once).
    await runMigrations({ connectionString: db.urls.owner });
    say(`seeding ${fmt(DELIVERIES)} sent SMS and ${fmt(DELIVERIES)} sent emails…`);
    const smsDeliveries = await seedDeliveries(root, tenantId, "sms");
    const emailDeliveries = await seedDeliveries(root, tenantId, "email");
    await root.query("analyze herald_public.deliveries, herald_public.delivery_events");
    const eventKeys = generateKeyPairSync("ec", { namedCurve: "prime256v1" });

    const bare = await forkServer("bench/webhook-server.ts", process.env);
    // Herald's port is chosen here: its public URL (what Twilio signs) must name it before it starts.
    const port = await findFreePort();
    const publicUrl = `http://127.0.0.1:${port}`;
    const herald = await forkServer("src/api/standalone.ts", {
      ...process.env,
      HERALD_DATABASE_URLS: JSON.stringify(db.urls),
      PORT: String(port),
      NODE_ENV: "production",
      // Requests are logged as in production (info), to a sink nobody reads.
      LOG_LEVEL: "info",
      HERALD_PUBLIC_URL: publicUrl,
      TWILIO_ACCOUNT_SID: SANDBOX_SYSTEM_TWILIO.accountSid,
      TWILIO_AUTH_TOKEN: SANDBOX_SYSTEM_TWILIO.authToken,
      SENDGRID_WEBHOOK_PUBLIC_KEY: eventKeys.publicKey.export({ type: "spki", format: "der" }).toString("base64"),
    });
    try {
      const bareOrigin = bare.url;
      const inbound = inboundShot(publicUrl);
      say("warming up both servers…");
      await load(bareOrigin, inbound, { seconds: 3 });
      const warm = await load(publicUrl, inbound, { seconds: 3 });
      if (warm.failed > 0) throw new Error(`Herald refused ${warm.failed} of the warm-up requests`);
      say(`inbound: bare express, ${CONNECTIONS} connections, ${SECONDS} s…`);
      const baseline = await load(bareOrigin, inbound, { seconds: SECONDS });
      say(`inbound: Herald, ${CONNECTIONS} connections, ${SECONDS} s…`);
      const full = await load(publicUrl, inbound, { seconds: SECONDS });
      say(`inbound: Herald at ${RATE} req/s, ${SECONDS} s…`);
      const paced = await load(publicUrl, inbound, { seconds: SECONDS, rate: RATE });
      const {
        rows: [stored],
      } = await root.query<{ n: number }>(
        "select count(*)::int - $2 as n from herald_public.inbound_messages where tenant_id = $1",
        [tenantId, HISTORY],
      );
      const answered = warm.ok + full.ok + paced.ok;

      // Status callbacks: acknowledged per second, and applied end to end (until the journal is empty).
      const status = statusShot(publicUrl, tenantId, smsDeliveries);
      say(`status callbacks: bare express, ${CONNECTIONS} connections, ${SECONDS} s…`);
      const statusBaseline = await load(bareOrigin, statusShot(publicUrl, tenantId, smsDeliveries), {
        seconds: SECONDS,
      });
      say(`status callbacks: Herald, ${CONNECTIONS} connections, ${SECONDS} s…`);
      let started = performance.now();
      const statusFull = await load(publicUrl, status, { seconds: SECONDS });
      const statusSeconds = await untilApplied(root, started);
      const callbacksApplied = await eventCount(root, "twilio");
      say(`status callbacks: Herald at ${RATE} req/s, ${SECONDS} s…`);
      const statusPaced = await load(publicUrl, status, { seconds: SECONDS, rate: RATE });
      await untilApplied(root, performance.now());

      // SendGrid events, EVENTS_PER_POST a post.
      say(`SendGrid events: Herald, ${CONNECTIONS} connections, ${SECONDS} s, ${EVENTS_PER_POST} events a post…`);
      started = performance.now();
      const eventsFull = await load(publicUrl, eventsShot(eventKeys.privateKey, tenantId, emailDeliveries), {
        seconds: SECONDS,
      });
      const eventsSeconds = await untilApplied(root, started);
      const eventsApplied = await eventCount(root, "sendgrid");
      const {
        rows: [settledStatus],
      } = await root.query<{ delivered: number }>(
        "select count(*) filter (where status = 'delivered')::int as delivered from herald_public.deliveries where tenant_id = $1",
        [tenantId],
      );

      const figures = {
        bench: "webhooks",
        inbound_bare_rps: Math.round(baseline.rps),
        inbound_rps: Math.round(full.rps),
        inbound_p99_ms: full.p99,
        inbound_ratio: Number((full.rps / baseline.rps).toFixed(3)),
        inbound_paced_rps: Math.round(paced.rps),
        inbound_paced_p99_ms: paced.p99,
        status_bare_rps: Math.round(statusBaseline.rps),
        status_rps: Math.round(statusFull.rps),
        status_p99_ms: statusFull.p99,
        status_ratio: Number((statusFull.rps / statusBaseline.rps).toFixed(3)),
        status_paced_rps: Math.round(statusPaced.rps),
        status_paced_p99_ms: statusPaced.p99,
        callbacks_applied_per_s: Math.round(callbacksApplied / statusSeconds),
        events_posts_per_s: Math.round(eventsFull.rps),
        events_applied_per_s: Math.round(eventsApplied / eventsSeconds),
        ...(SMS_RATE
          ? {
              sms_rate: SMS_RATE,
              callbacks_per_sms_rate: Number((callbacksApplied / statusSeconds / SMS_RATE).toFixed(2)),
              events_per_sms_rate: Number((eventsApplied / eventsSeconds / SMS_RATE).toFixed(2)),
            }
          : {}),
        failed_requests:
          warm.failed + full.failed + paced.failed + statusFull.failed + statusPaced.failed + eventsFull.failed,
      };
      process.stdout.write(
        [
          `Webhooks: signed as Twilio and SendGrid sign them, ${CONNECTIONS} connections, ${SECONDS} s each, one run`,
          `  inbound SMS (from ${fmt(CONTACTS)} contacts, 1 in 10 a HELP):`,
          `    bare express handler (same form parsing, empty TwiML): ${fmt(baseline.rps)} req/s, p99 ${baseline.p99} ms`,
          `    Herald ${PATH}:                   ${fmt(full.rps)} req/s, p50 ${full.p50} ms, p99 ${full.p99} ms`,
          `    ratio Herald / bare:                                   ${figures.inbound_ratio} (target ≥ 0.3)`,
          `    Herald held at ${RATE} req/s:                            ${fmt(paced.rps)} req/s achieved, p50 ${paced.p50} ms, p99 ${paced.p99} ms (target p99 < 25 ms)`,
          `    answered ${fmt(answered)} requests (${warm.failed + full.failed + paced.failed} failed), stored ${fmt(stored!.n)} inbound messages` +
            ` (the difference: requests still in flight when a run ended, at most ${CONNECTIONS} a run)`,
          `  status callbacks (sent, then delivered, for ${fmt(smsDeliveries.length)} SMS):`,
          `    bare express handler (same form parsing, 204):        ${fmt(statusBaseline.rps)} req/s, p99 ${statusBaseline.p99} ms`,
          `    Herald /webhooks/twilio/status:                       ${fmt(statusFull.rps)} req/s acknowledged, p50 ${statusFull.p50} ms, p99 ${statusFull.p99} ms`,
          `    ratio Herald / bare:                                   ${figures.status_ratio} (target ≥ 0.3)`,
          `    applied end to end:                                    ${fmt(figures.callbacks_applied_per_s)} callbacks/s (${fmt(callbacksApplied)} in ${statusSeconds.toFixed(1)} s, until none waited)`,
          `    Herald held at ${RATE} req/s:                            ${fmt(statusPaced.rps)} req/s achieved, p50 ${statusPaced.p50} ms, p99 ${statusPaced.p99} ms (target p99 < 25 ms)`,
          `  SendGrid events (${EVENTS_PER_POST} a post, processed then delivered, for ${fmt(emailDeliveries.length)} emails):`,
          `    Herald /webhooks/sendgrid/events:                     ${fmt(eventsFull.rps)} posts/s, p99 ${eventsFull.p99} ms`,
          `    applied end to end:                                    ${fmt(figures.events_applied_per_s)} events/s (${fmt(eventsApplied)} in ${eventsSeconds.toFixed(1)} s, until none waited)`,
          ...(SMS_RATE
            ? [
                `  against the SMS pipeline's ${fmt(SMS_RATE)} deliveries/s (BENCH_SMS_RATE): callbacks ${figures.callbacks_per_sms_rate}×, events ${figures.events_per_sms_rate}× (target ≥ 3×)`,
              ]
            : []),
          `  deliveries now delivered: ${fmt(settledStatus!.delivered)}`,
          "",
        ].join("\n"),
      );
      // Nothing lost: every answered request stored its message; a request cut off at a run's end may have, too.
      if (stored!.n < answered || stored!.n > answered + 3 * CONNECTIONS) {
        throw new Error(`${answered} requests were answered but ${stored!.n} messages stored`);
      }
      if (figures.failed_requests > 0) throw new Error(`${figures.failed_requests} requests failed`);
      process.stdout.write(`${JSON.stringify(figures)}\n`);
    } finally {
      await Promise.all([bare.stop(), herald.stop()]);
    }
  });
}
