import { createHmac } from "node:crypto";
import http from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "../src/logger.ts";
import { startWorker, type WorkerHandle } from "../src/worker/worker.ts";
import { graphql, tokenFor, useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedExtraTenant, seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import { testKeyring } from "./helpers/keys.ts";
import { asWorker, startSandboxServer, waitFor, type SandboxServer } from "./helpers/messaging.ts";
import { textIn, webhookEnv } from "./helpers/webhooks.ts";

/**
 * Outbound webhooks to tenants' own apps: signed as documented, retried, an
 * endpoint disabled after failing repeatedly, a log the tenant reads and
 * replays, and never another tenant's events.
 */

const db = useTestDatabase();
const api = useApiServer(db, { env: () => webhookEnv() });
let a: TenantFixture;
let b: TenantFixture;
let sandbox: SandboxServer;
let worker: WorkerHandle;
const tokens = { a: "", b: "", aKey: "" };

/** What the tenants' apps received, by path. `/fail` answers 500; anything else 200. */
interface Received {
  path: string;
  headers: http.IncomingHttpHeaders;
  body: string;
  at: number;
}
const received: Received[] = [];
/** `/flaky` fails its first request, then answers 200. */
let flakyFailed = false;
let receiver: http.Server;
let receiverUrl: string;

/** Quick retries and a low threshold for disabling; the receiver is on localhost, so private networks are allowed unless a test says not. */
const startWebhookWorker = (policy: { allowPrivateNetworks: boolean }) =>
  startWorker({
    ownerUrl: db.current.urls.owner,
    authenticatorUrl: db.current.urls.authenticator,
    concurrency: 4,
    keyring: testKeyring(),
    providers: sandbox.clients,
    webhooks: { maxAttempts: 3, disableAfter: 5, retryBaseMs: 50, timeoutMs: 2000, ...policy },
    logger: createLogger("silent", 2),
  });

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  receiver = http.createServer((req, res) => {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      received.push({ path: req.url!, headers: req.headers, body, at: Date.now() });
      const flakyFails = req.url === "/flaky" && !flakyFailed;
      if (flakyFails) flakyFailed = true;
      res.statusCode = req.url === "/fail" || flakyFails ? 500 : 200;
      res.end();
    });
  });
  await new Promise<void>((resolve) => receiver.listen(0, "127.0.0.1", resolve));
  receiverUrl = `http://127.0.0.1:${(receiver.address() as { port: number }).port}`;
  sandbox = await startSandboxServer();
  worker = await startWebhookWorker({ allowPrivateNetworks: true });
  tokens.a = await tokenFor(api.current, a, "owner");
  tokens.b = await tokenFor(api.current, b, "owner");
});

afterAll(async () => {
  await worker?.stop();
  await sandbox?.close();
  await new Promise((resolve) => receiver?.close(resolve));
});

const CREATE = `mutation($url: String!, $types: [String]!) { createWebhookEndpoint(input: { url: $url, eventTypes: $types, description: "test" }) { endpoint { webhookEndpointId secret } } }`;
const create = async (
  token: string,
  url: string,
  types = ["inbound.received", "consent.changed", "delivery.updated"],
) => {
  const { body } = await graphql(api.current, token, CREATE, { url, types });
  expect(body.errors).toBeUndefined();
  return body.data!.createWebhookEndpoint.endpoint as { webhookEndpointId: string; secret: string };
};

/** Until no outbound webhook job is due or running (a held event's later look is neither): a "nothing arrived" check is then meaningful. */
const queueDrained = () =>
  waitFor(async () => {
    const { rows } = await db.current.root.query(
      `select count(*)::int as n from graphile_worker._private_jobs j join graphile_worker._private_tasks t on t.id = j.task_id
        where t.identifier = 'webhook_deliveries__send' and j.attempts < j.max_attempts and j.run_at <= now()`,
    );
    return rows[0].n === 0;
  });

/** `from` texts tenant `t`'s number, and Herald takes it. */
async function texts(t: TenantFixture, from: string, body: string) {
  expect((await textIn(api.current, t, { from, body })).status).toBe(200);
}

