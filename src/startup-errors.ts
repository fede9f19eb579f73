import { ConfigError } from "./config.ts";
import { ConnectionBudgetError } from "./db/budget.ts";
import { EmbeddedPostgresError } from "./db/embedded.ts";
import { PortInUseError } from "./api/server.ts";
import type { Logger } from "./logger.ts";

/** Errors a person can fix get one clear sentence, not a stack trace. */
const EXPECTED = [ConfigError, EmbeddedPostgresError, PortInUseError, ConnectionBudgetError];

export function reportStartupError(error: unknown, logger: Logger): void {
  if (EXPECTED.some((kind) => error instanceof kind)) {
    process.stderr.write(`\nherald: ${(error as Error).message}\n\n`);
    return;
  }
  const pgCode = (error as { code?: string }).code;
  if (pgCode === "ECONNREFUSED" || pgCode === "28P01" || pgCode === "3D000") {
    process.stderr.write(`\nherald: cannot use the database: ${(error as Error).message}\n\n`);
    return;
  }
  logger.fatal({ err: error }, "Herald could not start");
}
