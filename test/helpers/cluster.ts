import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import express from "express";
import { afterAll, beforeAll } from "vitest";
import { createAuthenticator } from "../../src/auth.ts";
import { loadConfig } from "../../src/config.ts";
import { createPool } from "../../src/db/availability.ts";
import { openDatabase, type Database } from "../../src/db/database.ts";
import { pgCtl } from "../../src/db/embedded.ts";
import { watchMigrations } from "../../src/db/migrate.ts";
import { findFreePort } from "../../src/db/ports.ts";
import { ROLES } from "../../src/db/urls.ts";
import { createLogger } from "../../src/logger.ts";
import { projectRoot } from "../../src/paths.ts";
import { ProviderClients, systemProviders } from "../../src/providers/clients.ts";
import { createSandbox } from "../../src/sandbox/sandbox.ts";
import { graphql } from "./api.ts";
import type { TestDb } from "./db.ts";
import type { TenantFixture } from "./fixtures.ts";
import { waitFor, type SandboxServer } from "./messaging.ts";

/**
 * For tests that take PostgreSQL away under running Herald processes: a
 * cluster of the test file's own (embedded, in a temporary directory — never
 * the suite's shared cluster, nor the server of DATABASE_URL, which a test
 * must not restart), Herald started as `npm start` and `npm run worker` start
 * it, and a sandbox that relays providers' callbacks to the API process, so
 * that a callback lost while the API is down is lost as it would be.
 */

export interface OwnCluster {
  db: TestDb;
  dir: string;
  /** `pg_ctl restart -m fast`: every connection is terminated (57P01), the server is back at once. */
  restart(): Promise<void>;
  /** `pg_ctl stop -m fast`, and `start` again. */
  stop(): Promise<void>;
  start(): Promise<void>;
  /** Sets server parameters (ALTER SYSTEM) and restarts so that they apply. */
  reconfigure(settings: Record<string, string | number>): Promise<void>;
  close(): Promise<void>;
}

export async function startOwnCluster(name: string): Promise<OwnCluster> {
  const config = loadConfig({ ...process.env, DATABASE_URL: "" });
  const root = fs.mkdtempSync(path.join(os.tmpdir(), `herald-${name}-`));
  const dir = path.join(root, "postgres");
  const logger = createLogger(process.env.TEST_LOG_LEVEL ?? "warn", 2);
  const database: Database = await openDatabase(config, logger, {
    embeddedDir: dir,
    database: "herald",
    disposable: true,
  });
  // The schema as the suite tests it: committed migrations, then migrations/current/.
  await watchMigrations(database.urls, logger, true);
  const port = new URL(database.urls.admin).port;
  // The test's own pools wait out the outages the test causes.
  const poolOptions = { logger: createLogger("silent", 2), waitForServerMs: 60_000 };
  const db: TestDb = {
    urls: database.urls,
    root: createPool({ connectionString: database.urls.admin, max: 3, name: "test root", ...poolOptions }),
    authenticator: createPool({ connectionString: database.urls.authenticator, max: 3, name: "test", ...poolOptions }),
  };
  const serverOptions = [
    "-o",
    `-p ${port} -c fsync=off -c synchronous_commit=off -c full_page_writes=off`,
    "-l",
    path.join(dir, "server.log"),
    "-w",
    "-t",
    "60",
  ];
  return {
    db,
    dir,
    restart: () => pgCtl(dir, "restart", ["-m", "fast", ...serverOptions]),
    stop: () => pgCtl(dir, "stop", ["-m", "fast", "-w", "-t", "60"]),
    start: () => pgCtl(dir, "start", serverOptions),
    reconfigure: async (settings) => {
      for (const [name, value] of Object.entries(settings))
        await db.root.query(`alter system set ${name} = '${value}'`);
      await pgCtl(dir, "restart", ["-m", "fast", ...serverOptions]);
    },
    close: async () => {
      await Promise.all([db.root.end(), db.authenticator.end()]);
      await database.stop();
      fs.rmSync(root, { recursive: true, force: true });
    },
  };
}

