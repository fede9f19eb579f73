import { randomBytes } from "node:crypto";
import type { Command } from "commander";
import pg from "pg";
import type { Config } from "../config.ts";
import { Keyring, keyringFromConfig } from "../crypto/keyring.ts";
import {
  REKEY_JOB_KEY_PREFIX,
  rotateMasterKey,
  rotationProgress,
  startHashKeyRotation,
  startTenantKeyRotation,
} from "../crypto/rotation.ts";
import type { Database } from "../db/database.ts";
import { loadOrCreateSecrets, saveSecrets, type GeneratedSecrets } from "../secrets.ts";
import { startWorker } from "../worker/worker.ts";
import { startProgress } from "./progress.ts";
import { CliError, logger, print, requireTenant, slugArg, withDatabase } from "./shared.ts";

/**
 * `herald keys …`. With keys from the environment, the operator switches keys
 * (new key in HERALD_*_KEY, old one in HERALD_*_KEY_PREVIOUS) on every process
 * and these commands finish the job. With keys generated into .data/secrets.json
 * (development), these commands generate the new key themselves; a rotation
 * interrupted half-way resumes on the next run instead of starting another.
 */

const newKey = () => randomBytes(32).toString("base64");

async function withOwnerPool<T>(db: Database, fn: (ownerPool: pg.Pool) => Promise<T>): Promise<T> {
  const ownerPool = new pg.Pool({ connectionString: db.urls.owner, max: 3 });
  try {
    return await fn(ownerPool);
  } finally {
    await ownerPool.end();
  }
}

/** File-held keys are in the memory of a running Herald too: it must not keep using the old one. */
function refuseWhileShared(db: Database) {
  if (db.sharedWithRunningHerald) {
    throw new CliError(
      "Herald is running (npm start) and holds the current key in memory. Stop it, run this, then start it again.",
    );
  }
}

/**
 * With keys generated into .data/secrets.json: a new key goes in and the old one
 * is kept as "previous" until the rotation completes. A file that already has a
 * previous key is an interrupted rotation, which this run resumes.
 */
function secretsForRotation(
  config: Config,
  db: Database,
  kind: "master" | "hash",
): { secrets: GeneratedSecrets; fromFile: boolean } {
  const fromFile = config.generated.includes(kind === "master" ? "HERALD_MASTER_KEY" : "HERALD_HASH_KEY");
  let { secrets } = loadOrCreateSecrets();
  if (!fromFile) return { secrets, fromFile };
  refuseWhileShared(db);
  const resuming = kind === "master" ? Boolean(secrets.previousMasterKeys?.length) : Boolean(secrets.previousHashKey);
  if (!resuming) {
    secrets =
      kind === "master"
        ? { ...secrets, masterKey: newKey(), previousMasterKeys: [secrets.masterKey] }
        : { ...secrets, hashKey: newKey(), previousHashKey: secrets.hashKey };
    saveSecrets(secrets);
  }
  return { secrets, fromFile };
}

const keyringOf = (config: Config, secrets: GeneratedSecrets, useFile: { master: boolean; hash: boolean }) =>
  new Keyring({
    masterKey: useFile.master ? Buffer.from(secrets.masterKey, "base64") : config.masterKey,
    previousMasterKeys: useFile.master
      ? (secrets.previousMasterKeys ?? []).map((k) => Buffer.from(k, "base64"))
      : config.previousMasterKeys,
    hashKey: useFile.hash ? Buffer.from(secrets.hashKey, "base64") : config.hashKey,
    previousHashKey:
      useFile.hash && secrets.previousHashKey ? Buffer.from(secrets.previousHashKey, "base64") : config.previousHashKey,
  });

/** The rotations' jobs that keep failing, with their last error. */
async function failingRotations(
  ownerPool: pg.Pool,
  ids: string[],
): Promise<{ tenant: string; attempts: number; error: string }[]> {
  const { rows } = await ownerPool.query<{ tenant: string; attempts: number; error: string }>(
    `select r.tenant_id as tenant, j.attempts, j.last_error as error
       from graphile_worker.jobs j
       join herald_private.key_rotations r on j.key = $2 || r.id
      where r.id = any ($1::bigint[]) and j.attempts >= 3 and j.last_error is not null`,
    [ids, REKEY_JOB_KEY_PREFIX],
  );
  return rows;
}

