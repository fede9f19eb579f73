import http from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "../src/logger.ts";
import { sandboxPage } from "../src/sandbox/page.ts";
import { startWorker, type WorkerHandle } from "../src/worker/worker.ts";
import { graphql, tokenFor } from "./helpers/api.ts";
import { runCli } from "./helpers/cli.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedExtraTenant, type TenantFixture } from "./helpers/fixtures.ts";
import { testKeyring } from "./helpers/keys.ts";
import { readyToSend, sendThroughApi, startSandboxServer, waitFor, type SandboxServer } from "./helpers/messaging.ts";
import {
  appliedRows,
  contactWith,
  postSendGrid,
  reportsApplied,
  sendgridKeyPair,
  useCallableApiServer,
} from "./helpers/webhooks.ts";

/**
 * Opens and clicks: SendGrid's signed `open` and `click` events (made by the
 * sandbox, as a recipient would) recorded on the delivery, shown in GraphQL
 * and in usage, told to the tenant's app as `delivery.opened` /
 * `delivery.clicked`; each event once, a forged one not at all, and a
 * delivery's status never moved back.
 */

const db = useTestDatabase();
let server: SandboxServer;
beforeAll(async () => {
  server = await startSandboxServer();
});
const { api, endpoint } = useCallableApiServer(db, () => ({
  SENDGRID_WEBHOOK_PUBLIC_KEY: server.sandbox.sendgridPublicKey,
}));
let worker: WorkerHandle;
let t: TenantFixture;
let owner: string;
let receiver: http.Server;
const posts: { type: string; data: Record<string, unknown> }[] = [];
const EVENTS = "/webhooks/sendgrid/events";

beforeAll(async () => {
  t = await seedExtraTenant(db.current, "engaged");
  await readyToSend(db.current, server, t);
  owner = await tokenFor(api.current, t, "owner");
  server.sandbox.setSendGridEventUrl(`${endpoint.publicUrl}${EVENTS}`);
  receiver = http.createServer((req, res) => {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      posts.push(JSON.parse(body));
      res.end();
    });
  });
  await new Promise<void>((resolve) => receiver.listen(0, "127.0.0.1", resolve));
  const { body } = await graphql(
    api.current,
    owner,
    `
      mutation ($url: String!) {
        createWebhookEndpoint(input: { url: $url, eventTypes: ["delivery.opened", "delivery.clicked"] }) {
          endpoint {
            webhookEndpointId
          }
        }
      }
    `,
    { url: `http://127.0.0.1:${(receiver.address() as { port: number }).port}/hook` },
  );
  expect(body.errors).toBeUndefined();
  worker = await startWorker({
    ownerUrl: db.current.urls.owner,
    authenticatorUrl: db.current.urls.authenticator,
    concurrency: 4,
    keyring: testKeyring(),
    providers: server.clients,
    webhooks: { maxAttempts: 3, disableAfter: 5, retryBaseMs: 50, timeoutMs: 2000, allowPrivateNetworks: true },
    logger: createLogger("silent", 2),
  });
});

afterAll(async () => {
  await worker?.stop();
  await server?.close();
  await new Promise((resolve) => receiver?.close(resolve));
});

/** Emails `to` through the API and waits for the sandbox's copy and the delivery to reach `status`; the delivery and the copy's message id. */
async function emailed(to: string, status: "sent" | "delivered") {
  const contactId = await contactWith(db.current, t, null, { email: to, firstName: "Reader" });
  const messageId = await sendThroughApi(api.current, owner, {
    channel: "email",
    subject: "News",
    body: "The news.",
    htmlBody: '<p>The <a href="https://example.com/news">news</a>.</p>',
    contactIds: [contactId],
  });
  const copy = await waitFor(async () => server.sandbox.messages.find((m) => m.to === to), 30_000, `mail to ${to}`);
  const deliveryId = await waitFor(
    async () => {
      const { rows } = await db.current.root.query(
        "select id, status from herald_public.deliveries where message_id = $1",
        [messageId],
      );
      return rows[0]?.status === status && (rows[0].id as string);
    },
    30_000,
    `the delivery to be ${status}`,
  );
  await server.sandbox.settled();
  await reportsApplied(db.current);
  return { deliveryId, sandboxId: copy.id };
}

