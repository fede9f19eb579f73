import { loadConfig } from "../../src/config.ts";
import { keyringFromConfig, type Keyring } from "../../src/crypto/keyring.ts";

/** The keys the test API server uses too (same config), so fixtures and requests agree. */
let keyring: Keyring | undefined;
export const testKeyring = (): Keyring => (keyring ??= keyringFromConfig(loadConfig()));
