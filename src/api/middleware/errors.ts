import type { ErrorRequestHandler, RequestHandler } from "express";
import { isDatabaseUnavailable } from "../../db/availability.ts";
import type { Logger } from "../../logger.ts";
import { jsonError, unavailable } from "../responses.ts";

/** Whatever no route answered. */
export const notFound: RequestHandler = (_req, res) => {
  res.status(404).json(jsonError("NOT_FOUND", "No such route."));
};

/** The last word on an error a route passed on: Herald's JSON error, never a stack. */
export function errorHandler(logger: Logger): ErrorRequestHandler {
  return (error, _req, res, _next) => {
    // Providers retry a 503 (status callbacks are not retried after a 500 by some): the database is away, not the request wrong.
    if (isDatabaseUnavailable(error)) {
      logger.warn({ err: { message: (error as Error).message } }, "request failed: the database is unavailable");
      return unavailable(res);
    }
    const status = typeof error.status === "number" ? error.status : 500;
    if (status >= 500) logger.error({ err: { message: error.message } }, "request failed");
    res
      .status(status)
      .json(
        jsonError(
          status === 413 ? "PAYLOAD_TOO_LARGE" : status < 500 ? "BAD_REQUEST" : "INTERNAL",
          status < 500 ? error.message : "Internal error.",
        ),
      );
  };
}
