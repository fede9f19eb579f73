import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { findFreePort } from "../src/db/ports.ts";
import { projectRoot } from "../src/paths.ts";

/**
 * `npm start` as root from a checkout in a home directory of mode 700 (as
 * under /root): PostgreSQL runs as the `postgres` OS user, which cannot
 * traverse the home directory to the binaries nor to `.data/`. Herald still
 * starts, without opening the home directory to others.
 */

const asRoot = process.getuid?.() === 0;
const home = fs.mkdtempSync(path.join(os.tmpdir(), "herald-home-"));
const checkout = path.join(home, "herald");
let child: ChildProcess | undefined;
let transcript = "";

afterAll(() => {
  child?.kill("SIGKILL");
  const link = path.join(checkout, ".data", "postgres");
  // The cluster placed outside the checkout (its per-checkout directory); the shared binaries stay.
  if (fs.lstatSync(link, { throwIfNoEntry: false })?.isSymbolicLink())
    fs.rmSync(path.dirname(fs.readlinkSync(link)), { recursive: true, force: true });
  fs.rmSync(home, { recursive: true, force: true });
});

/** A copy of this checkout (node_modules hard-linked: the binaries inside the closed home too, as after `npm ci`). */
function makeCheckout(): void {
  fs.mkdirSync(checkout);
  for (const entry of fs.readdirSync(projectRoot)) {
    if ([".git", ".data", "node_modules"].includes(entry)) continue;
    fs.cpSync(path.join(projectRoot, entry), path.join(checkout, entry), { recursive: true, verbatimSymlinks: true });
  }
  const linked = spawnSync("cp", ["-al", path.join(projectRoot, "node_modules"), path.join(checkout, "node_modules")]);
  if (linked.status !== 0) fs.symlinkSync(path.join(projectRoot, "node_modules"), path.join(checkout, "node_modules"));
}

function waitForOutput(proc: ChildProcess, pattern: RegExp, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`no ${pattern} within ${timeoutMs} ms:\n${transcript}`)),
      timeoutMs,
    );
    const onData = (chunk: Buffer) => {
      transcript += chunk.toString();
      if (pattern.test(transcript)) {
        clearTimeout(timer);
        resolve(transcript);
      }
    };
    proc.stdout!.on("data", onData);
    proc.stderr!.on("data", onData);
    proc.once("exit", (code) => reject(new Error(`exited with ${code} before ${pattern}:\n${transcript}`)));
  });
}

describe.skipIf(!asRoot)("first start as root, from a checkout under a mode-700 directory", () => {
  it("starts, serves, and stops cleanly; the home directory keeps its mode", async () => {
    fs.chmodSync(home, 0o700);
    makeCheckout();
    const port = await findFreePort();
    const env: NodeJS.ProcessEnv = { ...process.env, DATABASE_URL: "", PORT: String(port), NODE_ENV: "" };
    delete env.HERALD_DATA_DIR;
    delete env.HERALD_EMBEDDED_PG_PORT;
    child = spawn(process.execPath, [path.join(checkout, "src/main.ts")], {
      cwd: checkout,
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    await waitForOutput(child, /Herald is running at/, 120_000);

    const health = await fetch(`http://localhost:${port}/healthz`);
    expect(health.status, transcript).toBe(200);
    // The cluster lives where the postgres user can reach it, linked from the checkout's .data/.
    const link = path.join(checkout, ".data", "postgres");
    expect(fs.lstatSync(link).isSymbolicLink()).toBe(true);
    expect(fs.readlinkSync(link)).toMatch(/^\/var\/lib\/herald\/clusters\//);
    expect(fs.statSync(home).mode & 0o777).toBe(0o700);

    const exitCode = await new Promise<number | null>((resolve) => {
      child!.once("exit", resolve);
      child!.kill("SIGTERM");
    });
    expect(exitCode, transcript.slice(-3000)).toBe(0);
    expect(fs.existsSync(path.join(link, "postmaster.pid"))).toBe(false);
  }, 180_000);
});
