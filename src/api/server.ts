import http from "node:http";
import express, { type ErrorRequestHandler, type RequestHandler } from "express";
import pg from "pg";
import { keyringFromConfig, type Keyring } from "../crypto/keyring.ts";
import { createSandbox, SANDBOX_SYSTEM_SENDGRID_KEY, SANDBOX_SYSTEM_TWILIO, type Sandbox } from "../sandbox/sandbox.ts";
import { persistentEventKeys } from "../sandbox/event-key.ts";
import { asAdmin } from "../db/session.ts";
import { createPool, isDatabaseUnavailable, RETRY_AFTER_SECONDS } from "../db/availability.ts";
import { connectionBudget, type ApiPools } from "../db/budget.ts";
import { postgraphile } from "postgraphile";
import { grafserv } from "postgraphile/grafserv/express/v4";
import { z } from "zod";
import { makeHeraldPreset } from "../../graphile.config.ts";
import { AuthError, createAuthenticator, type Authenticator } from "../auth.ts";
import type { Config } from "../config.ts";
import type { DatabaseUrls } from "../db/database.ts";
import type { Logger } from "../logger.ts";
import type { WorkerHandle } from "../worker/worker.ts";
import { operationVariablesGuard } from "./guards.ts";
import { tenantConcurrency } from "./tenant-concurrency.ts";
import { checkHealth } from "./health.ts";
import { webhooksRouter } from "../webhooks/index.ts";
import { jsonError } from "./responses.ts";
import { LoginLimits } from "./login-limits.ts";

/** Largest GraphQL request body accepted (bytes); larger bodies get 413. */
const GRAPHQL_BODY_LIMIT = 100_000;

export class PortInUseError extends Error {
  override name = "PortInUseError";
}

export interface ApiServer {
  server: http.Server;
  url: string;
  authenticator: Authenticator;
  /** Present when no provider credentials are configured: the local stand-in for Twilio and SendGrid. */
  sandbox?: Sandbox;
  close(): Promise<void>;
}

/** 503 with Retry-After: the database is restarting or refusing connections; the client should try again. */
function unavailable(res: express.Response): void {
  res
    .status(503)
    .set("Retry-After", String(RETRY_AFTER_SECONDS))
    .json(jsonError("DATABASE_UNAVAILABLE", `The database is unavailable; try again in ${RETRY_AFTER_SECONDS} s.`));
}

/** 401 for anything that is not a valid JWT or API key, before GraphQL sees the request. */
function requireIdentity(authenticator: Authenticator, logger: Logger): RequestHandler {
  return async (req, res, next) => {
    try {
      req.heraldIdentity = await authenticator.authenticate(req.headers.authorization);
      next();
    } catch (error) {
      if (error instanceof AuthError) {
        res.status(401).set("WWW-Authenticate", 'Bearer realm="herald"').json(jsonError(error.code, error.message));
        return;
      }
      if (isDatabaseUnavailable(error)) {
        logger.warn(
          { err: { message: (error as Error).message } },
          "authentication unavailable: the database is unreachable",
        );
      } else {
        logger.error({ err: { message: (error as Error).message } }, "authentication failed unexpectedly");
      }
      res
        .status(503)
        .set("Retry-After", String(RETRY_AFTER_SECONDS))
        .json(jsonError("AUTH_UNAVAILABLE", "Authentication is unavailable; try again."));
    }
  };
}

/**
 * Each tenant's requests per minute (tenant_settings.api_requests_per_minute),
 * counted in Postgres so the limit holds across every API process; over it,
 * 429 with Retry-After. Operators are not limited.
 */
function rateLimit(pool: pg.Pool, logger: Logger): RequestHandler {
  return async (req, res, next) => {
    const identity = req.heraldIdentity;
    if (!identity?.tenantId || identity.kind === "admin") return next();
    try {
      const { rows } = await pool.query<{ wait: number }>("select herald_private.admit_api_request($1) as wait", [
        identity.tenantId,
      ]);
      const wait = rows[0]?.wait ?? 0;
      if (wait > 0) {
        res
          .status(429)
          .set("Retry-After", String(wait))
          .json(jsonError("RATE_LIMITED", `This tenant is over its requests per minute; try again in ${wait} s.`));
        return;
      }
    } catch (error) {
      // The request would fail too: say when to come back.
      if (isDatabaseUnavailable(error)) return unavailable(res);
      // The limiter is a guard, not a gate: a failure to count lets the request through.
      logger.warn(
        { err: { message: (error as Error).message } },
        "could not count a request against the tenant's rate limit",
      );
    }
    next();
  };
}

const loginBody = z.object({
  email: z.string().trim().min(3).max(320),
  password: z.string().min(1).max(1024),
  tenant: z.string().trim().min(1).max(63).optional(),
});

