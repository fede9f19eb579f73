import pg from "pg";
import type { Logger } from "../logger.ts";

/**
 * The database going away (a restart, a failover, a server refusing
 * connections) is an outage to wait out, not a reason for a process to die.
 * This module tells such errors apart from real ones, and builds the pools
 * every Herald process uses: each handles errors on idle *and* checked-out
 * clients (an unhandled `'error'` event on a client would end the process),
 * releases idle connections, and — where asked — waits for the server to come
 * back before giving up on a connection.
 */

/** SQLSTATEs that mean "the server is not there for you right now", not "your statement is wrong". */
const UNAVAILABLE_SQLSTATES = new Set([
  "57P01", // admin_shutdown: terminating connection due to administrator command
  "57P02", // crash_shutdown
  "57P03", // cannot_connect_now: the database system is starting up / shutting down
  "53300", // too_many_connections: sorry, too many clients already
  "53400", // configuration_limit_exceeded (per-role/per-database connection limits)
]);

/** Socket-level failures on the way to the server. */
const UNAVAILABLE_SOCKET_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EPIPE",
  "EAI_AGAIN",
]);

/** pg's own errors for a lost connection carry no code: their messages are stable. */
const UNAVAILABLE_MESSAGES = [
  /^Connection terminated/,
  /Client has encountered a connection error and is not queryable/,
  /^Client was closed and is not queryable/,
  /timeout exceeded when trying to connect/,
];

/** This process's own pool ran dry (every connection busy): unavailable for now, but nothing is wrong with the server. */
const POOL_EXHAUSTED = /timeout exceeded when trying to connect/;

/**
 * Whether `error` means the database cannot be reached or refuses connections
 * right now (restart, shutdown, connection limits, network): worth retrying
 * after a few seconds, and worth a 503 with Retry-After rather than a 500.
 */
export function isDatabaseUnavailable(error: unknown): boolean {
  if (typeof error !== "object" || error === null) return false;
  if (error instanceof AggregateError) return error.errors.some(isDatabaseUnavailable);
  const { code, message } = error as { code?: unknown; message?: unknown };
  if (typeof code === "string") {
    if (UNAVAILABLE_SQLSTATES.has(code) || UNAVAILABLE_SOCKET_CODES.has(code) || code.startsWith("08")) return true;
  }
  return typeof message === "string" && UNAVAILABLE_MESSAGES.some((pattern) => pattern.test(message));
}

/** Seconds a client should wait before trying again while the database is unavailable. */
export const RETRY_AFTER_SECONDS = 5;

/**
 * Whether this process can currently reach the database, as its pools last
 * saw it: for /healthz and for answering 503 at once instead of queueing.
 */
export const databaseState = {
  /** Since when connections have been failing (undefined: the last attempt worked). */
  unavailableSince: undefined as Date | undefined,
  lastError: undefined as string | undefined,
  failed(error: unknown) {
    this.unavailableSince ??= new Date();
    const code = (error as { code?: string }).code;
    this.lastError = code ?? "connection lost";
  },
  succeeded() {
    this.unavailableSince = undefined;
    this.lastError = undefined;
  },
};

export interface PoolOptions {
  connectionString: string;
  max: number;
  /** Shown in pg_stat_activity (`herald <name>`): which Herald pool holds a connection. */
  name: string;
  logger: Logger;
  /**
   * How long `connect()` keeps retrying while the server is unavailable
   * (restarting, refusing connections) before it gives up: the caller waits
   * out a short outage instead of failing. 0: fail at once.
   */
  waitForServerMs?: number;
  /** How long a request may wait for one of this pool's connections when all are busy (no limit by default). */
  checkoutTimeoutMs?: number;
  /** Idle connections are closed after this long, so a quiet process holds few (default 10 s). */
  idleTimeoutMs?: number;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

type ConnectCallback = (error: Error | undefined, client?: pg.PoolClient, done?: (release?: unknown) => void) => void;

/**
 * A pg.Pool that survives the server going away: error handlers on the pool
 * and on every client it creates (checked out or idle), and a `connect()`
 * that waits out an unavailable server for up to `waitForServerMs`. Queries
 * already running when the server goes fail as usual; their callers decide.
 */
export class ResilientPool extends pg.Pool {
  readonly waitForServerMs: number;
  readonly #name: string;
  readonly #logger: Logger;
  /** When this pool last said it is waiting for the server (said at most every few seconds). */
  #lastWaitLog = 0;

  constructor(options: PoolOptions) {
    super({
      connectionString: options.connectionString,
      max: options.max,
      idleTimeoutMillis: options.idleTimeoutMs ?? 10_000,
      connectionTimeoutMillis: options.checkoutTimeoutMs,
      application_name: `herald ${options.name}`,
      keepAlive: true,
    });
    this.waitForServerMs = options.waitForServerMs ?? 0;
    const { logger, name } = options;
    this.#name = name;
    this.#logger = logger;
    // An idle client whose server went away: pg removes it from the pool.
    this.on("error", (error) => {
      databaseState.failed(error);
      logger.warn(
        { pool: name, err: { message: error.message, code: (error as { code?: string }).code } },
        "an idle database connection was lost",
      );
    });
    // A checked-out client: its current or next query fails, and its holder
    // decides. Without this listener the 'error' event would end the process.
    this.on("connect", (client) => {
      client.on("error", (error) => {
        databaseState.failed(error);
        logger.warn(
          { pool: name, err: { message: error.message, code: (error as { code?: string }).code } },
          "a database connection in use was lost",
        );
      });
    });
  }

  // pg-pool calls connect() with a callback itself (pool.query), and callers use the promise.
  override connect(): Promise<pg.PoolClient>;
  override connect(callback: ConnectCallback): void;
  override connect(callback?: ConnectCallback): Promise<pg.PoolClient> | void {
    const attempt = this.connectWaiting();
    if (!callback) return attempt;
    attempt.then(
      (client) => callback(undefined, client, (release) => client.release(release as boolean | Error | undefined)),
      (error: Error) => callback(error),
    );
  }

  private async connectWaiting(): Promise<pg.PoolClient> {
    const deadline = Date.now() + this.waitForServerMs;
    for (let delay = 250; ; delay = Math.min(delay * 2, 2_000)) {
      try {
        const client = await super.connect();
        databaseState.succeeded();
        return client;
      } catch (error) {
        // Our own pool being full is not an outage of the server: no retrying that.
        const serverSide = isDatabaseUnavailable(error) && !POOL_EXHAUSTED.test((error as Error).message);
        if (serverSide) databaseState.failed(error);
        if (!serverSide || this.ending || Date.now() + delay > deadline) throw error;
        if (Date.now() - this.#lastWaitLog > 5_000) {
          this.#lastWaitLog = Date.now();
          const { code, message } = error as { code?: string; message: string };
          this.#logger.warn(
            { pool: this.#name, err: { code, message } },
            "the database refuses or drops connections; waiting for it",
          );
        }
        await sleep(delay);
      }
    }
  }
}

export const createPool = (options: PoolOptions): ResilientPool => new ResilientPool(options);
