import type http from "node:http";
import express, { type Express, type RequestHandler } from "express";
import type pg from "pg";
import { postgraphile, type PostGraphileInstance } from "postgraphile";
import { grafserv } from "postgraphile/grafserv/express/v4";
import { makeHeraldPreset } from "../../../graphile.config.ts";
import type { Authenticator } from "../../auth.ts";
import type { Keyring } from "../../crypto/keyring.ts";
import type { Logger } from "../../logger.ts";
import { operationVariablesGuard } from "../guards.ts";
import { requireIdentity } from "../middleware/require-identity.ts";
import { rateLimit } from "../middleware/rate-limit.ts";
import { tenantConcurrency } from "../tenant-concurrency.ts";

/** Largest GraphQL request body accepted (bytes); larger bodies get 413. */
const GRAPHQL_BODY_LIMIT = 100_000;

/** Before GraphQL sees any request: who it is (401), the tenant's rate (429), the tenant's share of this process. */
export function graphqlGate(authenticator: Authenticator, pool: pg.Pool, logger: Logger): RequestHandler[] {
  return [requireIdentity(authenticator, logger), rateLimit(pool, logger), tenantConcurrency()];
}

/** For POST: Grafserv reads an already-parsed body; parsing here lets the guard see variables. */
export const graphqlBody: RequestHandler[] = [express.json({ limit: GRAPHQL_BODY_LIMIT }), operationVariablesGuard];

/**
 * PostGraphile on `/graphql` (and GraphiQL in development), its schema built
 * now: a plugin or schema error must fail the start, not every request. On
 * that failure it is released before the error is thrown.
 */
export async function mountPostGraphile(
  app: Express,
  server: http.Server,
  options: { pool: pg.Pool; keyring: Keyring; development: boolean; logger: Logger },
): Promise<PostGraphileInstance> {
  const pgl = postgraphile(makeHeraldPreset(options));
  const serv = pgl.createServ(grafserv);
  await serv.addTo(app, server);
  try {
    await pgl.getSchema();
  } catch (error) {
    await pgl.release();
    throw error;
  }
  return pgl;
}