const DELIVERY = `query($t: UUID!, $id: UUID!) { deliveryByTenantIdAndRowId(tenantId: $t, rowId: $id) {
  status engagement { opens firstOpenedAt lastOpenedAt clicks firstClickedAt lastClickedAt clickedUrls } } }`;
const delivery = async (id: string) => {
  const { body } = await graphql(api.current, owner, DELIVERY, { t: t.id, id });
  expect(body.errors).toBeUndefined();
  return body.data!.deliveryByTenantIdAndRowId as {
    status: string;
    engagement: Record<string, unknown> | null;
  };
};

const engage = async (request: Parameters<SandboxServer["sandbox"]["engageEmail"]>[0]) => {
  const result = await server.sandbox.engageEmail(request);
  expect(result).toMatchObject({ ok: true, status: 200 });
  await reportsApplied(db.current);
  return result;
};

/** The webhook posts about one delivery, once `n` of them have come. */
const postsFor = (deliveryId: string, n: number) =>
  waitFor(
    async () => {
      const mine = posts.filter((p) => p.data.delivery_id === deliveryId);
      return mine.length >= n && mine;
    },
    15_000,
    `${n} webhook posts`,
  );

describe("opens and clicks of a delivered email", () => {
  let deliveryId: string;
  let sandboxId: string;
  beforeAll(async () => {
    ({ deliveryId, sandboxId } = await emailed("opener@example.com", "delivered"));
  });

  it("appear on the delivery in GraphQL, in usage, and as webhook events; the delivery stays delivered", async () => {
    expect((await delivery(deliveryId)).engagement).toBeNull();
    const to = "opener@example.com";
    await engage({ messageId: sandboxId, to, event: "open" });
    await engage({ messageId: sandboxId, to, event: "open" });
    await engage({ messageId: sandboxId, to, event: "click", url: "https://example.com/news" });
    await engage({ messageId: sandboxId, to, event: "click", url: "https://example.com/more?utm=1" });
    await engage({ messageId: sandboxId, to, event: "click", url: "https://example.com/news" });

    const seen = await delivery(deliveryId);
    expect(seen.status).toBe("delivered");
    expect(seen.engagement).toMatchObject({
      opens: 2,
      clicks: 3,
      // Distinct, the latest first.
      clickedUrls: ["https://example.com/news", "https://example.com/more?utm=1"],
    });
    const e = seen.engagement as Record<string, string>;
    for (const key of ["firstOpenedAt", "lastOpenedAt", "firstClickedAt", "lastClickedAt"]) expect(e[key]).toBeTruthy();
    expect(e.firstOpenedAt! <= e.lastOpenedAt!).toBe(true);

    // Recorded, not applied: an open after `delivered` does not move it.
    const { rows: events } = await db.current.root.query(
      "select event, applied, status, url from herald_public.delivery_events where delivery_id = $1 and event in ('open', 'click') order by received_at",
      [deliveryId],
    );
    expect(events.map((r) => [r.event, r.applied, r.status])).toEqual([
      ["open", false, "delivered"],
      ["open", false, "delivered"],
      ["click", false, "delivered"],
      ["click", false, "delivered"],
      ["click", false, "delivered"],
    ]);
    expect(events.map((r) => r.url)).toEqual([
      null,
      null,
      "https://example.com/news",
      "https://example.com/more?utm=1",
      "https://example.com/news",
    ]);

    // Usage: today's opens and clicks.
    const today = new Date().toISOString().slice(0, 10);
    const { body } = await graphql(
      api.current,
      owner,
      `
        query ($d: Date!) {
          engagementUsage(fromDay: $d, toDay: $d) {
            nodes {
              day
              opens
              clicks
              opened
              clicked
            }
          }
        }
      `,
      { d: today },
    );
    expect(body.errors).toBeUndefined();
    expect(body.data!.engagementUsage.nodes).toEqual([{ day: today, opens: 2, clicks: 3, opened: 1, clicked: 1 }]);

    // The tenant's app heard of each one.
    const heard = await postsFor(deliveryId, 5);
    expect(heard.map((p) => p.type).sort()).toEqual([
      "delivery.clicked",
      "delivery.clicked",
      "delivery.clicked",
      "delivery.opened",
      "delivery.opened",
    ]);
    expect(heard.filter((p) => p.type === "delivery.clicked").map((p) => p.data.url)).toEqual(
      expect.arrayContaining(["https://example.com/news", "https://example.com/more?utm=1"]),
    );
    expect(heard.find((p) => p.type === "delivery.opened")!.data).toMatchObject({
      delivery_id: deliveryId,
      channel: "email",
      event: "open",
      url: null,
    });
  });

  it("counts an event SendGrid repeats (the same sg_event_id) once", async () => {
    const before = (await delivery(deliveryId)).engagement as { opens: number; clicks: number };
    const postsBefore = posts.length;
    await engage({ messageId: sandboxId, to: "opener@example.com", event: "open", repeat: 3 });
    await engage({
      messageId: sandboxId,
      to: "opener@example.com",
      event: "click",
      url: "https://example.com/x",
      repeat: 2,
    });
    expect((await delivery(deliveryId)).engagement).toMatchObject({
      opens: before.opens + 1,
      clicks: before.clicks + 1,
      clickedUrls: ["https://example.com/x", "https://example.com/news", "https://example.com/more?utm=1"],
    });
    await postsFor(deliveryId, 7);
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(posts.length - postsBefore).toBe(2);
  });

  it("changes nothing on a forged or altered event", async () => {
    const before = { rows: await appliedRows(db.current), seen: await delivery(deliveryId) };
    const event = [
      {
        email: "opener@example.com",
        event: "click",
        url: "https://evil.example/",
        timestamp: Math.floor(Date.now() / 1000),
        sg_event_id: "forged-1",
        herald_tenant_id: t.id,
        herald_delivery_id: deliveryId,
      },
    ];
    // Signed by another key.
    const forged = await postSendGrid(api.current, EVENTS, event, { key: sendgridKeyPair().privateKey });
    expect(forged.status).toBe(403);
    // Signed by the sandbox's key, then altered.
    const altered = await postSendGrid(api.current, EVENTS, event, {
      key: server.sandbox.signSendGridEvents,
      signedBody: JSON.stringify([{ ...event[0], url: "https://example.com/" }]),
    });
    expect(altered.status).toBe(403);
    await reportsApplied(db.current);
    expect(await appliedRows(db.current)).toEqual(before.rows);
    expect(await delivery(deliveryId)).toEqual(before.seen);
  });

  it("keeps only the last ten distinct links, and drops a link that is not an http(s) URL", async () => {
    for (let i = 0; i < 12; i++)
      await engage({ messageId: sandboxId, to: "opener@example.com", event: "click", url: `https://example.com/${i}` });
    const signed = [
      {
        email: "opener@example.com",
        event: "click",
        url: "javascript:alert(1)",
        timestamp: Math.floor(Date.now() / 1000),
        sg_event_id: "not-a-link",
        herald_tenant_id: t.id,
        herald_delivery_id: deliveryId,
      },
    ];
    expect((await postSendGrid(api.current, EVENTS, signed, { key: server.sandbox.signSendGridEvents })).status).toBe(
      200,
    );
    await reportsApplied(db.current);
    const seen = (await delivery(deliveryId)).engagement as { clickedUrls: string[]; clicks: number };
    expect(seen.clickedUrls).toEqual(Array.from({ length: 10 }, (_, i) => `https://example.com/${11 - i}`));
    expect(seen.clicks).toBe(3 + 1 + 12 + 1);
  });
});

