import express, { type Request, type Response, type Router } from "express";
import { createSandboxCore, type SandboxFaults, type SandboxMessage } from "./core.ts";
import type { InboundAnswer } from "./inbound.ts";
import { newEventKeys, type EventKeys } from "./event-key.ts";
import { groupHeading } from "./labels.ts";
import { sandboxPage } from "./page.ts";
import { handleServiceForm, servicesSection, type SandboxServices } from "./services.ts";
import { addNumberRoutes, numbersSection, type SandboxNumbers } from "./numbers.ts";
import { createPhones, type PhoneText } from "./phones.ts";
import type { EngageRequest, EngageResult } from "./engagement.ts";
import { addMetaRoutes, type MetaInbound, type MetaSandboxAccount, type MetaSendRequest } from "./meta.ts";
import { addSendGridRoutes } from "./sendgrid.ts";
import { addTwilioRoutes, SANDBOX_SYSTEM_TWILIO } from "./twilio.ts";
import type { SandboxWhatsApp } from "./whatsapp.ts";

/**
 * The provider sandbox: a local stand-in for Twilio's Messages API and
 * SendGrid's v3 mail/send, spoken to by the real `twilio` and `@sendgrid/mail`
 * SDKs (src/providers/), so development and tests run offline with nothing
 * mocked below the SDK. It checks credentials like the real services, answers
 * with their JSON shapes and error codes, and keeps the recent messages for
 * the `/sandbox` page and for tests.
 *
 * Like the real services, it calls back: Twilio status callbacks
 * (src/sandbox/twilio.ts) and SendGrid events (src/sandbox/sendgrid.ts). And
 * it texts in: `textIn` (or the page's form) is a phone writing to one of
 * Herald's numbers, posted to Herald's inbound webhook signed as Twilio signs
 * it; the TwiML answer's replies are kept as messages (src/sandbox/phones.ts).
 * Tests can inject faults: errors, 429 bursts, latency, accept-then-timeout
 * (src/sandbox/core.ts).
 *
 * Routes (relative to where the router is mounted), besides each provider's:
 *   GET  /                                                 HTML list of recent messages (unless page: false)
 *   POST /twilio/inbound                                   the page's "text in" form (from, to, body)
 *   POST /twilio/services                                  the page's "add a Messaging Service" form (services.ts)
 */

export type { SandboxChannel, SandboxFaults, SandboxMessage } from "./core.ts";
export { outcomeFor } from "./core.ts";
export { sandboxMetaAppSecret, sandboxMetaToken } from "./meta.ts";
export { SANDBOX_SENDGRID_KEY_PREFIX, SANDBOX_SYSTEM_SENDGRID_KEY } from "./sendgrid.ts";
export { SANDBOX_SYSTEM_TWILIO, sandboxTwilioToken } from "./twilio.ts";

export interface Sandbox {
  router: Router;
  /** Newest last; at most `keep` of them. */
  messages: SandboxMessage[];
  /** SendGrid mail/send requests accepted so far (each may carry up to 1,000 recipients). */
  readonly mailSendRequests: number;
  /** The most Twilio send requests open at once since the last call (and resets it). */
  takePeakInFlight(): number;
  addTwilioAccount(accountSid: string, authToken: string): void;
  /** Twilio Messaging Services: sender pools with sticky sender (src/sandbox/services.ts). */
  services: SandboxServices;
  /** Which Twilio account holds which phone number (src/sandbox/numbers.ts). */
  numbers: SandboxNumbers;
  addSendGridKey(apiKey: string): void;
  setFaults(faults: SandboxFaults): void;
  /** Base64 DER (SPKI) of the key that signs SendGrid events: SENDGRID_WEBHOOK_PUBLIC_KEY for the sandbox. */
  sendgridPublicKey: string;
  /** Resolves when every callback already scheduled has been posted. */
  settled(): Promise<void>;
  /** The sandbox's signature over timestamp + body, as on its own SendGrid events (tests post events of their own with it). */
  signSendGridEvents(timestamp: string, body: string): string;
  /** Where SendGrid events go from now on (none: no events). */
  setSendGridEventUrl(url: string | undefined): void;
  /** A recipient opens a sent email or clicks a link in it: a signed SendGrid event posted now (src/sandbox/engagement.ts). */
  engageEmail(request: EngageRequest): Promise<EngageResult>;
  /**
   * A phone texts one of Herald's numbers: posted to `url` (default: the
   * sandbox's `inboundUrl`) signed with the account's token, as Twilio would.
   */
  textIn(text: PhoneText): Promise<InboundAnswer>;
  /** Meta's WhatsApp Cloud API (src/sandbox/meta.ts): an account's credentials and webhook URL, the send requests, a phone writing in. */
  addMetaAccount(phoneNumberId: string, account: MetaSandboxAccount): void;
  metaRequests: MetaSendRequest[];
  metaTextIn(text: MetaInbound): Promise<number>;
  /** Twilio's media, Content API templates and WhatsApp window (src/sandbox/whatsapp.ts). */
  whatsapp: SandboxWhatsApp;
}

