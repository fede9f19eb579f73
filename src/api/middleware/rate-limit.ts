import type { RequestHandler } from "express";
import type pg from "pg";
import { isDatabaseUnavailable } from "../../db/availability.ts";
import type { Logger } from "../../logger.ts";
import { jsonError, unavailable } from "../responses.ts";

/**
 * Each tenant's requests per minute (tenant_settings.api_requests_per_minute),
 * counted in Postgres so the limit holds across every API process; over it,
 * 429 with Retry-After. Operators are not limited.
 */
export function rateLimit(pool: pg.Pool, logger: Logger): RequestHandler {
  return async (req, res, next) => {
    const identity = req.heraldIdentity;
    if (!identity?.tenantId || identity.kind === "admin") return next();
    try {
      const { rows } = await pool.query<{ wait: number }>("select herald_private.admit_api_request($1) as wait", [
        identity.tenantId,
      ]);
      const wait = rows[0]?.wait ?? 0;
      if (wait > 0) {
        res
          .status(429)
          .set("Retry-After", String(wait))
          .json(jsonError("RATE_LIMITED", `This tenant is over its requests per minute; try again in ${wait} s.`));
        return;
      }
    } catch (error) {
      // The request would fail too: say when to come back.
      if (isDatabaseUnavailable(error)) return unavailable(res);
      // The limiter is a guard, not a gate: a failure to count lets the request through.
      logger.warn(
        { err: { message: (error as Error).message } },
        "could not count a request against the tenant's rate limit",
      );
    }
    next();
  };
}
