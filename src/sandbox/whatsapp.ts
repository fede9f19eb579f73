import { randomBytes } from "node:crypto";
import type { Request, Response, Router } from "express";
import { escapeHtml } from "../html.ts";
import type { SandboxCore, SandboxMessage } from "./core.ts";
import { twilioError } from "./wire.ts";

/**
 * The sandbox's Twilio, beyond plain text (issue 16): media on Messages
 * create (MMS up to 10, WhatsApp 1), the Content API's approved templates
 * (sent with ContentSid + ContentVariables), WhatsApp's 24-hour window (a
 * free-form message to someone who has not written to that number in the
 * last 24 hours is accepted, then fails with 63016, as Twilio reports it),
 * and media of inbound messages, served behind the account's Basic auth as
 * Twilio serves them.
 *
 * Routes (relative to where the sandbox is mounted):
 *   GET /twilio/v1/ContentAndApprovals                                           the account's templates and approvals
 *   GET /twilio/2010-04-01/Accounts/:sid/Messages/:messageSid/Media/:mediaSid     an inbound medium's bytes (Basic auth)
 */

/** A Content API template as the sandbox keeps it. */
export interface SandboxContent {
  sid: string;
  friendlyName: string;
  language: string;
  /** The text, with Twilio's numbered placeholders: `Hello {{1}}`. */
  body: string;
  /** WhatsApp approval: approved, pending, rejected, unsubmitted … */
  approvalStatus: string;
}

/** A medium an inbound message carries: what a phone sent. */
export interface SandboxMedium {
  contentType: string;
  bytes: Buffer;
}

/** One day: WhatsApp's customer-service window. */
export const SESSION_WINDOW_MS = 24 * 3600_000;
/** Media larger than this are not kept (Twilio's own limit for MMS is 5 MB). */
const MEDIUM_MAX_BYTES = 5 * 1024 * 1024;

const bare = (address: string) => address.replace(/^whatsapp:/, "");

/** What a send asks for beyond its text, refused (an error to answer) or accepted. */
export type Extras =
  | { refused: { status: number; code: number; message: string } }
  | {
      refused?: undefined;
      media: string[];
      contentSid?: string;
      /** The text to keep: the body, or the template rendered with its variables. */
      body: string;
      /** A free-form WhatsApp message outside the window: accepted, then failed with 63016. */
      outsideWindow: boolean;
    };

