import express, { type Router } from "express";
import type { Logger } from "../logger.ts";
import { sendgridWebhooks } from "./sendgrid.ts";
import { metaWebhooks } from "./meta.ts";
import { ProviderReports } from "./reports.ts";
import type { WebhookContext } from "./tenant.ts";
import { twilioWebhooks } from "./twilio.ts";

/**
 * `/webhooks/*`: what providers call. No JWT, no API key: each route derives
 * its tenant from what the provider signed and verifies that signature
 * before it touches a tenant row (src/provider-callbacks/twilio.ts, sendgrid.ts).
 */
export function webhooksRouter(
  options: WebhookContext & {
    publicUrl: string;
    systemTwilio?: { accountSid: string; authToken: string };
    systemSendgridPublicKey?: string;
    /** Meta's Graph API (keyword replies to WhatsApp through Meta accounts). */
    metaGraph?: { url: string; version: string };
    logger: Logger;
    /** The journal of status callbacks and events (one per process; built here if not given). */
    reports?: ProviderReports;
  },
): Router {
  const router = express.Router();
  const logger = options.logger.child({ component: "webhooks" });
  const reports = options.reports ?? new ProviderReports(options, logger);
  router.use("/twilio", twilioWebhooks({ ...options, system: options.systemTwilio, logger, reports }));
  router.use(
    "/sendgrid",
    sendgridWebhooks({ ...options, systemPublicKey: options.systemSendgridPublicKey, logger, reports }),
  );
  router.use("/meta", metaWebhooks({ ...options, logger, reports }));
  return router;
}
