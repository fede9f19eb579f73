import type { RequestHandler } from "express";
import type pg from "pg";
import type { WorkerHandle } from "../../worker/worker.ts";
import { checkHealth } from "../health.ts";

/** GET /healthz: 200 when everything checkHealth looks at is well, 503 with the same report otherwise. */
export function healthRoute(ownerPool: pg.Pool, worker: WorkerHandle | undefined): RequestHandler {
  return async (_req, res) => {
    const health = await checkHealth(ownerPool, worker);
    res.status(health.status === "ok" ? 200 : 503).json(health);
  };
}
