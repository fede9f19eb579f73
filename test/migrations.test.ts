import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import {
  COMMITTED_DIR,
  committedFiles,
  forgetUncommittedMigrations,
  frozenMigrationProblems,
  HASHES_PATH,
  recordNewCommittedMigrations,
  type MigrationsLayout,
} from "../src/db/committed-hashes.ts";
import { projectRoot } from "../src/paths.ts";

/**
 * Migration discipline: a committed migration is never edited (a database
 * that ran its earlier text would never see the change), so every committed
 * file's SHA-256 is recorded in migrations/committed.sha256 and compared here;
 * new schema work goes through migrations/current/, one idempotent file per
 * concern.
 */

describe("committed migrations are frozen", () => {
  it("every committed migration matches its recorded hash, and every recorded one is still committed", () => {
    expect(committedFiles().length).toBeGreaterThanOrEqual(8);
    expect(frozenMigrationProblems()).toEqual([]);
  });

  describe("on a copy of migrations/ with a planted defect", () => {
    let dir: string | undefined;
    const copy = (): MigrationsLayout => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), "herald-migrations-"));
      const committedDir = path.join(dir, "committed");
      fs.cpSync(COMMITTED_DIR, committedDir, { recursive: true });
      for (const file of fs.readdirSync(committedDir)) fs.chmodSync(path.join(committedDir, file), 0o644);
      const hashesPath = path.join(dir, "committed.sha256");
      fs.copyFileSync(HASHES_PATH, hashesPath);
      return { committedDir, hashesPath };
    };
    afterEach(() => {
      if (dir) fs.rmSync(dir, { recursive: true, force: true });
      dir = undefined;
    });

    it("an edit to a committed file fails, even one that rewrites graphile-migrate's own hash header", () => {
      const at = copy();
      const file = path.join(at.committedDir, "000005-senders-must-be-provable.sql");
      fs.writeFileSync(
        file,
        fs.readFileSync(file, "utf8").replace("--! Hash: sha1:", "--! Hash: sha1:0") + "\n-- an afterthought\n",
      );
      expect(frozenMigrationProblems(at)).toEqual([
        "000005-senders-must-be-provable.sql was edited after it was committed: restore it (git checkout) and put the change in a new file of migrations/current/",
      ]);
    });

    it("a committed file without a recorded hash fails, saying how to record it; `db commit`'s recording clears it", () => {
      const at = copy();
      fs.writeFileSync(
        path.join(at.committedDir, "000099-new.sql"),
        "--! Previous: sha1:x\n--! Hash: sha1:y\n\nselect 1;\n",
      );
      expect(frozenMigrationProblems(at)).toEqual([
        expect.stringMatching(
          /^000099-new\.sql is committed but its hash is not recorded: `npm run herald -- db commit` records it/,
        ),
      ]);
      expect(recordNewCommittedMigrations(at)).toEqual(["000099-new.sql"]);
      expect(frozenMigrationProblems(at)).toEqual([]);
      // Recording never rewrites an existing line: an edit stays visible.
      fs.appendFileSync(path.join(at.committedDir, "000099-new.sql"), "select 2;\n");
      expect(recordNewCommittedMigrations(at)).toEqual([]);
      expect(frozenMigrationProblems(at)).toHaveLength(1);
    });

    it("a removed committed file fails; `db uncommit`'s forgetting clears it", () => {
      const at = copy();
      const last = committedFiles(at).at(-1)!;
      fs.rmSync(path.join(at.committedDir, last));
      expect(frozenMigrationProblems(at)).toEqual([
        `${last} is recorded but no longer committed: a committed migration is never removed (\`db uncommit\` removes its own record)`,
      ]);
      expect(forgetUncommittedMigrations(at)).toEqual([last]);
      expect(frozenMigrationProblems(at)).toEqual([]);
    });
  });
});

describe("work in progress", () => {
  it("goes through migrations/current/ in folder mode: no current.sql, files named NNN-concern.sql", () => {
    expect(fs.existsSync(path.join(projectRoot, "migrations", "current.sql"))).toBe(false);
    const current = path.join(projectRoot, "migrations", "current");
    expect(fs.statSync(current).isDirectory()).toBe(true);
    const misnamed = fs
      .readdirSync(current)
      .filter((f) => f !== "README.md" && !/^\d{3}-[a-z0-9]+(-[a-z0-9]+)*\.sql$/.test(f));
    expect(misnamed, "migrations/current/ holds NNN-concern.sql files (and its README.md)").toEqual([]);
  });
});
