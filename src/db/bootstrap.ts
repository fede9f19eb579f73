import { createHash, createHmac, pbkdf2Sync, randomBytes } from "node:crypto";
import pg from "pg";
import type { Logger } from "../logger.ts";
import { ROLES, withDatabase } from "./urls.ts";

/**
 * Cluster- and database-level setup that migrations cannot do as herald_owner:
 * Herald's five roles (docs/architecture.md), the database itself, and the extensions.
 * Runs as a superuser (or a CREATEROLE + CREATEDB user); idempotent.
 */

/**
 * A SCRAM-SHA-256 verifier, computed here so the plaintext password never
 * appears in statement text (and so never in a server log).
 */
export function scramVerifier(password: string): string {
  const salt = randomBytes(16);
  const iterations = 4096;
  const salted = pbkdf2Sync(password.normalize("NFKC"), salt, iterations, 32, "sha256");
  const clientKey = createHmac("sha256", salted).update("Client Key").digest();
  const storedKey = createHash("sha256").update(clientKey).digest();
  const serverKey = createHmac("sha256", salted).update("Server Key").digest();
  return `SCRAM-SHA-256$${iterations}:${salt.toString("base64")}$${storedKey.toString("base64")}:${serverKey.toString("base64")}`;
}

const quoteIdent = (name: string) => `"${name.replaceAll('"', '""')}"`;
const quoteLiteral = (text: string) => `'${text.replaceAll("'", "''")}'`;

async function ensureRoles(client: pg.Client, passwords: Record<string, string>) {
  // Attributes are re-asserted on every start, so a role altered by hand
  // (BYPASSRLS, SUPERUSER…) is put back; `herald doctor` reports it meanwhile.
  const attributes: Record<string, string> = {
    [ROLES.owner]: "login nosuperuser nobypassrls nocreaterole inherit",
    [ROLES.authenticator]: "login nosuperuser nobypassrls nocreaterole noinherit",
    [ROLES.member]: "nologin nosuperuser nobypassrls nocreaterole",
    [ROLES.admin]: "nologin nosuperuser nobypassrls nocreaterole",
    [ROLES.worker]: "nologin nosuperuser nobypassrls nocreaterole",
  };
  for (const [role, attrs] of Object.entries(attributes)) {
    const { rowCount } = await client.query("select 1 from pg_roles where rolname = $1", [role]);
    const password = passwords[role];
    const passwordClause = password ? ` password ${quoteLiteral(scramVerifier(password))}` : "";
    const verb = rowCount ? "alter" : "create";
    await client.query(`${verb} role ${quoteIdent(role)} with ${attrs}${passwordClause}`);
  }
  // The authenticator may become any of the three request roles, never inherit them.
  await client.query(`grant ${ROLES.member}, ${ROLES.admin}, ${ROLES.worker} to ${ROLES.authenticator}`);
  // Jobs do tenant work through the authenticator, never the owner: an owner
  // inheriting herald_worker's policies would quietly work without SET ROLE.
  // (Revoked for clusters bootstrapped by an earlier version that granted it.)
  await client.query(`revoke ${ROLES.worker} from ${ROLES.owner}`);
}

async function ensureDatabase(client: pg.Client, name: string, template?: string) {
  const { rowCount } = await client.query("select 1 from pg_database where datname = $1", [name]);
  if (rowCount) return false;
  const templateClause = template ? ` template ${quoteIdent(template)}` : "";
  await client.query(`create database ${quoteIdent(name)} owner ${ROLES.owner}${templateClause}`);
  return true;
}

async function configureDatabase(adminUrl: string, name: string) {
  const client = new pg.Client({ connectionString: withDatabase(adminUrl, name) });
  await client.connect();
  try {
    await client.query("select pg_advisory_lock($1)", [BOOTSTRAP_LOCK]); // concurrent CREATE EXTENSIONs collide too
    await client.query(`alter database ${quoteIdent(name)} owner to ${ROLES.owner}`);
    await client.query(`revoke all on database ${quoteIdent(name)} from public`);
    await client.query(`grant connect on database ${quoteIdent(name)} to ${ROLES.authenticator}`);
    await client.query("create extension if not exists pgcrypto with schema public");
    await client.query("create extension if not exists citext with schema public");
    // Nobody but the owner creates objects in `public` (PG 15 default; older clusters upgraded keep the old grant).
    await client.query("revoke create on schema public from public");
  } finally {
    await client.end();
  }
}

/** An arbitrary constant: the advisory lock that serialises bootstraps on one server. */
const BOOTSTRAP_LOCK = 4_834_201;

export async function bootstrapDatabase(options: {
  adminUrl: string;
  database: string;
  passwords: Record<string, string>;
  logger: Logger;
  /** Clone this database instead of creating an empty one (tests). */
  template?: string;
}): Promise<void> {
  const { adminUrl, database, passwords, logger, template } = options;
  const client = new pg.Client({ connectionString: withDatabase(adminUrl, "postgres") });
  await client.connect();
  try {
    const { rows } = await client.query<{ version: number }>(
      "select current_setting('server_version_num')::int as version",
    );
    if (rows[0]!.version < 150000) {
      throw new Error(`Herald needs PostgreSQL 15 or newer; this server is ${rows[0]!.version}`);
    }
    // Several processes may start at once (workers scaling out, test files):
    // one at a time here, or two ALTER ROLEs on one role collide ("tuple
    // concurrently updated"). Released with the session.
    await client.query("select pg_advisory_lock($1)", [BOOTSTRAP_LOCK]);
    await ensureRoles(client, passwords);
    if (await ensureDatabase(client, database, template)) {
      logger.info({ database }, "created database");
    }
  } finally {
    await client.end();
  }
  await configureDatabase(adminUrl, database);
}

/** Drop a database, disconnecting whoever is still on it. */
export async function dropDatabase(adminUrl: string, database: string): Promise<void> {
  const client = new pg.Client({ connectionString: withDatabase(adminUrl, "postgres") });
  await client.connect();
  try {
    // Pools that were just ended have sent Terminate but their backends may not have
    // exited yet; FORCE would kill them mid-goodbye and the closing client would emit an
    // unhandled 57P01. Give them a moment to leave, then force whatever remains.
    for (let waited = 0; waited < 5_000; waited += 50) {
      const { rows } = await client.query("select count(*)::int as n from pg_stat_activity where datname = $1", [
        database,
      ]);
      if (rows[0].n === 0) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    await client.query(`drop database if exists ${quoteIdent(database)} with (force)`);
  } finally {
    await client.end();
  }
}
