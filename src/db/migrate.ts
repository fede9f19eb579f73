import fs from "node:fs";
import path from "node:path";
import JSON5 from "json5";
import pg from "pg";
import { commit, Logger as MigrateLogger, migrate, uncommit, watch, type Settings } from "graphile-migrate";
// graphile-migrate keeps its pools open for reuse, and its pools' error handler
// calls process.exit(1): when the embedded server stops, idle connections drop
// and would take Herald down. Release them as soon as each command is done.
import { clearAllPools } from "graphile-migrate/dist/pgReal.js";
import { projectRoot } from "../paths.ts";
import { graphileLogFactory, type Logger } from "../logger.ts";
import type { DatabaseUrls } from "./database.ts";

/**
 * graphile-migrate settings: `.gmrc` for what is fixed (folder, placeholders,
 * hooks), Herald's own URLs for where to connect.
 */
export function migrateSettings(urls: DatabaseUrls, logger: Logger): Settings {
  const gmrc = JSON5.parse(fs.readFileSync(path.join(projectRoot, ".gmrc"), "utf8")) as Settings;
  return {
    ...gmrc,
    migrationsFolder: path.join(projectRoot, "migrations"),
    connectionString: urls.owner,
    rootConnectionString: urls.adminMaintenance,
    shadowConnectionString: urls.shadowOwner,
    logger: new MigrateLogger(graphileLogFactory(logger.child({ component: "migrate" }))),
  };
}

/** An arbitrary constant: the advisory lock Herald processes queue on before migrating. */
const MIGRATE_LOCK = 4_834_202;

/**
 * Apply committed migrations (never migrations/current/). graphile-migrate only tries
 * its lock and fails when another process holds it, so several processes
 * starting at once (workers scaling out) would fail: they queue on a lock of
 * Herald's first, and each finds the work done by the one before.
 */
export async function applyMigrations(urls: DatabaseUrls, logger: Logger): Promise<void> {
  const queue = new pg.Client({ connectionString: urls.owner });
  queue.on("error", (error) => logger.warn({ err: { message: error.message } }, "migration lock connection failed"));
  await queue.connect();
  try {
    await queue.query("select pg_advisory_lock($1)", [MIGRATE_LOCK]);
    await migrate(migrateSettings(urls, logger));
  } finally {
    clearAllPools();
    await queue.end(); // and with it, the lock
  }
}

/** `herald db commit`: migrations/current/ becomes the next committed migration (graphile-migrate empties the folder). */
export async function commitMigration(urls: DatabaseUrls, logger: Logger, message?: string): Promise<void> {
  const settings = migrateSettings(urls, logger);
  try {
    await commit(settings, message);
  } finally {
    clearAllPools();
  }
  removeBlankCurrentFiles(settings);
}

/**
 * In folder mode graphile-migrate leaves a placeholder file holding only the
 * blank migration text behind a commit; the folder is for named concerns
 * (`NNN-concern.sql`), so the placeholder goes.
 */
function removeBlankCurrentFiles(settings: Settings): void {
  const folder = path.join(settings.migrationsFolder ?? path.join(projectRoot, "migrations"), "current");
  if (!fs.existsSync(folder)) return;
  const blank = (settings.blankMigrationContent ?? "").trim();
  for (const file of fs.readdirSync(folder)) {
    if (!file.endsWith(".sql")) continue;
    const text = fs.readFileSync(path.join(folder, file), "utf8").trim();
    if (text === "" || text === blank) fs.rmSync(path.join(folder, file));
  }
}

/** `herald db uncommit`: the latest committed migration goes back to migrations/current/ (only if not yet shared). */
export async function uncommitMigration(urls: DatabaseUrls, logger: Logger): Promise<void> {
  try {
    await uncommit(migrateSettings(urls, logger));
  } finally {
    clearAllPools();
  }
}

/** `npm run db:watch`: apply migrations/current/ on every save, for schema work (or once); `hooks` run after each apply that changed something. */
export async function watchMigrations(
  urls: DatabaseUrls,
  logger: Logger,
  once = false,
  hooks: Pick<Settings, "afterCurrent"> = {},
): Promise<void> {
  try {
    await watch({ ...migrateSettings(urls, logger), ...hooks }, once, false);
  } finally {
    if (once) clearAllPools();
  }
}