/** The sandbox on the test's own server; `/webhooks/*` is relayed to the API process (when it is up). */
export interface RelaySandbox extends SandboxServer {
  /** Where callbacks go: the API process's URL, or none (refused, as by a server that is down). */
  apiUrl: string | undefined;
  /** How the API answered each relayed callback, by HTTP status (502: it could not be reached). */
  answers: Map<number, number>;
}

export async function startRelaySandbox(): Promise<RelaySandbox> {
  const sandbox = createSandbox({ page: false, callbackDelayMs: 20, keep: 20_000 });
  const app = express();
  app.use("/sandbox", sandbox.router);
  const relay: RelaySandbox = {} as RelaySandbox;
  relay.answers = new Map();
  const count = (status: number) => relay.answers.set(status, (relay.answers.get(status) ?? 0) + 1);
  app.use("/webhooks", express.raw({ type: "*/*", limit: "1mb" }), async (req, res) => {
    if (!relay.apiUrl) {
      count(502);
      res.status(502).end();
      return;
    }
    try {
      const answer = await fetch(`${relay.apiUrl}${req.originalUrl}`, {
        method: req.method,
        headers: Object.fromEntries(
          Object.entries(req.headers).filter(([k]) => /^(content-type|x-twilio-|user-agent)/i.test(k)) as [
            string,
            string,
          ][],
        ),
        body: Buffer.isBuffer(req.body) && req.body.length > 0 ? new Uint8Array(req.body) : undefined,
      });
      count(answer.status);
      res.status(answer.status).send(Buffer.from(await answer.arrayBuffer()));
    } catch {
      count(502);
      res.status(502).end();
    }
  });
  const server = http.createServer(app);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const origin = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  Object.assign(relay, {
    sandbox,
    url: `${origin}/sandbox`,
    origin,
    clients: new ProviderClients(
      systemProviders({ ...loadConfig(), twilio: undefined, sendgrid: undefined }, `${origin}/sandbox`),
    ),
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  });
  return relay;
}

export interface HeraldProcess {
  child: ChildProcess;
  /** The API's URL (`npm start` only). */
  url?: string;
  /** Everything it printed (the last 200 kB). */
  output(): string;
  alive(): boolean;
  /** SIGTERM, and its exit code. */
  stop(): Promise<number | null>;
}

/**
 * `node src/main.ts` (`npm start`: API + worker) or with `--worker-only`
 * (`npm run worker`) against the cluster, sending through the relay sandbox;
 * resolves once it serves /healthz with 200, or has registered its worker.
 */
