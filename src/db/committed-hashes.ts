import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { projectRoot } from "../paths.ts";

/**
 * Committed migrations are frozen: a database that ran a migration's text
 * never runs it again, so an edit after commit reaches new databases only and
 * splits the fleet in two. graphile-migrate's own `--! Hash` header does not
 * prevent that (an edit can rewrite the header too), so each file's SHA-256 is
 * recorded here, in `sha256sum` format (`cd migrations/committed && sha256sum
 * -c ../committed.sha256` checks them by hand), and test/migrations.test.ts
 * fails when a file is edited, removed, or committed without its hash.
 * `herald db commit` appends the new file's line; `herald db uncommit` removes it.
 */

export const COMMITTED_DIR = path.join(projectRoot, "migrations", "committed");
export const HASHES_PATH = path.join(projectRoot, "migrations", "committed.sha256");

/** Where the files and their record are (the repository's, or a copy in a test). */
export interface MigrationsLayout {
  committedDir: string;
  hashesPath: string;
}
const REPOSITORY: MigrationsLayout = { committedDir: COMMITTED_DIR, hashesPath: HASHES_PATH };

const sha256 = (at: MigrationsLayout, file: string) =>
  createHash("sha256")
    .update(fs.readFileSync(path.join(at.committedDir, file)))
    .digest("hex");

/** The committed migration files, in order. */
export const committedFiles = (at = REPOSITORY): string[] =>
  fs
    .readdirSync(at.committedDir)
    .filter((f) => f.endsWith(".sql"))
    .sort();

/** The recorded hashes: file name → SHA-256 (hex). */
export function recordedHashes(at = REPOSITORY): Map<string, string> {
  const text = fs.existsSync(at.hashesPath) ? fs.readFileSync(at.hashesPath, "utf8") : "";
  const recorded = new Map<string, string>();
  for (const line of text.split("\n").filter((l) => l.trim() !== "")) {
    const match = /^([0-9a-f]{64}) {2}(\S+)$/.exec(line);
    if (!match) throw new Error(`${path.basename(at.hashesPath)}: not a "<sha256>  <file>" line: ${line}`);
    recorded.set(match[2]!, match[1]!);
  }
  return recorded;
}

/** What breaks the freeze: each problem names the file and what to do. */
export function frozenMigrationProblems(at = REPOSITORY): string[] {
  const recorded = recordedHashes(at);
  const files = committedFiles(at);
  const problems: string[] = [];
  for (const file of files) {
    const expected = recorded.get(file);
    if (expected === undefined) {
      problems.push(
        `${file} is committed but its hash is not recorded: \`npm run herald -- db commit\` records it; for a file committed another way, append \`sha256sum ${file}\`'s line to migrations/committed.sha256`,
      );
    } else if (sha256(at, file) !== expected) {
      problems.push(
        `${file} was edited after it was committed: restore it (git checkout) and put the change in a new file of migrations/current/`,
      );
    }
  }
  for (const file of recorded.keys()) {
    if (!files.includes(file))
      problems.push(
        `${file} is recorded but no longer committed: a committed migration is never removed (\`db uncommit\` removes its own record)`,
      );
  }
  return problems;
}

/** Appends the hash of every committed file not yet recorded (after `db commit`); never changes a recorded one. */
export function recordNewCommittedMigrations(at = REPOSITORY): string[] {
  const recorded = recordedHashes(at);
  const added = committedFiles(at).filter((f) => !recorded.has(f));
  if (added.length > 0) fs.appendFileSync(at.hashesPath, added.map((f) => `${sha256(at, f)}  ${f}\n`).join(""));
  return added;
}

/** Drops the records of files that are no longer committed (after `db uncommit` moved the last one back). */
export function forgetUncommittedMigrations(at = REPOSITORY): string[] {
  const recorded = recordedHashes(at);
  const files = new Set(committedFiles(at));
  const gone = [...recorded.keys()].filter((f) => !files.has(f));
  if (gone.length > 0) {
    fs.writeFileSync(
      at.hashesPath,
      [...recorded]
        .filter(([f]) => files.has(f))
        .map(([f, h]) => `${h}  ${f}\n`)
        .join(""),
    );
  }
  return gone;
}
