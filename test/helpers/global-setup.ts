import path from "node:path";
import pg from "pg";
import type { TestProject } from "vitest/node";
import { loadConfig } from "../../src/config.ts";
import { bootstrapDatabase, dropDatabase } from "../../src/db/bootstrap.ts";
import { deriveUrls, openDatabase } from "../../src/db/database.ts";
import { watchMigrations } from "../../src/db/migrate.ts";
import { dataDir } from "../../src/paths.ts";
import { createLogger } from "../../src/logger.ts";

/**
 * Once per run: the server (DATABASE_URL, or a disposable embedded cluster in
 * .data/test-postgres), then a template database with every committed
 * migration applied and, on top, the work in progress of migrations/current/
 * (empty once committed), so the suite tests the schema as it will be.
 * Test files clone it (test/helpers/db.ts).
 */

declare module "vitest" {
  export interface ProvidedContext {
    adminUrl: string;
    templateDatabase: string;
    serverKind: string;
    /** Every table of herald_public and herald_hidden, from the template's catalog (the attack matrix's list). */
    exposedTables: string[];
  }
}

export default async function setup(project: TestProject) {
  const logger = createLogger(process.env.TEST_LOG_LEVEL ?? "warn", 2);
  const config = loadConfig();
  const templateDatabase = `herald_test_template_${process.pid}`;
  const db = await openDatabase(config, logger, {
    database: templateDatabase,
    embeddedDir: path.join(dataDir(), "test-postgres"),
    disposable: true,
  });
  const urls = deriveUrls(db.urls.admin, config.rolePasswords);
  await watchMigrations(urls, logger, true);
  // Re-run the bootstrap so the template carries the database-level grants too.
  await bootstrapDatabase({
    adminUrl: urls.admin,
    database: templateDatabase,
    passwords: config.rolePasswords,
    logger,
  });
  const catalog = new pg.Client({ connectionString: urls.admin });
  await catalog.connect();
  const { rows: exposed } = await catalog
    .query<{ name: string }>(
      `select c.oid::regclass::text as name from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname in ('herald_public', 'herald_hidden') and c.relkind in ('r', 'p') order by 1`,
    )
    .finally(() => catalog.end());
  project.provide(
    "exposedTables",
    exposed.map((r) => r.name),
  );
  const serverKind = config.databaseUrl ? "DATABASE_URL" : "embedded";
  process.stderr.write(`herald tests: ${serverKind} PostgreSQL, template ${templateDatabase}\n`);
  project.provide("adminUrl", urls.adminMaintenance);
  project.provide("templateDatabase", templateDatabase);
  project.provide("serverKind", serverKind);

  return async () => {
    await dropDatabase(urls.adminMaintenance, templateDatabase);
    await db.stop();
  };
}
