import type { Task } from "graphile-worker";
import { z } from "zod";
import { keyCacheTtlMs, withTenantContext } from "../src/worker/tenant-context.ts";

/**
 * Moves one tenant's contacts (and, for a data key, its provider credentials,
 * inbound messages and sent texts) to its current data key and hash key, in batches, while the tenant keeps working (queued by `herald keys
 * rotate-tenant` / `rotate-hash`, see src/crypto/rotation.ts). Idempotent:
 * each batch skips rows already current, so a retry redoes only what is left.
 *
 * Processes that cached the tenant's keys before the rotation may write with
 * the old version for up to the key cache lifetime, so the task makes a final
 * pass after that has passed, and only then destroys the retired data key.
 */

const payloadSchema = z.object({ tenant_id: z.uuid(), rotation_id: z.coerce.number().int().positive() });

declare global {
  namespace GraphileWorker {
    interface Tasks {
      contacts__rekey: z.infer<typeof payloadSchema>;
    }
  }
}

const BATCH_SIZE = 500;
const FIRST_ID = "00000000-0000-0000-0000-000000000000";

const task: Task<"contacts__rekey"> = async (rawPayload, helpers) => {
  const { tenant_id: tenantId, rotation_id: rotationId } = payloadSchema.parse(rawPayload);
  const owner = <T>(text: string, values: unknown[]) =>
    helpers.withPgClient(async (client) => (await client.query(text, values)).rows as T[]);
  // Fresh keys: this job exists because they just changed.
  const inTenant = <T>(fn: Parameters<typeof withTenantContext<T>>[1]) =>
    withTenantContext(tenantId, fn, { freshKeys: true });

  const [rotation] = await owner<{ kind: "tenant_data_key" | "hash_key"; started_at: Date; finished_at: Date | null }>(
    "select kind, started_at, finished_at from herald_private.key_rotations where id = $1",
    [rotationId],
  );
  if (!rotation || rotation.finished_at) return; // gone with its tenant, or already done

  const remaining = await inTenant(async (c) =>
    Number((await c.query("select herald_hidden.contacts_on_old_keys() as n")).rows[0].n),
  );
  await owner("update herald_private.key_rotations set total = done + $2 where id = $1", [rotationId, remaining]);

  /** Every row of one table still on an old key, batch by batch (`rekey` is one of the herald_hidden.rekey_* batch functions). */
  const sweepTable = async (rekey: string, countsTowardProgress: boolean) => {
    for (let after = FIRST_ID; ;) {
      const batch = await inTenant(async (c) => {
        const { rows } = await c.query<{ last_id: string | null; scanned: number; moved: number }>(
          `select last_id, scanned, moved from herald_hidden.${rekey}($1, $2)`,
          [after, BATCH_SIZE],
        );
        return rows[0]!;
      });
      if (batch.moved > 0 && countsTowardProgress) {
        await owner(
          "update herald_private.key_rotations set done = done + $2, total = greatest(total, done + $2) where id = $1",
          [rotationId, batch.moved],
        );
      }
      if (!batch.last_id || batch.scanned < BATCH_SIZE) return;
      after = batch.last_id;
    }
  };
  const sweep = async () => {
    await sweepTable("rekey_contacts", true);
    // What contacts wrote in and what was sent to them are under the data key too (they carry no hashes).
    if (rotation.kind === "tenant_data_key") {
      await sweepTable("rekey_inbound_messages", false);
      await sweepTable("rekey_delivery_contents", false);
    }
  };

  await sweep();
  // Wait out every process's key cache, then catch rows they wrote meanwhile.
  const settled = rotation.started_at.getTime() + keyCacheTtlMs() + 1000;
  if (Date.now() < settled) await new Promise((resolve) => setTimeout(resolve, settled - Date.now()));
  await sweep();

  const left = await inTenant(async (c) =>
    Number((await c.query("select herald_hidden.contacts_on_old_keys() as n")).rows[0].n),
  );
  if (left > 0) throw new Error(`${left} contacts still use an old key version; retrying`);
  // Suppressions carry the same encryption and hash as contacts: both kinds of rotation move them.
  await inTenant((c) => c.query("select herald_hidden.rekey_suppressions()"));
  if (rotation.kind === "tenant_data_key") {
    // The tenant's provider credentials are under the same key: move them too.
    await inTenant((c) => c.query("select herald_hidden.rekey_provider_accounts()"));
    // And the secrets that sign its outbound webhooks.
    await inTenant((c) => c.query("select herald_hidden.rekey_webhook_endpoints()"));
    // Nothing uses the retired data key any more: destroy it. Should a straggler
    // have written with it since, the foreign keys (from contacts, inbound
    // messages, deliveries' contents) refuse the delete (23503) and the job
    // retries: a key in use is never destroyed.
    await owner("delete from herald_private.tenant_data_keys where tenant_id = $1 and retired_at is not null", [
      tenantId,
    ]);
  }
  await owner("update herald_private.key_rotations set finished_at = now() where id = $1", [rotationId]);
  helpers.logger.info(`key rotation ${rotationId} finished`);
};

export default task;
