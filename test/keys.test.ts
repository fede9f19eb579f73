import { randomBytes } from "node:crypto";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../src/config.ts";
import { findContactId } from "../src/contacts/store.ts";
import { Keyring } from "../src/crypto/keyring.ts";
import {
  rotateMasterKey,
  rotationProgress,
  startHashKeyRotation,
  startTenantKeyRotation,
  type RotationProgress,
} from "../src/crypto/rotation.ts";
import { withSession } from "../src/db/session.ts";
import { ROLES } from "../src/db/urls.ts";
import { createLogger } from "../src/logger.ts";
import { startWorker, type WorkerHandle } from "../src/worker/worker.ts";
import { asRole, useTestDatabase, withRootDb } from "./helpers/db.ts";
import { seedExtraTenant, seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import { testKeyring } from "./helpers/keys.ts";

/**
 * Key rotation and crypto-shredding against a real database and a real worker.
 * The file's tests run in order and build on each other: the master key
 * rotates first, then a tenant key, then the hash key, then a tenant is shredded.
 */

const db = useTestDatabase();
const config = loadConfig();
let a: TenantFixture;
let b: TenantFixture;
let c: TenantFixture;
let ownerPool: pg.Pool;
/** The keys as they stand after each step; tests replace it as they rotate. */
let keys = { masterKey: config.masterKey, hashKey: config.hashKey };
const keyringFor = (options: Partial<ConstructorParameters<typeof Keyring>[0]> = {}) =>
  new Keyring({ masterKey: keys.masterKey, hashKey: keys.hashKey, cacheTtlMs: 200, ...options });

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  c = await seedExtraTenant(db.current, "tenant-c");
  ownerPool = new pg.Pool({ connectionString: db.current.urls.owner, max: 3 });
  // More than one rekey batch (500) for tenant A.
  const settings = await testKeyring().sessionSettings(db.current.root, a.id);
  await asWorkerCommitted(a.id, settings, async (client) => {
    const docs = Array.from({ length: 1200 }, (_, i) => ({
      phone: `+1303555${String(i).padStart(4, "0")}`,
      email: `k${i}@example.com`,
    }));
    await client.query("select count(*) from herald_hidden.upsert_contacts($1)", [JSON.stringify(docs)]);
  });
});

afterAll(async () => {
  await ownerPool?.end();
});

/** Like asRole, but committed: the worker must see the rows. */
const asWorkerCommitted = (
  tenantId: string,
  settings: Record<string, string>,
  fn: (client: pg.PoolClient) => Promise<unknown>,
) => withSession(db.current.authenticator, { role: ROLES.worker, tenantId, settings }, fn);

/** Every contact of a tenant decrypted with `keyring`, as the worker would. */
async function decryptAll(
  keyring: Keyring,
  tenantId: string,
): Promise<{ phone: string | null; email: string | null; key_version: number; hash_version: number }[]> {
  const settings = await keyring.sessionSettings(db.current.root, tenantId, { fresh: true });
  return asRole(
    db.current,
    { role: ROLES.worker, tenantId, settings },
    async (client) =>
      (
        await client.query(
          "select herald_public.contacts_phone(c) as phone, herald_public.contacts_email(c) as email, key_version, hash_version from herald_public.contacts c",
        )
      ).rows,
  );
}

