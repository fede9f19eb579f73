import type pg from "pg";
import { afterEach, beforeAll, expect, it } from "vitest";
import { LARGE_OPERATION_NODES, LARGE_OPERATION_WAIT_MS, STATEMENT_TIMEOUT } from "../src/api/limits.ts";
import { graphql, useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";

/**
 * The limits that act while an operation waits: a large operation that waits
 * for its turn longer than the limit gets SERVER_BUSY, and a statement that
 * PostgreSQL cancels at `statement_timeout` is QUERY_TIMEOUT, not INTERNAL.
 * A lock on the contacts table, held by the test, makes a tenant's query slow.
 */

const db = useTestDatabase();
const api = useApiServer(db);
let a: TenantFixture;
let b: TenantFixture;
let locker: pg.PoolClient | undefined;

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
});

afterEach(async () => {
  await locker?.query("rollback");
  locker?.release();
  locker = undefined;
});

/** Holds an exclusive lock on the contacts table until the test ends: every query of it waits. */
async function lockContacts(): Promise<void> {
  locker = await db.current.root.connect();
  await locker.query("begin");
  await locker.query("lock table herald_public.contacts in access exclusive mode");
}

/** Resolves once some session of the test database waits for a lock. */
async function someoneWaitsForTheLock(): Promise<void> {
  for (;;) {
    const { rows } = await db.current.root.query<{ waiting: number }>(
      `select count(*)::int as waiting from pg_stat_activity
        where datname = current_database() and wait_event_type = 'Lock'`,
    );
    if (rows[0]!.waiting > 0) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** 1,000 contacts and 2 tags each: 3,000 nodes, a large operation (over LARGE_OPERATION_NODES). */
const LARGE = `{ allContacts(first: 1000) { nodes { contactTags(first: 2) { nodes { tag { name } } } } } }`;

it(`a large operation that waits more than ${LARGE_OPERATION_WAIT_MS / 1000} s for its turn gets SERVER_BUSY`, async () => {
  expect(1000 + 1000 * 2).toBeGreaterThan(LARGE_OPERATION_NODES);
  await lockContacts();
  // Tenant A's large operation takes the lane, and waits for the lock.
  const first = graphql(api.current, a.apiKeySecret, LARGE);
  await someoneWaitsForTheLock();
  // Tenant B's waits for the lane, and gives up after the limit.
  const started = performance.now();
  const second = await graphql(api.current, b.apiKeySecret, LARGE);
  const waited = performance.now() - started;
  expect(second.body.data ?? undefined).toBeUndefined();
  expect(second.body.errors?.[0]?.extensions?.code).toBe("SERVER_BUSY");
  expect(waited).toBeGreaterThanOrEqual(LARGE_OPERATION_WAIT_MS - 50);
  // The lock goes: the first is answered, and the lane is free again.
  await locker!.query("rollback");
  expect((await first).body.errors).toBeUndefined();
  const third = await graphql(api.current, b.apiKeySecret, LARGE);
  expect(third.body.errors).toBeUndefined();
  expect(third.body.data!.allContacts.nodes.length).toBeGreaterThan(0);
});

it(`a statement cancelled at statement_timeout (${STATEMENT_TIMEOUT.member}) is QUERY_TIMEOUT`, async () => {
  await lockContacts();
  const { body } = await graphql(
    api.current,
    a.apiKeySecret,
    `
      {
        allContacts(first: 1) {
          nodes {
            rowId
          }
        }
      }
    `,
  );
  expect(body.errors?.[0]?.extensions?.code).toBe("QUERY_TIMEOUT");
  expect(body.errors?.[0]?.message).toMatch(/ran too long/);
  // No SQL or internals in what the client sees.
  expect(JSON.stringify(body)).not.toMatch(/canceling statement|statement_timeout/);
}, 30_000);
