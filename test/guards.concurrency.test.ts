import http from "node:http";
import express from "express";
import { afterAll, beforeAll, expect, it } from "vitest";
import { tenantConcurrency } from "../src/api/tenant-concurrency.ts";

/**
 * The per-tenant in-flight limit in front of /graphql, on its own: a tenant's
 * requests beyond its slots wait in a short queue, then get 429 with
 * Retry-After; another tenant's request goes straight through meanwhile. The
 * handler behind it holds each request until the test releases it.
 */

const held = new Map<string, () => void>();
let server: http.Server;
let url: string;

beforeAll(async () => {
  const app = express();
  app.use((req, _res, next) => {
    req.heraldIdentity = { kind: "api_key", tenantId: String(req.headers["x-tenant"]), pgSettings: {} as never };
    next();
  });
  app.use(tenantConcurrency({ maxInFlight: 1, maxQueued: 1, queueWaitMs: 300 }));
  app.get("/work/:id", (req, res) => {
    const id = req.params.id;
    held.set(id, () => {
      held.delete(id);
      res.json({ done: id });
    });
  });
  server = http.createServer(app);
  await new Promise<void>((resolve) => server.listen(0, resolve));
  url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});

afterAll(async () => {
  for (const release of held.values()) release();
  await new Promise((resolve) => server.close(resolve));
});

const request = (tenant: string, id: string) => fetch(`${url}/work/${id}`, { headers: { "x-tenant": tenant } });
const until = async (condition: () => boolean) => {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 5));
};

it("queues a tenant's requests beyond its slots, refuses beyond its queue, and lets another tenant through", async () => {
  const first = request("a", "a1");
  await until(() => held.has("a1"));
  const queued = request("a", "a2");
  // The queue (one place) is full: refused at once, with when to retry.
  const refused = await request("a", "a3");
  expect(refused.status).toBe(429);
  expect(refused.headers.get("retry-after")).toBe("1");
  expect(((await refused.json()) as { error: { code: string } }).error.code).toBe("TOO_MANY_CONCURRENT_REQUESTS");
  // Another tenant has slots of its own.
  const other = request("b", "b1");
  await until(() => held.has("b1"));
  held.get("b1")!();
  expect((await other).status).toBe(200);
  // The first of tenant A's ends: the queued one takes its slot.
  expect(held.has("a2")).toBe(false);
  held.get("a1")!();
  expect((await first).status).toBe(200);
  await until(() => held.has("a2"));
  held.get("a2")!();
  expect((await queued).status).toBe(200);
});

it("refuses a request that waited in the queue longer than allowed", async () => {
  const first = request("c", "c1");
  await until(() => held.has("c1"));
  const waited = await request("c", "c2");
  expect(waited.status).toBe(429);
  expect(held.has("c2")).toBe(false);
  held.get("c1")!();
  expect((await first).status).toBe(200);
  // Its slot is free again.
  const next = request("c", "c3");
  await until(() => held.has("c3"));
  held.get("c3")!();
  expect((await next).status).toBe(200);
});