export function addWhatsAppRoutes(
  router: Router,
  core: SandboxCore,
  deps: { authorized: (req: Request, sid: string) => boolean },
) {
  const contents = new Map<string, SandboxContent[]>();
  /** The last inbound WhatsApp message per (phone, Herald's number). */
  const lastInbound = new Map<string, Date>();
  const media = new Map<string, SandboxMedium & { account: string; messageSid: string }>();
  let baseUrl: string | undefined;
  let enforceWindow = true;

  router.get("/twilio/v1/ContentAndApprovals", async (req: Request, res: Response) => {
    if (await core.faulted(res, "twilio")) return;
    const [, encoded = ""] = (req.headers.authorization ?? "").split(" ");
    const principal = Buffer.from(encoded, "base64").toString("utf8").split(":")[0] ?? "";
    if (!deps.authorized(req, principal)) return twilioError(res, 401, 20003, "Authenticate");
    const pageSize = Math.min(Math.max(Number(req.query.PageSize ?? 50) || 50, 1), 500);
    const list = (contents.get(principal) ?? []).slice(0, pageSize);
    res.json({
      contents: list.map((c) => ({
        sid: c.sid,
        account_sid: principal,
        friendly_name: c.friendlyName,
        language: c.language,
        variables: Object.fromEntries([...c.body.matchAll(/\{\{(\d+)\}\}/g)].map((m) => [m[1], "sample"])),
        types: { "twilio/text": { body: c.body } },
        approval_requests: { name: c.friendlyName.toLowerCase(), category: "UTILITY", status: c.approvalStatus },
        date_created: new Date().toISOString(),
        date_updated: new Date().toISOString(),
      })),
      meta: {
        page: 0,
        page_size: pageSize,
        first_page_url: null,
        previous_page_url: null,
        url: null,
        next_page_url: null,
        key: "contents",
      },
    });
  });

  router.get(
    "/twilio/2010-04-01/Accounts/:sid/Messages/:messageSid/Media/:mediaSid",
    async (req: Request, res: Response) => {
      if (await core.faulted(res, "twilio")) return;
      const sid = String(req.params.sid);
      if (!deps.authorized(req, sid)) return twilioError(res, 401, 20003, "Authenticate");
      const found = media.get(String(req.params.mediaSid));
      if (!found || found.account !== sid || found.messageSid !== req.params.messageSid)
        return twilioError(res, 404, 20404, "The requested resource was not found");
      res.type(found.contentType).send(found.bytes);
    },
  );

  /** Checks and renders what a Messages create asks for beyond Body (see Extras). */
  function extras(account: string, params: Record<string, string | string[]>, whatsapp: boolean): Extras {
    const one = (name: string) => {
      const v = params[name];
      return Array.isArray(v) ? v[0] : v;
    };
    const raw = params.MediaUrl;
    const urls = raw === undefined ? [] : Array.isArray(raw) ? raw : [raw];
    const refuse = (status: number, code: number, message: string): Extras => ({ refused: { status, code, message } });
    if (urls.length > (whatsapp ? 1 : 10))
      return refuse(400, 21623, `Too many media: at most ${whatsapp ? 1 : 10} per message on this channel.`);
    if (urls.some((u) => !/^https?:\/\/\S+$/.test(u))) return refuse(400, 21620, "Invalid media URL(s).");
    const body = one("Body") ?? "";
    const contentSid = one("ContentSid");
    let text = body;
    if (contentSid) {
      const content = (contents.get(account) ?? []).find((c) => c.sid === contentSid);
      if (!content) return refuse(400, 21655, "The ContentSid is invalid.");
      let variables: Record<string, unknown> = {};
      try {
        variables = JSON.parse(one("ContentVariables") ?? "{}") as Record<string, unknown>;
      } catch {
        return refuse(400, 21656, "The ContentVariables parameter is invalid.");
      }
      text = content.body.replace(/\{\{(\d+)\}\}/g, (whole, n: string) =>
        variables[n] === undefined ? whole : String(variables[n]),
      );
    } else if (!body.trim() && urls.length === 0) {
      return refuse(400, 21602, "Message body is required.");
    }
    const to = bare(one("To") ?? "");
    const from = bare(one("From") ?? "");
    const opened = lastInbound.get(`${to}|${from}`);
    const outsideWindow =
      whatsapp && enforceWindow && !contentSid && (!opened || Date.now() - opened.getTime() > SESSION_WINDOW_MS);
    return { media: urls, ...(contentSid ? { contentSid } : {}), body: text, outsideWindow };
  }

  return {
    extras,
    /** A phone wrote to one of Herald's WhatsApp numbers at `at` (default now): its window opens. */
    noteInbound: (phone: string, heraldNumber: string, at = new Date()) =>
      void lastInbound.set(`${bare(phone)}|${bare(heraldNumber)}`, at),
    /** Turns the 24-hour rule off (or on again). */
    setWindowEnforced: (enforced: boolean) => void (enforceWindow = enforced),
    addContent: (accountSid: string, content: Omit<SandboxContent, "sid"> & { sid?: string }): SandboxContent => {
      const kept = { ...content, sid: content.sid ?? `HX${randomBytes(16).toString("hex")}` };
      const list = contents.get(accountSid) ?? [];
      contents.set(accountSid, [...list.filter((c) => c.sid !== kept.sid), kept]);
      return kept;
    },
    /** Where the sandbox is reachable (`…/sandbox`): inbound media URLs point there. */
    setBaseUrl: (url: string) => void (baseUrl = url.replace(/\/$/, "")),
    /** Keeps a phone's medium for an inbound message; its URL, as Twilio gives it in MediaUrlN. */
    keepMedium: (accountSid: string, messageSid: string, medium: SandboxMedium): string => {
      if (!baseUrl) throw new Error("the sandbox does not know its URL: setBaseUrl first");
      if (medium.bytes.length > MEDIUM_MAX_BYTES) throw new Error("a medium is larger than 5 MB");
      const mediaSid = `ME${randomBytes(16).toString("hex")}`;
      media.set(mediaSid, { ...medium, account: accountSid, messageSid });
      // At most as many media as messages are kept.
      if (media.size > core.keep) media.delete(media.keys().next().value!);
      return `${baseUrl}/twilio/2010-04-01/Accounts/${accountSid}/Messages/${messageSid}/Media/${mediaSid}`;
    },
  };
}

export type SandboxWhatsApp = ReturnType<typeof addWhatsAppRoutes>;

/** For the sandbox page: a message's media, approved template and 63016, under its body (HTML). */
export function sendExtras(m: SandboxMessage): string {
  const lines = [
    ...(m.media ?? []).map((url) => `media: <a href="${escapeHtml(url)}">${escapeHtml(url)}</a>`),
    ...(m.contentSid ? [`approved template ${escapeHtml(m.contentSid)}`] : []),
    ...(m.failedWith ? [`failed ${m.failedWith}: outside the 24-hour window`] : []),
  ];
  return lines.map((line) => `<br><small>${line}</small>`).join("");
}
