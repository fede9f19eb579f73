import { randomBytes } from "node:crypto";
import express, { type Request, type Response, type Router } from "express";
import { outcomeFor, sameSecret, sleep, type SandboxCore, type SandboxMessage } from "./core.ts";
import { addServiceRoutes, type SandboxServices } from "./services.ts";
import { addWhatsAppRoutes, type SandboxWhatsApp } from "./whatsapp.ts";
import { E164, twilioError, twilioMessageJson, twilioSignature } from "./wire.ts";

/**
 * The sandbox's Twilio: the Messages API (send, list, fetch one), with
 * Twilio's error codes, and status callbacks (sent, then delivered, failed or
 * undelivered: see `outcomeFor`) posted to a message's StatusCallback, signed
 * with X-Twilio-Signature under the account's auth token.
 *
 * Routes (relative to where the sandbox is mounted):
 *   POST /twilio/2010-04-01/Accounts/:sid/Messages.json   form-encoded, HTTP Basic (sid:token)
 *   GET  /twilio/2010-04-01/Accounts/:sid/Messages.json   recent messages (To/From filters)
 *   GET  /twilio/2010-04-01/Accounts/:sid/Messages/:messageSid.json   one message and its status
 */

/**
 * A Twilio account's auth token the sandbox accepts without being told:
 * `sandbox:<AccountSid>`. Tenants use these in development; anything else is
 * refused exactly as Twilio refuses a wrong credential.
 */
export const sandboxTwilioToken = (accountSid: string) => `sandbox:${accountSid}`;
/** The system account in sandbox mode (no TWILIO_* configured). */
export const SANDBOX_SYSTEM_TWILIO = {
  accountSid: `AC${"0".repeat(32)}`,
  authToken: sandboxTwilioToken(`AC${"0".repeat(32)}`),
};

export interface SandboxTwilio {
  /** The auth token Twilio signs with for an account (one added, or the sandbox's own). */
  tokenOf(accountSid: string): string;
  addAccount(accountSid: string, authToken: string): void;
  /** The most send requests open at once since the last call (and resets it). */
  takePeakInFlight(): number;
  /** Messaging Services and their pools (services.ts). */
  services: SandboxServices;
  /** Media, approved templates, the 24-hour window (src/sandbox/whatsapp.ts). */
  whatsapp: SandboxWhatsApp;
}

