import type pg from "pg";
import { ROLES } from "./urls.ts";

/**
 * One transaction under a request role, the way the API runs: connect as the
 * authenticator, then take on a role and tenant with transaction-local settings.
 */
export interface SessionContext {
  role: (typeof ROLES)[keyof typeof ROLES];
  tenantId?: string;
  userId?: string;
  /** Further transaction-local settings, e.g. the tenant's keys (src/crypto/keyring.ts). */
  settings?: Record<string, string>;
}

/**
 * Inside an open transaction: become `context.role` with its claims, exactly
 * as PostGraphile applies pgSettings. Refuses to go on as anyone else, so a
 * caller whose login could act without the SET ROLE fails loudly instead.
 */
export async function enterSession(client: pg.ClientBase, context: SessionContext): Promise<void> {
  // One statement: the role and claims, then the further settings (bind
  // parameters, never literals: these values may be keys), then who we now
  // are, all evaluated in that order.
  const settings = context.settings ?? {};
  const { rows } = await client.query<{ current_user: string }>(
    `select set_config('role', $1, true),
            set_config('jwt.claims.tenant_id', $2, true),
            set_config('jwt.claims.user_id', $3, true),
            (select count(*) from unnest($4::text[], $5::text[]) as s(name, value) where set_config(name, value, true) is not null),
            current_user`,
    [context.role, context.tenantId ?? "", context.userId ?? "", Object.keys(settings), Object.values(settings)],
  );
  if (rows[0]?.current_user !== context.role) {
    throw new Error(`session runs as ${rows[0]?.current_user}, not ${context.role}`);
  }
}

/** One transaction on a pooled connection: committed if `fn` resolves, rolled back if it throws. */
export async function inTransaction<T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  try {
    await client.query("begin");
    const result = await fn(client);
    await client.query("commit");
    return result;
  } catch (error) {
    await client.query("rollback").catch(() => undefined);
    throw error;
  } finally {
    client.release();
  }
}

export const withSession = <T>(
  pool: pg.Pool,
  context: SessionContext,
  fn: (client: pg.PoolClient) => Promise<T>,
): Promise<T> =>
  inTransaction(pool, async (client) => {
    await enterSession(client, context);
    return fn(client);
  });

export const asAdmin = <T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>) =>
  withSession(pool, { role: ROLES.admin }, fn);
