import { randomBytes } from "node:crypto";
import express, { type Request, type Response, type Router } from "express";
import { escapeHtml } from "../html.ts";
import { sameSecret, type SandboxCore } from "./core.ts";
import { E164, twilioError } from "./wire.ts";

/**
 * The sandbox's Twilio Messaging Services: an account's services, each with a
 * pool of numbers, listed as Twilio's Messaging v1 API lists them; and the
 * pick of a pool number for a message created with a MessagingServiceSid and
 * no From, with **sticky sender**: a recipient gets the number it got before,
 * for as long as that number stays in the pool (else a new one, kept from
 * then on). A new recipient gets the pool's least used number.
 *
 * Routes (relative to where the sandbox is mounted; HTTP Basic as the account):
 *   POST /twilio/v1/Services                     FriendlyName: a new, empty service
 *   GET  /twilio/v1/Services/:sid                one service
 *   GET  /twilio/v1/Services/:sid/PhoneNumbers   its pool numbers (PageSize, at most 1,000)
 */

export interface SandboxService {
  sid: string;
  accountSid: string;
  friendlyName: string;
  numbers: string[];
  /** Recipient → the pool number it is stuck to. */
  sticky: Map<string, string>;
  createdAt: Date;
}

export interface SandboxServices {
  /** A service on the account with these pool numbers (tests, development); its MG… SID. */
  add(accountSid: string, options: { numbers: string[]; friendlyName?: string; sid?: string }): string;
  /** Replaces a service's pool (numbers leaving it release their recipients). */
  setNumbers(serviceSid: string, numbers: string[]): void;
  /** The pool number for a message to `to`, or Twilio's error when the service cannot send. */
  pick(
    accountSid: string,
    serviceSid: string,
    to: string,
  ): { from: string } | { error: { code: number; message: string } };
  all(): SandboxService[];
}

const serviceJson = (s: SandboxService) => ({
  sid: s.sid,
  account_sid: s.accountSid,
  friendly_name: s.friendlyName,
  sticky_sender: true,
  date_created: s.createdAt.toISOString(),
  date_updated: s.createdAt.toISOString(),
  url: `https://messaging.twilio.com/v1/Services/${s.sid}`,
  links: { phone_numbers: `https://messaging.twilio.com/v1/Services/${s.sid}/PhoneNumbers` },
});

const numberSid = (serviceSid: string, number: string) =>
  `PN${Buffer.from(serviceSid + number)
    .toString("hex")
    .slice(-32)
    .padStart(32, "0")}`;

