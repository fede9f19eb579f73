import { randomBytes } from "node:crypto";
import express, { type Request, type Response, type Router } from "express";
import { escapeHtml } from "../html.ts";
import { sameSecret, type SandboxCore } from "./core.ts";
import { E164, twilioError } from "./wire.ts";

/**
 * The sandbox's phone numbers: which Twilio account holds which number, as
 * Twilio's IncomingPhoneNumbers, AvailablePhoneNumbers and (for WhatsApp) the
 * Messaging v2 Senders APIs answer, so ownership proofs, sync, search, buy,
 * release and webhook set-up run offline.
 *
 * Rules (documented for developers):
 * - A number is held by at most one account; buying a held number fails
 *   (21422), as on Twilio.
 * - The system account (AC000…0, the sandbox's own) is the platform's pool: it
 *   holds every number no other sandbox account holds. Tenant accounts hold
 *   only what they bought here or what a test assigned to them (`assign`).
 * - Available numbers are fictional: NXX-555-01xx in the US and Canada
 *   (area code 415 unless asked), +44 7700 900xxx in GB.
 *
 * Routes (relative to where the sandbox is mounted), HTTP Basic as the account
 * (SID + auth token) or, under /2010-04-01, one of its API keys:
 *   GET    /twilio/2010-04-01/Accounts/:sid/IncomingPhoneNumbers.json          list (PhoneNumber filter)
 *   POST   /twilio/2010-04-01/Accounts/:sid/IncomingPhoneNumbers.json          buy (PhoneNumber, SmsUrl, StatusCallback, FriendlyName)
 *   GET    /twilio/2010-04-01/Accounts/:sid/IncomingPhoneNumbers/:pn.json      one number
 *   POST   /twilio/2010-04-01/Accounts/:sid/IncomingPhoneNumbers/:pn.json      update (SmsUrl, StatusCallback, FriendlyName)
 *   DELETE /twilio/2010-04-01/Accounts/:sid/IncomingPhoneNumbers/:pn.json      release
 *   GET    /twilio/2010-04-01/Accounts/:sid/AvailablePhoneNumbers/:country/Local.json   search
 *   GET    /twilio/v2/Channels/Senders?Channel=whatsapp                        the account's WhatsApp senders
 */

export interface SandboxNumber {
  sid: string;
  account: string;
  channel: "sms" | "whatsapp";
  phoneNumber: string;
  friendlyName: string;
  smsUrl: string;
  statusCallback: string;
  createdAt: Date;
}

export interface SandboxNumbers {
  /** The account now holds the number (taken from whoever held it): a number moved between accounts. */
  assign(accountSid: string, phoneNumber: string, channel?: "sms" | "whatsapp"): SandboxNumber;
  /** The number leaves whatever account held it (back to the system's pool). */
  release(phoneNumber: string, channel?: "sms" | "whatsapp"): void;
  /** The account holding the number (the system's when no other does). */
  holderOf(phoneNumber: string, channel?: "sms" | "whatsapp"): string;
  /** Every number an account was given (newest last). */
  list(): SandboxNumber[];
}

const key = (channel: string, phoneNumber: string) => `${channel}:${phoneNumber}`;
const capabilities = { voice: true, sms: true, mms: true, fax: false };

