import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { PortInUseError, startApiServer } from "../src/api/server.ts";
import { ConfigError, loadConfig } from "../src/config.ts";
import { EmbeddedPostgresError, startEmbeddedPostgres } from "../src/db/embedded.ts";
import { createLogger } from "../src/logger.ts";
import { useTestDatabase } from "./helpers/db.ts";

/** Mistakes a person makes at start-up get one clear sentence, not a stack trace. */

const logger = createLogger("silent", 2);

function occupyPort(): Promise<{ port: number; close: () => Promise<void> }> {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo;
      resolve({ port, close: () => new Promise((r) => server.close(() => r())) });
    });
  });
}

describe("configuration", () => {
  it.each([
    [{ PORT: "eighty" }, "PORT"],
    [{ HERALD_MASTER_KEY: "c2hvcnQ=" }, "HERALD_MASTER_KEY must be 32 bytes"],
    [{ HERALD_JWT_SECRET: "too-short" }, "at least 32 characters"],
    [
      { HERALD_JWT_JWKS_URL: "https://id.example.test/.well-known/jwks.json" },
      "needs HERALD_JWT_ISSUER and HERALD_JWT_AUDIENCE",
    ],
    [{ TWILIO_ACCOUNT_SID: "AC123" }, "set both TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"],
    [{ DATABASE_URL: "mysql://localhost/herald" }, "DATABASE_URL: must be a postgres:// URL"],
  ])("rejects %o", (env, message) => {
    expect(() => loadConfig({ ...env })).toThrow(ConfigError);
    expect(() => loadConfig({ ...env })).toThrow(message);
  });

  it("accepts an empty environment (development defaults)", () => {
    const config = loadConfig({});
    expect(config.port).toBe(5050);
    expect(config.publicUrl).toBe("http://localhost:5050");
    expect(config.masterKey).toHaveLength(32);
    expect(config.generated).toEqual([
      "HERALD_JWT_SECRET",
      "HERALD_MASTER_KEY",
      "HERALD_HASH_KEY",
      "HERALD_UNSUBSCRIBE_KEY",
    ]);
  });
});

describe("HTTP port", () => {
  const db = useTestDatabase();
  it("in use gives PortInUseError with the fix", async () => {
    const busy = await occupyPort();
    try {
      const config = loadConfig({ PORT: String(busy.port) });
      const attempt = startApiServer({ config, urls: db.current.urls, logger });
      await expect(attempt).rejects.toThrow(PortInUseError);
      await expect(attempt).rejects.toThrow(`Port ${busy.port} is already in use`);
    } finally {
      await busy.close();
    }
  });
});

describe("embedded PostgreSQL", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "herald-embedded-"));
  const clusterDir = path.join(dir, "pg");
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it("refuses a requested port that is taken, saying so", async () => {
    const busy = await occupyPort();
    try {
      const attempt = startEmbeddedPostgres({
        dir: clusterDir,
        superuserPassword: "pw-for-tests",
        port: busy.port,
        logger,
        disposable: true,
      });
      await expect(attempt).rejects.toThrow(EmbeddedPostgresError);
      await expect(attempt).rejects.toThrow(/already in use/);
    } finally {
      await busy.close();
    }
  });

  it("when initdb fails, shows initdb's own output and what to do", async () => {
    const stray = path.join(dir, "not-empty");
    fs.mkdirSync(stray);
    fs.writeFileSync(path.join(stray, "left-over.txt"), "not a cluster");
    const attempt = startEmbeddedPostgres({ dir: stray, superuserPassword: "pw-for-tests", logger, disposable: true });
    await expect(attempt).rejects.toThrow(EmbeddedPostgresError);
    await expect(attempt).rejects.toThrow(
      /initdb failed in .*not-empty:\n.*initdb: error: directory .* exists but is not empty/s,
    );
    await expect(attempt).rejects.toThrow(/What to do: /);
  });

  it("removes a stale lock file left by a crash and starts", async () => {
    // initialised by the previous test; pretend a crashed server left its lock
    fs.writeFileSync(path.join(clusterDir, "postmaster.pid"), `999999\n${clusterDir}\n0\n5432\n`);
    const cluster = await startEmbeddedPostgres({
      dir: clusterDir,
      superuserPassword: "pw-for-tests",
      logger,
      disposable: true,
    });
    try {
      expect(cluster.startedHere).toBe(true);
      const client = new pg.Client({ connectionString: cluster.adminUrl });
      await client.connect();
      const { rows } = await client.query("select current_setting('server_version_num')::int as v");
      expect(rows[0].v).toBeGreaterThanOrEqual(180000);
      await client.end();

      // A second Herald on the same directory, while the first lives, attaches instead of fighting over it.
      const second = await startEmbeddedPostgres({ dir: clusterDir, superuserPassword: "pw-for-tests", logger });
      expect(second.startedHere).toBe(false);
      expect(second.port).toBe(cluster.port);

      // Once the process that started it is gone (killed -9), the next one adopts it and will stop it.
      const stateFile = `${clusterDir}.json`;
      fs.writeFileSync(stateFile, JSON.stringify({ port: cluster.port, ownerPid: 999999 }));
      const adopter = await startEmbeddedPostgres({ dir: clusterDir, superuserPassword: "pw-for-tests", logger });
      expect(adopter.startedHere).toBe(true);
      expect(JSON.parse(fs.readFileSync(stateFile, "utf8")).ownerPid).toBe(process.pid);
    } finally {
      await cluster.stop();
    }
    expect(fs.existsSync(path.join(clusterDir, "postmaster.pid"))).toBe(false);
  });
});
