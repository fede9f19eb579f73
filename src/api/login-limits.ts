import { createHash } from "node:crypto";
import type pg from "pg";

/**
 * Password sign-in limits (herald_private.admit_login, counted in Postgres so
 * they hold across API processes): 10 attempts a minute per account and client
 * address, 60 a minute per address, and for addresses the account has never
 * signed in from, a slower per-account curve (30, draining 2 a minute). An
 * attacker rotating addresses exhausts only that curve: the account's owner,
 * from an address they signed in from before, is not locked out.
 *
 * The database sees hashes: of the email (lower-cased), and of email and
 * address together; only the per-address scope names the address.
 */

const sha256 = (value: string) => createHash("sha256").update(value).digest("hex");

function keys(email: string, clientAddress: string | undefined) {
  const account = sha256(email.trim().toLowerCase());
  const client = clientAddress ?? "unknown";
  return { account, client, accountClient: sha256(`${account}:${client}`) };
}

/** Counts one attempt; resolves with the seconds to wait (0: go ahead). */
export async function admitLogin(pool: pg.Pool, email: string, clientAddress: string | undefined): Promise<number> {
  const k = keys(email, clientAddress);
  const { rows } = await pool.query<{ wait: number }>("select herald_private.admit_login($1, $2, $3) as wait", [k.account, k.client, k.accountClient]);
  return rows[0]?.wait ?? 0;
}

/** After a successful sign-in: this address is the account's own from now on (90 days). */
export async function rememberLoginClient(pool: pg.Pool, email: string, clientAddress: string | undefined): Promise<void> {
  await pool.query("select herald_private.remember_login_client($1)", [keys(email, clientAddress).accountClient]);
}