export function addNumberRoutes(
  router: Router,
  core: SandboxCore,
  twilio: { tokenOf(accountSid: string): string; systemSid: string },
): SandboxNumbers {
  const held = new Map<string, SandboxNumber>();

  const principalOf = (req: Request): { principal: string; secret: string } | undefined => {
    const [scheme, encoded] = (req.headers.authorization ?? "").split(" ");
    if (scheme !== "Basic") return undefined;
    const [principal = "", ...rest] = Buffer.from(encoded ?? "", "base64")
      .toString("utf8")
      .split(":");
    return { principal, secret: rest.join(":") };
  };
  const authorized = (req: Request, sid: string): boolean => {
    const p = principalOf(req);
    return (
      !!p && (p.principal === sid || p.principal.startsWith("SK")) && sameSecret(p.secret, twilio.tokenOf(p.principal))
    );
  };

  const assign = (account: string, phoneNumber: string, channel: "sms" | "whatsapp" = "sms"): SandboxNumber => {
    const number: SandboxNumber = {
      sid: `${channel === "sms" ? "PN" : "XE"}${randomBytes(16).toString("hex")}`,
      account,
      channel,
      phoneNumber,
      friendlyName: phoneNumber,
      smsUrl: "",
      statusCallback: "",
      createdAt: new Date(),
    };
    held.set(key(channel, phoneNumber), number);
    return number;
  };
  const holderOf = (phoneNumber: string, channel: "sms" | "whatsapp" = "sms") =>
    held.get(key(channel, phoneNumber))?.account ?? twilio.systemSid;
  /** The account's numbers; the system's pool answers for any number asked by name. */
  const numbersOf = (account: string, phoneNumber?: string, channel: "sms" | "whatsapp" = "sms"): SandboxNumber[] => {
    if (phoneNumber) {
      const found = held.get(key(channel, phoneNumber));
      if (found) return found.account === account ? [found] : [];
      return account === twilio.systemSid ? [assign(account, phoneNumber, channel)] : [];
    }
    return [...held.values()].filter((n) => n.account === account && n.channel === channel);
  };

  const numberJson = (n: SandboxNumber) => ({
    account_sid: n.account,
    sid: n.sid,
    phone_number: n.phoneNumber,
    friendly_name: n.friendlyName,
    capabilities,
    sms_url: n.smsUrl,
    sms_method: "POST",
    status_callback: n.statusCallback,
    status_callback_method: "POST",
    date_created: n.createdAt.toUTCString(),
    date_updated: n.createdAt.toUTCString(),
    api_version: "2010-04-01",
    uri: `/2010-04-01/Accounts/${n.account}/IncomingPhoneNumbers/${n.sid}.json`,
  });
  const page = (res: Response, name: string, uri: string, items: unknown[], pageSize: number) =>
    res.json({
      [name]: items,
      first_page_uri: uri,
      next_page_uri: null,
      previous_page_uri: null,
      page: 0,
      page_size: pageSize,
      start: 0,
      end: items.length,
      uri,
    });
  const pageSizeOf = (req: Request) => Math.min(Number(req.query.PageSize ?? 50) || 50, 1000);
  const form = express.urlencoded({ extended: false, limit: "16kb" });
  const base = "/twilio/2010-04-01/Accounts/:sid";

  router.get(`${base}/IncomingPhoneNumbers.json`, async (req: Request, res: Response) => {
    if (await core.faulted(res, "twilio")) return;
    const sid = String(req.params.sid);
    if (!authorized(req, sid)) return twilioError(res, 401, 20003, "Authenticate");
    const wanted = typeof req.query.PhoneNumber === "string" ? req.query.PhoneNumber : undefined;
    const pageSize = pageSizeOf(req);
    const found = numbersOf(sid, wanted).slice(0, pageSize);
    page(
      res,
      "incoming_phone_numbers",
      `/2010-04-01/Accounts/${sid}/IncomingPhoneNumbers.json`,
      found.map(numberJson),
      pageSize,
    );
  });

  router.post(`${base}/IncomingPhoneNumbers.json`, form, async (req: Request, res: Response) => {
    if (await core.faulted(res, "twilio")) return;
    const sid = String(req.params.sid);
    if (!authorized(req, sid)) return twilioError(res, 401, 20003, "Authenticate");
    const body = req.body as Record<string, string>;
    const phoneNumber = body.PhoneNumber ?? "";
    if (!E164.test(phoneNumber)) return twilioError(res, 400, 21421, "PhoneNumber is invalid");
    const current = held.get(key("sms", phoneNumber));
    // A number is bought once: one already held, even by the buyer, is not available.
    if (current || !/55501\d\d$|7700900\d{3}$/.test(phoneNumber)) {
      return twilioError(res, 400, 21422, "PhoneNumber requested is not available");
    }
    const number = assign(sid, phoneNumber);
    number.friendlyName = body.FriendlyName ?? phoneNumber;
    number.smsUrl = body.SmsUrl ?? "";
    number.statusCallback = body.StatusCallback ?? "";
    res.status(201).json(numberJson(number));
  });

  const ownNumber = (req: Request, res: Response): SandboxNumber | undefined => {
    const sid = String(req.params.sid);
    if (!authorized(req, sid)) return void twilioError(res, 401, 20003, "Authenticate");
    const found = [...held.values()].find((n) => n.account === sid && n.sid === req.params.pn);
    if (!found) return void twilioError(res, 404, 20404, `The requested resource ${req.path} was not found`);
    return found;
  };
  router.get(`${base}/IncomingPhoneNumbers/:pn.json`, async (req: Request, res: Response) => {
    if (await core.faulted(res, "twilio")) return;
    const found = ownNumber(req, res);
    if (found) res.json(numberJson(found));
  });
  router.post(`${base}/IncomingPhoneNumbers/:pn.json`, form, async (req: Request, res: Response) => {
    if (await core.faulted(res, "twilio")) return;
    const found = ownNumber(req, res);
    if (!found) return;
    const body = req.body as Record<string, string>;
    if (body.SmsUrl !== undefined) found.smsUrl = body.SmsUrl;
    if (body.StatusCallback !== undefined) found.statusCallback = body.StatusCallback;
    if (body.FriendlyName !== undefined) found.friendlyName = body.FriendlyName;
    res.json(numberJson(found));
  });
  router.delete(`${base}/IncomingPhoneNumbers/:pn.json`, async (req: Request, res: Response) => {
    if (await core.faulted(res, "twilio")) return;
    const found = ownNumber(req, res);
    if (!found) return;
    held.delete(key(found.channel, found.phoneNumber));
    res.status(204).end();
  });

  router.get(`${base}/AvailablePhoneNumbers/:country/Local.json`, async (req: Request, res: Response) => {
    if (await core.faulted(res, "twilio")) return;
    const sid = String(req.params.sid);
    if (!authorized(req, sid)) return twilioError(res, 401, 20003, "Authenticate");
    const country = String(req.params.country).toUpperCase();
    const q = req.query as Record<string, string | undefined>;
    const pageSize = Math.min(pageSizeOf(req), 50);
    let candidates: string[];
    if (country === "US" || country === "CA") {
      const area = /^\d{3}$/.test(q.AreaCode ?? "") ? q.AreaCode! : "415";
      candidates = Array.from({ length: 100 }, (_, i) => `+1${area}55501${String(i).padStart(2, "0")}`);
    } else if (country === "GB") {
      candidates = Array.from({ length: 1000 }, (_, i) => `+447700900${String(i).padStart(3, "0")}`);
    } else candidates = [];
    // Twilio's Contains: digits, with * matching any one digit.
    const contains = q.Contains ? new RegExp(q.Contains.replace(/[^0-9*]/g, "").replace(/\*/g, "\\d")) : undefined;
    const found = candidates
      .filter((n) => !held.has(key("sms", n)) && (!contains || contains.test(n.slice(1))))
      .slice(0, pageSize)
      .map((n) => ({
        friendly_name: n,
        phone_number: n,
        locality: country === "GB" ? "London" : "San Francisco",
        region: country === "GB" ? "England" : "CA",
        iso_country: country,
        postal_code: null,
        capabilities: { voice: true, SMS: true, MMS: country !== "GB", fax: false },
        address_requirements: "none",
        beta: false,
      }));
    res.json({
      available_phone_numbers: found,
      uri: `/2010-04-01/Accounts/${sid}/AvailablePhoneNumbers/${country}/Local.json`,
    });
  });

  // WhatsApp senders (Messaging v2): the account is the one authenticating (its SID, not an API key).
  router.get("/twilio/v2/Channels/Senders", async (req: Request, res: Response) => {
    if (await core.faulted(res, "twilio")) return;
    const p = principalOf(req);
    if (!p || !p.principal.startsWith("AC") || !sameSecret(p.secret, twilio.tokenOf(p.principal)))
      return twilioError(res, 401, 20003, "Authenticate");
    const pageSize = Math.min(Number(req.query.PageSize ?? 20) || 20, 1000);
    const senders = [...held.values()]
      .filter((n) => n.account === p.principal && n.channel === "whatsapp")
      .slice(0, pageSize)
      .map((n) => ({
        sid: n.sid,
        status: "ONLINE",
        sender_id: `whatsapp:${n.phoneNumber}`,
        configuration: null,
        webhook: { callback_url: n.smsUrl || null, status_callback_url: n.statusCallback || null },
        profile: { name: n.friendlyName },
        properties: null,
        offline_reasons: null,
        url: `https://messaging.twilio.com/v2/Channels/Senders/${n.sid}`,
      }));
    res.json({
      senders,
      meta: {
        page: 0,
        page_size: pageSize,
        first_page_url: null,
        previous_page_url: null,
        url: null,
        next_page_url: null,
        key: "senders",
      },
    });
  });

  return {
    assign,
    release: (phoneNumber, channel = "sms") => void held.delete(key(channel, phoneNumber)),
    holderOf,
    list: () => [...held.values()],
  };
}

/** The page's section: which account holds which number. */
export function numbersSection(numbers: SandboxNumber[]): string {
  if (numbers.length === 0) return "";
  const rows = numbers
    .map(
      (n) =>
        `<tr><td>${escapeHtml(n.account)}</td><td>${n.channel}</td><td>${escapeHtml(n.phoneNumber)}</td><td>${escapeHtml(n.friendlyName)}</td>` +
        `<td>${escapeHtml(n.smsUrl)}</td><td>${escapeHtml(n.statusCallback)}</td></tr>`,
    )
    .join("\n");
  return `<h2>Phone numbers</h2><p>Which sandbox account holds which number (the system account holds every other one).</p>
<table><tr><th>account</th><th>channel</th><th>number</th><th>friendly name</th><th>SmsUrl</th><th>StatusCallback</th></tr>${rows}</table>`;
}
