import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { dataDir } from "../paths.ts";

/**
 * The key pair the sandbox signs SendGrid events with, kept in the data
 * directory beside the secrets file (PKCS#8 PEM, mode 0600) rather than made
 * anew at each start: a developer can sign system events by hand with it, and
 * events signed before a restart still verify after it.
 */

export interface EventKeys {
  privateKey: KeyObject;
  publicKey: KeyObject;
}

export const SANDBOX_EVENT_KEY_FILE = "sandbox-sendgrid-event-key.pem";

/** A fresh P-256 key pair, as SendGrid's signed event webhook uses. */
export const newEventKeys = (): EventKeys => generateKeyPairSync("ec", { namedCurve: "prime256v1" });

/** The key pair in `file` (default `.data/sandbox-sendgrid-event-key.pem`), created on first use. */
export function persistentEventKeys(file = path.join(dataDir(), SANDBOX_EVENT_KEY_FILE)): EventKeys {
  if (fs.existsSync(file)) {
    const privateKey = createPrivateKey(fs.readFileSync(file, "utf8"));
    return { privateKey, publicKey: createPublicKey(privateKey) };
  }
  const keys = newEventKeys();
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const temporary = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(temporary, keys.privateKey.export({ type: "pkcs8", format: "pem" }), { mode: 0o600, flag: "wx" });
  fs.renameSync(temporary, file);
  return keys;
}
