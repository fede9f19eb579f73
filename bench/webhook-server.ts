import "../src/env-defaults.ts";
import http from "node:http";
import express from "express";
import { startApiServer } from "../src/api/server.ts";
import { loadConfig } from "../src/config.ts";
import type { DatabaseUrls } from "../src/db/database.ts";
import { createLogger } from "../src/logger.ts";

/**
 * The server side of `npm run bench -- webhooks`, in a process of its own so
 * that the load generator does not share its event loop:
 *   bare    an express app that parses the same form body and answers the
 *           same empty TwiML, touching nothing: the baseline;
 *   herald  Herald's API server (webhooks and all) against the bench database,
 *           at the port its public URL names.
 * Tells the parent its port over IPC, then serves until killed.
 */

const mode = process.argv[2];

async function bare(): Promise<number> {
  const app = express();
  app.disable("x-powered-by");
  app.post("/webhooks/twilio/sms", express.urlencoded({ extended: false, limit: "64kb" }), (_req, res) => {
    res.type("text/xml").send('<?xml version="1.0" encoding="UTF-8"?><Response/>');
  });
  const server = http.createServer(app);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return (server.address() as { port: number }).port;
}

async function herald(): Promise<number> {
  const urls = JSON.parse(process.env.BENCH_URLS!) as DatabaseUrls;
  // Requests are logged as in production (info), to a sink nobody reads.
  const api = await startApiServer({ config: loadConfig({ ...process.env, NODE_ENV: "production" }), urls, logger: createLogger("info", 1) });
  return Number(new URL(api.url).port);
}

const port = mode === "bare" ? await bare() : mode === "herald" ? await herald() : undefined;
if (port === undefined) throw new Error(`unknown mode ${mode}: bare or herald`);
process.send!({ port });
// A clean exit (not a kill) when the parent is done: profilers and pools finish.
process.on("SIGTERM", () => process.exit(0));
