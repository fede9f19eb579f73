import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROLES } from "../src/db/urls.ts";
import { twimlMessages } from "../src/sandbox/inbound.ts";
import type { WorkerHandle } from "../src/worker/worker.ts";
import { graphql, tokenFor, useApiProcess, useApiServer } from "./helpers/api.ts";
import { runCli } from "./helpers/cli.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedExtraTenant, seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import {
  asRoot,
  messageDueNow,
  readyToSend,
  sendThroughApi,
  startSandboxServer,
  startSendingWorker,
  waitFor,
  type SandboxServer,
} from "./helpers/messaging.ts";
import { contactWith, textIn, webhookEnv } from "./helpers/webhooks.ts";

/**
 * Platform operators: suspending and resuming a tenant (through GraphQL and
 * the CLI), and the per-tenant API rate limit, shared by every API process.
 */

const db = useTestDatabase();
const api = useApiServer(db, { env: () => webhookEnv() });
// A second API, in a process of its own, on the same database: the rate limit is shared.
const secondApi = useApiProcess(db, () => ({ LOG_LEVEL: "silent", ...webhookEnv() }));
let a: TenantFixture;
let b: TenantFixture;
let adminToken: string;

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  adminToken = await api.current.authenticator.sign({ role: ROLES.admin });
});

/** Seconds left in the database's current minute: sign-in attempts and API requests are counted per minute of its clock. */
async function secondsLeftInMinute(): Promise<number> {
  const { rows } = await db.current.root.query<{ left: number }>(
    "select 60 - extract(second from clock_timestamp())::float8 as left",
  );
  return rows[0]!.left;
}

/**
 * Waits, if need be, for the next minute, so that a test's requests all fall
 * in one: a counted minute that turned half-way would reset its count. The
 * margin is generous, for a loaded machine; a test that calls this gets
 * MINUTE_TIMEOUT, since it may wait out a third of a minute first.
 */
async function startEarlyInMinute() {
  const left = await secondsLeftInMinute();
  if (left < 20) await new Promise((r) => setTimeout(r, (left + 0.5) * 1000));
}
const MINUTE_TIMEOUT = 60_000;

const SUSPEND = `mutation($t: UUID!, $r: String!) { suspendTenant(input: { tenantId: $t, reason: $r }) { tenant { status suspendedAt suspensionReason } } }`;
const RESUME = `mutation($t: UUID!) { resumeTenant(input: { tenantId: $t }) { tenant { status suspendedAt } } }`;