/** Runs a worker in this process until the rotations finish, with progress; stops waiting on a job that keeps failing. */
async function runRotations(db: Database, ownerPool: pg.Pool, keyring: Keyring, ids: string[], label: string) {
  if (ids.length === 0) return;
  const worker = await startWorker({
    ownerUrl: db.urls.owner,
    authenticatorUrl: db.urls.authenticator,
    concurrency: 2,
    keyring,
    // Rotation jobs only: sends and webhook posts belong to the real workers.
    tasks: ["contacts__rekey"],
    logger: logger.child({ component: "keys" }),
  });
  const progress = startProgress(label, "contacts");
  try {
    for (;;) {
      const p = await rotationProgress(ownerPool, ids);
      progress.update(p.done, p.total, p.done);
      if (p.finished === p.rotations) return;
      const failing = await failingRotations(ownerPool, ids);
      if (failing.length > 0) {
        throw new CliError(
          failing.map((f) => `tenant ${f.tenant}: ${f.attempts} attempts failed, last with "${f.error}"`).join("\n") +
            "\nIts job keeps retrying with backoff in Herald's worker; both key versions stay usable meanwhile." +
            " Fix the cause (see the worker's log), then run this command again: it follows the rotation under way.",
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  } finally {
    progress.stop();
    await worker.stop();
  }
}

export function registerKeyCommands(program: Command): void {
  const keys = program.command("keys").description("Rotate the master key, a tenant's data key, or the hash key.");

  keys
    .command("rotate-master")
    .description("Rewrap every tenant's data key under the current master key (no contact is re-encrypted).")
    .action(async () =>
      withDatabase(async ({ config, db }) => {
        const { secrets, fromFile } = secretsForRotation(config, db, "master");
        const keyring = keyringOf(config, secrets, { master: fromFile, hash: false });
        const { rewrapped, total } = await withOwnerPool(db, (ownerPool) => rotateMasterKey(ownerPool, keyring));
        if (fromFile) saveSecrets({ ...secrets, previousMasterKeys: undefined });
        print(
          `Rewrapped ${rewrapped} of ${total} tenant data keys under master key ${keyring.currentMasterKeyId.toString("hex")}.`,
        );
        print(
          fromFile
            ? "The old master key is gone from .data/secrets.json."
            : "Every tenant key now uses HERALD_MASTER_KEY: remove HERALD_MASTER_KEY_PREVIOUS and destroy the old key.",
        );
      }),
    );

  keys
    .command("rotate-tenant")
    .description("Give a tenant a new data key and re-encrypt its contacts in the background, with progress.")
    .argument("<slug>", "the tenant", slugArg)
    .option("--no-wait", "queue the re-encryption for Herald's worker and return")
    .action(async (slug: string, opts: { wait: boolean }) =>
      withDatabase(async ({ config, db, pool }) => {
        const tenant = await requireTenant(pool, slug);
        const keyring = keyringFromConfig(config);
        await withOwnerPool(db, async (ownerPool) => {
          const { id, resumed } = await startTenantKeyRotation(ownerPool, keyring, tenant.id).catch((error: Error) => {
            throw new CliError(error.message);
          });
          if (resumed) print(`A rotation of ${slug}'s key is already under way (rotation ${id}); following it.`);
          if (!opts.wait) {
            print(`Rotation ${id} for ${slug} is queued; Herald's worker re-encrypts its contacts.`);
            return;
          }
          await runRotations(db, ownerPool, keyring, [id], `Re-encrypting ${slug}`);
          print(`${slug} now uses a new data key; the old one is destroyed.`);
        });
      }),
    );

  keys
    .command("rotate-hash")
    .description("Rebuild every contact hash under the current hash key; lookups keep working meanwhile.")
    .action(async () =>
      withDatabase(async ({ config, db }) => {
        const { secrets, fromFile } = secretsForRotation(config, db, "hash");
        if (!fromFile && !config.previousHashKey) {
          throw new CliError(
            "Set HERALD_HASH_KEY to the new key and HERALD_HASH_KEY_PREVIOUS to the old one for every Herald process, restart them, then run this.",
          );
        }
        const keyring = keyringOf(config, secrets, { master: false, hash: fromFile });
        await withOwnerPool(db, async (ownerPool) => {
          const ids = await startHashKeyRotation(ownerPool, keyring);
          await runRotations(db, ownerPool, keyring, ids, "Rebuilding hashes");
          print(`Rebuilt contact hashes for ${ids.length} tenants.`);
        });
        if (fromFile) saveSecrets({ ...secrets, previousHashKey: undefined });
        else print("Every hash uses HERALD_HASH_KEY now: remove HERALD_HASH_KEY_PREVIOUS and restart Herald.");
      }),
    );
}