/** The documented recipe, written out independently of Herald's helper: HMAC-SHA256(secret, "<t>.<raw body>"), hex. */
function verifiesAsDocumented(secret: string, header: string, body: string): boolean {
  const { t, v1 } = Object.fromEntries(header.split(",").map((kv) => kv.split("="))) as { t: string; v1: string };
  const fresh = Math.abs(Date.now() / 1000 - Number(t)) < 300;
  return fresh && createHmac("sha256", secret).update(`${t}.${body}`).digest("hex") === v1;
}

describe("an endpoint of tenant A's app", () => {
  let endpoint: { webhookEndpointId: string; secret: string };
  beforeAll(async () => {
    endpoint = await create(tokens.a, `${receiverUrl}/a`);
  });

  it("receives what happened, signed as documented, with the inbound message's sender and text", async () => {
    const before = received.length;
    await texts(a, "+16285571001", "STOP");
    const posts = await waitFor(async () => {
      const mine = received.slice(before).filter((r) => r.path === "/a");
      return mine.length >= 2 && mine;
    });
    const events = posts.map((p) => ({ ...p, event: JSON.parse(p.body) }));
    const inbound = events.find((e) => e.event.type === "inbound.received")!;
    const consent = events.find((e) => e.event.type === "consent.changed")!;
    expect(inbound.event).toMatchObject({
      tenant_id: a.id,
      data: { channel: "sms", keyword: "stop", from: "+16285571001", body: "STOP" },
    });
    expect(consent.event.data).toMatchObject({ channel: "sms", action: "opt_out", source: "keyword", detail: "STOP" });
    for (const post of [inbound, consent]) {
      expect(post.headers["herald-event"]).toBe(post.event.type);
      expect(post.headers["herald-event-id"]).toBe(post.event.id);
      expect(verifiesAsDocumented(endpoint.secret, String(post.headers["herald-signature"]), post.body)).toBe(true);
      // Another secret, or another body, does not verify.
      const otherSecret = endpoint.secret.slice(0, -1) + (endpoint.secret.endsWith("0") ? "1" : "0");
      expect(verifiesAsDocumented(otherSecret, String(post.headers["herald-signature"]), post.body)).toBe(false);
      expect(
        verifiesAsDocumented(
          endpoint.secret,
          String(post.headers["herald-signature"]),
          post.body.replace("sms", "SMS"),
        ),
      ).toBe(false);
    }
    // The log keeps ids and states, not the sender or the text. (The worker writes a post's outcome
    // after the receiver has it: wait for both to be written.)
    const rows = await waitFor(async () => {
      const { rows } = await db.current.root.query(
        "select payload::text as payload, status, response_status from herald_public.webhook_deliveries where endpoint_id = $1",
        [endpoint.webhookEndpointId],
      );
      return rows.length >= 2 && rows.every((r) => r.status !== "pending") && rows;
    });
    expect(rows.map((r) => [r.status, r.response_status])).toEqual([
      ["succeeded", 200],
      ["succeeded", 200],
    ]);
    const stored = rows.map((r) => JSON.parse(r.payload));
    expect(JSON.stringify(stored)).not.toContain("6285571001");
    expect(stored.every((p) => !("from" in p) && !("body" in p))).toBe(true);
  });

  it("keeps no inbound text nor sender in its log: they are read at send time", async () => {
    const before = received.length;
    await texts(a, "+16285571009", "my secret words");
    const post = await waitFor(async () =>
      received.slice(before).find((r) => r.path === "/a" && JSON.parse(r.body).type === "inbound.received"),
    );
    expect(JSON.parse(post.body).data).toMatchObject({ from: "+16285571009", body: "my secret words" });
    const { rows } = await db.current.root.query(
      "select payload::text as payload from herald_public.webhook_deliveries",
    );
    expect(rows.filter((r) => /secret words|6285571009/.test(r.payload))).toEqual([]);
  });

  it("gives one event the same id at every endpoint it goes to", async () => {
    const second = await create(tokens.a, `${receiverUrl}/a2`, ["inbound.received"]);
    const before = received.length;
    await texts(a, "+16285571010", "to both");
    const [one, two] = await waitFor(async () => {
      const bodies = received
        .slice(before)
        .filter((r) => ["/a", "/a2"].includes(r.path) && JSON.parse(r.body).type === "inbound.received");
      return bodies.length === 2 && bodies;
    });
    expect(JSON.parse(one!.body).id).toBe(JSON.parse(two!.body).id);
    await db.current.root.query("delete from herald_public.webhook_endpoints where id = $1", [
      second.webhookEndpointId,
    ]);
  });

  it("hears of its deliveries moving on (delivery.updated)", async () => {
    const before = received.length;
    // A delivery in flight that Twilio reports delivered.
    const { rows } = await db.current.root.query(
      "insert into herald_public.deliveries (tenant_id, message_id, contact_id, channel, status) values ($1, $2, null, 'sms', 'sending') returning id",
      [a.id, a.messageId],
    );
    await asWorker(db.current, a, (c) =>
      c.query(
        "select herald_hidden.apply_delivery_event($1, $2, 'twilio', 'delivered', 'delivered', 'outbound-test', null, null)",
        [rows[0].id, `SM${"7".repeat(32)}`],
      ),
    );
    const post = await waitFor(async () =>
      received.slice(before).find((r) => r.path === "/a" && JSON.parse(r.body).type === "delivery.updated"),
    );
    expect(JSON.parse(post.body).data).toMatchObject({
      delivery_id: rows[0].id,
      status: "delivered",
      previous_status: "sending",
    });
  });

  it("lists its deliveries for the tenant, and replays one with the same event id", async () => {
    const { body } = await graphql(
      api.current,
      tokens.a,
      `
        query ($e: UUID!) {
          allWebhookDeliveries(condition: { endpointId: $e }, orderBy: CREATED_AT_ASC) {
            nodes {
              rowId
              eventId
              eventType
              status
              responseStatus
              attempts
            }
          }
        }
      `,
      { e: endpoint.webhookEndpointId },
    );
    expect(body.errors).toBeUndefined();
    const first = body.data!.allWebhookDeliveries.nodes[0];
    expect(first).toMatchObject({ status: "succeeded", responseStatus: 200, attempts: 1 });
    const before = received.length;
    const replay = await graphql(
      api.current,
      tokens.a,
      `
        mutation ($d: UUID!) {
          replayWebhookDelivery(input: { webhookDeliveryId: $d }) {
            webhookDelivery {
              rowId
              replayOf
              eventId
            }
          }
        }
      `,
      { d: first.rowId },
    );
    expect(replay.body.data!.replayWebhookDelivery.webhookDelivery).toMatchObject({
      replayOf: first.rowId,
      eventId: first.eventId,
    });
    const again = await waitFor(async () => received.slice(before).find((r) => r.path === "/a"));
    expect(JSON.parse(again.body).id).toBe(first.eventId);
  });
});