describe("suspending a tenant", () => {
  let server: SandboxServer;
  let worker: WorkerHandle;
  let c: TenantFixture;
  beforeAll(async () => {
    c = await seedExtraTenant(db.current, "tenant-c");
    server = await startSandboxServer();
    await readyToSend(db.current, server, c);
    worker = await startSendingWorker(db.current, server, 4);
  });
  afterAll(async () => {
    await worker?.stop();
    await server?.close();
  });

  it("is for operators only: a tenant's own owner can neither suspend nor resume, even its own tenant", async () => {
    const owner = await tokenFor(api.current, c, "owner");
    for (const [mutation, variables] of [
      [SUSPEND, { t: c.id, r: "testing" }],
      [SUSPEND, { t: a.id, r: "spite" }],
      [RESUME, { t: c.id }],
    ] as const) {
      const { body } = await graphql(api.current, owner, mutation, variables);
      expect(body.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
    }
    const status = await db.current.root.query(
      "select id, status from herald_public.tenants where id = any ($1) order by id",
      [[a.id, c.id]],
    );
    expect(status.rows.map((r) => r.status)).toEqual(["active", "active"]);
    const noReason = await graphql(api.current, adminToken, SUSPEND, { t: a.id, r: "  " });
    expect(noReason.body.errors?.[0]?.extensions).toMatchObject({ code: "INVALID_INPUT", field: "reason" });
  });

  it("stops its users and API keys at once and holds its sends; inbound still counts; resuming sends what was held", async () => {
    const owner = await tokenFor(api.current, c, "owner");
    const phone = "+16285590901";
    const contactId = await contactWith(db.current, c, phone);
    // Queued before the suspension, for an hour ahead; made due once the tenant is suspended, so that
    // however slowly the suspension goes on a loaded machine, the send's time comes after it.
    const messageId = await sendThroughApi(api.current, owner, {
      channel: "sms",
      body: "Held while suspended",
      contactIds: [contactId],
      scheduledAt: new Date(Date.now() + 3_600_000).toISOString(),
    });

    const suspended = await graphql(api.current, adminToken, SUSPEND, { t: c.id, r: "unpaid invoice" });
    expect(suspended.body.data!.suspendTenant.tenant).toMatchObject({
      status: "suspended",
      suspensionReason: "unpaid invoice",
    });
    await messageDueNow(db.current, messageId);
    // A user's JWT names a tenant it no longer may act in; an API key no longer authenticates at all.
    for (const [token, code] of [
      [owner, "NOT_A_MEMBER"],
      [c.apiKeySecret, "INVALID_API_KEY"],
    ] as const) {
      const { status, body } = await graphql(api.current, token, "{ currentTenant { name } }");
      expect(status, code).toBe(401);
      expect(body.error?.code).toBe(code);
    }
    // Another tenant is unaffected.
    expect((await graphql(api.current, a.apiKeySecret, "{ currentTenant { slug } }")).body.data).toEqual({
      currentTenant: { slug: "tenant-a" },
    });

    const held = await waitFor(async () => {
      const { rows } = await db.current.root.query(
        "select status, reason from herald_public.deliveries where message_id = $1",
        [messageId],
      );
      return rows[0]?.reason === "tenant_suspended" && rows[0];
    });
    expect(held.status).toBe("queued");
    expect(server.sandbox.messages.filter((m) => m.to === phone)).toEqual([]);

    // An opt-out to a suspended tenant is still an opt-out.
    await db.current.root.query(
      "update herald_public.tenant_settings set stop_reply = 'BUY NOW at spam.example' where tenant_id = $1",
      [c.id],
    );
    const stop = await textIn(api.current, c, { from: "+16285590902", body: "STOP" });
    expect(stop.status).toBe(200);
    // Recorded, and answered in Herald's own words: a suspended tenant says nothing of its own.
    expect(twimlMessages(stop.body)).toEqual([
      "You are unsubscribed and will receive no more messages from this number.",
    ]);
    const { rows: consent } = await db.current.root.query(
      "select action from herald_public.consent_events where tenant_id = $1 and detail = 'STOP'",
      [c.id],
    );
    expect(consent).toEqual([{ action: "opt_out" }]);
    const {
      rows: [stopped],
    } = await db.current.root.query(
      `select c.sms_subscribed, exists (select 1 from herald_public.suppressions s where s.tenant_id = c.tenant_id and s.address_hash = c.phone_hash) as suppressed
         from herald_public.contacts c join herald_public.consent_events e on e.contact_id = c.id where e.tenant_id = $1 and e.detail = 'STOP'`,
      [c.id],
    );
    expect(stopped).toEqual({ sms_subscribed: false, suppressed: true });

    const resumed = await graphql(api.current, adminToken, RESUME, { t: c.id });
    expect(resumed.body.data!.resumeTenant.tenant).toEqual({ status: "active", suspendedAt: null });
    const sent = await waitFor(async () => {
      const { rows } = await db.current.root.query(
        "select status from herald_public.deliveries where message_id = $1",
        [messageId],
      );
      return rows[0]?.status === "sent" && rows[0];
    }, 20_000);
    expect(sent.status).toBe("sent");
    expect(server.sandbox.messages.filter((m) => m.to === phone).map((m) => m.body)).toEqual(["Held while suspended"]);
    expect((await graphql(api.current, owner, "{ currentTenant { name } }")).status).toBe(200);
  });

  it("works from the CLI too: `herald tenant suspend` and `resume`", async () => {
    const status = async () =>
      (await db.current.root.query("select status, suspension_reason from herald_public.tenants where id = $1", [b.id]))
        .rows[0];
    const suspend = await runCli(db.current, ["tenant", "suspend", "tenant-b", "--reason", "abuse report"]);
    expect(suspend.code, suspend.stderr).toBe(0);
    expect(suspend.stdout).toMatch(/Suspended tenant-b/);
    expect(await status()).toEqual({ status: "suspended", suspension_reason: "abuse report" });
    const { rows } = await db.current.root.query(
      "select actor_kind, actor_detail from herald_public.audit_log where tenant_id = $1 and table_name = 'tenants' order by id desc limit 1",
      [b.id],
    );
    expect(rows[0]).toMatchObject({ actor_kind: "admin", actor_detail: expect.stringMatching(/^herald cli \(/) });
    const resume = await runCli(db.current, ["tenant", "resume", "tenant-b"]);
    expect(resume.code, resume.stderr).toBe(0);
    expect(await status()).toEqual({ status: "active", suspension_reason: null });
  });
});

describe("password sign-in attempts", () => {
  it(
    "allow ten a minute per account, then 429 with Retry-After; another account is not held up",
    async () => {
      const attempt = (email: string) =>
        fetch(`${api.current.url}/auth/login`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ email, password: "not-the-password" }),
        });
      await startEarlyInMinute();
      const statuses: number[] = [];
      for (let i = 0; i < 10; i++) statuses.push((await attempt("guessed@tenant-a.test")).status);
      expect(statuses).toEqual(statuses.map(() => 401));
      const refused = await attempt("Guessed@Tenant-A.test");
      expect(refused.status).toBe(429);
      expect(Number(refused.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
      expect((await attempt("someone-else@tenant-a.test")).status).toBe(401);
    },
    MINUTE_TIMEOUT,
  );
});

describe("API rate limits", () => {
  const ask = (server: { current: { url: string } }, token: string) =>
    graphql(server.current, token, "{ currentTenant { slug } }");
  const limitedTenant = async (slug: string, perMinute: number) => {
    const tenant = await seedExtraTenant(db.current, slug);
    await asRoot(db.current, (c) =>
      c.query("update herald_public.tenant_settings set api_requests_per_minute = $2 where tenant_id = $1", [
        tenant.id,
        perMinute,
      ]),
    );
    return tenant;
  };

  it(
    "answers 429 with Retry-After once a tenant is over its requests per minute, across API processes; another tenant and operators are unaffected",
    async () => {
      // A tenant no other test sends requests for.
      const d = await limitedTenant("tenant-d", 6);
      const owner = await tokenFor(api.current, d, "owner");
      await startEarlyInMinute();
      const statuses: number[] = [];
      // Its users and its API keys share the limit, whichever process they reach.
      for (let i = 0; i < 6; i++)
        statuses.push((await ask(i % 2 ? secondApi : api, i % 3 ? owner : d.apiKeySecret)).status);
      expect(statuses).toEqual([200, 200, 200, 200, 200, 200]);
      for (const server of [api, secondApi]) {
        const response = await fetch(`${server.current.url}/graphql`, {
          method: "POST",
          headers: { "content-type": "application/json", authorization: `Bearer ${owner}` },
          body: JSON.stringify({ query: "{ currentTenant { slug } }" }),
        });
        const wait = Number(response.headers.get("retry-after"));
        const expected = await secondsLeftInMinute();
        expect(response.status).toBe(429);
        // The wait is until the minute turns, not a fixed penalty.
        expect(wait).toBeGreaterThanOrEqual(Math.floor(expected));
        expect(wait).toBeLessThanOrEqual(Math.ceil(expected) + 1);
        expect(((await response.json()) as { error: { code: string } }).error.code).toBe("RATE_LIMITED");
      }
      // Tenant B is not held up by D, nor is an operator acting in D.
      expect((await ask(api, b.apiKeySecret)).status).toBe(200);
      const operatorInD = await api.current.authenticator.sign({ role: ROLES.admin, tenant_id: d.id });
      expect((await ask(secondApi, adminToken)).status).toBe(200);
      expect((await ask(api, operatorInD)).status).toBe(200);
    },
    MINUTE_TIMEOUT,
  );

  it(
    "starts each minute afresh: last minute's count does not hold a tenant back",
    async () => {
      const e = await limitedTenant("tenant-e", 3);
      await startEarlyInMinute();
      // Last minute, E was far over its limit.
      await db.current.root.query(
        `insert into herald_private.rate_windows (scope, window_start, hits)
       values ('api:' || $1, date_trunc('minute', clock_timestamp()) - interval '1 minute', 1000000)`,
        [e.id],
      );
      const statuses: number[] = [];
      for (let i = 0; i < 4; i++) statuses.push((await ask(i % 2 ? secondApi : api, e.apiKeySecret)).status);
      expect(statuses).toEqual([200, 200, 200, 429]);
      // The new minute's first request restarted the count (refused requests count too).
      const { rows } = await db.current.root.query(
        "select hits, window_start = date_trunc('minute', clock_timestamp()) as current from herald_private.rate_windows where scope = 'api:' || $1",
        [e.id],
      );
      expect(rows).toEqual([{ hits: 4, current: true }]);
    },
    MINUTE_TIMEOUT,
  );

  it("forgets what stopped coming: keys tried once are swept by later minutes, so guessing cannot grow the table", async () => {
    const stale = Array.from({ length: 30 }, (_, i) => `login:email:stale-${i}`);
    // Only this test's rows: the earlier tests' counters, stale by now too, would take part of each sweep.
    await db.current.root.query("delete from herald_private.rate_windows");
    await db.current.root.query(
      `insert into herald_private.rate_windows (scope, window_start, hits)
       select s, date_trunc('minute', clock_timestamp()) - interval '5 minutes', 1 from unnest($1::text[]) s`,
      [stale],
    );
    const left = async () =>
      (
        await db.current.root.query<{ n: number }>(
          "select count(*)::int as n from herald_private.rate_windows where scope = any ($1)",
          [stale],
        )
      ).rows[0]!.n;
    // Each scope that starts a minute sweeps up to 20 stale ones.
    await db.current.root.query("select herald_private.admit('test:first', 10)");
    expect(await left()).toBe(10);
    await db.current.root.query("select herald_private.admit('test:second', 10)");
    expect(await left()).toBe(0);
    // A scope counting within its minute sweeps nothing (that work is once a minute per scope).
    expect((await db.current.root.query("select herald_private.admit('test:first', 10) as wait")).rows[0].wait).toBe(0);
  });

  it("is the operators' to set: a tenant cannot raise its own", async () => {
    const owner = await tokenFor(api.current, b, "owner");
    const { body } = await graphql(
      api.current,
      owner,
      `
        mutation ($t: UUID!) {
          updateTenantSettingByTenantId(
            input: { tenantId: $t, tenantSettingPatch: { apiRequestsPerMinute: 1000000 } }
          ) {
            tenantSetting {
              apiRequestsPerMinute
            }
          }
        }
      `,
      { t: b.id },
    );
    expect(body.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
    const { rows } = await db.current.root.query(
      "select api_requests_per_minute from herald_public.tenant_settings where tenant_id = $1",
      [b.id],
    );
    expect(rows[0].api_requests_per_minute).toBe(600);
  });
});
