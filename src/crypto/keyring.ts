import { createCipheriv, createDecipheriv, createHmac, randomBytes } from "node:crypto";
import type pg from "pg";

/**
 * Envelope encryption for contact PII.
 *
 * - Each tenant has a random 256-bit data key. Postgres stores it only wrapped
 *   (AES-256-GCM) by the master key, which never leaves Herald's processes.
 * - Each tenant's hash key is derived here from HERALD_HASH_KEY and the tenant
 *   id, so the global hash key never reaches Postgres and no two tenants share
 *   a lookup key.
 * - A request or job gets its tenant's unwrapped keys as transaction-local
 *   settings (bind parameters of `set_config`), read in SQL only by the
 *   herald_hidden crypto helpers (migrations/committed/000002-contacts-…sql).
 */

export type KeySettings = Record<string, string>;

export interface KeyringOptions {
  masterKey: Buffer;
  previousMasterKeys?: Buffer[];
  hashKey: Buffer;
  previousHashKey?: Buffer;
  /** How long unwrapped tenant keys are reused; rotation tasks wait this long before retiring a key. */
  cacheTtlMs?: number;
}

export class KeyError extends Error {
  override name = "KeyError";
}

const GCM_NONCE_BYTES = 12;
const GCM_TAG_BYTES = 16;
export const DEFAULT_KEY_CACHE_TTL_MS = 10_000;

/** A key's public name: 8 bytes of HMAC(key, constant). Identifies it without revealing it. */
export function keyId(key: Buffer): Buffer {
  return createHmac("sha256", key).update("herald/key-id").digest().subarray(0, 8);
}

const associatedData = (tenantId: string, version: number) =>
  Buffer.from(`herald/tenant-data-key/${tenantId}/${version}`);

export function wrapDataKey(masterKey: Buffer, tenantId: string, version: number, dataKey: Buffer): Buffer {
  const nonce = randomBytes(GCM_NONCE_BYTES);
  const cipher = createCipheriv("aes-256-gcm", masterKey, nonce);
  cipher.setAAD(associatedData(tenantId, version));
  const body = Buffer.concat([cipher.update(dataKey), cipher.final()]);
  return Buffer.concat([nonce, body, cipher.getAuthTag()]);
}

export function unwrapDataKey(masterKey: Buffer, tenantId: string, version: number, wrapped: Buffer): Buffer {
  const nonce = wrapped.subarray(0, GCM_NONCE_BYTES);
  const tag = wrapped.subarray(wrapped.length - GCM_TAG_BYTES);
  const body = wrapped.subarray(GCM_NONCE_BYTES, wrapped.length - GCM_TAG_BYTES);
  const decipher = createDecipheriv("aes-256-gcm", masterKey, nonce);
  decipher.setAAD(associatedData(tenantId, version));
  decipher.setAuthTag(tag);
  return Buffer.concat([decipher.update(body), decipher.final()]);
}

/** The tenant's own lookup key: HMAC(global hash key, tenant id). */
export function tenantHashKey(hashKey: Buffer, tenantId: string): Buffer {
  return createHmac("sha256", hashKey).update(`herald/contact-hash/${tenantId}`).digest();
}

interface StoredKey {
  version: number;
  wrapped_key: Buffer;
  master_key_id: Buffer;
  retired: boolean;
}

export class Keyring {
  readonly cacheTtlMs: number;
  readonly #masterKeys: Map<string, Buffer>;
  readonly #currentMasterId: Buffer;
  readonly #hashKey: Buffer;
  readonly #previousHashKey?: Buffer;
  #hashVersions?: Promise<{ current: number; previous?: number }>;
  readonly #cache = new Map<string, { expires: number; settings: Promise<KeySettings> }>();

