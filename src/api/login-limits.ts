import { createHmac } from "node:crypto";
import type pg from "pg";

/**
 * Password sign-in limits (herald_private.admit_login, counted in Postgres so
 * they hold across API processes): 10 attempts a minute per account and client
 * address, 60 a minute per address, and for addresses the account has never
 * signed in from, a slower per-account curve (30, draining 2 a minute). An
 * attacker rotating addresses exhausts only that curve: the account's owner,
 * from an address they signed in from before, is not locked out.
 *
 * The database sees keyed hashes (HMAC under a key derived from
 * HERALD_HASH_KEY) of the email and of email and address together, so a copy
 * of it does not tell which addresses an account signs in from; only the
 * per-address scope, kept a minute, names the address.
 */

export class LoginLimits {
  readonly #key: Buffer;

  constructor(hashKey: Buffer) {
    this.#key = createHmac("sha256", hashKey).update("herald login limits").digest();
  }

  #keys(email: string, clientAddress: string | undefined) {
    const mac = (value: string) => createHmac("sha256", this.#key).update(value).digest("hex");
    const account = mac(email.trim().toLowerCase());
    const client = clientAddress ?? "unknown";
    return { account, client, accountClient: mac(`${account}:${client}`) };
  }

  /** Counts one attempt; resolves with the seconds to wait (0: go ahead). */
  async admit(pool: pg.Pool, email: string, clientAddress: string | undefined): Promise<number> {
    const k = this.#keys(email, clientAddress);
    const { rows } = await pool.query<{ wait: number }>("select herald_private.admit_login($1, $2, $3) as wait", [
      k.account,
      k.client,
      k.accountClient,
    ]);
    return rows[0]?.wait ?? 0;
  }

  /**
   * Counts one attempt to accept an invitation (POST /auth/accept-invitation)
   * under the same limits, the token standing for the account: 10 tries a
   * minute per token and address, and the per-address 60 a minute that
   * sign-ins share, so tokens (and an invited account's password) cannot be
   * guessed fast. A token is used once, so no address is remembered for it.
   */
  admitInvitation(pool: pg.Pool, token: string, clientAddress: string | undefined): Promise<number> {
    return this.admit(pool, `invitation:${token}`, clientAddress);
  }

  /** After a successful sign-in: this address is the account's own from now on (90 days). */
  async remember(pool: pg.Pool, email: string, clientAddress: string | undefined): Promise<void> {
    await pool.query("select herald_private.remember_login_client($1)", [
      this.#keys(email, clientAddress).accountClient,
    ]);
  }
}
