import { createHmac, sign, type KeyObject } from "node:crypto";
import type { Response } from "express";
import type { SandboxMessage } from "./core.ts";

/**
 * The sandbox's wire formats: what Twilio and SendGrid send and answer,
 * byte for byte where it matters (signatures), shape for shape elsewhere.
 */

/** A phone number as Twilio accepts one (E.164). */
export const E164 = /^\+[1-9]\d{6,14}$/;

/** Twilio's request signature: HMAC-SHA1 of the URL followed by each POST parameter's name and value, sorted by name. */
export function twilioSignature(authToken: string, url: string, params: Record<string, string>): string {
  const data = Object.keys(params)
    .sort()
    .reduce((acc, key) => acc + key + params[key], url);
  return createHmac("sha1", authToken).update(data, "utf8").digest("base64");
}

/** SendGrid's event signature: ECDSA (P-256, SHA-256) over timestamp + raw body, base64 DER. */
export function sendgridSignature(privateKey: KeyObject, timestamp: string, body: string): string {
  return sign("sha256", Buffer.from(timestamp + body), privateKey).toString("base64");
}

export function twilioError(res: Response, status: number, code: number, message: string) {
  res.status(status).json({ code, message, more_info: `https://www.twilio.com/docs/errors/${code}`, status });
}

/** A stored message in the JSON shape of Twilio's Message resource. */
export function twilioMessageJson(m: SandboxMessage) {
  const uri = `/2010-04-01/Accounts/${m.account}/Messages/${m.id}.json`;
  return {
    account_sid: m.account,
    api_version: "2010-04-01",
    body: m.body,
    date_created: m.createdAt.toUTCString(),
    date_sent: null,
    date_updated: m.createdAt.toUTCString(),
    direction: "outbound-api",
    error_code: null,
    error_message: null,
    from: m.from,
    messaging_service_sid: null,
    num_media: String(m.media?.length ?? 0),
    num_segments: String(Math.max(1, Math.ceil(m.body.length / 153))),
    price: null,
    price_unit: "USD",
    sid: m.id,
    status: "queued",
    subresource_uris: { media: uri.replace(".json", "/Media.json") },
    to: m.to,
    uri,
  };
}

export function sendgridError(res: Response, status: number, message: string, field: string | null = null) {
  res.status(status).json({ errors: [{ message, field, help: null }] });
}
