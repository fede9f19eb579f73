import { randomBytes } from "node:crypto";
import pg from "pg";
import { afterAll, beforeAll, inject } from "vitest";
import { loadConfig } from "../../src/config.ts";
import { bootstrapDatabase, dropDatabase } from "../../src/db/bootstrap.ts";
import { deriveUrls, type DatabaseUrls } from "../../src/db/database.ts";
import { enterSession } from "../../src/db/session.ts";
import { withDatabase as urlWithDatabase, type ROLES } from "../../src/db/urls.ts";
import { createLogger } from "../../src/logger.ts";

/**
 * Per-file test databases and the helpers of the graphile/starter tradition: `withRootDb` (superuser,
 * bypasses RLS, for arranging data) and `asRole` (the real request
 * roles through the authenticator). Both run in a transaction that is rolled back.
 */

export interface TestDb {
  urls: DatabaseUrls;
  root: pg.Pool;
  authenticator: pg.Pool;
}

async function cloneTemplate(): Promise<TestDb> {
  const config = loadConfig();
  const adminMaintenance = inject("adminUrl");
  const name = `herald_test_${randomBytes(5).toString("hex")}`;
  const logger = createLogger("warn", 2);
  const adminUrl = urlWithDatabase(adminMaintenance, name);
  for (let attempt = 0; ; attempt++) {
    try {
      await bootstrapDatabase({
        adminUrl,
        database: name,
        passwords: config.rolePasswords,
        logger,
        template: inject("templateDatabase"),
      });
      break;
    } catch (error) {
      // 55006: the template is briefly in use by a parallel clone; try again.
      if ((error as { code?: string }).code !== "55006" || attempt > 20) throw error;
      await new Promise((r) => setTimeout(r, 100 + Math.random() * 200));
    }
  }
  const urls = deriveUrls(adminUrl, config.rolePasswords);
  return {
    urls,
    root: new pg.Pool({ connectionString: urls.admin, max: 4 }),
    authenticator: new pg.Pool({ connectionString: urls.authenticator, max: 6 }),
  };
}

/** A fresh database for this test file, dropped after it. */
export function useTestDatabase(): { current: TestDb } {
  const holder = {} as { current: TestDb };
  beforeAll(async () => {
    holder.current = await cloneTemplate();
  });
  afterAll(async () => {
    const db = holder.current;
    if (!db) return;
    await Promise.all([db.root.end(), db.authenticator.end()]);
    await dropDatabase(db.urls.adminMaintenance, db.urls.database);
  });
  return holder;
}

/** Run `fn` in a transaction that always rolls back. */
async function rollbackOnly<T>(
  pool: pg.Pool,
  setup: (c: pg.PoolClient) => Promise<unknown>,
  fn: (c: pg.PoolClient) => Promise<T>,
): Promise<T> {
  const client = await pool.connect();
  try {
    await client.query("begin");
    await setup(client);
    return await fn(client);
  } finally {
    await client.query("rollback").catch(() => undefined);
    client.release();
  }
}

export const withRootDb = <T>(db: TestDb, fn: (c: pg.PoolClient) => Promise<T>) =>
  rollbackOnly(db.root, async () => undefined, fn);

export type RequestRole = typeof ROLES.member | typeof ROLES.admin | typeof ROLES.worker;

/** As a request role with the given claims, exactly as PostGraphile sets them. */
export const asRole = <T>(
  db: TestDb,
  context: { role: RequestRole; tenantId?: string; userId?: string; settings?: Record<string, string> },
  fn: (c: pg.PoolClient) => Promise<T>,
) => rollbackOnly(db.authenticator, (c) => enterSession(c, context), fn);

/** Runs `fn` inside a savepoint and returns the error it raised (or undefined). */
export async function expectPgError(
  client: pg.PoolClient,
  fn: () => Promise<unknown>,
): Promise<{ code?: string; message: string; detail?: string } | undefined> {
  await client.query("savepoint attempt");
  try {
    await fn();
    await client.query("release savepoint attempt");
    return undefined;
  } catch (error) {
    await client.query("rollback to savepoint attempt");
    return error as { code?: string; message: string; detail?: string };
  }
}