describe("an open before the delivered event", () => {
  it("makes the delivery delivered, and a later `processed` does not move it back", async () => {
    server.sandbox.setSendGridEventUrl(undefined); // SendGrid says nothing after accepting: the delivery stays `sent`
    let deliveryId: string;
    let sandboxId: string;
    try {
      ({ deliveryId, sandboxId } = await emailed("early@example.com", "sent"));
    } finally {
      server.sandbox.setSendGridEventUrl(`${endpoint.publicUrl}${EVENTS}`);
    }
    await engage({ messageId: sandboxId, to: "early@example.com", event: "open" });
    expect(await delivery(deliveryId)).toMatchObject({ status: "delivered", engagement: { opens: 1, clicks: 0 } });
    const late = [
      {
        email: "early@example.com",
        event: "processed",
        timestamp: Math.floor(Date.now() / 1000),
        sg_event_id: "late-processed",
        herald_tenant_id: t.id,
        herald_delivery_id: deliveryId,
      },
    ];
    expect((await postSendGrid(api.current, EVENTS, late, { key: server.sandbox.signSendGridEvents })).status).toBe(
      200,
    );
    await reportsApplied(db.current);
    expect(await delivery(deliveryId)).toMatchObject({ status: "delivered", engagement: { opens: 1 } });
  });
});

