import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import pg from "pg";
import type { WorkerEvents } from "graphile-worker";
import { createPool } from "../db/availability.ts";
import type { Logger } from "../logger.ts";

/**
 * graphile-worker leaves the jobs of a worker that died without stopping
 * (kill -9, a lost host) locked for four hours. Herald's worker processes
 * register their graphile-worker ids in herald_private.worker_processes and
 * hold a session advisory lock for as long as they live; the lock goes with
 * the process's connection. Every process sweeps at start and then
 * periodically: an entry whose lock it can take is a dead process, whose jobs
 * are unlocked at once (graphile_worker.force_unlock_workers) and run again.
 *
 * A database restart drops every connection, and with them every process's
 * lock. A process that loses its registry connection therefore reconnects,
 * takes its lock again and registers afresh, under a new process id: the jobs
 * it was running died with their connections, so the deliveries they had
 * claimed under the old id now belong to a process that is gone, and are
 * reconciled at once (looked up at the provider, never blindly resent) rather
 * than waited for. It holds back its own sweeps for a grace period, so that
 * the processes coming back together do not take each other for dead.
 * Jobs whose completion could not be written while the server was away stay
 * locked by this process though none runs: those are released here too.
 */

const SWEEP_INTERVAL_MS = 30_000;
/** After a reconnect, how long this process waits before taking anyone else for dead. */
const RECONNECT_GRACE_MS = 20_000;
/** How often this process looks for jobs locked by it that none of its workers runs. */
const ORPHAN_CHECK_MS = 10_000;

export type RegistryState = "registered" | "reconnecting" | "stopped";

export interface ProcessRegistration {
  /** This process's current id in herald_private.worker_processes (a new one after each reconnect). */
  processId(): string;
  /** Unlocks the jobs of dead processes now; returns how many processes were recovered. */
  sweep(): Promise<number>;
  /** Whether this process holds its registry lock (for /healthz). */
  state(): RegistryState;
  /** Shutting down: a lost connection from now on is no reason to reconnect. */
  stopping(): void;
  stop(): Promise<void>;
}

