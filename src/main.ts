import "./env-defaults.ts";
import { parseArgs } from "node:util";
import type { ApiServer } from "./api/server.ts";
import { loadConfig } from "./config.ts";
import { keyringFromConfig } from "./crypto/keyring.ts";
import { ProviderClients, systemProviders } from "./providers/send.ts";
import { openDatabase, type Database } from "./db/database.ts";
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
  const shutdown = async (signal: string) => {
    if (shuttingDown) {
      logger.warn("second signal: exiting now");
      process.exit(1);
    }
    shuttingDown = true;
    logger.info({ signal }, "shutting down");
    // Stop taking work first, then finish what is running, then the database.
    await api?.close().catch((e: Error) => logger.error({ err: { message: e.message } }, "API close failed"));
    await worker?.stop().catch((e: Error) => logger.error({ err: { message: e.message } }, "worker stop failed"));
    await db?.stop().catch((e: Error) => logger.error({ err: { message: e.message } }, "database stop failed"));
    logger.info("stopped");
    process.exit(0);
  };
  process.on("SIGINT", () => void shutdown("SIGINT"));
  process.on("SIGTERM", () => void shutdown("SIGTERM"));

  db = await openDatabase(config, logger);
  const keyring = keyringFromConfig(config);
  worker = await startWorker({
    ownerUrl: db.urls.owner,
    authenticatorUrl: db.urls.authenticator,
    concurrency: config.workerConcurrency,
    sendConcurrency: config.sendConcurrency,
    keyring,
    webhooks: config.outboundWebhooks,
    // In sandbox mode the SDKs talk to the sandbox this process serves on its HTTP port;
    // status callbacks go to this deployment's public URL.
    providers: new ProviderClients(systemProviders(config, config.development ? `${config.publicUrl}/sandbox` : undefined, config.callbackBaseUrl)),
    logger,
  });
  if (flags["worker-only"]) {
    logger.info({ concurrency: config.workerConcurrency }, "worker running (no API in this process)");
    return;
  }
  // Loaded only here: a worker-only process never carries the API's code (PostGraphile) in its memory.
  const { startApiServer } = await import("./api/server.ts");
  const { demoTokens, ensureDemoTenants } = await import("./demo.ts");
  api = await startApiServer({ config, urls: db.urls, logger, worker, keyring });

  // Demo data only where it cannot leak into a real deployment: the embedded
  // database, or when asked for explicitly.
  if (db.embedded || process.env.HERALD_DEMO === "true") {
    await ensureDemoTenants(db.urls, logger, keyring);
  }
  const tokens = await demoTokens(db.urls, api.authenticator);
  // The local address (PORT=0 picks a free one); HERALD_PUBLIC_URL is for providers.
  printBanner(api.url, config.development, tokens, Boolean(api.sandbox));
}

function printBanner(url: string, development: boolean, tokens: Awaited<ReturnType<typeof import("./demo.ts").demoTokens>>, sandbox: boolean) {
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
    for (const t of tokens) lines.push(`  ${t.name} (${t.slug}, ${t.email}):`, `    ${t.token}`);
  }
  // The banner goes to stdout as plain text, outside the structured logs, so
  // tokens never end up in a log pipeline.
  process.stdout.write(lines.filter((l) => l !== "").join("\n").replace(/\n(Demo)/, "\n\n$1") + "\n\n");
}

main().catch((error: unknown) => {
  reportStartupError(error, logger);
  process.exit(1);
});

