import { randomBytes } from "node:crypto";
import { twilioSignature } from "./wire.ts";

/**
 * A phone texting one of Herald's numbers, the way Twilio reports it: a
 * form-encoded POST to the number's messaging webhook, signed with the
 * account's auth token (X-Twilio-Signature over the URL and sorted
 * parameters). The answer is TwiML; each <Message> in it is a reply Twilio
 * would send back to the phone.
 */

export interface InboundText {
  /** The webhook Twilio would call (Herald's `/webhooks/twilio/sms`). */
  url: string;
  accountSid: string;
  authToken: string;
  /** The phone that writes, E.164. */
  from: string;
  /** The number it writes to, E.164. */
  to: string;
  body: string;
  channel?: "sms" | "whatsapp";
  /** Twilio's id for the message; a retry reuses it. Default: a new one. */
  messageSid?: string;
  /** Media sent with it (MMS, WhatsApp): where Twilio keeps each, and its type (MediaUrlN, MediaContentTypeN). */
  media?: { url: string; contentType: string }[];
}

export interface InboundAnswer {
  status: number;
  messageSid: string;
  /** The texts of the TwiML's <Message> elements. */
  replies: string[];
  body: string;
}

const XML_ENTITIES: Record<string, string> = { "&lt;": "<", "&gt;": ">", "&amp;": "&", "&quot;": '"', "&apos;": "'" };

/** The <Message> texts of a TwiML answer (Twilio's own TwiML is this simple). */
export function twimlMessages(xml: string): string[] {
  return [...xml.matchAll(/<Message(?:\s[^>]*)?>([\s\S]*?)<\/Message>/g)].map((m) =>
    m[1]!.replace(/&(lt|gt|amp|quot|apos);/g, (entity) => XML_ENTITIES[entity]!),
  );
}

/** A number as Twilio writes it on a channel: WhatsApp's with a `whatsapp:` prefix. */
export const twilioAddress = (number: string, channel: InboundText["channel"]) =>
  channel === "whatsapp" ? `whatsapp:${number}` : number;

/** The parameters Twilio posts for an incoming message. */
export function inboundParams(text: InboundText, messageSid: string): Record<string, string> {
  const address = (n: string) => twilioAddress(n, text.channel);
  return {
    AccountSid: text.accountSid,
    ApiVersion: "2010-04-01",
    Body: text.body,
    From: address(text.from),
    MessageSid: messageSid,
    NumMedia: String(text.media?.length ?? 0),
    ...Object.fromEntries(
      (text.media ?? []).flatMap((m, i) => [
        [`MediaUrl${i}`, m.url],
        [`MediaContentType${i}`, m.contentType],
      ]),
    ),
    NumSegments: "1",
    SmsMessageSid: messageSid,
    SmsSid: messageSid,
    SmsStatus: "received",
    To: address(text.to),
  };
}

export async function postInbound(text: InboundText): Promise<InboundAnswer> {
  const messageSid = text.messageSid ?? `SM${randomBytes(16).toString("hex")}`;
  const params = inboundParams(text, messageSid);
  const response = await fetch(text.url, {
    method: "POST",
    headers: {
      "content-type": "application/x-www-form-urlencoded",
      "x-twilio-signature": twilioSignature(text.authToken, text.url, params),
    },
    body: new URLSearchParams(params).toString(),
  });
  const body = await response.text();
  return { status: response.status, messageSid, replies: response.ok ? twimlMessages(body) : [], body };
}