export async function spawnHerald(
  cluster: OwnCluster,
  relay: RelaySandbox,
  kind: "start" | "worker",
  env: Record<string, string> = {},
): Promise<HeraldProcess> {
  const port = kind === "start" ? await findFreePort() : 0;
  const child = spawn(
    process.execPath,
    [path.join(projectRoot, "src/main.ts"), ...(kind === "worker" ? ["--worker-only"] : [])],
    {
      env: {
        ...process.env,
        DATABASE_URL: cluster.db.urls.admin,
        PORT: String(port),
        // Development: the SDKs talk to <public URL>/sandbox, the relay's sandbox, which calls back there too.
        NODE_ENV: "development",
        HERALD_PUBLIC_URL: relay.origin,
        HERALD_DEMO: "false",
        HERALD_WORKER_CONCURRENCY: "5",
        HERALD_STATUS_CHECK_AFTER_SECONDS: "5",
        HERALD_STATUS_CHECK_INTERVAL_SECONDS: "2",
        LOG_LEVEL: "info",
        ...env,
      },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let output = "";
  const collect = (chunk: Buffer) => void (output = (output + chunk.toString()).slice(-200_000));
  child.stdout!.on("data", collect);
  child.stderr!.on("data", collect);
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const herald: HeraldProcess = {
    child,
    url: kind === "start" ? `http://127.0.0.1:${port}` : undefined,
    output: () => output,
    alive: () => child.exitCode === null && child.signalCode === null,
    stop: () => {
      if (herald.alive()) child.kill("SIGTERM");
      // For a look afterwards: HERALD_TEST_KEEP_LOGS=1 keeps each process's output in the temp directory.
      if (process.env.HERALD_TEST_KEEP_LOGS)
        void exited.then(() => fs.writeFileSync(path.join(os.tmpdir(), `herald-${kind}-${child.pid}.log`), output));
      return exited;
    },
  };
  await waitFor(
    async () => {
      if (!herald.alive()) throw new Error(`Herald (${kind}) exited (${child.exitCode}):\n${output.slice(-4000)}`);
      if (kind === "start") return (await fetch(`${herald.url}/healthz`).catch(() => undefined))?.status === 200;
      const { rows } = await cluster.db.root.query(
        "select 1 from herald_private.worker_processes where split_part(process_id, ':', 2) = $1 and cardinality(worker_ids) > 0",
        [String(child.pid)],
      );
      return rows.length > 0;
    },
    60_000,
    async () => `Herald (${kind}) to start:\n${output.slice(-4000)}`,
  );
  return herald;
}

/** Log lines of a Herald process that mean it crashed or nearly did. */
export const crashSigns = (output: string) =>
  output
    .split("\n")
    .filter((line) => /"level":60|unhandled|uncaught|exited unexpectedly|stopped unexpectedly/.test(line))
    // By design, not a crash: graphile-worker does not await some of its own
    // writes, and a rejection from one while the server is away is logged and
    // survived (src/main.ts); the tests check the process stayed up and lost nothing.
    .filter((line) => !line.includes("the database is unavailable; carrying on"));

/** sendMessage through the API process, as the tenant's owner. */
export async function sendThrough(
  db: TestDb,
  url: string,
  t: TenantFixture,
  input: Record<string, unknown>,
): Promise<string> {
  const authenticator = createAuthenticator(loadConfig(), db.authenticator);
  const token = await authenticator.sign({ role: ROLES.member, tenant_id: t.id, sub: t.ownerId });
  const r = await graphql(
    { url },
    token,
    "mutation($input: SendMessageInput!) { sendMessage(input: $input) { message { rowId } } }",
    { input },
  );
  if (r.body.errors || !r.body.data) throw new Error(`sendMessage failed (${r.status}): ${JSON.stringify(r.body)}`);
  return r.body.data.sendMessage.message.rowId as string;
}

/** Deliveries of the message by status. */
export async function statuses(db: TestDb, messageId: string): Promise<Record<string, number>> {
  const { rows } = await db.root.query<{ status: string; n: number }>(
    "select status, count(*)::int as n from herald_public.deliveries where message_id = $1 group by 1 order by 1",
    [messageId],
  );
  return Object.fromEntries(rows.map((r) => [r.status, r.n]));
}

/** Until every delivery of the message is `delivered` (the callbacks, or the status check, said so). */
export const allDelivered = (db: TestDb, messageId: string, count: number, timeoutMs: number) =>
  waitFor(
    async () => (await statuses(db, messageId)).delivered === count,
    timeoutMs,
    async () => `all ${count} deliveries to be delivered: ${JSON.stringify(await statuses(db, messageId))}`,
  );

/** What a resilience test file runs against: its own cluster, a relay sandbox, `npm start` and one `npm run worker`. */
export interface HeraldPair {
  cluster: OwnCluster;
  relay: RelaySandbox;
  api: HeraldProcess;
  worker: HeraldProcess;
}

/**
 * Starts a HeraldPair before the file's tests and stops it after them. With
 * HERALD_TEST_KEEP_LOGS set, each process's output is kept in
 * /tmp/herald-<name>-<api|worker>.log.
 */
export function useHeraldPair(name: string): HeraldPair {
  const pair = {} as HeraldPair;
  beforeAll(async () => {
    pair.cluster = await startOwnCluster(name);
    pair.relay = await startRelaySandbox();
    [pair.api, pair.worker] = await Promise.all([
      spawnHerald(pair.cluster, pair.relay, "start"),
      spawnHerald(pair.cluster, pair.relay, "worker"),
    ]);
    pair.relay.apiUrl = pair.api.url;
  }, 120_000);
  afterAll(async () => {
    await Promise.all([pair.api?.stop(), pair.worker?.stop()]);
    if (process.env.HERALD_TEST_KEEP_LOGS) {
      for (const [role, p] of [
        ["api", pair.api],
        ["worker", pair.worker],
      ] as const)
        if (p) fs.writeFileSync(`/tmp/herald-${name}-${role}.log`, p.output());
    }
    await pair.relay?.close();
    await pair.cluster?.close();
  });
  return pair;
}
