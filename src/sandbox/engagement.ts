import { randomBytes, type KeyObject } from "node:crypto";
import { sendgridSignature } from "./wire.ts";

/**
 * Opens and clicks in the sandbox's SendGrid. A real recipient opening a mail
 * (the tracking pixel loads) or following a link makes SendGrid post an `open`
 * or `click` event; here a test, or the `/sandbox` page's buttons, asks for
 * one: `POST /sendgrid/engage` (form or JSON fields `messageId`, `to`,
 * `event` = open | click, `url` for a click) or `sandbox.engageEmail(...)`.
 * The event is built like the sandbox's other events (the mail's custom args
 * echoed, so Herald finds its delivery), signed with the same key, and posted
 * to the event URL at once; `repeat` posts the same event again, as SendGrid
 * does when it is unsure an earlier post arrived.
 */

export interface EngageRequest {
  /** The X-Message-Id mail/send answered with (the sandbox message's id). */
  messageId: string;
  /** The recipient who opens or clicks. */
  to: string;
  event: "open" | "click";
  /** For a click: the link followed (http or https). */
  url?: string;
  /** Posts of the same event (same sg_event_id): 1 unless SendGrid repeats itself. */
  repeat?: number;
}

export type EngageResult =
  { ok: true; events: Record<string, unknown>[]; status: number } | { ok: false; status: number; error: string };

interface Recipient {
  personalization: number;
  customArgs: Record<string, string>;
}

/** What the sandbox remembers of sent mail to build these events (the last `keep` recipients), and the poster. */
export function engagementEvents(keep: number) {
  const recipients = new Map<string, Recipient>();
  const keyOf = (messageId: string, to: string) => `${messageId} ${to.trim().toLowerCase()}`;

  return {
    remember(messageId: string, to: string, personalization: number, customArgs: Record<string, string>) {
      recipients.set(keyOf(messageId, to), { personalization, customArgs });
      // Oldest first (a Map keeps insertion order): bounded like the messages.
      while (recipients.size > keep) recipients.delete(recipients.keys().next().value!);
    },

    async post(request: Record<string, unknown>, eventUrl: string | undefined, key: KeyObject): Promise<EngageResult> {
      const { messageId, to, event, url } = request;
      const repeat = request.repeat === undefined ? 1 : Number(request.repeat);
      if (event !== "open" && event !== "click")
        return { ok: false, status: 400, error: "event must be open or click" };
      if (typeof messageId !== "string" || typeof to !== "string")
        return { ok: false, status: 400, error: "messageId and to are required" };
      if (event === "click" && (typeof url !== "string" || url.length > 2048 || !/^https?:\/\/\S+$/i.test(url)))
        return { ok: false, status: 400, error: "a click needs the http(s) url that was followed" };
      if (!Number.isInteger(repeat) || repeat < 1 || repeat > 5)
        return { ok: false, status: 400, error: "repeat must be 1 to 5" };
      const recipient = recipients.get(keyOf(messageId, to));
      if (!recipient) return { ok: false, status: 404, error: "no such mail to that recipient (or no longer kept)" };
      if (!eventUrl) return { ok: false, status: 409, error: "no event webhook URL is set" };

      const events = [
        {
          email: to,
          event,
          timestamp: Math.floor(Date.now() / 1000),
          sg_event_id: randomBytes(16).toString("base64url"),
          sg_message_id: `${messageId}.filter0001.${Date.now()}.${recipient.personalization}`,
          useragent: "Mozilla/5.0 (Herald sandbox)",
          ip: "192.0.2.1",
          ...(event === "click" ? { url, url_offset: { index: 0, type: "html" } } : {}),
          ...recipient.customArgs,
        },
      ];
      const payload = JSON.stringify(events);
      let status = 0;
      for (let i = 0; i < repeat; i++) {
        const timestamp = String(Math.floor(Date.now() / 1000));
        const answer = await fetch(eventUrl, {
          method: "POST",
          headers: {
            "content-type": "application/json",
            "x-twilio-email-event-webhook-signature": sendgridSignature(key, timestamp, payload),
            "x-twilio-email-event-webhook-timestamp": timestamp,
          },
          body: payload,
        });
        await answer.arrayBuffer();
        status = answer.status;
      }
      return { ok: true, events, status };
    },
  };
}
