import { randomBytes } from "node:crypto";
import type { RequestHandler } from "express";
import { postInbound, twilioAddress, type InboundAnswer, type InboundText } from "./inbound.ts";
import type { TextedIn } from "./page.ts";
import type { SandboxMessage } from "./core.ts";
import type { SandboxWhatsApp, SandboxMedium } from "./whatsapp.ts";
import { E164 } from "./wire.ts";

/** A phone's text to one of Herald's numbers, as the sandbox is asked for it (it knows the token); `files`: media the sandbox keeps and serves. */
export type PhoneText = Omit<InboundText, "authToken" | "url"> & { url?: string; files?: SandboxMedium[] };

/** How many of the page form's exchanges the page shows. */
const EXCHANGES_KEPT = 20;

/**
 * The sandbox's phones, writing in: `textIn` posts a text to Herald's
 * inbound webhook signed as Twilio would, and keeps the TwiML's replies as
 * messages Twilio sent back to the phone; `handleForm` is the page's
 * "Text in" form, whose recent exchanges the page lists.
 */
export function createPhones(deps: {
  /** Herald's inbound webhook, unless a text names another. */
  inboundUrl?: string;
  /** The auth token Twilio signs with for an account. */
  tokenOf: (accountSid: string) => string;
  /** The account a number is on (what Twilio knows), for the form. */
  resolveNumber?: (number: string, channel: "sms" | "whatsapp") => Promise<string | undefined>;
  remember: (message: SandboxMessage) => void;
  whatsapp?: SandboxWhatsApp;
}) {
  const exchanges: TextedIn[] = [];

  const textIn = async (text: PhoneText): Promise<InboundAnswer> => {
    const url = text.url ?? deps.inboundUrl;
    if (!url) throw new Error("the sandbox has no inbound URL to text");
    const { files, ...inbound } = text;
    if (files?.length && deps.whatsapp) {
      const messageSid = (inbound.messageSid ??= `MM${randomBytes(16).toString("hex")}`);
      inbound.media = files.map((f) => ({
        url: deps.whatsapp!.keepMedium(text.accountSid, messageSid, f),
        contentType: f.contentType,
      }));
    }
    // Twilio's WhatsApp window opens when the person writes.
    if (text.channel === "whatsapp") deps.whatsapp?.noteInbound(text.from, text.to);
    const answer = await postInbound({ ...inbound, url, authToken: deps.tokenOf(text.accountSid) });
    for (const reply of answer.replies) {
      deps.remember({
        id: `SM${randomBytes(16).toString("hex")}`,
        provider: "twilio",
        account: text.accountSid,
        channel: text.channel ?? "sms",
        from: twilioAddress(text.to, text.channel),
        to: twilioAddress(text.from, text.channel),
        body: reply,
        createdAt: new Date(),
      });
    }
    return answer;
  };

  const handleForm: RequestHandler = async (req, res) => {
    const { from = "", to = "", body = "", channel: requested } = req.body as Record<string, string>;
    const channel = requested === "whatsapp" ? "whatsapp" : "sms";
    const accountSid = E164.test(to) ? await deps.resolveNumber?.(to, channel) : undefined;
    // No such number (or no phone writing): Twilio would never have called.
    const exchange: TextedIn = { at: new Date(), from, to, body, status: 404, replies: [] };
    if (accountSid && E164.test(from)) {
      const answer = await textIn({ accountSid, from, to, body, channel }).catch(() => ({ status: 502, replies: [] }));
      Object.assign(exchange, { status: answer.status, replies: answer.replies });
    }
    exchanges.push(exchange);
    if (exchanges.length > EXCHANGES_KEPT) exchanges.shift();
    res.redirect(303, req.baseUrl || "/");
  };

  return { textIn, handleForm, exchanges };
}
