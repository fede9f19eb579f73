import type { Router } from "express";
import type pg from "pg";
import type { Config } from "../../config.ts";
import type { Keyring } from "../../crypto/keyring.ts";
import type { Logger } from "../../logger.ts";
import { SANDBOX_SYSTEM_TWILIO, type Sandbox } from "../../sandbox/sandbox.ts";
import { webhooksRouter } from "../../provider-callbacks/index.ts";

/**
 * `/webhooks/*`: what Twilio and SendGrid call (inbound texts, status
 * callbacks, events). No JWT; each is verified by the provider's signature
 * (src/provider-callbacks/). Where the sandbox stands in for a provider, it signs with
 * the sandbox's credentials.
 */
export function providerCallbacks(options: {
  config: Config;
  /** Connections of their own: a flood of callbacks cannot starve API requests. */
  pool: pg.Pool;
  keyring: Keyring;
  sandbox: Sandbox | undefined;
  logger: Logger;
}): Router {
  const { config, sandbox } = options;
  return webhooksRouter({
    pool: options.pool,
    keyring: options.keyring,
    publicUrl: config.publicUrl,
    systemTwilio: config.twilio ?? (sandbox ? SANDBOX_SYSTEM_TWILIO : undefined),
    systemSendgridPublicKey:
      config.sendgridWebhookPublicKey ?? (sandbox && !config.sendgrid ? sandbox.sendgridPublicKey : undefined),
    metaGraph: {
      url: config.metaGraph.url ?? (sandbox ? `${config.publicUrl}/sandbox/meta` : "https://graph.facebook.com"),
      version: config.metaGraph.version,
    },
    logger: options.logger,
  });
}
