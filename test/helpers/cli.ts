import { execFile } from "node:child_process";
import path from "node:path";
import { projectRoot } from "../../src/paths.ts";
import type { TestDb } from "./db.ts";

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * `herald <args>` in a process of its own, as an operator runs it: with this
 * file's database as DATABASE_URL (its administrator's URL), quiet unless
 * `env` says otherwise. Resolves with the exit code, whatever it is, so that
 * a test states the code it expects.
 */
export function runCli(db: TestDb, args: string[], env: Record<string, string | undefined> = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      [path.join(projectRoot, "src/cli.ts"), ...args],
      { env: { ...process.env, DATABASE_URL: db.urls.admin, LOG_LEVEL: "silent", ...env } },
      (error, stdout, stderr) => {
        // A number is the process's exit code; anything else (it could not start) is the test's failure.
        if (error && typeof error.code !== "number") return reject(error);
        resolve({ code: error ? (error.code as number) : 0, stdout, stderr });
      },
    );
  });
}
