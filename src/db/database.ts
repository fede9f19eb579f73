import path from "node:path";
import { runMigrations as installWorkerSchema } from "graphile-worker";
import type { Config } from "../config.ts";
import type { Logger } from "../logger.ts";
import { dataDir } from "../paths.ts";
import { bootstrapDatabase } from "./bootstrap.ts";
import { startEmbeddedPostgres } from "./embedded.ts";
import { applyMigrations } from "./migrate.ts";
import { ROLES, databaseName, redactUrl, withDatabase, withRole } from "./urls.ts";

/** Every connection string Herald uses, all pointing at one database. */
export interface DatabaseUrls {
  /** Superuser (or owner-capable) URL of Herald's database. */
  admin: string;
  /** The same login on the `postgres` maintenance database. */
  adminMaintenance: string;
  /** herald_owner: migrations and the job queue. */
  owner: string;
  /** herald_owner on the shadow database used by `db:watch`. */
  shadowOwner: string;
  /** herald_authenticator: API and webhook requests, which SET ROLE per transaction. */
  authenticator: string;
  database: string;
}

export interface Database {
  urls: DatabaseUrls;
  embedded: boolean;
  /** The embedded server was already running: another Herald process (e.g. `npm start`) uses it. */
  sharedWithRunningHerald: boolean;
  stop(): Promise<void>;
}

export function deriveUrls(adminUrl: string, passwords: Record<string, string>): DatabaseUrls {
  const database = databaseName(adminUrl);
  const owner = withRole(adminUrl, ROLES.owner, passwords[ROLES.owner]);
  return {
    admin: adminUrl,
    adminMaintenance: withDatabase(adminUrl, "postgres"),
    owner,
    shadowOwner: withDatabase(owner, `${database}_shadow`),
    authenticator: withRole(adminUrl, ROLES.authenticator, passwords[ROLES.authenticator]),
    database,
  };
}

/**
 * Find or start the server, then make sure the roles, database, extensions,
 * committed migrations and job-queue schema are in place. Idempotent.
 */
export async function openDatabase(
  config: Config,
  logger: Logger,
  options: { migrate?: boolean; embeddedDir?: string; database?: string; disposable?: boolean } = {},
): Promise<Database> {
  let adminUrl: string;
  let stop = async () => {};
  let sharedWithRunningHerald = false;
  const embedded = !config.databaseUrl;
  if (config.databaseUrl) {
    adminUrl = options.database ? withDatabase(config.databaseUrl, options.database) : config.databaseUrl;
    logger.info({ url: redactUrl(adminUrl) }, "using the PostgreSQL server from DATABASE_URL");
  } else {
    const cluster = await startEmbeddedPostgres({
      dir: options.embeddedDir ?? path.join(dataDir(), "postgres"),
      superuserPassword: config.rolePasswords.postgres!,
      port: config.embeddedPgPort,
      disposable: options.disposable,
      logger,
    });
    adminUrl = withDatabase(cluster.adminUrl, options.database ?? "herald");
    stop = cluster.stop;
    sharedWithRunningHerald = !cluster.startedHere;
    logger.info({ port: cluster.port }, "embedded PostgreSQL is running");
  }
  const urls = deriveUrls(adminUrl, config.rolePasswords);
  try {
    await bootstrapDatabase({
      adminUrl,
      database: urls.database,
      passwords: config.rolePasswords,
      logger,
    });
    if (options.migrate !== false) {
      await applyMigrations(urls, logger);
      await installWorkerSchema({ connectionString: urls.owner });
    }
  } catch (error) {
    await stop();
    throw error;
  }
  return { urls, embedded, sharedWithRunningHerald, stop };
}