export function addServiceRoutes(
  router: Router,
  core: SandboxCore,
  tokenOf: (accountSid: string) => string,
): SandboxServices {
  const services = new Map<string, SandboxService>();

  /** The account the request authenticates as (an API key SK…: any account's services, as the sandbox cannot tell). */
  const principal = (req: Request): string | undefined => {
    const [scheme, encoded] = (req.headers.authorization ?? "").split(" ");
    const [name = "", ...rest] = Buffer.from(encoded ?? "", "base64")
      .toString("utf8")
      .split(":");
    return scheme === "Basic" && /^(AC|SK)/.test(name) && sameSecret(rest.join(":"), tokenOf(name)) ? name : undefined;
  };
  const visible = (who: string, sid: string) => {
    const s = services.get(sid);
    return s && (who.startsWith("SK") || s.accountSid === who) ? s : undefined;
  };
  const notFound = (res: Response, path: string) =>
    twilioError(res, 404, 20404, `The requested resource ${path} was not found`);

  router.post("/twilio/v1/Services", express.urlencoded({ extended: false, limit: "16kb" }), async (req, res) => {
    if (await core.faulted(res, "twilio")) return;
    const who = principal(req);
    if (!who?.startsWith("AC")) return twilioError(res, 401, 20003, "Authenticate");
    const name = String((req.body as Record<string, string>).FriendlyName ?? "").slice(0, 64);
    if (!name) return twilioError(res, 400, 21601, "FriendlyName is required.");
    res.status(201).json(serviceJson(services.get(api.add(who, { numbers: [], friendlyName: name }))!));
  });

  router.get("/twilio/v1/Services/:sid", async (req, res) => {
    if (await core.faulted(res, "twilio")) return;
    const who = principal(req);
    if (!who) return twilioError(res, 401, 20003, "Authenticate");
    const s = visible(who, String(req.params.sid));
    if (!s) return notFound(res, `/v1/Services/${String(req.params.sid)}`);
    res.json(serviceJson(s));
  });

  router.get("/twilio/v1/Services/:sid/PhoneNumbers", async (req, res) => {
    if (await core.faulted(res, "twilio")) return;
    const who = principal(req);
    if (!who) return twilioError(res, 401, 20003, "Authenticate");
    const s = visible(who, String(req.params.sid));
    if (!s) return notFound(res, `/v1/Services/${String(req.params.sid)}/PhoneNumbers`);
    const pageSize = Math.min(Number(req.query.PageSize ?? 50) || 50, 1000);
    const url = `https://messaging.twilio.com/v1/Services/${s.sid}/PhoneNumbers?PageSize=${pageSize}&Page=0`;
    res.json({
      phone_numbers: s.numbers.slice(0, pageSize).map((n) => ({
        sid: numberSid(s.sid, n),
        account_sid: s.accountSid,
        service_sid: s.sid,
        phone_number: n,
        country_code: n.startsWith("+1") ? "US" : null,
        capabilities: ["SMS", "MMS"],
        date_created: s.createdAt.toISOString(),
        date_updated: s.createdAt.toISOString(),
        url: `https://messaging.twilio.com/v1/Services/${s.sid}/PhoneNumbers/${numberSid(s.sid, n)}`,
      })),
      meta: {
        page: 0,
        page_size: pageSize,
        first_page_url: url,
        previous_page_url: null,
        url,
        next_page_url: null,
        key: "phone_numbers",
      },
    });
  });

  const api: SandboxServices = {
    add(accountSid, options) {
      const sid = options.sid ?? `MG${randomBytes(16).toString("hex")}`;
      const numbers = [...new Set(options.numbers)];
      if (!numbers.every((n) => E164.test(n))) throw new Error("pool numbers are E.164");
      services.set(sid, {
        sid,
        accountSid,
        friendlyName: options.friendlyName ?? "Sandbox service",
        numbers,
        sticky: new Map(),
        createdAt: new Date(),
      });
      return sid;
    },
    setNumbers(serviceSid, numbers) {
      const s = services.get(serviceSid);
      if (!s) throw new Error(`no sandbox service ${serviceSid}`);
      s.numbers = [...new Set(numbers)];
      for (const [to, from] of s.sticky) if (!s.numbers.includes(from)) s.sticky.delete(to);
    },
    pick(accountSid, serviceSid, to) {
      const s = services.get(serviceSid);
      if (!s || s.accountSid !== accountSid)
        return { error: { code: 21701, message: `The Messaging Service Sid ${serviceSid} is invalid.` } };
      if (s.numbers.length === 0)
        return { error: { code: 21704, message: "The Messaging Service contains no phone numbers." } };
      const kept = s.sticky.get(to);
      if (kept && s.numbers.includes(kept)) return { from: kept };
      // The least used number of the pool (first in pool order on a tie).
      const uses = new Map(s.numbers.map((n) => [n, 0]));
      for (const from of s.sticky.values()) uses.set(from, (uses.get(from) ?? 0) + 1);
      const from = s.numbers.reduce((best, n) => (uses.get(n)! < uses.get(best)! ? n : best));
      s.sticky.set(to, from);
      return { from };
    },
    all: () => [...services.values()],
  };
  return api;
}

/**
 * The page's form that adds a service (development: the sandbox has no console),
 * posted to `action` with accountSid, name and numbers (comma- or space-separated).
 */
export function handleServiceForm(services: SandboxServices) {
  return (req: Request, res: Response) => {
    const { accountSid = "", name = "", numbers = "" } = req.body as Record<string, string>;
    const pool = numbers.split(/[\s,]+/).filter(Boolean);
    if (!/^AC[0-9a-f]{32}$/.test(accountSid) || !pool.every((n) => E164.test(n)) || pool.length > 400) {
      res.status(400).type("text").send("An account SID (AC + 32 hex digits) and E.164 numbers, please.");
      return;
    }
    services.add(accountSid, { numbers: pool, friendlyName: name.slice(0, 64) || "Sandbox service" });
    res.redirect(303, req.baseUrl || "/");
  };
}

/** The services section of the sandbox page: each pool number with the recipients stuck to it, and the form that adds one. */
export function servicesSection(services: SandboxService[], formAction?: string): string {
  const form = formAction
    ? `<form method="post" action="${escapeHtml(formAction)}">Add a service: <label>account <input name="accountSid" placeholder="AC…" size="36"></label>
<label>name <input name="name" value="Sandbox service"></label> <label>pool numbers <input name="numbers" placeholder="+14155557001, +14155557002" size="40"></label> <button>Add</button></form>`
    : "";
  if (services.length === 0) return form ? `<h2>Messaging Services</h2>${form}` : "";
  const rows = services
    .map((s) => {
      const byNumber = s.numbers.map((n) => {
        const stuck = [...s.sticky].filter(([, from]) => from === n).map(([to]) => to);
        return `${escapeHtml(n)}${stuck.length ? ` ← ${escapeHtml(stuck.join(", "))}` : ""}`;
      });
      return (
        `<tr><td>${escapeHtml(s.friendlyName)}</td><td>${escapeHtml(s.sid)}</td><td>${escapeHtml(s.accountSid)}</td>` +
        `<td>${byNumber.join("<br>") || "no numbers"}</td></tr>`
      );
    })
    .join("\n");
  return `<h2>Messaging Services</h2><p>Sender pools: a message sent through a service goes from one of its numbers, the same one for a recipient while that number stays in the pool (sticky sender).</p>
<table><tr><th>service</th><th>SID</th><th>account</th><th>pool numbers ← recipients they are stuck to</th></tr>${rows}</table>${form}`;
}
