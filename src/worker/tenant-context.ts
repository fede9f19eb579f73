import type pg from "pg";
import { withSession } from "../db/session.ts";
import { ROLES } from "../db/urls.ts";

/**
 * Tenant work in jobs runs on its own pool that logs in as herald_authenticator
 * (NOINHERIT: no table rights of its own), never on graphile-worker's owner
 * connection. Each job's SQL runs in one transaction as herald_worker inside
 * the job's tenant, under the same policies that confine API requests; the
 * settings are transaction-local, so nothing leaks to the next job.
 */

let tenantPool: pg.Pool | undefined;

/** Called by startWorker; tasks reach the pool only through withTenantContext. */
export function setTenantPool(pool: pg.Pool | undefined): void {
  tenantPool = pool;
}

export function withTenantContext<T>(tenantId: string, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  if (!tenantPool) throw new Error("withTenantContext used before the worker started");
  return withSession(tenantPool, { role: ROLES.worker, tenantId }, fn);
}
