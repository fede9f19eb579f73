import path from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root, whatever the current directory is. */
export const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

/** Where Herald keeps generated secrets and the embedded cluster. */
export function dataDir(): string {
  return path.resolve(process.env.HERALD_DATA_DIR ?? path.join(projectRoot, ".data"));
}
