import pg from "pg";
import type { Logger } from "../logger.ts";

/**
 * Connection budgets. Every Herald process opens at most HERALD_DB_CONNECTIONS
 * connections to PostgreSQL, whatever it runs (API, worker, or both); its
 * pools are carved out of that one number here, so that
 *
 *     processes × HERALD_DB_CONNECTIONS ≤ max_connections − reserved
 *
 * is the whole sizing rule (docs/production.md). Pools close idle connections,
 * so a quiet process holds far fewer.
 */

/** The smallest budget a process running both the API and a worker can work with. */
export const MIN_CONNECTIONS = 12;

export interface ApiPools {
  /** GraphQL, login, authentication (herald_authenticator). */
  requests: number;
  /** Health checks (herald_owner). */
  owner: number;
  /** Providers' callbacks, kept apart so a flood of them cannot starve requests. */
  webhooks: number;
}

export interface WorkerPools {
  /** graphile-worker's queue (one of them holds LISTEN for new jobs). */
  queue: number;
  /** Tenant work inside jobs (herald_authenticator → herald_worker). */
  tenant: number;
  /** Pacing reservations (herald_owner). */
  pacing: number;
  /** The worker registry: one connection holding the process's advisory lock, one for its statements. */
  registry: number;
}

export interface ConnectionBudget {
  total: number;
  api?: ApiPools;
  worker?: WorkerPools;
}

function apiPools(share: number): ApiPools {
  const owner = 1;
  const webhooks = Math.max(1, Math.floor(share * 0.3));
  return { requests: share - owner - webhooks, owner, webhooks };
}

function workerPools(share: number): WorkerPools {
  const registry = 2;
  const pacing = share >= 16 ? 2 : 1;
  const queue = Math.max(2, Math.floor(share * 0.25));
  return { queue, tenant: share - registry - pacing - queue, pacing, registry };
}

/** Splits `total` among the pools of a process that runs the API, a worker, or both. */
export function connectionBudget(total: number, runs: { api: boolean; worker: boolean }): ConnectionBudget {
  if (total < MIN_CONNECTIONS)
    throw new Error(`a process needs at least ${MIN_CONNECTIONS} connections (HERALD_DB_CONNECTIONS)`);
  if (runs.api && runs.worker) {
    // The worker's sends hold connections longer than requests do: it gets the larger share.
    const api = Math.max(5, Math.floor(total * 0.4));
    return { total, api: apiPools(api), worker: workerPools(total - api) };
  }
  return { total, api: runs.api ? apiPools(total) : undefined, worker: runs.worker ? workerPools(total) : undefined };
}

export class ConnectionBudgetError extends Error {
  override name = "ConnectionBudgetError";
}

/** `herald worker budget=20`: how a running Herald process announces its budget in pg_stat_activity. */
export const budgetApplicationName = (total: number) => `herald registry budget=${total}`;

/**
 * At start: do the budgets of the Herald processes already running, plus this
 * one's, fit in the server's max_connections (less the slots reserved for
 * superusers)? If not, refuse to start with a message that says what to
 * change; rather that than processes that fight over connections later.
 * Clients other than Herald only warn: they may be gone in a minute.
 */
export async function checkConnectionBudget(adminUrl: string, total: number, logger: Logger): Promise<void> {
  const client = new pg.Client({ connectionString: adminUrl, application_name: "herald budget check" });
  client.on("error", () => undefined);
  await client.connect();
  try {
    const { rows } = await client.query<{
      max: number;
      reserved: number;
      herald: number;
      processes: number;
      others: number;
    }>(
      `select current_setting('max_connections')::int as max,
              current_setting('superuser_reserved_connections')::int
                + coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0) as reserved,
              coalesce(sum(substring(application_name from 'budget=(\\d+)')::int) filter (where application_name like 'herald registry budget=%'), 0)::int as herald,
              (count(*) filter (where application_name like 'herald registry budget=%'))::int as processes,
              (count(*) filter (where backend_type = 'client backend' and application_name not like 'herald%' and pid <> pg_backend_pid()))::int as others
         from pg_stat_activity`,
    );
    const { max, reserved, herald, processes, others } = rows[0]!;
    const usable = max - reserved;
    if (herald + total > usable) {
      throw new ConnectionBudgetError(
        `PostgreSQL accepts ${usable} connections (max_connections ${max} less ${reserved} reserved), ` +
          `but ${processes} running Herald process${processes === 1 ? "" : "es"} may use ${herald} and this one ${total} more (HERALD_DB_CONNECTIONS). ` +
          `Lower HERALD_DB_CONNECTIONS, run fewer processes, or raise max_connections.`,
      );
    }
    if (herald + total + others > usable) {
      logger.warn(
        { usable, herald, thisProcess: total, others },
        "other clients hold connections that Herald's budgets may need: at peak, some of Herald's connections will be refused (and retried)",
      );
    }
  } finally {
    await client.end().catch(() => undefined);
  }
}