export async function registerWorkerProcess(options: {
  ownerUrl: string;
  events: WorkerEvents;
  logger: Logger;
  /** This process's connection budget, announced in pg_stat_activity for the next process's start-up check. */
  budget?: number;
}): Promise<ProcessRegistration> {
  const { logger } = options;
  const newProcessId = () => `${hostname()}:${process.pid}:${randomBytes(4).toString("hex")}`;
  let processId = newProcessId();
  const lockKey = randomBytes(8).readBigInt64BE().toString();
  const onError = (error: Error) =>
    logger.warn({ err: { message: error.message } }, "worker registry statement failed");
  // Everything but the lock on a pool, so no statement lands inside a sweep's transaction.
  const pool = createPool({ connectionString: options.ownerUrl, max: 1, name: "registry", logger, waitForServerMs: 0 });
  const workerIds: string[] = [];
  /** Jobs this process's workers are running now (graphile-worker's events). */
  const running = new Set<string>();
  options.events.on("job:start", ({ job }) => running.add(String(job.id)));
  options.events.on("job:complete", ({ job }) => running.delete(String(job.id)));

  let state: RegistryState = "reconnecting";
  let stopping = false;
  let holder: pg.Client | undefined;
  let sweepsFrom = 0;
  let registeredOnce = false;

  /** Its own connection: the lock must live exactly as long as this process's registration. */
  const acquire = async () => {
    const client = new pg.Client({
      connectionString: options.ownerUrl,
      keepAlive: true,
      // Exempt from an idle-session timeout: it is idle by design.
      options: "-c idle_session_timeout=0",
      application_name: options.budget ? `herald registry budget=${options.budget}` : "herald registry",
    });
    client.on("error", (error) => lost(client, error));
    client.on("end", () => lost(client, new Error("the connection ended")));
    const previous = holder === undefined && state === "reconnecting" && registeredOnce ? processId : undefined;
    const id = previous ? newProcessId() : processId;
    try {
      await client.connect();
      await client.query("select pg_advisory_lock($1::bigint)", [lockKey]);
      // The old entry (if a sweep has not taken it already) gives way to the new one.
      await client.query("begin");
      await client.query("delete from herald_private.worker_processes where process_id = $1", [previous ?? ""]);
      await client.query(
        "insert into herald_private.worker_processes (process_id, lock_key, worker_ids) values ($1, $2, $3)",
        [id, lockKey, workerIds],
      );
      await client.query("commit");
    } catch (error) {
      await client.end().catch(() => undefined);
      throw error;
    }
    holder = client;
    processId = id;
    registeredOnce = true;
    state = "registered";
  };

  /** Losing this connection loses the lock: get it back, keeping the same process id. */
  const lost = (client: pg.Client, error: Error) => {
    if (stopping || client !== holder) return;
    holder = undefined;
    state = "reconnecting";
    logger.error(
      { err: { message: error.message, code: (error as { code?: string }).code } },
      "lost the worker registry connection; reconnecting",
    );
    void client.end().catch(() => undefined);
    void reconnect();
  };

  const reconnect = async () => {
    for (let delay = 250; !stopping; delay = Math.min(delay * 2, 2_000)) {
      await new Promise((resolve) => setTimeout(resolve, delay));
      if (stopping) return;
      try {
        await acquire();
        sweepsFrom = Date.now() + RECONNECT_GRACE_MS;
        logger.info({ process: processId }, "worker registry connection restored; registered afresh");
        return;
      } catch (error) {
        logger.debug({ err: { message: (error as Error).message } }, "worker registry still unreachable");
      }
    }
  };

  const pending = new Set<Promise<unknown>>();
  const track = (work: Promise<unknown>) => {
    const p = work.catch(onError).finally(() => pending.delete(p));
    pending.add(p);
  };
  // Jobs are locked by a worker's id, or by its pool's (as graphile-worker 0.18 does): keep both.
  const remember = (lockerId: string) => {
    workerIds.push(lockerId);
    track(
      pool.query(
        "update herald_private.worker_processes set worker_ids = array_append(worker_ids, $2) where process_id = $1",
        [processId, lockerId],
      ),
    );
  };
  options.events.on("pool:create", ({ workerPool }) => remember(workerPool.id));
  options.events.on("worker:create", ({ worker }) => remember(worker.workerId));

  const sweep = async (): Promise<number> => {
    const { rows } = await pool.query<{ process_id: string }>(
      "select process_id from herald_private.worker_processes where process_id <> $1",
      [processId],
    );
    let recovered = 0;
    for (const { process_id: other } of rows) {
      // One transaction per entry: the try-lock is released at its end.
      const client = await pool.connect();
      await client.query("begin");
      try {
        const { rows: dead } = await client.query<{ worker_ids: string[] }>(
          `delete from herald_private.worker_processes
            where process_id = $1 and pg_try_advisory_xact_lock(lock_key)
           returning worker_ids`,
          [other],
        );
        if (dead[0]) {
          await client.query("select graphile_worker.force_unlock_workers($1::text[])", [dead[0].worker_ids]);
          recovered++;
          logger.warn(
            { process: other, workers: dead[0].worker_ids.length },
            "recovered the jobs of a worker process that died",
          );
        }
        await client.query("commit");
      } catch (error) {
        await client.query("rollback").catch(() => undefined);
        throw error;
      } finally {
        client.release();
      }
    }
    return recovered;
  };

  /**
   * Jobs locked by this process that none of its workers runs: their
   * completion (or failure) could not be written while the server was away.
   * One seen twice in a row, ten seconds apart, is unlocked, to run again
   * (tasks are idempotent; a delivery already sent is not sent again).
   */
  let suspects = new Set<string>();
  const releaseOrphans = async () => {
    if (workerIds.length === 0) return;
    const { rows } = await pool.query<{ id: string }>(
      "select id::text from graphile_worker._private_jobs where locked_by = any($1::text[])",
      [workerIds],
    );
    const idle = rows.map((r) => r.id).filter((id) => !running.has(id));
    const orphans = idle.filter((id) => suspects.has(id));
    suspects = new Set(idle.filter((id) => !suspects.has(id)));
    if (orphans.length === 0) return;
    const { rowCount } = await pool.query(
      "update graphile_worker._private_jobs set locked_at = null, locked_by = null where id = any($1::bigint[]) and locked_by = any($2::text[])",
      [orphans, workerIds],
    );
    if (rowCount)
      logger.warn(
        { jobs: rowCount },
        "released jobs whose completion was lost with the database connection; they run again",
      );
  };

  await acquire();
  await sweep();
  const sweepTimer = setInterval(() => {
    if (state !== "registered") return;
    // The ping notices a silently dropped connection.
    track(holder!.query("select 1"));
    if (Date.now() >= sweepsFrom) track(sweep());
  }, SWEEP_INTERVAL_MS);
  sweepTimer.unref();
  const orphanTimer = setInterval(() => {
    if (state === "registered") track(releaseOrphans());
  }, ORPHAN_CHECK_MS);
  orphanTimer.unref();

  return {
    processId: () => processId,
    sweep,
    state: () => state,
    stopping: () => void (stopping = true),
    stop: async () => {
      stopping = true;
      state = "stopped";
      clearInterval(sweepTimer);
      clearInterval(orphanTimer);
      await Promise.all(pending);
      await pool.query("delete from herald_private.worker_processes where process_id = $1", [processId]).catch(onError);
      await Promise.all([pool.end().catch(onError), holder?.end().catch(onError)]);
    },
  };
}
