import { execFile, spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { projectRoot } from "../src/paths.ts";

/**
 * Production on the embedded database (NODE_ENV=production, no DATABASE_URL):
 * no demo tenants and no tokens at start, even when HERALD_DEMO asks for them.
 * The development start (demo tenants and their tokens) is test/start.test.ts.
 */

const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "herald-prod-"));
let child: ChildProcess | undefined;
afterAll(() => {
  child?.kill("SIGKILL");
  fs.rmSync(dataDir, { recursive: true, force: true });
});

const env = {
  ...process.env,
  DATABASE_URL: "",
  HERALD_DATA_DIR: dataDir,
  PORT: "0",
  LOG_LEVEL: "info",
  NODE_ENV: "production",
  HERALD_DEMO: "true",
};

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) =>
    execFile(
      process.execPath,
      [path.join(projectRoot, "src/cli.ts"), ...args],
      { env: { ...env, LOG_LEVEL: "silent" } },
      (error, stdout, stderr) => {
        if (error && typeof error.code !== "number") return reject(error);
        resolve({ code: error ? (error.code as number) : 0, stdout, stderr });
      },
    ),
  );
}

describe("production start on the embedded database", () => {
  it("creates no demo tenant and prints no token, even with HERALD_DEMO=true", async () => {
    let transcript = "";
    child = spawn(process.execPath, [path.join(projectRoot, "src/main.ts")], {
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`not started within 60 s:\n${transcript}`)), 60_000);
      const onData = (chunk: Buffer) => {
        transcript += chunk.toString();
        // The banner is written after the demo step, in one piece.
        if (/Herald is running at [^\n]*\n[\s\S]*Health:[^\n]*\n/.test(transcript)) {
          clearTimeout(timer);
          resolve();
        }
      };
      child!.stdout!.on("data", onData);
      child!.stderr!.on("data", onData);
      child!.once("exit", (code) => reject(new Error(`exited with ${code}:\n${transcript}`)));
    });
    expect(transcript).not.toContain("Demo tokens");
    expect(transcript).not.toMatch(/eyJhbGciOi/);
    // The warning goes through the logger, which may flush after the banner.
    const warning = "HERALD_DEMO=true is ignored in production";
    for (const deadline = Date.now() + 5_000; !transcript.includes(warning) && Date.now() < deadline;)
      await new Promise((r) => setTimeout(r, 50));
    expect(transcript).toContain(warning);

    // The database (the same embedded server, which the CLI attaches to) holds no tenant at all.
    const tenants = await cli(["tenant", "list"]);
    expect(tenants.code, tenants.stderr).toBe(0);
    expect(tenants.stdout).not.toMatch(/acme-clinic|globex-events/);

    const exitCode = await new Promise<number | null>((resolve) => {
      child!.once("exit", resolve);
      child!.kill("SIGTERM");
    });
    expect(exitCode, transcript.slice(-2000)).toBe(0);
  }, 120_000);
});
