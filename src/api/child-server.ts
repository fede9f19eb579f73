import { fork } from "node:child_process";
import path from "node:path";
import { projectRoot } from "../paths.ts";

export interface ChildServer {
  port: number;
  /** The server process's id (to read its memory use, say). */
  pid: number;
  url: string;
  stop(): Promise<void>;
}

/**
 * Runs a server script (src/api/standalone.ts, or the bench's bare server) in
 * a process of its own and waits for it to report its port over IPC. Its
 * stderr is passed through, so a crash explains itself.
 */
export function forkServer(script: string, env: NodeJS.ProcessEnv): Promise<ChildServer> {
  const child = fork(path.resolve(projectRoot, script), [], { env, stdio: ["ignore", "ignore", "inherit", "ipc"] });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  return new Promise((resolve, reject) => {
    child.once("exit", (code) => reject(new Error(`${script} exited (${code}) before it was listening`)));
    child.once("message", (message: { port: number }) =>
      resolve({
        port: message.port,
        pid: child.pid!,
        url: `http://127.0.0.1:${message.port}`,
        stop: () => {
          child.kill("SIGTERM");
          return exited;
        },
      }),
    );
  });
}