/** POST /auth/login: email + password → a JWT for one of the user's memberships. */
function login(authenticator: Authenticator, pool: pg.Pool, limits: LoginLimits): RequestHandler {
  return async (req, res) => {
    const body = loginBody.safeParse(req.body);
    if (!body.success) {
      const issue = body.error.issues[0]!;
      res.status(400).json({ error: { code: "INVALID_INPUT", field: issue.path.join("."), message: issue.message } });
      return;
    }
    // Per account and client, per client, and a slower per-account curve for unknown clients (src/api/login-limits.ts).
    const wait = await limits.admit(pool, body.data.email, req.ip);
    if (wait > 0) {
      res
        .status(429)
        .set("Retry-After", String(wait))
        .json(jsonError("RATE_LIMITED", `Too many sign-in attempts; try again in ${wait} s.`));
      return;
    }
    if (!authenticator.canSign) {
      res
        .status(501)
        .json(
          jsonError("LOGIN_DISABLED", "Password login needs HERALD_JWT_SECRET; sign in with your identity provider."),
        );
      return;
    }
    const { rows } = await pool.query<{
      user_id: string | null;
      tenant_id: string;
      tenant_slug: string;
      membership_role: string;
    }>("select (i).* from (select herald_private.verify_login($1, $2, $3) as i) s", [
      body.data.email,
      body.data.password,
      body.data.tenant ?? null,
    ]);
    const identity = rows[0];
    if (!identity?.user_id) {
      res.status(401).json(jsonError("INVALID_CREDENTIALS", "Email, password or tenant is not right."));
      return;
    }
    await limits.remember(pool, body.data.email, req.ip);
    const expiresIn = 3600;
    const token = await authenticator.sign(
      { sub: identity.user_id, tenant_id: identity.tenant_id, role: "herald_member" },
      `${expiresIn}s`,
    );
    res.json({
      token,
      expiresIn,
      tenant: { id: identity.tenant_id, slug: identity.tenant_slug },
      role: identity.membership_role,
    });
  };
}

function listen(server: http.Server, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException) => {
      reject(
        error.code === "EADDRINUSE"
          ? new PortInUseError(
              `Port ${port} is already in use. Stop whatever uses it, or start Herald with PORT=<another port>.`,
            )
          : error,
      );
    };
    server.once("error", onError);
    server.listen(port, () => {
      server.off("error", onError);
      resolve();
    });
  });
}

/** For the sandbox page: which tenant (slug) an account belongs to, as an operator sees it. */
async function describeSandboxAccount(
  pool: pg.Pool,
  provider: "twilio" | "sendgrid",
  account: string,
): Promise<string | undefined> {
  if (account === SANDBOX_SYSTEM_TWILIO.accountSid || account === `…${SANDBOX_SYSTEM_SENDGRID_KEY.slice(-4)}`)
    return "the system account";
  const slugs = await asAdmin(pool, async (client) =>
    (
      await client.query<{ slug: string }>(
        `select distinct t.slug::text from herald_public.provider_accounts a join herald_public.tenants t on t.id = a.tenant_id
          where a.kind = $1 and (a.twilio_account_sid = $2 or (a.kind = 'sendgrid' and '…' || a.secret_hint = $2))`,
        [provider, account],
      )
    ).rows.map((r) => r.slug),
  );
  return slugs.length > 0 ? `tenant ${slugs.join(" or ")}` : undefined;
}