describe("a failing endpoint", () => {
  it("is retried, then the event is given up; failures in a row disable the endpoint", async () => {
    const failing = await create(tokens.a, `${receiverUrl}/fail`, ["inbound.received"]);
    const before = received.filter((r) => r.path === "/fail").length;
    await texts(a, "+16285571002", "first");
    // Three attempts for this event (maxAttempts 3), each retried after a doubling wait.
    const state = await waitFor(async () => {
      const { rows } = await db.current.root.query(
        "select status, attempts, response_status, last_error from herald_public.webhook_deliveries where endpoint_id = $1",
        [failing.webhookEndpointId],
      );
      return rows[0]?.status === "failed" && rows[0];
    });
    expect(state).toMatchObject({ attempts: 3, response_status: 500, last_error: "the endpoint answered 500" });
    const attempts = received.filter((r) => r.path === "/fail").slice(before);
    expect(attempts).toHaveLength(3);
    // Each wait doubles the one before (50 ms, then 100 ms): lower bounds, whatever the machine's load.
    expect(attempts[1]!.at - attempts[0]!.at).toBeGreaterThanOrEqual(50);
    expect(attempts[2]!.at - attempts[1]!.at).toBeGreaterThanOrEqual(100);
    // Two more failures make five in a row (disableAfter 5): the endpoint is disabled.
    await texts(a, "+16285571003", "second");
    const endpoint = await waitFor(async () => {
      const { rows } = await db.current.root.query(
        "select status, disabled_reason, consecutive_failures from herald_public.webhook_endpoints where id = $1",
        [failing.webhookEndpointId],
      );
      return rows[0].status === "disabled" && rows[0];
    });
    expect(endpoint).toMatchObject({
      consecutive_failures: 5,
      disabled_reason: expect.stringMatching(/^disabled after 5 failed attempts in a row/),
    });
    // Disabled, it gets nothing more; enabling it starts afresh.
    await texts(a, "+16285571004", "third");
    await queueDrained();
    expect(received.filter((r) => r.path === "/fail").length - before).toBe(5);
    // No event is even written for a disabled endpoint, and a replay to one is refused.
    const { rows: afterDisable } = await db.current.root.query(
      "select count(*)::int as n from herald_public.webhook_deliveries w where w.endpoint_id = $1 and w.created_at > (select disabled_at from herald_public.webhook_endpoints where id = $1)",
      [failing.webhookEndpointId],
    );
    expect(afterDisable[0].n).toBe(0);
    const {
      rows: [last],
    } = await db.current.root.query(
      "select id from herald_public.webhook_deliveries where endpoint_id = $1 order by created_at desc limit 1",
      [failing.webhookEndpointId],
    );
    const replay = await graphql(
      api.current,
      tokens.a,
      `
        mutation ($d: UUID!) {
          replayWebhookDelivery(input: { webhookDeliveryId: $d }) {
            webhookDelivery {
              rowId
            }
          }
        }
      `,
      { d: last.id },
    );
    expect(replay.body.errors?.[0]?.extensions).toMatchObject({ code: "INVALID_INPUT" });
    const enabled = await graphql(
      api.current,
      tokens.a,
      `
        mutation ($e: UUID!) {
          enableWebhookEndpoint(input: { webhookEndpointId: $e }) {
            endpoint {
              status
              consecutiveFailures
            }
          }
        }
      `,
      { e: failing.webhookEndpointId },
    );
    expect(enabled.body.data!.enableWebhookEndpoint.endpoint).toEqual({ status: "active", consecutiveFailures: 0 });
  });
});

