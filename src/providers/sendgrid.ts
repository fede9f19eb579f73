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
const { Client: SendGridClientClass } = require("@sendgrid/client") as { Client: new () => Client };
const { MailService: SendGridMailService } = require("@sendgrid/mail") as { MailService: new () => MailService };

export type SendGridMailer = MailService;
export type SendGridClient = Client;

/** The API client (domain authentication and other v3 endpoints). */
export function createSendGridClient(apiKey: string, sandboxUrl?: string): SendGridClient {
  const client = new SendGridClientClass();
  client.setApiKey(apiKey);
  // Like Twilio's SDK (30 s by default): an answer that never comes must end,
  // as an uncertain send. An axios option the SDK's type does not list.
  client.setDefaultRequest({ timeout: 30_000 } as never);
  if (sandboxUrl) client.setDefaultRequest("baseUrl", `${sandboxUrl.replace(/\/$/, "")}/sendgrid`);
  return client;
}

export function createSendGridMailer(apiKey: string, sandboxUrl?: string): SendGridMailer {
  const mailer = new SendGridMailService();
  mailer.setClient(createSendGridClient(apiKey, sandboxUrl));
  return mailer;
}
