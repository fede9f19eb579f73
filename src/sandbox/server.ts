import http from "node:http";
import express from "express";
import { loadConfig } from "../config.ts";
import { ProviderClients, systemProviders } from "../providers/clients.ts";
import { createSandbox, type Sandbox } from "./sandbox.ts";

/**
 * The sandbox on an HTTP server of its own (tests, benchmarks), with the SDK
 * clients pointed at it: no TWILIO_* / SENDGRID_API_KEY, so the system
 * accounts are the sandbox's.
 */

export interface SandboxServer {
  sandbox: Sandbox;
  /** Where the sandbox router is mounted (`…/sandbox`): the SDKs' base. */
  url: string;
  /** The server's origin: HERALD_PUBLIC_URL for a worker process that should use this sandbox. */
  origin: string;
  clients: ProviderClients;
  close(): Promise<void>;
}

export async function startSandboxServer(keep = 10_000): Promise<SandboxServer> {
  const sandbox = createSandbox({ keep, page: false });
  const app = express();
  app.use("/sandbox", sandbox.router);
  const server = http.createServer(app);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const origin = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  const url = `${origin}/sandbox`;
  sandbox.whatsapp.setBaseUrl(url);
  const clients = new ProviderClients(
    systemProviders({ ...loadConfig(), twilio: undefined, sendgrid: undefined }, url),
  );
  return {
    sandbox,
    url,
    origin,
    clients,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