export function createSandbox(
  options: {
    keep?: number;
    page?: boolean;
    /** Where SendGrid events go (Herald's event webhook); none: no events. */
    sendgridEventUrl?: string;
    /** The key pair that signs SendGrid events (`npm start`: kept in .data/); default: a new one. */
    eventKeys?: EventKeys;
    /** Pause between a message's callbacks. */
    callbackDelayMs?: number;
    /** Names the tenant behind an account (SID, or …last4 of a SendGrid key) for the page. */
    describeAccount?: (provider: SandboxMessage["provider"], account: string) => Promise<string | undefined>;
    /** Herald's inbound webhook, for `textIn` and the page's form. */
    inboundUrl?: string;
    /** The account SID a number is on (what Twilio knows), for the page's form. */
    resolveNumber?: (number: string, channel: "sms" | "whatsapp") => Promise<string | undefined>;
    /** Where a Meta phone number id's webhooks go (Herald's `/webhooks/meta/<account id>`), unless its account says. */
    resolveMetaWebhook?: (phoneNumberId: string) => Promise<string | undefined>;
  } = {},
): Sandbox {
  const core = createSandboxCore({ keep: options.keep ?? 500, callbackDelayMs: options.callbackDelayMs ?? 50 });
  const router = express.Router();
  const twilio = addTwilioRoutes(router, core);
  const numbers = addNumberRoutes(router, core, {
    tokenOf: twilio.tokenOf,
    systemSid: SANDBOX_SYSTEM_TWILIO.accountSid,
  });
  const sendgrid = addSendGridRoutes(router, core, {
    eventUrl: options.sendgridEventUrl,
    eventKeys: options.eventKeys ?? newEventKeys(),
  });
  const meta = addMetaRoutes(router, core, {
    resolveWebhook: options.resolveMetaWebhook,
    page: options.page !== false,
  });
  const phones = createPhones({
    inboundUrl: options.inboundUrl,
    tokenOf: twilio.tokenOf,
    resolveNumber: options.resolveNumber,
    remember: core.remember,
    whatsapp: twilio.whatsapp,
  });
  // The page shows recipients and bodies without authentication: development only.
  if (options.page !== false) {
    router.post("/twilio/inbound", express.urlencoded({ extended: false, limit: "16kb" }), phones.handleForm);
    router.post(
      "/twilio/services",
      express.urlencoded({ extended: false, limit: "16kb" }),
      handleServiceForm(twilio.services),
    );
    router.get("/", async (req: Request, res: Response) => {
      // Grouped by the account that sent them: the system's, or a tenant's own (src/sandbox/labels.ts).
      const labels = new Map<string, string>();
      for (const m of core.messages) {
        const key = `${m.provider}/${m.account}`;
        if (!labels.has(key)) labels.set(key, await groupHeading(m, options.describeAccount));
      }
      const textInForm = options.inboundUrl
        ? { action: `${req.baseUrl}/twilio/inbound`, exchanges: phones.exchanges }
        : undefined;
      res
        .type("html")
        .send(
          sandboxPage(
            core.messages,
            (m) => labels.get(`${m.provider}/${m.account}`)!,
            core.keep,
            textInForm,
            servicesSection(twilio.services.all(), `${req.baseUrl}/twilio/services`) + numbersSection(numbers.list()),
            `${req.baseUrl}/sendgrid/engage`,
          ),
        );
    });
  }

  return {
    router,
    messages: core.messages,
    get mailSendRequests() { return sendgrid.mailSendRequests; }, // prettier-ignore
    takePeakInFlight: twilio.takePeakInFlight,
    addTwilioAccount: twilio.addAccount,
    services: twilio.services,
    numbers,
    addSendGridKey: sendgrid.addKey,
    setFaults: core.setFaults,
    sendgridPublicKey: sendgrid.publicKey,
    signSendGridEvents: sendgrid.signEvents,
    setSendGridEventUrl: sendgrid.setEventUrl,
    engageEmail: sendgrid.engage,
    textIn: phones.textIn,
    addMetaAccount: meta.addAccount,
    metaRequests: meta.requests,
    metaTextIn: meta.textIn,
    whatsapp: twilio.whatsapp,
    settled: core.settled,
  };
}
