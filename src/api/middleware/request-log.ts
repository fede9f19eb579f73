import type { RequestHandler } from "express";
import type { Logger } from "../../logger.ts";

/** One log line per finished request, with how long it took. */
export function requestLog(logger: Logger): RequestHandler {
  return (req, res, next) => {
    const started = performance.now();
    res.on("finish", () => {
      // Method, path and status only: no headers, bodies or query strings (tokens live there).
      logger.info(
        { method: req.method, path: req.path, status: res.statusCode, ms: Math.round(performance.now() - started) },
        "request",
      );
    });
    next();
  };
}
