import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import pg from "pg";
import type { WorkerEvents } from "graphile-worker";
import type { Logger } from "../logger.ts";

/**
 * graphile-worker leaves the jobs of a worker that died without stopping
 * (kill -9, a lost host) locked for four hours. Herald's worker processes
 * register their graphile-worker ids in herald_private.worker_processes and
 * hold a session advisory lock for as long as they live; the lock goes with
 * the process's connection. Every process sweeps at start and then
 * periodically: an entry whose lock it can take is a dead process, whose jobs
 * are unlocked at once (graphile_worker.force_unlock_workers) and run again.
 */

const SWEEP_INTERVAL_MS = 30_000;

export interface ProcessRegistration {
  processId: string;
  /** Unlocks the jobs of dead processes now; returns how many processes were recovered. */
  sweep(): Promise<number>;
  /** Shutting down: a lost connection from now on is no reason to stop again. */
  stopping(): void;
  stop(): Promise<void>;
}

export async function registerWorkerProcess(options: { ownerUrl: string; events: WorkerEvents; logger: Logger }): Promise<ProcessRegistration> {
  const processId = `${hostname()}:${process.pid}:${randomBytes(4).toString("hex")}`;
  const lockKey = randomBytes(8).readBigInt64BE().toString();
  const onError = (error: Error) => options.logger.warn({ err: { message: error.message } }, "worker registry connection failed");
  // Its own connection: the lock must live exactly as long as this process.
  // Kept alive, and exempt from an idle-session timeout: it is idle by design.
  const holder = new pg.Client({ connectionString: options.ownerUrl, keepAlive: true, options: "-c idle_session_timeout=0" });
  // Losing this connection loses the lock: other workers would take this
  // process for dead and run its jobs again while it still runs them. It
  // stops instead (Herald's shutdown handler), to be restarted.
  let stopping = false;
  holder.on("error", (error) => {
    options.logger.error({ err: { message: error.message } }, "lost the worker registry connection; stopping this process");
    if (!stopping) process.kill(process.pid, "SIGTERM");
  });
  await holder.connect();
  await holder.query("select pg_advisory_lock($1::bigint)", [lockKey]);
  // Everything else on a pool, so no statement lands inside a sweep's transaction.
  const pool = new pg.Pool({ connectionString: options.ownerUrl, max: 2 });
  pool.on("error", onError);
  await pool.query("insert into herald_private.worker_processes (process_id, lock_key) values ($1, $2)", [processId, lockKey]);

  const pending = new Set<Promise<unknown>>();
  const track = (work: Promise<unknown>) => {
    const p = work.catch(onError).finally(() => pending.delete(p));
    pending.add(p);
  };
  // Jobs are locked by a worker's id, or by its pool's (as graphile-worker 0.18 does): keep both.
  const remember = (lockerId: string) =>
    track(pool.query("update herald_private.worker_processes set worker_ids = array_append(worker_ids, $2) where process_id = $1", [processId, lockerId]));
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
          options.logger.warn({ process: other, workers: dead[0].worker_ids.length }, "recovered the jobs of a worker process that died");
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

  await sweep();
  // The sweep, and a ping that notices a silently dropped connection.
  const timer = setInterval(() => track(Promise.all([sweep(), holder.query("select 1")])), SWEEP_INTERVAL_MS);
  timer.unref();

  return {
    processId,
    sweep,
    stopping: () => void (stopping = true),
    stop: async () => {
      stopping = true;
      clearInterval(timer);
      await Promise.all(pending);
      await pool.query("delete from herald_private.worker_processes where process_id = $1", [processId]).catch(onError);
      await Promise.all([pool.end().catch(onError), holder.end().catch(onError)]);
    },
  };
}
