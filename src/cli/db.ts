import fs from "node:fs";
import path from "node:path";
import type { Command } from "commander";
import { loadConfig } from "../config.ts";
import { dropDatabase } from "../db/bootstrap.ts";
import { forgetUncommittedMigrations, recordNewCommittedMigrations } from "../db/committed-hashes.ts";
import { openDatabase, type DatabaseUrls } from "../db/database.ts";
import { commitMigration, uncommitMigration, watchMigrations } from "../db/migrate.ts";
import { compareDumps } from "../db/schema-dump.ts";
import {
  dumpCatalog,
  printGraphqlSchema,
  SCHEMA_GRAPHQL_PATH,
  SCHEMA_SQL_PATH,
  writeSchemaFiles,
} from "../db/schema-files.ts";
import { createLogger } from "../logger.ts";
import { projectRoot } from "../paths.ts";
import { CliError, confirm, logger, print, withDatabase } from "./shared.ts";

/**
 * `herald db …`: the database's schema and lifecycle — committed migrations,
 * schema work in migrations/current/ (watch, commit, uncommit), the committed
 * dumps of the catalog and the API, and resetting the embedded database.
 */
export function registerDbCommands(program: Command): void {
  const db = program.command("db").description("Database schema and lifecycle.");
  db.command("migrate")
    .description("Apply committed migrations (npm start does this too).")
    .action(async () => withDatabase(async () => print("Database is up to date.")));
  db.command("watch")
    .description("Apply migrations/current/ on every save (schema development).")
    .option("--once", "apply migrations/current/ once and exit")
    .action(async (opts: { once?: boolean }) => {
      const config = loadConfig();
      const watchLogger = createLogger("info", 2);
      const database = await openDatabase(config, watchLogger);
      // Each apply that changed something rewrites data/schema.sql and schema.graphql (`db dump`, in a
      // child process graphile-migrate runs, which finds this database through the environment).
      process.env.HERALD_DATABASE_URLS = JSON.stringify(database.urls);
      const afterCurrent = [
        {
          _: "command" as const,
          shadow: false,
          command: `"${process.execPath}" "${path.join(projectRoot, "src", "cli.ts")}" db dump`,
        },
      ];
      if (opts.once) {
        try {
          await watchMigrations(database.urls, watchLogger, true, { afterCurrent });
        } finally {
          await database.stop();
        }
        return;
      }
      for (const signal of ["SIGINT", "SIGTERM"] as const) {
        process.once(signal, () => void database.stop().finally(() => process.exit(0)));
      }
      await watchMigrations(database.urls, watchLogger, false, { afterCurrent });
    });
  db.command("commit")
    .description("Commit migrations/current/ as the next migration (tested on the shadow database first).")
    .option("--message <text>", "a one-line description stored in the migration")
    .action(async (opts: { message?: string }) =>
      withDatabase(async ({ db: database }) => {
        await commitMigration(database.urls, createLogger("info", 2), opts.message);
        for (const file of recordNewCommittedMigrations())
          print(`Recorded the hash of ${file} in migrations/committed.sha256: it is frozen from now on.`);
        for (const file of await writeSchemaFiles(database.urls)) print(`Wrote ${path.relative(projectRoot, file)}`);
      }),
    );
  db.command("uncommit")
    .description(
      "Move the latest committed migration back into migrations/current/ (before anyone else has applied it).",
    )
    .action(async () =>
      withDatabase(async ({ db: database }) => {
        await uncommitMigration(database.urls, createLogger("info", 2));
        for (const file of forgetUncommittedMigrations())
          print(`Removed ${file}'s hash from migrations/committed.sha256.`);
      }),
    );
  db.command("dump")
    .description(
      "Write data/schema.sql (roles, tables, policies, functions, grants, from the catalog) and schema.graphql (the API) from the database as it is now " +
        "(`db watch --once` first, to include migrations/current/: the tests compare both files with committed migrations plus current/).",
    )
    .option("--check", "write nothing; exit non-zero when either file differs from the database")
    .action(async (opts: { check?: boolean }) => {
      const run = async (urls: Pick<DatabaseUrls, "owner" | "authenticator">) => {
        if (!opts.check) {
          for (const file of await writeSchemaFiles(urls)) print(`Wrote ${path.relative(projectRoot, file)}`);
          return;
        }
        const [catalog, sdl] = await Promise.all([dumpCatalog(urls.owner), printGraphqlSchema(urls.authenticator)]);
        const read = (file: string) => (fs.existsSync(file) ? fs.readFileSync(file, "utf8") : "");
        const { exact, differences } = compareDumps(read(SCHEMA_SQL_PATH), catalog);
        const stale: string[] = [];
        if (differences.length > 0) {
          // On another PostgreSQL major than the file's, only what does not depend on deparsing is compared.
          stale.push(
            `data/schema.sql (${exact ? "exact" : "structural: another PostgreSQL major"}):\n${differences.slice(0, 40).join("\n")}`,
          );
        }
        if (read(SCHEMA_GRAPHQL_PATH) !== sdl) stale.push("schema.graphql");
        if (stale.length > 0) throw new CliError(`Stale, run \`npm run herald -- db dump\`: ${stale.join("\n")}`);
        print("data/schema.sql and schema.graphql match the database.");
      };
      // Run by `db watch` (graphile-migrate's afterCurrent hook): the watching process's database.
      const inherited = process.env.HERALD_DATABASE_URLS;
      if (inherited) await run(JSON.parse(inherited) as DatabaseUrls);
      else await withDatabase(({ db: database }) => run(database.urls));
    });
  db.command("reset")
    .description("Drop and recreate the embedded database, then migrate (embedded mode only).")
    .option("--yes", "do not ask for confirmation")
    .action(async (opts: { yes?: boolean }) => {
      const config = loadConfig();
      if (config.databaseUrl) throw new CliError("`db reset` only resets the embedded database; DATABASE_URL is set.");
      if (
        !opts.yes &&
        !(await confirm("This deletes every tenant, contact and message in the embedded database. Continue?"))
      ) {
        print("Nothing changed.");
        return;
      }
      const database = await openDatabase(config, logger, { migrate: false });
      try {
        await dropDatabase(database.urls.adminMaintenance, database.urls.database);
        await dropDatabase(database.urls.adminMaintenance, `${database.urls.database}_shadow`);
      } finally {
        await database.stop();
      }
      await withDatabase(async () =>
        print("Database reset and migrated. The demo tenants return on the next `npm start`."),
      );
    });
}
