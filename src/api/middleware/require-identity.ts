import type { RequestHandler } from "express";
import { AuthError, type Authenticator } from "../../auth.ts";
import { isDatabaseUnavailable, RETRY_AFTER_SECONDS } from "../../db/availability.ts";
import type { Logger } from "../../logger.ts";
import { jsonError } from "../responses.ts";

/** 401 for anything that is not a valid JWT or API key, before GraphQL sees the request. */
export function requireIdentity(authenticator: Authenticator, logger: Logger): RequestHandler {
  return async (req, res, next) => {
    try {
      req.heraldIdentity = await authenticator.authenticate(req.headers.authorization);
      next();
    } catch (error) {
      if (error instanceof AuthError) {
        res.status(401).set("WWW-Authenticate", 'Bearer realm="herald"').json(jsonError(error.code, error.message));
        return;
      }
      if (isDatabaseUnavailable(error)) {
        logger.warn(
          { err: { message: (error as Error).message } },
          "authentication unavailable: the database is unreachable",
        );
      } else {
        logger.error({ err: { message: (error as Error).message } }, "authentication failed unexpectedly");
      }
      res
        .status(503)
        .set("Retry-After", String(RETRY_AFTER_SECONDS))
        .json(jsonError("AUTH_UNAVAILABLE", "Authentication is unavailable; try again."));
    }
  };
}
