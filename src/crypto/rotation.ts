import type pg from "pg";
import { type Keyring, unwrapDataKey, wrapDataKey } from "./keyring.ts";

/**
 * Key rotation, run by `herald keys …` on the owner connection (the key tables
 * live in herald_private, which no request role can touch).
 *
 * - Master key: rewrap every tenant data key under the current master key, in
 *   one transaction. No contact row changes: that is the point of envelopes.
 * - Tenant data key: retire the tenant's key, add a new version, and queue a
 *   `contacts__rekey` job that re-encrypts the tenant's rows in batches while
 *   the tenant keeps working (sessions hold both versions meanwhile).
 * - Hash key: queue a `contacts__rekey` job per tenant that rebuilds hashes;
 *   lookups try the current and the previous hash key until it is done.
 */

export class RotationError extends Error {
  override name = "RotationError";
}

async function inTransaction<T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
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

/** Rewraps every tenant key not yet under the current master key. */
export async function rotateMasterKey(ownerPool: pg.Pool, keyring: Keyring): Promise<{ rewrapped: number; total: number }> {
  return inTransaction(ownerPool, async (client) => {
    const { rows } = await client.query<{ tenant_id: string; version: number; wrapped_key: Buffer; master_key_id: Buffer }>(
      "select tenant_id, version, wrapped_key, master_key_id from herald_private.tenant_data_keys for update",
    );
    let rewrapped = 0;
    const target = keyring.currentMasterKeyId;
    const newMaster = keyring.masterKey(target);
    for (const row of rows) {
      if (row.master_key_id.equals(target)) continue;
      const dataKey = unwrapDataKey(keyring.masterKey(row.master_key_id), row.tenant_id, row.version, row.wrapped_key);
      await client.query(
        "update herald_private.tenant_data_keys set wrapped_key = $3, master_key_id = $4 where tenant_id = $1 and version = $2",
        [row.tenant_id, row.version, wrapDataKey(newMaster, row.tenant_id, row.version, dataKey), target],
      );
      rewrapped++;
    }
    return { rewrapped, total: rows.length };
  });
}

const queueRekey = (client: pg.PoolClient, tenantId: string, rotationId: string) =>
  client.query("select graphile_worker.add_job('contacts__rekey', json_build_object('tenant_id', $1::uuid, 'rotation_id', $2::bigint), max_attempts := 25)", [
    tenantId,
    rotationId,
  ]);

/** Starts re-encrypting one tenant under a new data key; returns the rotation's id. */
export async function startTenantKeyRotation(ownerPool: pg.Pool, keyring: Keyring, tenantId: string): Promise<string> {
  return inTransaction(ownerPool, async (client) => {
    const { rows } = await client.query<{ version: number; retired: boolean; retired_at: Date | null }>(
      "select version, retired_at is not null as retired, retired_at from herald_private.tenant_data_keys where tenant_id = $1 order by version for update",
      [tenantId],
    );
    const stillRetiring = rows.find((k) => k.retired);
    if (stillRetiring) {
      throw new RotationError(
        `a key rotation for this tenant is still under way (version ${stillRetiring.version} retired at ${stillRetiring.retired_at?.toISOString()}); ` +
          "it ends when its contacts__rekey job finishes — is a worker running?",
      );
    }
    const current = rows.at(-1);
    if (!current) throw new RotationError("this tenant has no data key yet (it gets one with its first request); nothing to rotate");
    const version = current.version + 1;
    const { wrapped, masterKeyId } = keyring.newWrappedDataKey(tenantId, version);
    await client.query("update herald_private.tenant_data_keys set retired_at = now() where tenant_id = $1 and version = $2", [
      tenantId,
      current.version,
    ]);
    await client.query(
      "insert into herald_private.tenant_data_keys (tenant_id, version, wrapped_key, master_key_id) values ($1, $2, $3, $4)",
      [tenantId, version, wrapped, masterKeyId],
    );
    const rotation = await client.query<{ id: string }>(
      "insert into herald_private.key_rotations (kind, tenant_id, to_version) values ('tenant_data_key', $1, $2) returning id",
      [tenantId, version],
    );
    await queueRekey(client, tenantId, rotation.rows[0]!.id);
    return rotation.rows[0]!.id;
  });
}

/** Queues a hash rebuild for every tenant that has contacts; returns the rotations' ids. */
export async function startHashKeyRotation(ownerPool: pg.Pool, keyring: Keyring): Promise<string[]> {
  const versions = await keyring.hashVersions(ownerPool);
  if (versions.previous === undefined) {
    throw new RotationError("no previous hash key is configured, so there is nothing to rebuild from");
  }
  return inTransaction(ownerPool, async (client) => {
    // Tenants with a data key are the ones that may have contacts.
    const { rows } = await client.query<{ tenant_id: string }>("select distinct tenant_id from herald_private.tenant_data_keys");
    const ids: string[] = [];
    for (const { tenant_id } of rows) {
      const rotation = await client.query<{ id: string }>(
        "insert into herald_private.key_rotations (kind, tenant_id, to_version) values ('hash_key', $1, $2) returning id",
        [tenant_id, versions.current],
      );
      await queueRekey(client, tenant_id, rotation.rows[0]!.id);
      ids.push(rotation.rows[0]!.id);
    }
    return ids;
  });
}

export interface RotationProgress {
  total: number;
  done: number;
  finished: number;
  rotations: number;
}

export async function rotationProgress(ownerPool: pg.Pool, ids: string[]): Promise<RotationProgress> {
  const { rows } = await ownerPool.query<{ total: string; done: string; finished: number; rotations: number }>(
    `select coalesce(sum(total), 0) as total, coalesce(sum(done), 0) as done,
            count(finished_at)::int as finished, count(*)::int as rotations
       from herald_private.key_rotations where id = any ($1::bigint[])`,
    [ids],
  );
  const r = rows[0]!;
  return { total: Number(r.total), done: Number(r.done), finished: r.finished, rotations: r.rotations };
}