/** Runs a worker until the rotations finish; `midway` acts once, the first time its condition holds. */
async function runUntilFinished(
  keyring: Keyring,
  ids: string[],
  midway?: { when: (progress: RotationProgress) => boolean; then: () => Promise<unknown> },
) {
  const worker: WorkerHandle = await startWorker({
    ownerUrl: db.current.urls.owner,
    authenticatorUrl: db.current.urls.authenticator,
    concurrency: 2,
    keyring,
    // As `herald keys` runs it: rotation jobs only.
    tasks: ["contacts__rekey"],
    logger: createLogger("silent", 2),
  });
  try {
    const deadline = Date.now() + 30_000;
    for (;;) {
      const progress = await rotationProgress(ownerPool, ids);
      if (midway && midway.when(progress)) {
        await midway.then();
        midway = undefined;
      }
      if (progress.finished === progress.rotations) return progress;
      if (Date.now() > deadline) throw new Error(`rotations unfinished: ${JSON.stringify(progress)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    await worker.stop();
  }
}

describe("key rotation", () => {
  it("rotate-master rewraps every tenant key; contacts decrypt with the new master key alone, not the old", async () => {
    const before = await decryptAll(keyringFor(), a.id);
    const newMaster = randomBytes(32);
    const rotating = keyringFor({ masterKey: newMaster, previousMasterKeys: [keys.masterKey] });
    const { rewrapped, total } = await rotateMasterKey(ownerPool, rotating);
    expect(total).toBe(3);
    expect(rewrapped).toBe(3);

    const oldOnly = keyringFor();
    keys = { ...keys, masterKey: newMaster };
    const after = await decryptAll(keyringFor(), a.id);
    expect(after).toEqual(before);
    expect(after.every((r) => r.phone?.startsWith("+1"))).toBe(true);
    await expect(oldOnly.sessionSettings(db.current.root, a.id, { fresh: true })).rejects.toThrow(/does not hold/);
    // No row was touched: envelopes changed, ciphertext did not.
    expect((await rotateMasterKey(ownerPool, keyringFor())).rewrapped).toBe(0);
  });

  it("rotate-tenant re-encrypts one tenant in batches, catching a write made with the old key meanwhile", async () => {
    // The worker waits out a 1.5 s key cache before its final sweep and before destroying the old key.
    const keyring = keyringFor({ cacheTtlMs: 1500 });
    const staleSettings = await keyring.sessionSettings(db.current.root, a.id, { fresh: true });
    const staleWrite = (phone: string) =>
      asWorkerCommitted(a.id, staleSettings, (client) =>
        client.query("select * from herald_hidden.upsert_contacts($1)", [JSON.stringify([{ phone }])]),
      );
    const { id: rotationId } = await startTenantKeyRotation(ownerPool, keyring, a.id);
    // A second call follows the rotation under way instead of starting another.
    expect(await startTenantKeyRotation(ownerPool, keyring, a.id)).toEqual({ id: rotationId, resumed: true });
    // A process whose key cache predates the rotation writes with version 1
    // after the first sweep has passed, while the task waits out the caches.
    let wroteMidway = false;
    await runUntilFinished(keyring, [rotationId], {
      when: (p) => p.done >= 1201,
      then: async () => {
        await staleWrite("+13125550199");
        wroteMidway = true;
      },
    });
    expect(wroteMidway).toBe(true);

    const rows = await decryptAll(keyringFor(), a.id);
    expect(rows.length).toBe(1202);
    expect(new Set(rows.map((r) => r.key_version))).toEqual(new Set([2]));
    expect(rows.some((r) => r.phone === "+13125550199")).toBe(true);
    const stored = await withRootDb(
      db.current,
      async (client) =>
        (
          await client.query(
            "select tenant_id, version from herald_private.tenant_data_keys order by tenant_id, version",
          )
        ).rows,
    );
    expect(stored.filter((k) => k.tenant_id === a.id)).toEqual([{ tenant_id: a.id, version: 2 }]);
    expect(stored.filter((k) => k.tenant_id === b.id)).toEqual([{ tenant_id: b.id, version: 1 }]);
    // The tenant's provider credential moved with its contacts and still decrypts.
    const freshSettings = await keyringFor().sessionSettings(db.current.root, a.id, { fresh: true });
    const account = await asRole(
      db.current,
      { role: ROLES.worker, tenantId: a.id, settings: freshSettings },
      async (client) =>
        (
          await client.query(
            "select a.key_version, s.secret from herald_public.provider_accounts a, herald_hidden.provider_account_secret(a.id) s where a.id = $1",
            [a.providerAccountId],
          )
        ).rows[0],
    );
    expect(account).toEqual({ key_version: 2, secret: a.providerSecret });
    // A session still holding only the retired key can neither read the re-encrypted rows…
    await expect(
      asRole(db.current, { role: ROLES.worker, tenantId: a.id, settings: staleSettings }, (client) =>
        client.query("select herald_public.contacts_phone(c) from herald_public.contacts c"),
      ),
    ).rejects.toThrow(/no data key for version 2/);
    // …nor write under the destroyed version (the foreign key to tenant_data_keys refuses it).
    await expect(staleWrite("+13125550198")).rejects.toMatchObject({ code: "23503" });
  });

  it("a data key still used by a contact cannot be deleted", async () => {
    const error = await withRootDb(db.current, (client) =>
      client.query("delete from herald_private.tenant_data_keys where tenant_id = $1", [b.id]).then(
        () => undefined,
        (e: { code: string }) => e,
      ),
    );
    expect(error?.code).toBe("23503");
  });

  it("rotate-hash rebuilds every hash; lookups find every contact before, during and after the rebuild", async () => {
    const oldHash = keys.hashKey;
    const newHash = randomBytes(32);
    const rotating = keyringFor({ hashKey: newHash, previousHashKey: oldHash });
    const phones = ["+13035550000", "+13035550999", a.contactPhone];
    const lookUp = async (keyring: Keyring) => {
      const settings = await keyring.sessionSettings(db.current.root, a.id, { fresh: true });
      return asRole(db.current, { role: ROLES.member, tenantId: a.id, settings }, (client) =>
        Promise.all(
          phones.map((p) => findContactId(async (text, values) => (await client.query(text, values)).rows, "phone", p)),
        ),
      );
    };
    const before = await lookUp(keyringFor());
    expect(before.every(Boolean)).toBe(true);

    // Half-way: one batch of rows moved to the new hash key, the rest not yet.
    const settings = await rotating.sessionSettings(db.current.root, a.id, { fresh: true });
    await asWorkerCommitted(a.id, settings, (client) =>
      client.query("select * from herald_hidden.rekey_contacts('00000000-0000-0000-0000-000000000000', 600)"),
    );
    const versions = await withRootDb(
      db.current,
      async (client) =>
        (await client.query("select distinct hash_version from herald_public.contacts where tenant_id = $1", [a.id]))
          .rows.length,
    );
    expect(versions).toBe(2);
    expect(await lookUp(rotating)).toEqual(before);

    const ids = await startHashKeyRotation(ownerPool, rotating);
    expect(ids.length).toBe(3);
    expect(await startHashKeyRotation(ownerPool, rotating)).toEqual(ids);
    await runUntilFinished(rotating, ids);
    keys = { ...keys, hashKey: newHash };
    expect(await lookUp(keyringFor())).toEqual(before);
    // The old hash key alone finds nothing any more.
    expect(await lookUp(keyringFor({ hashKey: oldHash }))).toEqual([null, null, null]);
  });
});

describe("crypto-shredding", () => {
  it("after tenant C is deleted its old ciphertext decrypts with no key Herald holds; A's and B's still do", async () => {
    // What an old backup would hold: C's and B's ciphertext.
    const backup = await withRootDb(
      db.current,
      async (client) =>
        (
          await client.query(
            "select tenant_id, phone_encrypted from herald_public.contacts where tenant_id = any($1)",
            [[b.id, c.id]],
          )
        ).rows,
    );
    const keyring = keyringFor();
    const cKeyBefore = (await keyring.sessionSettings(db.current.root, c.id, { fresh: true }))["herald.data_key"]!;
    const tryDecrypt = (ciphertext: Buffer, key: string) =>
      withRootDb(db.current, (client) =>
        client.query("select public.pgp_sym_decrypt($1, $2) as p", [ciphertext, key]).then(
          (r) => r.rows[0].p as string,
          () => null,
        ),
      );
    expect(await tryDecrypt(backup.find((r) => r.tenant_id === c.id)!.phone_encrypted, cKeyBefore)).toBe(
      c.contactPhone,
    );

    // What `herald tenant delete` does: an operator deletes the tenant; its keys go with it.
    await withSession(db.current.authenticator, { role: ROLES.admin }, (client) =>
      client.query("delete from herald_public.tenants where id = $1", [c.id]),
    );
    const remaining = await withRootDb(db.current, async (client) =>
      (await client.query("select tenant_id from herald_private.tenant_data_keys")).rows.map((r) => r.tenant_id),
    );
    expect(remaining).not.toContain(c.id);
    await expect(keyringFor().sessionSettings(db.current.root, c.id, { fresh: true })).rejects.toThrow(
      /does not exist/,
    );

    // Every data key Herald still holds, tried on C's old ciphertext: none opens it.
    const heldKeys = await Promise.all(
      [a.id, b.id].map(
        async (t) => (await keyringFor().sessionSettings(db.current.root, t, { fresh: true }))["herald.data_key"]!,
      ),
    );
    for (const key of heldKeys) {
      expect(await tryDecrypt(backup.find((r) => r.tenant_id === c.id)!.phone_encrypted, key)).toBeNull();
    }
    expect(await tryDecrypt(backup.find((r) => r.tenant_id === b.id)!.phone_encrypted, heldKeys[1]!)).toBe(
      b.contactPhone,
    );
    expect((await decryptAll(keyringFor(), a.id)).length).toBe(1202);
  });
});