/** Installs Twilio's routes on the sandbox's router. */
export function addTwilioRoutes(router: Router, core: SandboxCore): SandboxTwilio {
  const accounts = new Map<string, string>();
  const tokenOf = (accountSid: string) => accounts.get(accountSid) ?? sandboxTwilioToken(accountSid);
  let [requestsInFlight, peakInFlight] = [0, 0];
  const services = addServiceRoutes(router, core, tokenOf);

  /** As the account itself (SID + auth token) or one of its API keys (SK… + secret). */
  const authorized = (req: Request, sid: string): boolean => {
    const [scheme, encoded] = (req.headers.authorization ?? "").split(" ");
    const [principal = "", ...rest] = Buffer.from(encoded ?? "", "base64")
      .toString("utf8")
      .split(":");
    return (
      scheme === "Basic" &&
      (principal === sid || principal.startsWith("SK")) &&
      sameSecret(rest.join(":"), tokenOf(principal))
    );
  };

  const whatsappRoutes = addWhatsAppRoutes(router, core, { authorized });

  router.post(
    "/twilio/2010-04-01/Accounts/:sid/Messages.json",
    express.urlencoded({ extended: false, limit: "64kb" }),
    async (req: Request, res: Response) => {
      peakInFlight = Math.max(peakInFlight, ++requestsInFlight); // how many sends overlap (tests of concurrency read the peak)
      res.once("close", () => requestsInFlight--);
      if (await core.faulted(res, "twilio")) return;
      const sid = String(req.params.sid);
      if (!authorized(req, sid)) return twilioError(res, 401, 20003, "Authenticate");
      const {
        To: to = "",
        From: givenFrom = "",
        Body: body = "",
        StatusCallback: statusCallback,
        MessagingServiceSid: serviceSid,
      } = req.body as Record<string, string>;
      const whatsapp = to.startsWith("whatsapp:");
      const toNumber = whatsapp ? to.slice("whatsapp:".length) : to;
      if (!E164.test(toNumber))
        return twilioError(res, 400, 21211, `The 'To' number ${to} is not a valid phone number.`);
      // Documented sandbox rule: recipients ending 0003 have replied STOP.
      if (/0003$/.test(toNumber)) return twilioError(res, 400, 21610, "Attempt to send to unsubscribed recipient");
      // No From but a Messaging Service: it picks a pool number, sticky per recipient (services.ts).
      const pooled = !givenFrom && serviceSid ? services.pick(sid, serviceSid, to) : undefined;
      if (pooled && "error" in pooled) return twilioError(res, 400, pooled.error.code, pooled.error.message);
      const from = pooled?.from ?? givenFrom;
      if (!from) return twilioError(res, 400, 21603, "A 'From' phone number is required.");
      if (whatsapp !== from.startsWith("whatsapp:")) {
        return twilioError(res, 400, 63007, "Twilio could not find a Channel with the specified From address");
      }
      const extras = whatsappRoutes.extras(sid, req.body as Record<string, string | string[]>, whatsapp);
      if (extras.refused) return twilioError(res, extras.refused.status, extras.refused.code, extras.refused.message);
      if (body.length > 1600)
        return twilioError(res, 400, 21617, "The concatenated message body exceeds the 1600 character limit.");

      const messageSid = `SM${randomBytes(16).toString("hex")}`;
      const stored: SandboxMessage = {
        id: messageSid,
        provider: "twilio",
        account: sid,
        channel: whatsapp ? "whatsapp" : "sms",
        from,
        to,
        body: extras.body,
        createdAt: new Date(),
        ...(extras.media.length ? { media: extras.media } : {}),
        ...(extras.contentSid ? { contentSid: extras.contentSid } : {}),
        ...(extras.outsideWindow ? { failedWith: 63016 } : {}),
      };
      core.remember(stored);
      if (statusCallback) {
        const outcome = extras.outsideWindow ? { status: "failed", errorCode: 63016 } : outcomeFor(toNumber);
        // WhatsApp tells when it was read, after delivered.
        const statuses =
          outcome.status === "delivered"
            ? ["sent", "delivered", ...(whatsapp ? ["read"] : [])]
            : ["sent", outcome.status];
        const authToken = tokenOf(sid);
        core.schedule(
          statuses.map((status) => () => {
            const params: Record<string, string> = {
              AccountSid: sid,
              From: from,
              MessageSid: messageSid,
              MessageStatus: status,
              SmsSid: messageSid,
              SmsStatus: status,
              To: to,
              ApiVersion: "2010-04-01",
            };
            if (status === "failed" || status === "undelivered") params.ErrorCode = String(outcome.errorCode);
            return fetch(statusCallback, {
              method: "POST",
              headers: {
                "content-type": "application/x-www-form-urlencoded",
                "x-twilio-signature": twilioSignature(authToken, statusCallback, params),
              },
              body: new URLSearchParams(params).toString(),
            });
          }),
        );
      }
      if (core.dropAfterAccepting(res)) return;
      const { slowAnswerMs } = core.faults;
      if (slowAnswerMs) await sleep(slowAnswerMs);
      res.status(201).json(twilioMessageJson(stored));
    },
  );

  // The account's recent messages, newest first (Twilio's Messages list, filtered by To/From).
  router.get("/twilio/2010-04-01/Accounts/:sid/Messages.json", async (req: Request, res: Response) => {
    if (await core.faulted(res, "twilio")) return;
    const sid = String(req.params.sid);
    if (!authorized(req, sid)) return twilioError(res, 401, 20003, "Authenticate");
    const { To: to, From: from } = req.query as Record<string, string | undefined>;
    const pageSize = Math.min(Number(req.query.PageSize ?? 50) || 50, 1000);
    const found = core.messages
      .filter((m) => m.provider === "twilio" && m.account === sid && (!to || m.to === to) && (!from || m.from === from))
      .reverse()
      .slice(0, pageSize);
    const uri = `/2010-04-01/Accounts/${sid}/Messages.json?PageSize=${pageSize}&Page=0`;
    res.json({
      messages: found.map(twilioMessageJson),
      first_page_uri: uri,
      next_page_uri: null,
      previous_page_uri: null,
      page: 0,
      page_size: pageSize,
      start: 0,
      end: found.length,
      uri,
    });
  });

  // One message, as Twilio's Message fetch answers: its outcome (see `outcomeFor`) is known at once here.
  router.get("/twilio/2010-04-01/Accounts/:sid/Messages/:messageSid.json", async (req: Request, res: Response) => {
    if (await core.faulted(res, "twilio")) return;
    const sid = String(req.params.sid);
    if (!authorized(req, sid)) return twilioError(res, 401, 20003, "Authenticate");
    const found = core.messages.find(
      (m) => m.provider === "twilio" && m.account === sid && m.id === req.params.messageSid,
    );
    if (!found)
      return twilioError(
        res,
        404,
        20404,
        `The requested resource /2010-04-01/Accounts/${sid}/Messages/${String(req.params.messageSid)}.json was not found`,
      );
    const outcome = found.failedWith
      ? { status: "failed", errorCode: found.failedWith }
      : outcomeFor(found.to.replace(/^whatsapp:/, ""));
    res.json({
      ...twilioMessageJson(found),
      status: outcome.status,
      error_code: outcome.errorCode ?? null,
      date_sent: found.createdAt.toUTCString(),
    });
  });

  return {
    tokenOf,
    addAccount: (accountSid, authToken) => void accounts.set(accountSid, authToken),
    takePeakInFlight: () => [peakInFlight, (peakInFlight = requestsInFlight)][0]!,
    services,
    whatsapp: whatsappRoutes,
  };
}
