import type pg from "pg";
import type { Keyring } from "../crypto/keyring.ts";
import { withSession } from "../db/session.ts";
import { ROLES } from "../db/urls.ts";
import { withWorkerSession } from "../worker/tenant-context.ts";

/**
 * How webhook code touches a tenant: only after the tenant is known, and then
 * exactly as a worker job does — one transaction as herald_worker inside that
 * tenant, with its keys — so RLS confines whatever the request says to it.
 *
 * Verifying a signature needs the credential of the account that signed it,
 * which only a tenant session can decrypt. Credentials are cached for as long
 * as the keyring caches tenant keys; a signature that fails against a cached
 * credential is checked once more against a fresh one, so a credential
 * changed at the provider a moment ago does not cost a message.
 */

export interface WebhookContext {
  /** herald_authenticator connections. */
  pool: pg.Pool;
  keyring: Keyring;
}

/**
 * One transaction as herald_worker in `tenantId`, holding its keys; the audit
 * log names the provider (`twilio`, `sendgrid`). `settings`: further
 * transaction-local settings (e.g. `synchronous_commit`).
 */
export async function inTenant<T>(
  ctx: WebhookContext,
  tenantId: string,
  fn: (client: pg.PoolClient) => Promise<T>,
  provider = "provider",
  settings: Record<string, string> = {},
): Promise<T> {
  return withWorkerSession(ctx.pool, ctx.keyring, tenantId, fn, {
    settings: { ...settings, "herald.actor": "webhook", "herald.actor_detail": provider },
  });
}

/**
 * A read inside the tenant without its keys: for looking a row up before the
 * request is verified (unwrapping keys may create a tenant's first one, and a
 * forged request must write nothing).
 */
export function inTenantWithoutKeys<T>(
  ctx: WebhookContext,
  tenantId: string,
  fn: (client: pg.PoolClient) => Promise<T>,
): Promise<T> {
  return withSession(ctx.pool, { role: ROLES.worker, tenantId }, fn);
}

export interface AccountCredential {
  kind: "twilio" | "sendgrid";
  secret: string;
  /** Twilio: the account authenticates with an API key, whose secret does not sign webhooks. */
  apiKey: boolean;
  /** SendGrid: the event webhook's verification key (base64 DER), if the tenant gave one. */
  webhookPublicKey: string | null;
}

/** The decrypted credential of one of the tenant's accounts (any status: late callbacks of a disabled account still count). */
export async function accountCredential(
  ctx: WebhookContext,
  tenantId: string,
  accountId: string,
): Promise<AccountCredential | undefined> {
  return inTenant(ctx, tenantId, async (client) => {
    const { rows } = await client.query<{
      kind: "twilio" | "sendgrid";
      secret: string;
      api_key: boolean;
      webhook_public_key: string | null;
    }>(
      `select a.kind, s.secret, a.twilio_api_key_sid is not null as api_key, s.webhook_public_key
         from herald_public.provider_accounts a, herald_hidden.provider_account_secret(a.id) s
        where a.tenant_id = herald_public.current_tenant_id() and a.id = $1`,
      [accountId],
    );
    const row = rows[0];
    return row && { kind: row.kind, secret: row.secret, apiKey: row.api_key, webhookPublicKey: row.webhook_public_key };
  });
}

/**
 * A small time-limited cache (credentials, number owners): entries live
 * `ttlMs`, and at most `maxEntries` are kept, the oldest loaded going first —
 * unverified requests naming ever new numbers cannot make it grow.
 */
export class TtlCache<V> {
  readonly #entries = new Map<string, { loaded: number; value: Promise<V> }>();
  readonly #ttlMs: number;
  readonly #maxEntries: number;
  constructor(ttlMs: number, maxEntries = 10_000) {
    this.#ttlMs = ttlMs;
    this.#maxEntries = maxEntries;
  }

  /**
   * The cached value, or `load()`'s. `refresh` reloads an entry older than a
   * second: at most one reload a second per key, however many requests ask
   * (forged requests must not turn into database work each).
   */
  get(key: string, load: () => Promise<V>, options: { refresh?: boolean } = {}): Promise<V> {
    const now = Date.now();
    const hit = this.#entries.get(key);
    if (hit && now - hit.loaded < (options.refresh ? 1000 : this.#ttlMs)) return hit.value;
    const value = load();
    const entry = { loaded: now, value };
    // Deleted and set again: a Map keeps insertion order, so the first key is the oldest load.
    this.#entries.delete(key);
    this.#entries.set(key, entry);
    // A failed load is not remembered.
    value.catch(() => this.#entries.get(key) === entry && this.#entries.delete(key));
    while (this.#entries.size > this.#maxEntries) this.#entries.delete(this.#entries.keys().next().value!);
    return value;
  }

  forget(key: string): void {
    this.#entries.delete(key);
  }

  get size(): number {
    return this.#entries.size;
  }
}

/**
 * Checks a signature against the cached credential, and once more against a
 * reloaded one if that fails; `no_credential` when there is none at all.
 */
export async function verifiedWith<C>(
  cache: TtlCache<C | undefined>,
  key: string,
  load: () => Promise<C | undefined>,
  verify: (credential: C) => boolean,
): Promise<"verified" | "forged" | "no_credential"> {
  const cached = await cache.get(key, load);
  if (cached === undefined) return "no_credential";
  if (verify(cached)) return "verified";
  const reloaded = await cache.get(key, load, { refresh: true });
  return reloaded !== undefined && reloaded !== cached && verify(reloaded) ? "verified" : "forged";
}
