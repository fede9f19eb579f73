import type pg from "pg";
import type { OutboundWebhookPolicy } from "../config.ts";
import type { Keyring } from "../crypto/keyring.ts";
import type { ProviderClients } from "../providers/clients.ts";
import { asAdmin, enterSession, withSession } from "../db/session.ts";
import { ROLES } from "../db/urls.ts";

/**
 * Tenant work in jobs runs on its own pool that logs in as herald_authenticator
 * (NOINHERIT: no table rights of its own), never on graphile-worker's owner
 * connection. Each job's SQL runs in one transaction as herald_worker inside
 * the job's tenant, under the same policies that confine API requests, holding
 * that tenant's keys and no other's; the settings are transaction-local, so
 * nothing leaks to the next job.
 */

/** When and how `sent` deliveries whose final status is overdue are looked up at the provider (src/messages/status-check.ts). */
export interface StatusCheckPolicy {
  /** A `sent` delivery with no final status this long after it was sent is looked up (and again this long after each look). */
  afterMs: number;
  /** How often the worker queues a check (one job across all processes). */
  intervalMs: number;
}

interface WorkerContext {
  pool: pg.Pool;
  webhooks?: OutboundWebhookPolicy;
  keyring: Keyring;
  providers?: ProviderClients;
  /** Owner connections for herald_private's pacing functions (src/messages/pacing.ts). */
  pacingPool?: pg.Pool;
  /** This process's current id in herald_private.worker_processes (it changes when the process re-registers). */
  processId?: () => string;
  statusCheck?: StatusCheckPolicy;
}

let tenantContext: WorkerContext | undefined;

/** Called by startWorker; tasks reach the pool only through withTenantContext. */
export function setTenantContext(context: WorkerContext | undefined): void {
  tenantContext = context;
}

/** The SDK clients (tenant accounts cached by credential version, and the system's). */
export function providerClients(): ProviderClients {
  if (!tenantContext?.providers) throw new Error("this worker was started without provider clients");
  return tenantContext.providers;
}

export function pacingPool(): pg.Pool {
  if (!tenantContext?.pacingPool) throw new Error("this worker was started without a pacing pool");
  return tenantContext.pacingPool;
}

export function webhookPolicy(): OutboundWebhookPolicy {
  // No guessed policy: a job on a worker that has none fails and is retried by one that does.
  if (!tenantContext?.webhooks) throw new Error("this worker was started without an outbound webhook policy");
  return tenantContext.webhooks;
}

export function statusCheckPolicy(): StatusCheckPolicy {
  if (!tenantContext?.statusCheck) throw new Error("this worker was started without a status check policy");
  return tenantContext.statusCheck;
}

export function workerProcessId(): string {
  if (!tenantContext?.processId) throw new Error("this worker was started without a process registration");
  return tenantContext.processId();
}

/** How long this process may keep using a tenant's keys after they change. */
export function keyCacheTtlMs(): number {
  if (!tenantContext) throw new Error("keyCacheTtlMs used before the worker started");
  return tenantContext.keyring.cacheTtlMs;
}

export async function withTenantContext<T>(
  tenantId: string,
  fn: (client: pg.PoolClient) => Promise<T>,
  options: { freshKeys?: boolean } = {},
): Promise<T> {
  if (!tenantContext) throw new Error("withTenantContext used before the worker started");
  return withWorkerSession(tenantContext.pool, tenantContext.keyring, tenantId, fn, options);
}

/**
 * One transaction as herald_worker in the tenant, with its keys, on a given
 * pool and keyring (jobs, and the webhooks, which name what they act as in
 * `settings`: herald.actor for the audit log).
 */
export async function withWorkerSession<T>(
  pool: pg.Pool,
  keyring: Keyring,
  tenantId: string,
  fn: (client: pg.PoolClient) => Promise<T>,
  options: { freshKeys?: boolean; settings?: Record<string, string> } = {},
): Promise<T> {
  const keys = await keyring.sessionSettings(pool, tenantId, { fresh: options.freshKeys });
  return withSession(pool, { role: ROLES.worker, tenantId, settings: { ...keys, ...options.settings } }, fn);
}

/** One transaction as herald_admin (across tenants, through the admin policies): maintenance tasks. */
export function asAdminSession<T>(fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  if (!tenantContext) throw new Error("asAdminSession used before the worker started");
  return asAdmin(tenantContext.pool, fn);
}

/** Runs `work` in one transaction of the tenant's session on the held connection. */
export type TenantTransaction = <T>(work: (client: pg.PoolClient) => Promise<T>) => Promise<T>;

/**
 * One connection for a whole job that needs several transactions on it (and
 * session-level advisory locks between them): each `transaction` enters the
 * tenant's session afresh. The connection is discarded, not pooled, if it
 * could not be cleaned up (a lock might otherwise outlive the job).
 */
export async function withTenantConnection<T>(
  tenantId: string,
  fn: (transaction: TenantTransaction, client: pg.PoolClient) => Promise<T>,
): Promise<T> {
  if (!tenantContext) throw new Error("withTenantConnection used before the worker started");
  return withWorkerConnection(tenantContext.pool, tenantContext.keyring, tenantId, fn);
}

/** withTenantConnection on a given pool and keyring (benchmarks and tools outside a worker). */
export async function withWorkerConnection<T>(
  pool: pg.Pool,
  keyring: Keyring,
  tenantId: string,
  fn: (transaction: TenantTransaction, client: pg.PoolClient) => Promise<T>,
): Promise<T> {
  const settings = await keyring.sessionSettings(pool, tenantId);
  const client = await pool.connect();
  let clean = true;
  const transaction: TenantTransaction = async (work) => {
    await client.query("begin");
    try {
      await enterSession(client, { role: ROLES.worker, tenantId, settings });
      const result = await work(client);
      await client.query("commit");
      return result;
    } catch (error) {
      await client.query("rollback").catch(() => (clean = false));
      throw error;
    }
  };
  try {
    return await fn(transaction, client);
  } finally {
    await client.query("select pg_advisory_unlock_all()").catch(() => (clean = false));
    client.release(!clean);
  }
}
