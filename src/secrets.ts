import { randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { dataDir } from "./paths.ts";

/**
 * Secrets Herald generates for itself when the environment does not provide them
 * (development, the embedded database). Kept in `.data/secrets.json`, mode 0600,
 * created once and then reused so tokens and encrypted data survive restarts.
 */
export interface GeneratedSecrets {
  jwtSecret: string;
  masterKey: string;
  hashKey: string;
  /** Added on first use by a Herald that has unsubscribe links (files written before lack it). */
  unsubscribeKey?: string;
  /** Set only while `herald keys rotate-master` / `rotate-hash` runs against file-held keys. */
  previousMasterKeys?: string[];
  previousHashKey?: string;
  /** Login passwords for herald_owner / herald_authenticator, and the embedded superuser. */
  rolePasswords: Record<string, string>;
}

const randomBase64 = (bytes: number) => randomBytes(bytes).toString("base64");
const randomPassword = () => randomBytes(24).toString("base64url");

function secretsFile(): string {
  return path.join(dataDir(), "secrets.json");
}

/** Replace the secrets file atomically (write a 0600 temp file, then rename). */
export function saveSecrets(secrets: GeneratedSecrets): void {
  const file = secretsFile();
  const temporary = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(temporary, JSON.stringify(secrets, null, 2) + "\n", { mode: 0o600, flag: "wx" });
  fs.renameSync(temporary, file);
}

/** Read the generated secrets, creating the file (0600) on first use. */
export function loadOrCreateSecrets(): { secrets: GeneratedSecrets; created: boolean } {
  const file = secretsFile();
  if (fs.existsSync(file)) {
    const secrets = JSON.parse(fs.readFileSync(file, "utf8")) as GeneratedSecrets;
    return { secrets, created: false };
  }
  const secrets: GeneratedSecrets = {
    jwtSecret: randomBase64(48),
    masterKey: randomBase64(32),
    hashKey: randomBase64(32),
    unsubscribeKey: randomBase64(32),
    rolePasswords: {
      postgres: randomPassword(),
      herald_owner: randomPassword(),
      herald_authenticator: randomPassword(),
    },
  };
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  // `wx` refuses to overwrite a file another process created meanwhile.
  fs.writeFileSync(file, JSON.stringify(secrets, null, 2) + "\n", { mode: 0o600, flag: "wx" });
  return { secrets, created: true };
}

/**
 * The unsubscribe links' key from the secrets file, added to a file written
 * before Herald had one (then read back: a process that raced this one to
 * write it uses the key that stayed).
 */
export function generatedUnsubscribeKey(secrets: GeneratedSecrets): string {
  if (secrets.unsubscribeKey) return secrets.unsubscribeKey;
  saveSecrets({ ...secrets, unsubscribeKey: randomBase64(32) });
  const saved = loadOrCreateSecrets().secrets.unsubscribeKey!;
  secrets.unsubscribeKey = saved;
  return saved;
}
