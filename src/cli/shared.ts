import os from "node:os";
import readline from "node:readline/promises";
import { InvalidArgumentError } from "commander";
import pg from "pg";
import { findTenant, type Tenant } from "../admin.ts";
import { loadConfig, type Config } from "../config.ts";
import { openDatabase, type Database } from "../db/database.ts";
import { withSession } from "../db/session.ts";
import { ROLES } from "../db/urls.ts";
import { createLogger } from "../logger.ts";

/** What every `herald` command shares: the database session, errors, output. */

// Logs go to stderr so command output stays pipeable.
export const logger = createLogger(process.env.LOG_LEVEL ?? "warn", 2);

export class CliError extends Error {
  override name = "CliError";
}

export async function withDatabase<T>(
  fn: (ctx: { config: Config; db: Database; pool: pg.Pool }) => Promise<T>,
): Promise<T> {
  const config = loadConfig();
  const db = await openDatabase(config, logger);
  const pool = new pg.Pool({ connectionString: db.urls.authenticator, max: 2 });
  try {
    return await fn({ config, db, pool });
  } finally {
    await pool.end();
    await db.stop();
  }
}

/** What the audit log says the CLI was: this command and the OS user running it. */
export const operatorDetail = () => `herald cli (${os.userInfo().username})`.slice(0, 100);

/** One transaction as herald_admin that the audit log attributes to this command and the OS user running it. */
export const asOperator = <T>(
  pool: pg.Pool,
  fn: (client: pg.PoolClient) => Promise<T>,
  options: { tenantId?: string } = {},
) =>
  withSession(
    pool,
    { role: ROLES.admin, tenantId: options.tenantId, settings: { "herald.actor_detail": operatorDetail() } },
    fn,
  );

export async function requireTenant(pool: pg.Pool, slug: string): Promise<Tenant> {
  const tenant = await asOperator(pool, (client) => findTenant(client, slug));
  if (!tenant) throw new CliError(`No tenant with slug "${slug}". \`herald tenant list\` shows them.`);
  return tenant;
}

export const slugArg = (value: string) => {
  if (!/^[a-z0-9][a-z0-9-]{1,62}$/.test(value)) {
    throw new InvalidArgumentError("use 2-63 lower-case letters, digits and dashes, e.g. acme-clinic");
  }
  return value;
};

export const print = (text: string): void => {
  process.stdout.write(text + "\n");
};

export async function confirm(question: string): Promise<boolean> {
  if (!process.stdin.isTTY) return false;
  const rl = readline.createInterface({ input: process.stdin, output: process.stdout });
  try {
    return /^y(es)?$/i.test((await rl.question(`${question} [y/N] `)).trim());
  } finally {
    rl.close();
  }
}
