import dns from "node:dns";
import http from "node:http";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { loadConfig } from "../src/config.ts";
import { isPublicAddress, postJson } from "../src/tenant-webhooks/post.ts";

/**
 * src/tenant-webhooks/post.ts, the one way Herald posts to a tenant's URL: what it
 * refuses to reach (outside development and tests), and the deadline on the
 * whole exchange. End to end through the worker: outbound.test.ts.
 */

/** A local endpoint that counts what reaches it: nothing should. */
let requests = 0;
let receiver: http.Server;
let receiverUrl: string;
beforeAll(async () => {
  receiver = http.createServer((_req, res) => {
    requests += 1;
    res.end();
  });
  await new Promise<void>((resolve) => receiver.listen(0, "127.0.0.1", resolve));
  receiverUrl = `http://127.0.0.1:${(receiver.address() as { port: number }).port}`;
});
afterAll(async () => {
  await new Promise((resolve) => receiver?.close(resolve));
});

describe("in production, a tenant's URL may not reach Herald's own network", () => {
  it("refuses plain http, and addresses that are not public, before sending anything", async () => {
    const policy = { allowPrivateNetworks: false, timeoutMs: 1000 };
    expect(await postJson(`${receiverUrl}/a`, "{}", {}, policy)).toEqual({
      kind: "refused",
      error: "endpoints must use https",
    });
    // At the receiver's own port: only the policy stands between the post and it.
    const port = new URL(receiverUrl).port;
    for (const host of ["127.0.0.1", "localhost", "[::1]", "[::ffff:7f00:1]", "[::7f00:1]"]) {
      expect(await postJson(`https://${host}:${port}/a`, "{}", {}, policy), host).toMatchObject({ kind: "refused" });
    }
    expect(requests).toBe(0);
    for (const address of [
      "127.0.0.1",
      "10.1.2.3",
      "172.16.0.1",
      "192.168.1.1",
      "169.254.169.254",
      "::1",
      "fd00::1",
      "::ffff:10.0.0.1",
      "0.0.0.0",
      "64:ff9b::a9fe:a9fe",
      "fec0::1",
      "2002:0a00:0001::1",
      "2002:7f00:1::1",
      "::7f00:1",
      "::ffff:7f00:1",
      "::ffff:a9fe:a9fe",
      "::ffff:0:7f00:1",
      "192.88.99.1",
    ]) {
      expect(isPublicAddress(address), address).toBe(false);
    }
    for (const address of ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2002:0808:0808::1", "::ffff:808:808"])
      expect(isPublicAddress(address), address).toBe(true);
  });

  it("refuses a name any of whose addresses is not public, not just its first", async () => {
    const lookup = vi.spyOn(dns, "lookup").mockImplementation(((
      _host: string,
      _options: unknown,
      callback: (e: null, a: dns.LookupAddress[]) => void,
    ) =>
      callback(null, [
        { address: "93.184.216.34", family: 4 },
        { address: "10.0.0.7", family: 4 },
      ])) as never);
    try {
      expect(
        await postJson("https://rebinding.example/hook", "{}", {}, { allowPrivateNetworks: false, timeoutMs: 1000 }),
      ).toEqual({
        kind: "refused",
        error: "rebinding.example resolves to a non-public address",
      });
    } finally {
      lookup.mockRestore();
    }
  });

  it("is off unless Herald runs for development or tests", () => {
    const policy = (env: Record<string, string>) =>
      loadConfig({ ...process.env, NODE_ENV: "", DATABASE_URL: "", ...env }).outboundWebhooks.allowPrivateNetworks;
    expect(policy({ NODE_ENV: "production" })).toBe(false);
    expect(policy({ NODE_ENV: "staging" })).toBe(false);
    expect(policy({ DATABASE_URL: "postgres://db.internal/herald" })).toBe(false);
    expect(policy({ NODE_ENV: "development" })).toBe(true);
    expect(policy({})).toBe(true); // the embedded database: a developer's machine
    expect(policy({ NODE_ENV: "production", HERALD_WEBHOOK_ALLOW_PRIVATE: "true" })).toBe(true);
  });

  it("cuts off an endpoint that answers slowly, byte by byte: the deadline covers the whole exchange", async () => {
    const drip = http.createServer((_req, res) => {
      res.writeHead(200, { "content-type": "text/plain" });
      const timer = setInterval(() => res.write("."), 100);
      res.on("close", () => clearInterval(timer));
    });
    await new Promise<void>((resolve) => drip.listen(0, "127.0.0.1", resolve));
    try {
      const started = Date.now();
      const result = await postJson(
        `http://127.0.0.1:${(drip.address() as { port: number }).port}/`,
        "{}",
        {},
        { allowPrivateNetworks: true, timeoutMs: 700 },
      );
      expect(result).toEqual({ kind: "failed", error: "no complete answer within 700 ms" });
      expect(Date.now() - started).toBeLessThan(2000);
    } finally {
      drip.closeAllConnections();
      await new Promise((resolve) => drip.close(resolve));
    }
  });
});
