import { pino, type Logger } from "pino";

/**
 * One structured logger. Redaction is a second line of defence: code should
 * never hand secrets or PII to the logger in the first place.
 */
/** `destination`: stdout (1), stderr (2), or any stream of lines (tests capture logs this way). */
export function createLogger(
  level = process.env.LOG_LEVEL ?? "info",
  destination: 1 | 2 | pino.DestinationStream = 1,
): Logger {
  return pino(
    {
      level,
      base: { service: "herald" },
      redact: {
        paths: [
          "password",
          "*.password",
          "token",
          "*.token",
          "secret",
          "*.secret",
          "authorization",
          "*.authorization",
          "req.headers.authorization",
          "connectionString",
          "*.connectionString",
        ],
        censor: "[redacted]",
      },
    },
    typeof destination === "number" ? pino.destination(destination) : destination,
  );
}

export type { Logger };

type GraphileLogLevel = "error" | "warning" | "info" | "debug";

/**
 * A @graphile/logger factory (graphile-migrate, graphile-worker) writing to pino,
 * so every component logs the same structured lines.
 */
export function graphileLogFactory(logger: Logger) {
  return (scope: object) =>
    (
      level: GraphileLogLevel,
      message: string,
      meta?: { error?: unknown; failure?: boolean; job?: { id?: string; attempts?: number; max_attempts?: number } },
    ) => {
      const method = level === "warning" ? "warn" : level;
      if (meta?.failure && meta.job) {
        // A failed job, to be retried: one line (no stack trace) at warn, with the job and its attempt; error once it gives up.
        const { id, attempts = 0, max_attempts: maxAttempts = 0 } = meta.job;
        const error = meta.error as { message?: string; code?: string | number } | undefined;
        logger[attempts < maxAttempts ? "warn" : "error"](
          { ...scope, job: id, attempt: attempts, maxAttempts, error: { message: error?.message, code: error?.code } },
          message.split("\n")[0]!,
        );
        return;
      }
      // Errors from pg carry their whole client (connection parameters included): keep the essentials.
      const error = meta?.error as { message?: string; code?: string } | undefined;
      const fields = error ? { ...meta, error: { message: error.message, code: error.code } } : meta;
      logger[method]({ ...scope, ...fields }, message);
    };
}