  constructor(options: KeyringOptions) {
    this.cacheTtlMs = options.cacheTtlMs ?? DEFAULT_KEY_CACHE_TTL_MS;
    this.#currentMasterId = keyId(options.masterKey);
    this.#masterKeys = new Map(
      [options.masterKey, ...(options.previousMasterKeys ?? [])].map((k) => [keyId(k).toString("hex"), k]),
    );
    this.#hashKey = options.hashKey;
    this.#previousHashKey = options.previousHashKey;
  }

  get currentMasterKeyId(): Buffer {
    return this.#currentMasterId;
  }

  masterKey(id: Buffer): Buffer {
    const key = this.#masterKeys.get(id.toString("hex"));
    if (!key) {
      throw new KeyError(
        `a tenant data key is wrapped by master key ${id.toString("hex")}, which this process does not hold ` +
          "(list retired keys in HERALD_MASTER_KEY_PREVIOUS until `herald keys rotate-master` has run)",
      );
    }
    return key;
  }

  /** Versions of the current (and retiring) hash key, registered by fingerprint on first use. */
  hashVersions(db: pg.Pool | pg.ClientBase): Promise<{ current: number; previous?: number }> {
    this.#hashVersions ??= (async () => {
      const version = async (key: Buffer) => {
        const { rows } = await db.query<{ v: number }>("select herald_private.hash_key_version($1) as v", [keyId(key)]);
        return rows[0]!.v;
      };
      return {
        current: await version(this.#hashKey),
        previous: this.#previousHashKey ? await version(this.#previousHashKey) : undefined,
      };
    })();
    this.#hashVersions.catch(() => (this.#hashVersions = undefined));
    return this.#hashVersions;
  }

  /** A fresh data key for a tenant, wrapped by the current master key. */
  newWrappedDataKey(tenantId: string, version: number): { wrapped: Buffer; masterKeyId: Buffer } {
    const masterKey = this.masterKey(this.#currentMasterId);
    return { wrapped: wrapDataKey(masterKey, tenantId, version, randomBytes(32)), masterKeyId: this.#currentMasterId };
  }

  /**
   * The settings that let one transaction read and write `tenantId`'s PII.
   * Cached for `cacheTtlMs`; `fresh` skips the cache (rotation tasks).
   */
  sessionSettings(db: pg.Pool, tenantId: string, options: { fresh?: boolean } = {}): Promise<KeySettings> {
    const now = Date.now();
    const cached = this.#cache.get(tenantId);
    if (cached && cached.expires > now && !options.fresh) return cached.settings;
    const settings = this.#loadSettings(db, tenantId);
    this.#cache.set(tenantId, { expires: now + this.cacheTtlMs, settings });
    settings.catch(() => this.#cache.delete(tenantId));
    return settings;
  }

  forget(tenantId: string): void {
    this.#cache.delete(tenantId);
  }

  async #loadSettings(db: pg.Pool, tenantId: string): Promise<KeySettings> {
    let stored = await this.#storedKeys(db, tenantId);
    if (stored.length === 0) {
      const { wrapped, masterKeyId } = this.newWrappedDataKey(tenantId, 1);
      await db.query("select herald_private.add_tenant_data_key($1, $2, $3)", [tenantId, wrapped, masterKeyId]);
      stored = await this.#storedKeys(db, tenantId);
      if (stored.length === 0) throw new KeyError(`tenant ${tenantId} does not exist`);
    }
    const current = stored.find((k) => !k.retired);
    if (!current) throw new KeyError(`tenant ${tenantId} has no current data key`);
    const previous = stored.find((k) => k.retired);
    const unwrap = (k: StoredKey) =>
      unwrapDataKey(this.masterKey(k.master_key_id), tenantId, k.version, k.wrapped_key).toString("base64");

    const hash = await this.hashVersions(db);
    const settings: KeySettings = {
      "herald.data_key": unwrap(current),
      "herald.data_key_version": String(current.version),
      "herald.hash_key": tenantHashKey(this.#hashKey, tenantId).toString("base64"),
      "herald.hash_key_version": String(hash.current),
    };
    if (previous) {
      settings["herald.data_key_previous"] = unwrap(previous);
      settings["herald.data_key_previous_version"] = String(previous.version);
    }
    if (this.#previousHashKey && hash.previous !== undefined && hash.previous !== hash.current) {
      settings["herald.hash_key_previous"] = tenantHashKey(this.#previousHashKey, tenantId).toString("base64");
      settings["herald.hash_key_previous_version"] = String(hash.previous);
    }
    return settings;
  }

  async #storedKeys(db: pg.Pool, tenantId: string): Promise<StoredKey[]> {
    const { rows } = await db.query<StoredKey>(
      "select version, wrapped_key, master_key_id, retired from herald_private.tenant_data_keys($1)",
      [tenantId],
    );
    return rows;
  }
}

export function keyringFromConfig(config: {
  masterKey: Buffer;
  previousMasterKeys: Buffer[];
  hashKey: Buffer;
  previousHashKey?: Buffer;
}): Keyring {
  return new Keyring({
    masterKey: config.masterKey,
    previousMasterKeys: config.previousMasterKeys,
    hashKey: config.hashKey,
    previousHashKey: config.previousHashKey,
  });
}
