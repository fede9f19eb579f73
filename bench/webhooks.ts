import autocannon from "autocannon";
import { forkServer } from "../src/api/child-server.ts";
import { keyringFromConfig } from "../src/crypto/keyring.ts";
import { findFreePort } from "../src/db/ports.ts";
import { withSession } from "../src/db/session.ts";
import { ROLES } from "../src/db/urls.ts";
import { inboundParams } from "../src/sandbox/inbound.ts";
import { SANDBOX_SYSTEM_TWILIO } from "../src/sandbox/sandbox.ts";
import { twilioSignature } from "../src/sandbox/wire.ts";
import { say, withBenchDatabase } from "./common.ts";

/**
 * `npm run bench -- webhooks`, in one run: signed Twilio inbound-SMS webhooks
 * (from 1,000 known contacts, one in ten a HELP) against
 * 1. a bare express handler that parses the same form and answers the same
 *    empty TwiML, and Herald's /webhooks/twilio/sms (signature check, tenant
 *    by number, the message stored encrypted, the keyword applied), both at
 *    the same fixed concurrency, for requests per second and p99 latency;
 * 2. Herald held at a fixed rate (500 req/s by default), for p99 latency.
 * Each server runs in a process of its own; autocannon drives them from this one.
 * Every answered request must have stored exactly one inbound message.
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

const fmt = (n: number) => Math.round(n).toLocaleString("en-US");
const phoneOf = (i: number) => `+1628558${String(1000 + i)}`;

let sequence = 0;

/** Load on `origin` with signed inbound texts, as Twilio would post them to `publicUrl`. */
async function load(origin: string, publicUrl: string, options: { seconds: number; rate?: number }) {
  const result = await autocannon({
    url: `${origin}${PATH}`,
    connections: CONNECTIONS,
    duration: options.seconds,
    ...(options.rate ? { overallRate: options.rate } : {}),
    requests: [
      {
        method: "POST",
        setupRequest: (request) => {
          const i = ++sequence;
          const params = inboundParams(
            { url: "", authToken: "", accountSid: SANDBOX_SYSTEM_TWILIO.accountSid, from: phoneOf(i % CONTACTS), to: NUMBER, body: i % 10 === 0 ? "HELP" : "Thanks, see you then" },
            `SM${String(i).padStart(32, "0")}`,
          );
          return {
            ...request,
            headers: {
              "content-type": "application/x-www-form-urlencoded",
              "x-twilio-signature": twilioSignature(SANDBOX_SYSTEM_TWILIO.authToken, `${publicUrl}${PATH}`, params),
            },
            body: new URLSearchParams(params).toString(),
          };
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

export async function benchWebhooks() {
  await withBenchDatabase(async ({ config, db, root, app }) => {
    const keyring = keyringFromConfig(config);
    const { rows: [tenant] } = await root.query<{ id: string }>("insert into herald_public.tenants (slug, name) values ('bench-webhooks', 'Webhooks') returning id");
    const tenantId = tenant!.id;
    await root.query("insert into herald_public.sender_numbers (tenant_id, phone_number) values ($1, $2)", [tenantId, NUMBER]);
    say(`seeding ${fmt(CONTACTS)} contacts…`);
    await withSession(app, { role: ROLES.worker, tenantId, settings: await keyring.sessionSettings(app, tenantId) }, (c) =>
      c.query("select count(*) from herald_hidden.upsert_contacts($1)", [JSON.stringify(Array.from({ length: CONTACTS }, (_, i) => ({ phone: phoneOf(i), first_name: `P${i}` })))]),
    );
    // A running Herald has history: the tenant's earlier inbound messages
    // (through the same function), so the planner sizes the tables as in
    // steady state rather than planning for empty ones.
    say(`seeding ${fmt(HISTORY)} earlier inbound messages…`);
    const settings = await keyring.sessionSettings(app, tenantId);
    for (let done = 0; done < HISTORY; done += 50) {
      const batch = Array.from({ length: 50 }, (_, k) => ({
        channel: "sms", to_number: NUMBER, from_phone: phoneOf((done + k) % CONTACTS), body: "Earlier message",
        provider_message_id: `SM${String(done + k).padStart(32, "f")}`, media_count: 0, keyword: null, keyword_word: null,
      }));
      await withSession(app, { role: ROLES.worker, tenantId, settings }, (c) =>
        c.query("select count(*) from herald_hidden.receive_inbound_batch($1)", [JSON.stringify(batch)]),
      );
    }
    // As autovacuum would have by the time a real tenant gets traffic: the planner knows the tables.
    await root.query("analyze herald_public.contacts, herald_public.inbound_messages, herald_public.consent_events");

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
    });
    try {
      const bareOrigin = bare.url;
      say("warming up both servers…");
      await load(bareOrigin, publicUrl, { seconds: 3 });
      const warm = await load(publicUrl, publicUrl, { seconds: 3 });
      if (warm.failed > 0) throw new Error(`Herald refused ${warm.failed} of the warm-up requests`);
      say(`bare express, ${CONNECTIONS} connections, ${SECONDS} s…`);
      const baseline = await load(bareOrigin, publicUrl, { seconds: SECONDS });
      say(`Herald, ${CONNECTIONS} connections, ${SECONDS} s…`);
      const full = await load(publicUrl, publicUrl, { seconds: SECONDS });
      say(`Herald at ${RATE} req/s, ${SECONDS} s…`);
      const paced = await load(publicUrl, publicUrl, { seconds: SECONDS, rate: RATE });

      const { rows: [stored] } = await root.query<{ n: number }>(
        "select count(*)::int - $2 as n from herald_public.inbound_messages where tenant_id = $1",
        [tenantId, HISTORY],
      );
      const answered = warm.ok + full.ok + paced.ok;
      process.stdout.write(
        [
          `Inbound webhooks: signed Twilio SMS webhooks from ${fmt(CONTACTS)} contacts (1 in 10 a HELP), ${CONNECTIONS} connections, ${SECONDS} s each, one run`,
          `  bare express handler (same form parsing, empty TwiML): ${fmt(baseline.rps)} req/s, p99 ${baseline.p99} ms`,
          `  Herald ${PATH}:                   ${fmt(full.rps)} req/s, p50 ${full.p50} ms, p99 ${full.p99} ms`,
          `  ratio Herald / bare:                                   ${(full.rps / baseline.rps).toFixed(3)} (target ≥ 0.3)`,
          `  Herald held at ${RATE} req/s:                            ${fmt(paced.rps)} req/s achieved, p50 ${paced.p50} ms, p99 ${paced.p99} ms (target p99 < 25 ms)`,
          `  answered ${fmt(answered)} requests (${warm.failed + full.failed + paced.failed} failed), stored ${fmt(stored!.n)} inbound messages` +
            ` (the difference: requests still in flight when a run ended, at most ${CONNECTIONS} a run)`,
          "",
        ].join("\n"),
      );
      // Nothing lost: every answered request stored its message; a request cut off at a run's end may have, too.
      if (stored!.n < answered || stored!.n > answered + 3 * CONNECTIONS) {
        throw new Error(`${answered} requests were answered but ${stored!.n} messages stored`);
      }
    } finally {
      await Promise.all([bare.stop(), herald.stop()]);
    }
  });
}