describe("an endpoint that fails once", () => {
  it("gets the event on the retry, and its failure count goes back to zero", async () => {
    const flaky = await create(tokens.a, `${receiverUrl}/flaky`, ["inbound.received"]);
    await texts(a, "+16285571011", "try again");
    const delivered = await waitFor(async () => {
      const { rows } = await db.current.root.query(
        "select status, attempts from herald_public.webhook_deliveries where endpoint_id = $1",
        [flaky.webhookEndpointId],
      );
      return rows[0]?.status === "succeeded" && rows[0];
    });
    expect(delivered.attempts).toBe(2);
    const { rows } = await db.current.root.query(
      "select consecutive_failures from herald_public.webhook_endpoints where id = $1",
      [flaky.webhookEndpointId],
    );
    expect(rows[0].consecutive_failures).toBe(0);
    await db.current.root.query("delete from herald_public.webhook_endpoints where id = $1", [flaky.webhookEndpointId]);
  });
});

describe("what a tenant may set", () => {
  it("resets an endpoint's failure count (enable) but never sets it, nor disables with a reason of its own", async () => {
    const endpoint = await create(tokens.a, `${receiverUrl}/guarded`, ["consent.changed"]);
    for (const patch of ["consecutiveFailures: -2000000000", `disabledReason: "x", status: "disabled"`]) {
      const { body } = await graphql(
        api.current,
        tokens.a,
        `mutation($t: UUID!, $e: UUID!) { updateWebhookEndpointByTenantIdAndRowId(input: { tenantId: $t, rowId: $e, webhookEndpointPatch: { ${patch} } }) { webhookEndpoint { consecutiveFailures } } }`,
        { t: a.id, e: endpoint.webhookEndpointId },
      );
      expect(body.errors?.[0]?.extensions?.code, patch).toBe("FORBIDDEN");
    }
    // Pausing an endpoint (status alone) is the tenant's call.
    const paused = await graphql(
      api.current,
      tokens.a,
      `
        mutation ($t: UUID!, $e: UUID!) {
          updateWebhookEndpointByTenantIdAndRowId(
            input: { tenantId: $t, rowId: $e, webhookEndpointPatch: { status: "disabled" } }
          ) {
            webhookEndpoint {
              status
            }
          }
        }
      `,
      { t: a.id, e: endpoint.webhookEndpointId },
    );
    expect(paused.body.data?.updateWebhookEndpointByTenantIdAndRowId?.webhookEndpoint).toEqual({ status: "disabled" });
  });

  it("has at most 20 endpoints", async () => {
    const { rows } = await db.current.root.query(
      "select count(*)::int as n from herald_public.webhook_endpoints where tenant_id = $1",
      [a.id],
    );
    for (let i = rows[0].n; i < 20; i++) await create(tokens.a, `${receiverUrl}/extra-${i}`, ["consent.changed"]);
    const { body } = await graphql(api.current, tokens.a, CREATE, {
      url: `${receiverUrl}/one-too-many`,
      types: ["consent.changed"],
    });
    expect(body.errors?.[0]?.extensions).toMatchObject({ code: "INVALID_INPUT", field: "url" });
    // Gone again, so that the tests that follow neither post to them nor meet the limit.
    await db.current.root.query(
      "delete from herald_public.webhook_endpoints where tenant_id = $1 and url like '%/extra-%'",
      [a.id],
    );
  });
});

