import type { RequestHandler } from "express";
import type { Logger } from "../../logger.ts";

/** One log line per finished request, with how long it took. */
export function requestLog(logger: Logger): RequestHandler {
  return (req, res, next) => {
    const started = performance.now();
    res.on("finish", () => {
      // Method, path and status only: no headers, bodies or query strings (tokens live there). The
      // path as asked: a router mounted at /graphql that answers (a 401) leaves req.path relative to it.
      // An unsubscribe link's token is a capability: not logged.
      const path = req.originalUrl.split("?")[0]!.replace(/^\/unsubscribe\/[^/]+/, "/unsubscribe/:token");
      logger.info(
        { method: req.method, path, status: res.statusCode, ms: Math.round(performance.now() - started) },
        "request",
      );
    });
    next();
  };
}
