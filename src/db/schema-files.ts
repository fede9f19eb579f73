import { randomBytes } from "node:crypto";
import fs from "node:fs/promises";
import path from "node:path";
// The graphql instance PostGraphile built the schema with (a second copy would refuse its types).
import { lexicographicSortSchema, printSchema } from "postgraphile/graphql";
import pg from "pg";
import { makeSchema } from "postgraphile";
import { makeHeraldPreset } from "../../graphile.config.ts";
import { Keyring } from "../crypto/keyring.ts";
import { createLogger } from "../logger.ts";
import { projectRoot } from "../paths.ts";
import { dumpSchema } from "./schema-dump.ts";

/**
 * The two files that show, in review, what a schema change does: the
 * catalog dump (`data/schema.sql`) and the GraphQL API (`schema.graphql`),
 * both generated from the migrated database by `herald db dump`.
 * test/schema.test.ts fails when either is stale.
 */

export const SCHEMA_SQL_PATH = path.join(projectRoot, "data", "schema.sql");
export const SCHEMA_GRAPHQL_PATH = path.join(projectRoot, "schema.graphql");

/** The catalog dump of the database at `url` (any login: the catalog is readable by all). */
export async function dumpCatalog(url: string): Promise<string> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await dumpSchema(client);
  } finally {
    await client.end();
  }
}

/**
 * The GraphQL SDL the API serves, sorted: Herald's preset introspected through
 * the authenticator, as the API does (src/api/routes/graphql.ts).
 */
export async function printGraphqlSchema(authenticatorUrl: string): Promise<string> {
  const pool = new pg.Pool({ connectionString: authenticatorUrl, max: 2 });
  try {
    // Keys are only read per request (grafast context), never while building the schema.
    const keyring = new Keyring({ masterKey: randomBytes(32), hashKey: randomBytes(32) });
    const { schema } = await makeSchema(
      makeHeraldPreset({ pool, keyring, development: false, logger: createLogger("silent", 2) }),
    );
    return `${printSchema(lexicographicSortSchema(schema))}\n`;
  } finally {
    await pool.end();
  }
}

/** Writes both files; returns their paths. */
export async function writeSchemaFiles(urls: { owner: string; authenticator: string }): Promise<string[]> {
  const [catalog, sdl] = await Promise.all([dumpCatalog(urls.owner), printGraphqlSchema(urls.authenticator)]);
  await fs.mkdir(path.dirname(SCHEMA_SQL_PATH), { recursive: true });
  await fs.writeFile(SCHEMA_SQL_PATH, catalog);
  await fs.writeFile(SCHEMA_GRAPHQL_PATH, sdl);
  return [SCHEMA_SQL_PATH, SCHEMA_GRAPHQL_PATH];
}
