import type pg from "pg";
import { inTransaction } from "../db/session.ts";
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

/** Rewraps every tenant key not yet under the current master key. */
export async function rotateMasterKey(
  ownerPool: pg.Pool,
  keyring: Keyring,
): Promise<{ rewrapped: number; total: number }> {
  return inTransaction(ownerPool, async (client) => {
    const { rows } = await client.query<{
      tenant_id: string;
      version: number;
      wrapped_key: Buffer;
      master_key_id: Buffer;
    }>("select tenant_id, version, wrapped_key, master_key_id from herald_private.tenant_data_keys for update");
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

/** The rotation's job; its job_key names the rotation, so the CLI can find the job's attempts and errors. */
export const REKEY_JOB_KEY_PREFIX = "contacts__rekey:";
const rekeyJobKey = (rotationId: string) => `${REKEY_JOB_KEY_PREFIX}${rotationId}`;

const queueRekey = (client: pg.PoolClient, tenantId: string, rotationId: string) =>
  client.query(
    `select graphile_worker.add_job('contacts__rekey', json_build_object('tenant_id', $1::uuid, 'rotation_id', $2::bigint),
                                    job_key := $3, max_attempts := 25)`,
    [tenantId, rotationId, rekeyJobKey(rotationId)],
  );

const unfinishedRotations = async (client: pg.PoolClient, kind: string, where: string, params: unknown[]) =>
  (
    await client.query<{ id: string }>(
      `select id from herald_private.key_rotations where kind = $1 and finished_at is null and ${where} order by id`,
      [kind, ...params],
    )
  ).rows.map((r) => r.id);

/**
 * Starts re-encrypting one tenant under a new data key and returns the
 * rotation's id — or, while one is still under way, that one's id (resumed, not restarted).
 */
export async function startTenantKeyRotation(
  ownerPool: pg.Pool,
  keyring: Keyring,
  tenantId: string,
): Promise<{ id: string; resumed: boolean }> {
  return inTransaction(ownerPool, async (client) => {
    const { rows } = await client.query<{ version: number; retired: boolean }>(
      "select version, retired_at is not null as retired from herald_private.tenant_data_keys where tenant_id = $1 order by version for update",
      [tenantId],
    );
    if (rows.some((k) => k.retired)) {
      const [id] = await unfinishedRotations(client, "tenant_data_key", "tenant_id = $2", [tenantId]);
      if (!id)
        throw new RotationError(
          "this tenant has a retired key but no rotation under way; `herald keys rotate-tenant` cannot resume it",
        );
      return { id, resumed: true };
    }
    const current = rows.at(-1);
    if (!current)
      throw new RotationError(
        "this tenant has no data key yet (it gets one with its first request); nothing to rotate",
      );
    const version = current.version + 1;
    const { wrapped, masterKeyId } = keyring.newWrappedDataKey(tenantId, version);
    await client.query(
      "update herald_private.tenant_data_keys set retired_at = now() where tenant_id = $1 and version = $2",
      [tenantId, current.version],
    );
    await client.query(
      "insert into herald_private.tenant_data_keys (tenant_id, version, wrapped_key, master_key_id) values ($1, $2, $3, $4)",
      [tenantId, version, wrapped, masterKeyId],
    );
    const rotation = await client.query<{ id: string }>(
      "insert into herald_private.key_rotations (kind, tenant_id, to_version) values ('tenant_data_key', $1, $2) returning id",
      [tenantId, version],
    );
    await queueRekey(client, tenantId, rotation.rows[0]!.id);
    return { id: rotation.rows[0]!.id, resumed: false };
  });
}

/** Queues a hash rebuild for every tenant that has contacts (or resumes the one under way); returns the rotations' ids. */
export async function startHashKeyRotation(ownerPool: pg.Pool, keyring: Keyring): Promise<string[]> {
  const versions = await keyring.hashVersions(ownerPool);
  if (versions.previous === undefined) {
    throw new RotationError("no previous hash key is configured, so there is nothing to rebuild from");
  }
  return inTransaction(ownerPool, async (client) => {
    // One rebuild per hash key version: a second run watches the first.
    await client.query("lock table herald_private.key_rotations in share row exclusive mode");
    const under = await unfinishedRotations(client, "hash_key", "to_version = $2", [versions.current]);
    if (under.length > 0) return under;
    // Tenants with a data key are the ones that may have contacts.
    const { rows } = await client.query<{ tenant_id: string }>(
      "select distinct tenant_id from herald_private.tenant_data_keys",
    );
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
