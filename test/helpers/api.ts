import { afterAll, beforeAll } from "vitest";
import { forkServer, type ChildServer } from "../../src/api/child-server.ts";
import { startApiServer, type ApiServer } from "../../src/api/server.ts";
import { loadConfig, type Config } from "../../src/config.ts";
import { ROLES } from "../../src/db/urls.ts";
import { createLogger, type Logger } from "../../src/logger.ts";
import type { TestDb } from "./db.ts";
import type { TenantFixture } from "./fixtures.ts";

/** The real HTTP server (PostGraphile, auth, guards) on a free port against this file's database. */
export function useApiServer(
  db: { current: TestDb },
  options: { env?: () => Record<string, string | undefined>; poolSize?: number; logger?: Logger } = {},
): { current: ApiServer; config: Config } {
  const holder = {} as { current: ApiServer; config: Config };
  beforeAll(async () => {
    holder.config = loadConfig({ ...process.env, PORT: "0", NODE_ENV: "production", ...options.env?.() });
    holder.current = await startApiServer({
      config: holder.config,
      urls: db.current.urls,
      logger: options.logger ?? createLogger("silent", 2),
      poolSize: options.poolSize,
    });
  });
  afterAll(async () => {
    await holder.current?.close();
  });
  return holder;
}

/**
 * The API server in a process of its own (src/api/standalone.ts) on this
 * file's database: for what must hold across API processes, not just across
 * servers in one.
 */
export function useApiProcess(
  db: { current: TestDb },
  env: () => Record<string, string | undefined> = () => ({}),
): { current: ChildServer } {
  const holder = {} as { current: ChildServer };
  beforeAll(async () => {
    holder.current = await forkServer("src/api/standalone.ts", {
      ...process.env,
      PORT: "0",
      NODE_ENV: "production",
      HERALD_DATABASE_URLS: JSON.stringify(db.current.urls),
      ...env(),
    });
  });
  afterAll(async () => {
    await holder.current?.stop();
  });
  return holder;
}

export interface GraphQLResponse<T = Record<string, unknown>> {
  status: number;
  body: {
    data?: T;
    errors?: Array<{ message: string; extensions?: Record<string, unknown>; path?: unknown[] }>;
    error?: { code: string; message: string };
  };
}

// Tests read results loosely by default; a caller that cares passes its own type.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function graphql<T = Record<string, any>>(
  server: Pick<ApiServer, "url">,
  token: string | undefined,
  query: string,
  variables?: Record<string, unknown>,
): Promise<GraphQLResponse<T>> {
  const response = await fetch(`${server.url}/graphql`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ query, variables }),
  });
  return { status: response.status, body: (await response.json()) as GraphQLResponse<T>["body"] };
}

/** A JWT for the tenant's owner or its plain member, as Herald signs one at login. */
export const tokenFor = (
  api: Pick<ApiServer, "authenticator">,
  t: TenantFixture,
  who: "owner" | "member",
): Promise<string> =>
  api.authenticator.sign({ role: ROLES.member, tenant_id: t.id, sub: who === "owner" ? t.ownerId : t.memberId });
