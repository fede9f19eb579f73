import "./env-defaults.ts";
import { parseArgs } from "node:util";
import type { ApiServer } from "./api/server.ts";
import { loadConfig } from "./config.ts";
import { keyringFromConfig } from "./crypto/keyring.ts";
import { ProviderClients, systemProviders } from "./providers/clients.ts";
import { openDatabase, type Database } from "./db/database.ts";
import { isDatabaseUnavailable } from "./db/availability.ts";
import { checkConnectionBudget, connectionBudget } from "./db/budget.ts";
import { createLogger } from "./logger.ts";
import { startWorker, type WorkerHandle } from "./worker/worker.ts";
import { reportStartupError } from "./startup-errors.ts";

/**
 * `npm start`: database (embedded unless DATABASE_URL), migrations, worker,
 * API. `npm run worker` (`--worker-only`): the worker alone, for scale-out.
 */

const { values: flags } = parseArgs({ options: { "worker-only": { type: "boolean", default: false } } });
const logger = createLogger();

async function main() {
  const config = loadConfig();
  logger.level = config.logLevel;
  if (config.generated.length > 0) {
    logger.warn(
      { generated: config.generated },
      "using secrets generated into .data/secrets.json (fine for development; set them in the environment in production)",
    );
  }
  if (!config.callbackBaseUrl) {
    logger.warn(
      "HERALD_PUBLIC_URL is not set: sends ask for no status callbacks, and providers' webhooks cannot be verified (they sign the public URL)",
    );
  }

  let db: Database | undefined;
  let worker: WorkerHandle | undefined;
  let api: ApiServer | undefined;
  let shuttingDown = false;
  let exitCode = 0;
  const shutdown = async (signal: string) => {
    if (shuttingDown) {
      logger.warn("second signal: exiting now");
      process.exit(1);
    }
    if (signal === "worker stopped") exitCode = 1;
    shuttingDown = true;
    logger.info({ signal }, "shutting down");
    // Stop taking work first, then finish what is running, then the database.
    await api?.close().catch((e: Error) => logger.error({ err: { message: e.message } }, "API close failed"));
    await worker?.stop().catch((e: Error) => logger.error({ err: { message: e.message } }, "worker stop failed"));
    await db?.stop().catch((e: Error) => logger.error({ err: { message: e.message } }, "database stop failed"));
    logger.info("stopped");
    process.exit(exitCode);
  };
  process.on("SIGINT", () => void shutdown("SIGINT"));
  process.on("SIGTERM", () => void shutdown("SIGTERM"));

  db = await openDatabase(config, logger);
  // Every pool of this process comes out of one number (HERALD_DB_CONNECTIONS).
  const budget = connectionBudget(config.dbConnections, { api: !flags["worker-only"], worker: true });
  await checkConnectionBudget(db.urls.admin, budget.total, logger).catch(async (error: unknown) => {
    await db?.stop();
    throw error;
  });
  const keyring = keyringFromConfig(config);
  worker = await startWorker({
    pools: budget.worker,
    budget: budget.total,
    statusCheck: config.statusCheck,
    // A worker that stopped for good takes the process with it, non-zero, for the supervisor to restart.
    onFatal: () => {
      if (shuttingDown) return;
      logger.fatal("the worker stopped for good; exiting so that the supervisor restarts this process");
      void shutdown("worker stopped");
    },
    ownerUrl: db.urls.owner,
    authenticatorUrl: db.urls.authenticator,
    concurrency: config.workerConcurrency,
    sendConcurrency: config.sendConcurrency,
    keyring,
    webhooks: config.outboundWebhooks,
    // In sandbox mode the SDKs talk to the sandbox this process serves on its HTTP port;
    // status callbacks go to this deployment's public URL.
    providers: new ProviderClients(
      systemProviders(config, config.development ? `${config.publicUrl}/sandbox` : undefined, config.callbackBaseUrl),
    ),
    logger,
  });
  if (flags["worker-only"]) {
    logger.info({ concurrency: config.workerConcurrency }, "worker running (no API in this process)");
    return;
  }
  // Loaded only here: a worker-only process never carries the API's code (PostGraphile) in its memory.
  const { startApiServer } = await import("./api/server.ts");
  const { demoPlan, demoTokens, ensureDemoTenants } = await import("./demo.ts");
  api = await startApiServer({ config, urls: db.urls, logger, worker, keyring, pools: budget.api });

  const demo = demoPlan({ development: config.development, embedded: db.embedded, requested: process.env.HERALD_DEMO });
  if (demo.warning) logger.warn(demo.warning);
  if (demo.create) await ensureDemoTenants(db.urls, logger, keyring);
  const tokens = demo.printTokens ? await demoTokens(db.urls, api.authenticator) : [];
  // The local address (PORT=0 picks a free one); HERALD_PUBLIC_URL is for providers.
  printBanner(api.url, config.development, tokens, Boolean(api.sandbox));
}

function printBanner(
  url: string,
  development: boolean,
  tokens: Awaited<ReturnType<typeof import("./demo.ts").demoTokens>>,
  sandbox: boolean,
) {
  const lines = [
    "",
    `Herald is running at ${url}`,
    `  GraphQL:  ${url}/graphql`,
    development ? `  GraphiQL: ${url}/graphiql   (add the header  Authorization: Bearer <token>)` : "",
    `  Health:   ${url}/healthz`,
    sandbox ? `  Sandbox:  ${url}/sandbox   (no Twilio/SendGrid credentials: messages stay on this machine)` : "",
  ];
  if (tokens.length > 0) {
    lines.push("", "Demo tokens (valid 12 hours; `npm run herald -- token --tenant <slug>` mints more):");
    for (const t of tokens)
      lines.push(`  ${t.name} (${t.slug}, ${t.email}; texts go out ${t.sendWindow}):`, `    ${t.token}`);
    // A text sent outside the window waits for it (queued, holdReason quiet_hours): say so before the first one does.
    lines.push(
      "  Texts outside a tenant's send window wait for it (holdReason quiet_hours); widen it with",
      "  updateTenantSettingByTenantId(sendWindowStart, sendWindowEnd, timezone) and they go at once.",
    );
  }
  // The banner goes to stdout as plain text, outside the structured logs, so
  // tokens never end up in a log pipeline.
  process.stdout.write(
    lines
      .filter((l) => l !== "")
      .join("\n")
      .replace(/\n(Demo)/, "\n\n$1") + "\n\n",
  );
}

/**
 * The last line of defence. A database that goes away mid-statement can still
 * surface as a rejection nobody awaited (graphile-worker does not await
 * writing a job's completion): that is an outage this process waits out — the
 * job is released and runs again (src/worker/processes.ts) — not a reason to
 * die. Anything else is a bug: log it and exit non-zero, for the supervisor.
 */
function survive(kind: string) {
  return (error: unknown) => {
    if (isDatabaseUnavailable(error)) {
      logger.warn(
        { err: { message: (error as Error).message, code: (error as { code?: string }).code } },
        `${kind}: the database is unavailable; carrying on`,
      );
      return;
    }
    logger.fatal({ err: error }, `${kind}; exiting`);
    process.exit(1);
  };
}
process.on("unhandledRejection", survive("unhandled rejection"));
process.on("uncaughtException", survive("uncaught exception"));

main().catch((error: unknown) => {
  reportStartupError(error, logger);
  process.exit(1);
});
