import { createRequire } from "node:module";
import type { Client } from "@sendgrid/client/src/client.js";
import type { MailService } from "@sendgrid/mail/src/mail.js";

/**
 * The real SendGrid SDK, one MailService per API key (never the shared
 * singleton, so tenants' keys never mix), optionally pointed at Herald's
 * sandbox (`<sandboxUrl>/sendgrid`).
 */

// The packages export a ready-made singleton; their classes are properties of it.
const require = createRequire(import.meta.url);
const { Client: SendGridClient } = require("@sendgrid/client") as { Client: new () => Client };
const { MailService: SendGridMailService } = require("@sendgrid/mail") as { MailService: new () => MailService };

export type SendGridMailer = MailService;

export function createSendGridMailer(apiKey: string, sandboxUrl?: string): SendGridMailer {
  const client = new SendGridClient();
  client.setApiKey(apiKey);
  if (sandboxUrl) client.setDefaultRequest("baseUrl", `${sandboxUrl.replace(/\/$/, "")}/sendgrid`);
  const mailer = new SendGridMailService();
  mailer.setClient(client);
  return mailer;
}
