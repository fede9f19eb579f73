import "../env-defaults.ts";
import { loadConfig } from "../config.ts";
import type { DatabaseUrls } from "../db/database.ts";
import { createLogger } from "../logger.ts";
import { startApiServer } from "./server.ts";

/**
 * The API server alone, in a process of its own, on a database that is
 * already migrated (HERALD_DATABASE_URLS: the URLs as JSON, from the parent):
 * for benchmarks that must not share the load generator's event loop, and
 * tests that need a second API process. Tells its parent its port over IPC,
 * and exits cleanly on SIGTERM or when its parent goes.
 */

const urls = JSON.parse(process.env.HERALD_DATABASE_URLS ?? "null") as DatabaseUrls | null;
if (!urls) throw new Error("HERALD_DATABASE_URLS is required");
const config = loadConfig();
const api = await startApiServer({ config, urls, logger: createLogger(config.logLevel, 1) });
process.send?.({ port: Number(new URL(api.url).port) });
const stop = () => void api.close().finally(() => process.exit(0));
process.on("SIGTERM", stop);
// A parent that died without a word: no orphan holding database connections.
process.on("disconnect", stop);
