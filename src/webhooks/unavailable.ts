import type { NextFunction, Request, RequestHandler, Response } from "express";
import type { Logger } from "../logger.ts";
import { refuse } from "../api/responses.ts";

/**
 * A provider whose webhook fails while the database is down must try again
 * later, not give up: Twilio and SendGrid retry what is answered 5xx, and a
 * 503 with Retry-After says plainly that the request was fine and nothing
 * was kept. Everything else that fails stays a 500.
 */

/** SQLSTATEs of a database that cannot serve now: shutting down, restarting, out of connections. */
const UNAVAILABLE_SQLSTATES = new Set(["57P01", "57P02", "57P03", "53300"]);
/** Socket errors of a server that is not there. */
const UNAVAILABLE_ERRNOS = new Set(["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "ENOTFOUND", "EAI_AGAIN"]);
/** node-postgres's own words for a connection lost or never had (no code). */
const UNAVAILABLE_MESSAGES = [/^Connection terminated/, /timeout exceeded when trying to connect/, /^Client has encountered a connection error/];

/** Whether `error` says the database is unreachable or refusing work for now (worth retrying), rather than that the request failed. */
export function isDatabaseUnavailable(error: unknown): boolean {
  if (typeof error !== "object" || error === null) return false;
  const { code, message } = error as { code?: unknown; message?: unknown };
  if (typeof code === "string") {
    // Class 08: connection exceptions.
    if (code.startsWith("08") || UNAVAILABLE_SQLSTATES.has(code) || UNAVAILABLE_ERRNOS.has(code)) return true;
  }
  // An AggregateError (a host with several addresses) carries the socket errors inside.
  const inner = (error as { errors?: unknown }).errors;
  if (Array.isArray(inner) && inner.length > 0 && inner.every(isDatabaseUnavailable)) return true;
  return typeof message === "string" && UNAVAILABLE_MESSAGES.some((pattern) => pattern.test(message));
}

/** Seconds a provider is asked to wait before retrying. */
export const RETRY_AFTER_SECONDS = 5;

/** `handler`, answering 503 with Retry-After when it fails because the database is unavailable. */
export function retriable(handler: (req: Request, res: Response) => Promise<void>, logger: Logger): RequestHandler {
  return async (req: Request, res: Response, next: NextFunction) => {
    try {
      await handler(req, res);
    } catch (error) {
      if (!isDatabaseUnavailable(error) || res.headersSent) return next(error);
      logger.warn({ path: req.path, err: { message: (error as Error).message } }, "webhook refused for now: the database is unavailable");
      res.set("Retry-After", String(RETRY_AFTER_SECONDS));
      refuse(res, 503, "UNAVAILABLE", "The database is unavailable; try again shortly.");
    }
  };
}