describe("the sandbox's engage endpoint", () => {
  it("refuses what it cannot make: an unknown mail, a click without a link, another event", async () => {
    const post = (body: Record<string, unknown>) =>
      fetch(`${server.url}/sendgrid/engage`, {
        method: "POST",
        headers: { "content-type": "application/json", accept: "application/json" },
        body: JSON.stringify(body),
      });
    expect((await post({ messageId: "nope", to: "x@example.com", event: "open" })).status).toBe(404);
    expect((await post({ messageId: "nope", to: "x@example.com", event: "click" })).status).toBe(400);
    expect((await post({ messageId: "nope", to: "x@example.com", event: "bounce" })).status).toBe(400);
  });
});

describe("the /sandbox page", () => {
  it("has Open and Click buttons under each email, whose form posts make signed events", async () => {
    const copy = server.sandbox.messages.find((m) => m.to === "opener@example.com")!;
    const page = sandboxPage([copy], () => "system", 10, undefined, "", "/sandbox/sendgrid/engage");
    const forms = [...page.matchAll(/<form method="post" action="\/sandbox\/sendgrid\/engage">(.*?)<\/form>/g)].map(
      (f) => f[1]!,
    );
    expect(forms).toHaveLength(2);
    for (const form of forms) {
      expect(form).toContain(`name="messageId" value="${copy.id}"`);
      expect(form).toContain('name="to" value="opener@example.com"');
    }
    expect(forms[1]).toContain('name="url" value="https://example.com/news"'); // the email's first link
    const deliveryId = posts.find((p) => p.type === "delivery.opened")!.data.delivery_id as string;
    const before = (await delivery(deliveryId)).engagement as { opens: number };

    // The Open button, as the browser posts it: back to the page, and one more open.
    const answer = await fetch(`${server.url}/sendgrid/engage`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", accept: "text/html" },
      body: new URLSearchParams({ messageId: copy.id, to: copy.to, event: "open" }),
      redirect: "manual",
    });
    expect(answer.status).toBe(303);
    expect(answer.headers.get("location")).toBe("/sandbox");
    await reportsApplied(db.current);
    expect((await delivery(deliveryId)).engagement).toMatchObject({ opens: before.opens + 1 });
  });
});

describe("herald usage", () => {
  it("prints the month's opens and clicks of the tenant", async () => {
    const { code, stdout, stderr } = await runCli(db.current, ["usage", "--tenant", "engaged"]);
    expect(code, stderr).toBe(0);
    // 2 opens, 1 repeated thrice, the early one and the page's; 3 clicks, 1 repeated, 12 more, and the one whose link was dropped.
    expect(stdout).toContain("Email engagement: 5 opens, 17 clicks");
  });
});
