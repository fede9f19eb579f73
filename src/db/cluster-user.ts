import { createHash } from "node:crypto";
import { execFile } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import type { Logger } from "../logger.ts";

/**
 * PostgreSQL refuses to run as root, so when Herald runs as root the embedded
 * cluster runs as the `postgres` OS user. That user must be able to reach
 * (traverse to) the PostgreSQL binaries and the data directory. A checkout in
 * root's home (mode 700) is out of its reach: then, rather than opening the
 * home directory to others, the binaries are copied, and the cluster placed,
 * under `/var/lib/herald`, and `<data dir>/postgres` becomes a symbolic link to
 * the cluster. Nothing along the checkout's own path changes mode.
 */

const run = promisify(execFile);

/** Where root keeps what the `postgres` user must reach when the checkout is out of its reach. */
export const SYSTEM_DIR = "/var/lib/herald";

export class EmbeddedPostgresError extends Error {
  override name = "EmbeddedPostgresError";
}

export interface ServerUser {
  uid: number;
  gid: number;
}

export interface Binaries {
  pg_ctl: string;
  initdb: string;
}

/** The OS user the server runs as: none (this process's) unless root, else `postgres`, created if needed. */
export async function serverUser(): Promise<ServerUser | undefined> {
  if (process.getuid?.() !== 0) return undefined;
  const lookup = async () => {
    const { stdout: uid } = await run("id", ["-u", "postgres"]);
    const { stdout: gid } = await run("id", ["-g", "postgres"]);
    return { uid: Number(uid.trim()), gid: Number(gid.trim()) };
  };
  try {
    return await lookup();
  } catch {
    await run("useradd", ["--system", "--user-group", "--no-create-home", "postgres"]);
    return lookup();
  }
}

/** Whether `user` can reach `target` (search permission on it and every directory above it). */
async function canReach(user: ServerUser, target: string): Promise<boolean> {
  try {
    await run("/bin/sh", ["-c", 'test -x "$1"', "sh", target], { uid: user.uid, gid: user.gid });
    return true;
  } catch {
    return false;
  }
}

/** Creates `dir` with exactly `mode`, whatever the umask (its parent must exist). */
function makeDir(dir: string, mode: number): void {
  fs.mkdirSync(dir, { recursive: false, mode });
  fs.chmodSync(dir, mode);
}

/** `makeDir` unless it exists already (then left as it is). */
const ensureDir = (dir: string, mode: number) => fs.existsSync(dir) || makeDir(dir, mode);

/** Copies the tree `from` to `to` with the same modes (cpSync's new directories follow the umask). */
function copyTree(from: string, to: string): void {
  fs.cpSync(from, to, { recursive: true, verbatimSymlinks: true, preserveTimestamps: true });
  const sameModes = (source: string, copy: string) => {
    fs.chmodSync(copy, fs.statSync(source).mode & 0o7777);
    for (const entry of fs.readdirSync(source, { withFileTypes: true }))
      if (entry.isDirectory()) sameModes(path.join(source, entry.name), path.join(copy, entry.name));
  };
  sameModes(from, to);
}

/**
 * The binaries the server user can run: the installed ones, or a copy of the
 * package's `native/` tree (binaries, libraries, share) under SYSTEM_DIR, made
 * once per package version.
 */
export async function reachableBinaries(bin: Binaries, user: ServerUser | undefined, logger: Logger) {
  if (!user || (await canReach(user, bin.initdb))) return bin;
  const native = path.dirname(path.dirname(bin.initdb));
  const { version } = JSON.parse(fs.readFileSync(path.join(native, "..", "package.json"), "utf8")) as {
    version: string;
  };
  const target = path.join(SYSTEM_DIR, `postgresql-${version}`);
  if (!fs.existsSync(target)) {
    logger.info(
      { from: native, to: target },
      "the postgres OS user cannot reach the PostgreSQL binaries; copying them",
    );
    ensureDir(SYSTEM_DIR, 0o755);
    const staging = `${target}.${process.pid}.tmp`;
    copyTree(native, staging);
    try {
      fs.renameSync(staging, target); // atomic: a concurrent start sees all of it or none
    } catch (error) {
      fs.rmSync(staging, { recursive: true, force: true });
      if (!fs.existsSync(target)) throw error;
    }
  }
  return {
    pg_ctl: path.join(target, "bin", "pg_ctl"),
    initdb: path.join(target, "bin", "initdb"),
  };
}

/** The directories above a relocated cluster: passable, not listable, by the server user. */
function prepareClusterHome(target: string): void {
  ensureDir(SYSTEM_DIR, 0o755);
  ensureDir(path.dirname(path.dirname(target)), 0o711);
  ensureDir(path.dirname(target), 0o711);
}

/** Where a cluster whose data directory `dir` is out of the server user's reach lives instead. */
export function relocatedClusterDir(dir: string): string {
  const key = createHash("sha256").update(path.resolve(dir)).digest("hex").slice(0, 16);
  return path.join(SYSTEM_DIR, "clusters", key, path.basename(dir));
}

/**
 * The directory the server uses for the cluster `dir`: `dir` itself when the
 * server user can reach it (or runs as this process), else the relocated one,
 * which `dir` then links to. An already-initialised cluster out of reach is
 * not moved: that is the person's call.
 */
export async function reachableDataDir(dir: string, user: ServerUser | undefined, logger: Logger): Promise<string> {
  if (!user) return dir;
  const link = fs.lstatSync(dir, { throwIfNoEntry: false });
  if (link?.isSymbolicLink()) {
    const target = path.resolve(path.dirname(dir), fs.readlinkSync(dir));
    if (target.startsWith(SYSTEM_DIR + path.sep)) prepareClusterHome(target); // recreated if it was deleted
    return target;
  }
  const parent = path.dirname(dir);
  if (await canReach(user, parent)) return dir;
  if (link && fs.existsSync(path.join(dir, "PG_VERSION"))) {
    throw new EmbeddedPostgresError(
      `The embedded PostgreSQL cluster in ${dir} is out of reach of the postgres OS user, which runs it ` +
        `(Herald runs as root). Move the checkout (or HERALD_DATA_DIR) to a directory that user can reach, ` +
        `or grant it passage to ${parent} (e.g. chmod o+x on each directory above it).`,
    );
  }
  const target = relocatedClusterDir(dir);
  prepareClusterHome(target);
  if (link && fs.readdirSync(dir).length > 0)
    throw new EmbeddedPostgresError(
      `${dir} is out of reach of the postgres OS user, which runs the embedded PostgreSQL (Herald runs as root), ` +
        `and holds files but no cluster. Move them away and start again: the cluster will then live in ${target}.`,
    );
  if (link) fs.rmdirSync(dir); // left empty by an earlier, failed start
  fs.symlinkSync(target, dir);
  logger.warn(
    { dir, cluster: target },
    "the postgres OS user cannot reach the data directory (a parent directory is closed to others): " +
      "the embedded cluster lives in /var/lib/herald instead, linked from the data directory",
  );
  return target;
}
