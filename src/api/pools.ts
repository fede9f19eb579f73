import type pg from "pg";
import { createPool } from "../db/availability.ts";
import type { ApiPools } from "../db/budget.ts";
import type { DatabaseUrls } from "../db/database.ts";
import type { Logger } from "../logger.ts";

/** The API process's connections, one pool per kind of caller. */
export interface ApiConnections {
  /** GraphQL, login and authentication, as herald_authenticator. */
  requests: pg.Pool;
  /** Health checks, as herald_owner. */
  owner: pg.Pool;
  /** Providers' callbacks: connections of their own, so a flood of them cannot starve API requests. */
  webhooks: pg.Pool;
  end(): Promise<void>;
}

export function createApiConnections(
  urls: DatabaseUrls,
  sizes: ApiPools,
  logger: Logger,
  /** Overrides the requests pool's size (tests use 1 to prove connection reuse is safe). */
  requestPoolSize?: number,
): ApiConnections {
  // A request waits out a blip of the server (2 s) and a busy pool (10 s),
  // then gets 503 with Retry-After rather than hanging or crashing anything.
  const requestWaits = { waitForServerMs: 2_000, checkoutTimeoutMs: 10_000, logger };
  const requests = createPool({
    connectionString: urls.authenticator,
    max: requestPoolSize ?? sizes.requests,
    name: "api",
    ...requestWaits,
  });
  const owner = createPool({
    connectionString: urls.owner,
    max: sizes.owner,
    name: "health",
    logger,
    checkoutTimeoutMs: 2_000,
  });
  const webhooks = createPool({
    connectionString: urls.authenticator,
    max: sizes.webhooks,
    name: "webhooks",
    ...requestWaits,
  });
  return {
    requests,
    owner,
    webhooks,
    end: async () => {
      await Promise.all([requests, owner, webhooks].map((pool) => pool.end()));
    },
  };
}