/** For the sandbox's "text in" form: the Twilio account a tenant's number is on (the system's when none). */
async function sandboxAccountOfNumber(pool: pg.Pool, number: string, channel: string): Promise<string | undefined> {
  return asAdmin(pool, async (client) => {
    const { rows } = await client.query<{ sid: string | null }>(
      `select a.twilio_account_sid as sid from herald_public.sender_numbers n
         left join herald_public.provider_accounts a on a.tenant_id = n.tenant_id and a.id = n.provider_account_id
        where n.phone_number = $1 and n.channel = $2`,
      [number, channel],
    );
    return rows[0] ? (rows[0].sid ?? SANDBOX_SYSTEM_TWILIO.accountSid) : undefined;
  });
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
  // A request waits out a blip of the server (2 s) and a busy pool (10 s),
  // then gets 503 with Retry-After rather than hanging or crashing anything.
  const requestWaits = { waitForServerMs: 2_000, checkoutTimeoutMs: 10_000, logger };
  const authenticatorPool = createPool({
    connectionString: urls.authenticator,
    max: options.poolSize ?? sizes.requests,
    name: "api",
    ...requestWaits,
  });
  const ownerPool = createPool({
    connectionString: urls.owner,
    max: sizes.owner,
    name: "health",
    logger,
    checkoutTimeoutMs: 2_000,
  });
  // Providers' callbacks have connections of their own: a flood of them cannot starve API requests.
  const webhookPool = createPool({
    connectionString: urls.authenticator,
    max: sizes.webhooks,
    name: "webhooks",
    ...requestWaits,
  });
  const pools = [authenticatorPool, ownerPool, webhookPool];
  const authenticator = createAuthenticator(config, authenticatorPool);

  const app = express();
  app.disable("x-powered-by");
  // Behind a TLS-terminating proxy, HERALD_TRUST_PROXY says whose X-Forwarded-For gives the client's address (req.ip).
  app.set("trust proxy", config.trustProxy);
  app.use((req, res, next) => {
    const started = performance.now();
    res.on("finish", () => {
      // Method, path and status only: no headers, bodies or query strings (tokens live there). The
      // path as asked: a router mounted at /graphql that answers (a 401) leaves req.path relative to it.
      const path = req.originalUrl.split("?")[0];
      logger.info(
        { method: req.method, path, status: res.statusCode, ms: Math.round(performance.now() - started) },
        "request",
      );
    });
    next();
  });

  app.get("/healthz", async (_req, res) => {
    const health = await checkHealth(ownerPool, worker);
    res.status(health.status === "ok" ? 200 : 503).json(health);
  });
  app.post(
    "/auth/login",
    express.json({ limit: "16kb" }),
    login(authenticator, authenticatorPool, new LoginLimits(config.hashKey)),
  );
  // Without provider credentials, the sandbox stands in for Twilio and SendGrid on this port.
  // Development only: in production a missing credential must fail loudly, not
  // be answered by a stand-in (whose endpoints would be public).
  const sandbox =
    config.development && !(config.twilio && config.sendgrid)
      ? createSandbox({
          describeAccount: (provider, account) => describeSandboxAccount(authenticatorPool, provider, account),
          // It calls back as the real services would: Herald's own webhooks, at its public URL.
          sendgridEventUrl: config.sendgrid ? undefined : `${config.publicUrl}/webhooks/sendgrid/events`,
          eventKeys: config.sendgrid ? undefined : persistentEventKeys(),
          inboundUrl: config.twilio ? undefined : `${config.publicUrl}/webhooks/twilio/sms`,
          resolveNumber: (number, channel) => sandboxAccountOfNumber(authenticatorPool, number, channel),
        })
      : undefined;
  if (!config.development && !(config.twilio && config.sendgrid)) {
    logger.warn(
      "production without TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN or SENDGRID_API_KEY: system sends through that provider will fail",
    );
  }
  if (sandbox) {
    app.use("/sandbox", sandbox.router);
    logger.warn(
      { sandbox: "/sandbox" },
      "no Twilio/SendGrid credentials (TWILIO_ACCOUNT_SID, SENDGRID_API_KEY): the local sandbox stands in for both; nothing is delivered",
    );
  }
  // Providers' callbacks: no JWT; each is verified by the provider's signature (src/webhooks/).
  app.use(
    "/webhooks",
    webhooksRouter({
      pool: webhookPool,
      keyring,
      publicUrl: config.publicUrl,
      // Where the sandbox stands in for a provider, it signs with the sandbox's credentials.
      systemTwilio: config.twilio ?? (sandbox ? SANDBOX_SYSTEM_TWILIO : undefined),
      systemSendgridPublicKey:
        config.sendgridWebhookPublicKey ?? (sandbox && !config.sendgrid ? sandbox.sendgridPublicKey : undefined),
      logger,
    }),
  );
  app.use(
    "/graphql",
    requireIdentity(authenticator, logger),
    rateLimit(authenticatorPool, logger),
    tenantConcurrency(),
  );
  // Grafserv reads an already-parsed body; parsing here lets the guard see variables.
  app.post("/graphql", express.json({ limit: GRAPHQL_BODY_LIMIT }), operationVariablesGuard);

  const server = http.createServer(app);
  const pgl = postgraphile(
    makeHeraldPreset({ pool: authenticatorPool, keyring, development: config.development, logger }),
  );
  const serv = pgl.createServ(grafserv);
  await serv.addTo(app, server);
  try {
    // Build the schema now: a plugin or schema error must fail the start, not every request.
    await pgl.getSchema();
  } catch (error) {
    await pgl.release();
    await Promise.all(pools.map((pool) => pool.end()));
    throw error;
  }

  app.use((_req, res) => {
    res.status(404).json(jsonError("NOT_FOUND", "No such route."));
  });
  const onError: ErrorRequestHandler = (error, _req, res, _next) => {
    // Providers retry a 503 (status callbacks are not retried after a 500 by some): the database is away, not the request wrong.
    if (isDatabaseUnavailable(error)) {
      logger.warn({ err: { message: (error as Error).message } }, "request failed: the database is unavailable");
      return unavailable(res);
    }
    const status = typeof error.status === "number" ? error.status : 500;
    if (status >= 500) logger.error({ err: { message: error.message } }, "request failed");
    res
      .status(status)
      .json(
        jsonError(
          status === 413 ? "PAYLOAD_TOO_LARGE" : status < 500 ? "BAD_REQUEST" : "INTERNAL",
          status < 500 ? error.message : "Internal error.",
        ),
      );
  };
  app.use(onError);

  try {
    await listen(server, config.port);
  } catch (error) {
    // Nothing may keep connections open behind a failed start.
    await pgl.release();
    await Promise.all(pools.map((pool) => pool.end()));
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
        await Promise.all(pools.map((pool) => pool.end()));
      })()),
  };
}
