import type { NextFunction, Request, RequestHandler, Response } from "express";
import type { Logger } from "../logger.ts";
import { refuse } from "../api/responses.ts";
import { isDatabaseUnavailable, RETRY_AFTER_SECONDS } from "../db/availability.ts";

/**
 * A provider whose webhook fails while the database is down must try again
 * later, not give up: Twilio and SendGrid retry what is answered 5xx, and a
 * 503 with Retry-After says plainly that the request was fine and nothing
 * was kept. Everything else that fails stays a 500.
 */

/** `handler`, answering 503 with Retry-After when it fails because the database is unavailable. */
export function retriable(handler: (req: Request, res: Response) => Promise<void>, logger: Logger): RequestHandler {
  return async (req: Request, res: Response, next: NextFunction) => {
    try {
      await handler(req, res);
    } catch (error) {
      if (!isDatabaseUnavailable(error) || res.headersSent) return next(error);
      logger.warn(
        { path: req.path, err: { message: (error as Error).message } },
        "webhook refused for now: the database is unavailable",
      );
      res.set("Retry-After", String(RETRY_AFTER_SECONDS));
      refuse(res, 503, "DATABASE_UNAVAILABLE", `The database is unavailable; try again in ${RETRY_AFTER_SECONDS} s.`);
    }
  };
}