describe("tenants", () => {
  it("tenant B's endpoint never receives tenant A's events, and A's never B's", async () => {
    await create(tokens.b, `${receiverUrl}/b`, ["inbound.received"]);
    const before = received.length;
    await texts(a, "+16285571005", "for A");
    await texts(b, "+16285571006", "for B");
    await waitFor(async () => received.slice(before).some((r) => r.path === "/b"));
    await queueDrained();
    const posts = received.slice(before).map((r) => ({ path: r.path, event: JSON.parse(r.body) }));
    expect(posts.filter((p) => p.path === "/b").map((p) => [p.event.tenant_id, p.event.data.body])).toEqual([
      [b.id, "for B"],
    ]);
    const toA = posts.filter((p) => p.path === "/a");
    // A's own text did arrive at A's endpoint; nothing there is another tenant's.
    expect(toA.map((p) => p.event.data.body)).toContain("for A");
    expect(toA.filter((p) => p.event.tenant_id !== a.id)).toEqual([]);
    expect(toA.some((p) => p.event.data.body === "for B")).toBe(false);
  });

  it("B cannot see, replay or enable A's endpoints and deliveries; only a tenant's owners and admins create endpoints", async () => {
    const { rows } = await db.current.root.query(
      "select id, endpoint_id from herald_public.webhook_deliveries where tenant_id = $1 limit 1",
      [a.id],
    );
    const seen = await graphql(
      api.current,
      tokens.b,
      "{ allWebhookEndpoints { nodes { tenantId } } allWebhookDeliveries { nodes { tenantId } } }",
    );
    expect(seen.body.errors).toBeUndefined();
    // B sees its own endpoint (and its deliveries), and nothing of A's.
    const tenantsSeen = [
      ...seen.body.data!.allWebhookEndpoints.nodes,
      ...seen.body.data!.allWebhookDeliveries.nodes,
    ].map((n: { tenantId: string }) => n.tenantId);
    expect(tenantsSeen.length).toBeGreaterThan(1);
    expect(new Set(tenantsSeen)).toEqual(new Set([b.id]));
    const replay = await graphql(
      api.current,
      tokens.b,
      `
        mutation ($d: UUID!) {
          replayWebhookDelivery(input: { webhookDeliveryId: $d }) {
            webhookDelivery {
              rowId
            }
          }
        }
      `,
      { d: rows[0].id },
    );
    expect(replay.body.errors?.[0]?.extensions).toMatchObject({ code: "NOT_FOUND", field: "webhookDeliveryId" });
    const enable = await graphql(
      api.current,
      tokens.b,
      `
        mutation ($e: UUID!) {
          enableWebhookEndpoint(input: { webhookEndpointId: $e }) {
            endpoint {
              status
            }
          }
        }
      `,
      { e: rows[0].endpoint_id },
    );
    expect(enable.body.errors?.[0]?.extensions).toMatchObject({ code: "NOT_FOUND" });
    // An API key is not a tenant admin; nor is a plain member.
    const member = await tokenFor(api.current, a, "member");
    for (const token of [a.apiKeySecret, member]) {
      const { body } = await graphql(api.current, token, CREATE, {
        url: `${receiverUrl}/x`,
        types: ["inbound.received"],
      });
      expect(body.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
    }
    // The secret is not readable by anyone through the API.
    const secretField = await graphql(api.current, tokens.a, "{ allWebhookEndpoints { nodes { secretEncrypted } } }");
    expect(secretField.body.errors?.[0]?.message).toMatch(/Cannot query field "secretEncrypted"/);
  });
});

describe("a suspended tenant", () => {
  it("posts nothing to its endpoints while suspended; what happened meanwhile is posted once it is resumed", async () => {
    const t = await seedExtraTenant(db.current, "paused-hooks");
    await create(await tokenFor(api.current, t, "owner"), `${receiverUrl}/paused`, ["inbound.received"]);
    // As suspend_tenant writes it.
    await db.current.root.query(
      "update herald_public.tenants set status = 'suspended', suspended_at = now() where id = $1",
      [t.id],
    );
    await texts(t, "+16285571020", "while suspended");
    const held = await waitFor(async () => {
      const { rows } = await db.current.root.query(
        "select status, attempts, hold_reason, last_error from herald_public.webhook_deliveries where tenant_id = $1 and event_type = 'inbound.received' and endpoint_id <> $2",
        [t.id, t.webhookEndpointId],
      );
      return rows[0]?.last_error !== null && rows[0];
    });
    expect(held).toEqual({
      status: "pending",
      attempts: 0,
      hold_reason: "tenant_suspended",
      last_error: "held: the tenant is suspended",
    });
    expect(received.filter((r) => r.path === "/paused")).toEqual([]);

    await db.current.root.query(
      "update herald_public.tenants set status = 'active', suspended_at = null where id = $1",
      [t.id],
    );
    const posted = await waitFor(async () => received.find((r) => r.path === "/paused"));
    expect(JSON.parse(posted.body)).toMatchObject({
      tenant_id: t.id,
      type: "inbound.received",
      data: { body: "while suspended" },
    });
    // Posted: no longer held.
    const after = await waitFor(async () => {
      const { rows } = await db.current.root.query(
        "select status, hold_reason from herald_public.webhook_deliveries where tenant_id = $1 and event_type = 'inbound.received' and endpoint_id <> $2",
        [t.id, t.webhookEndpointId],
      );
      return rows[0]?.status === "succeeded" && rows[0];
    });
    expect(after.hold_reason).toBeNull();
  });
});

describe("the worker with production's policy", () => {
  it("records a refused endpoint as failed at once, without retrying", async () => {
    await worker.stop();
    worker = await startWebhookWorker({ allowPrivateNetworks: false });
    await db.current.root.query("update herald_public.webhook_endpoints set status = 'disabled' where tenant_id = $1", [
      a.id,
    ]);
    const local = await create(tokens.a, `${receiverUrl}/local`, ["inbound.received"]);
    const before = received.length;
    await texts(a, "+16285571012", "to a local address");
    const state = await waitFor(async () => {
      const { rows } = await db.current.root.query(
        "select status, attempts, last_error from herald_public.webhook_deliveries where endpoint_id = $1",
        [local.webhookEndpointId],
      );
      return rows[0]?.status === "failed" && rows[0];
    });
    expect(state).toEqual({ status: "failed", attempts: 1, last_error: "endpoints must use https" });
    await queueDrained();
    expect(received.slice(before)).toEqual([]);
  });
});
