import http from "node:http";
import express from "express";
import { createAuthenticator, type Authenticator } from "../auth.ts";
import type { Config } from "../config.ts";
import { keyringFromConfig, type Keyring } from "../crypto/keyring.ts";
import { connectionBudget, type ApiPools } from "../db/budget.ts";
import type { DatabaseUrls } from "../db/database.ts";
import type { Logger } from "../logger.ts";
import type { Sandbox } from "../sandbox/sandbox.ts";
import type { WorkerHandle } from "../worker/worker.ts";
import { listen } from "./listen.ts";
import { errorHandler, notFound } from "./middleware/errors.ts";
import { requestLog } from "./middleware/request-log.ts";
import { createApiConnections } from "./pools.ts";
import { acceptInvitationRoute } from "./routes/accept-invitation.ts";
import { graphqlBody, graphqlGate, mountPostGraphile } from "./routes/graphql.ts";
import { healthRoute } from "./routes/health.ts";
import { loginRoute } from "./routes/login.ts";
import { mediaRoutes } from "./routes/media.ts";
import { providerCallbacks } from "./routes/provider-callbacks.ts";
import { sandboxStandIn } from "./routes/sandbox.ts";
import { unsubscribeRoutes } from "./routes/unsubscribe.ts";

export { PortInUseError } from "./listen.ts";

/**
 * Herald's HTTP server: the list of what is installed, in order. Each piece
 * lives in a file of its own (src/api/middleware/, src/api/routes/).
 */

export interface ApiServer {
  server: http.Server;
  url: string;
  authenticator: Authenticator;
  /** Present when no provider credentials are configured: the local stand-in for Twilio and SendGrid. */
  sandbox?: Sandbox;
  close(): Promise<void>;
}

export async function startApiServer(options: {
  config: Config;
  urls: DatabaseUrls;
  logger: Logger;
  worker?: WorkerHandle;
  /** Connections for requests (default: from the budget); tests use 1 to prove connection reuse is safe. */
  poolSize?: number;
  /** This process's API pools (src/db/budget.ts); default: the whole HERALD_DB_CONNECTIONS for an API-only process. */
  pools?: ApiPools;
  /** Shared with the worker in one process; built from the config otherwise. */
  keyring?: Keyring;
}): Promise<ApiServer> {
  const { config, urls, logger, worker } = options;
  const keyring = options.keyring ?? keyringFromConfig(config);
  const sizes = options.pools ?? connectionBudget(config.dbConnections, { api: true, worker: false }).api!;
  const db = createApiConnections(urls, sizes, logger, options.poolSize);
  const authenticator = createAuthenticator(config, db.requests);

  const app = express();
  app.disable("x-powered-by");
  // Behind a TLS-terminating proxy, HERALD_TRUST_PROXY says whose X-Forwarded-For gives the client's address (req.ip).
  app.set("trust proxy", config.trustProxy);
  app.use(requestLog(logger));
  app.get("/healthz", healthRoute(db.owner, worker));
  app.post("/auth/login", ...loginRoute(authenticator, db.requests, config.hashKey));
  app.post("/auth/accept-invitation", ...acceptInvitationRoute(authenticator, db.requests, config.hashKey));
  const sandbox = sandboxStandIn(config, db.requests, logger);
  if (sandbox) app.use("/sandbox", sandbox.router);
  app.use("/unsubscribe", unsubscribeRoutes({ pool: db.webhooks, keyring, key: config.unsubscribeKey, logger }));
  app.use("/webhooks", providerCallbacks({ config, pool: db.webhooks, keyring, sandbox, logger }));
  app.use(
    "/media",
    mediaRoutes({ authenticator, requests: db.requests, webhooks: db.webhooks, keyring, config, logger }),
  );
  app.use("/graphql", ...graphqlGate(authenticator, db.requests, logger));
  app.post("/graphql", ...graphqlBody);

  const server = http.createServer(app);
  const pgl = await mountPostGraphile(app, server, {
    pool: db.requests,
    keyring,
    development: config.development,
    logger,
  }).catch(async (error: unknown) => {
    await db.end();
    throw error;
  });
  app.use(notFound);
  app.use(errorHandler(logger));

  try {
    await listen(server, config.port);
  } catch (error) {
    // Nothing may keep connections open behind a failed start.
    await pgl.release();
    await db.end();
    throw error;
  }
  const { port } = server.address() as { port: number };
  let closing: Promise<void> | undefined;
  return {
    server,
    url: `http://localhost:${port}`,
    authenticator,
    sandbox,
    close: () =>
      (closing ??= (async () => {
        await new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeIdleConnections();
        });
        await pgl.release();
        await db.end();
      })()),
  };
}
