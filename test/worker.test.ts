import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../src/config.ts";
import { keyringFromConfig } from "../src/crypto/keyring.ts";
import { createLogger } from "../src/logger.ts";
import { startWorker, type WorkerHandle } from "../src/worker/worker.ts";
import { graphql, tokenFor, useApiServer } from "./helpers/api.ts";
import { useTestDatabase, withRootDb } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";

/** insert (through GraphQL) → trigger → graphile-worker job → task as herald_worker → row updated. */

const db = useTestDatabase();
const api = useApiServer(db);
let worker: WorkerHandle;
let a: TenantFixture;
let b: TenantFixture;

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  worker = await startWorker({
    ownerUrl: db.current.urls.owner,
    authenticatorUrl: db.current.urls.authenticator,
    concurrency: 2,
    keyring: keyringFromConfig(loadConfig()),
    logger: createLogger("silent", 2),
  });
});

afterAll(async () => {
  await worker?.stop();
});

async function waitFor<T>(probe: () => Promise<T | null | undefined>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error("timed out waiting for the worker");
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("herald__ping", () => {
  it("a ping queued through the API is answered by the worker inside the tenant", async () => {
    const token = await tokenFor(api.current, a, "member");
    const queued = await graphql(
      api.current,
      token,
      `
        mutation {
          ping(input: {}) {
            result
          }
        }
      `,
    );
    const pingId = queued.body.data!.ping.result as string;
    expect(pingId).toMatch(/^[0-9a-f-]{36}$/);

    const answeredAt = await waitFor(async () => {
      const { body } = await graphql(
        api.current,
        token,
        `
          query ($id: UUID!) {
            pingAnsweredAt(pingId: $id)
          }
        `,
        { id: pingId },
      );
      return body.data!.pingAnsweredAt as string | null;
    });
    expect(new Date(answeredAt).getTime()).toBeGreaterThan(0);

    await withRootDb(db.current, async (c) => {
      const { rows } = await c.query("select tenant_id, answered_by from herald_hidden.pings where id = $1", [pingId]);
      expect(rows[0]).toMatchObject({ tenant_id: a.id });
      expect(rows[0].answered_by).toMatch(/:\d+$/);
    });
  });

  it("the seeded pings of both tenants are answered, each in its own tenant", async () => {
    await waitFor(async () =>
      withRootDb(db.current, async (c) => {
        const { rows } = await c.query(
          "select count(*)::int as n from herald_hidden.pings where id = any($1) and answered_at is not null",
          [[a.pingId, b.pingId]],
        );
        return rows[0].n === 2;
      }),
    );
    // The worker drains the queue (the fixtures' other jobs included) and
    // leaves nothing behind: a failed job would stay, with its error.
    // (The periodic sweep may tick meanwhile: it is not the worker's leftover.)
    const leftovers = () =>
      withRootDb(
        db.current,
        async (c) =>
          (
            await c.query(
              "select task_identifier, last_error from graphile_worker.jobs where task_identifier <> 'deliveries__sweep'",
            )
          ).rows,
      );
    const settledQueue = await waitFor(async () => {
      const jobs = await leftovers();
      return jobs.length === 0 || jobs.some((job) => job.last_error !== null) ? { jobs } : null;
    });
    expect(settledQueue.jobs).toEqual([]);
  });
});
