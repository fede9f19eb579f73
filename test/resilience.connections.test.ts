import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createAuthenticator } from "../src/auth.ts";
import { loadConfig } from "../src/config.ts";
import { withSession } from "../src/db/session.ts";
import { ROLES } from "../src/db/urls.ts";
import { seedExtraTenant } from "./helpers/fixtures.ts";
import { readyToSend, seedAudience, settled, waitFor } from "./helpers/messaging.ts";
import {
  crashSigns,
  spawnHerald,
  startOwnCluster,
  startRelaySandbox,
  type HeraldProcess,
  type OwnCluster,
  type RelaySandbox,
} from "./helpers/cluster.ts";

/**
 * A server with few connections (max_connections = 30, 3 of them reserved
 * for superusers). Each Herald process asks for HERALD_DB_CONNECTIONS at
 * start: one that cannot fit refuses to start, saying why; and when other
 * clients take the connections Herald's budgets counted on, Herald's
 * processes wait for connections rather than crash (requests get 503 with
 * Retry-After), and finish their work once connections free up.
 *
 * On a cluster of this file's own (embedded, whatever DATABASE_URL says).
 */

let cluster: OwnCluster;
let relay: RelaySandbox;
const processes: HeraldProcess[] = [];

beforeAll(async () => {
  cluster = await startOwnCluster("connections");
  await cluster.reconfigure({ max_connections: 30 });
  relay = await startRelaySandbox();
}, 120_000);

afterAll(async () => {
  await Promise.all(processes.map((p) => p.stop()));
  await relay?.close();
  await cluster?.close();
});

describe("connection budgets", () => {
  it("a process whose budget does not fit in max_connections refuses to start, naming the setting", async () => {
    const api = await spawnHerald(cluster, relay, "start", { HERALD_DB_CONNECTIONS: "14" });
    processes.push(api);
    relay.apiUrl = api.url;
    // 14 + 14 fit in 27; a third process of 14 does not.
    const second = await spawnHerald(cluster, relay, "worker", { HERALD_DB_CONNECTIONS: "12" });
    processes.push(second);
    const third = spawnHerald(cluster, relay, "worker", { HERALD_DB_CONNECTIONS: "14" });
    const error = await third.then(
      () => undefined,
      (e: Error) => e,
    );
    expect(error?.message).toMatch(/exited \(1\)/);
    expect(error?.message).toMatch(/max_connections 30.*HERALD_DB_CONNECTIONS/s);
  }, 90_000);

  it("connections refused for a while: no process exits, requests get 503 with Retry-After, and the broadcast completes once connections free up", async () => {
    const [api, worker] = processes as [HeraldProcess, HeraldProcess];
    const { db } = cluster;
    const t = await seedExtraTenant(db, "crowded");
    const sid = await readyToSend(db, relay, t);
    const audience = await seedAudience(db, t, { count: 300, exchange: 841, list: "everyone" });
    const token = await createAuthenticator(loadConfig(), db.authenticator).sign({
      role: ROLES.member,
      tenant_id: t.id,
      sub: t.ownerId,
    });

    // Another application takes every connection there is and any that frees up
    // (as a login without the superuser's reserve), until told to let go.
    const hogs: pg.Client[] = [];
    let hogging = true;
    const grab = async () => {
      while (hogging) {
        const client = new pg.Client({ connectionString: db.urls.owner, application_name: "hog" });
        client.on("error", () => undefined);
        try {
          await client.connect();
          hogs.push(client);
        } catch (error) {
          expect((error as { code?: string }).code).toBe("53300");
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
      }
    };
    const grabbing = grab();
    // Herald's idle connections close after 10 s, and the hog takes their places.
    await new Promise((resolve) => setTimeout(resolve, 12_000));

    // A request that needs the database: told to come back, not failed.
    const refused = await fetch(`${api.url}/graphql`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: JSON.stringify({ query: "{ currentTenant { name } }" }),
    });
    expect(refused.status).toBe(503);
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThan(0);

    // A broadcast asked for meanwhile (on the superuser's reserved slots): the worker waits for connections.
    const messageId = await withSession(
      db.root,
      { role: ROLES.member, tenantId: t.id, userId: t.ownerId },
      async (c) => {
        const { rows } = await c.query(
          "select id from herald_public.send_message('sms', body => 'Room for one more?', list_ids => array[$1::uuid])",
          [audience.listId],
        );
        return rows[0].id as string;
      },
    );
    await waitFor(
      async () => /refuses or drops connections/.test(worker.output() + api.output()),
      30_000,
      "Herald to be refused a connection",
    );
    const sentWhileFull = relay.sandbox.messages.filter((m) => m.account === sid).length;
    hogging = false;
    await grabbing;
    await Promise.all(hogs.map((c) => c.end()));

    const result = await settled(db, messageId, 90_000);
    const received = relay.sandbox.messages.filter((m) => m.account === sid);
    process.stdout.write(
      `connections refused: ${hogs.length} taken by another client; ${sentWhileFull} sent while full; ${JSON.stringify(result.byStatus)}\n`,
    );
    // Sent, or delivered already (the callbacks): nothing failed, nothing lost.
    expect((result.byStatus.sent ?? 0) + (result.byStatus.delivered ?? 0)).toBe(300);
    expect(new Set(received.map((m) => m.to)).size).toBe(300);
    for (const p of [api, worker]) {
      expect(p.alive(), p.output().slice(-3000)).toBe(true);
      expect(crashSigns(p.output())).toEqual([]);
    }
  }, 150_000);
});
