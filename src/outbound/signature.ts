import { createHmac, timingSafeEqual } from "node:crypto";

/**
 * How Herald signs what it posts to a tenant's endpoint, and how a receiver
 * checks it (README, "Outbound webhooks"):
 *
 *   Herald-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>
 *
 * The timestamp is signed with the body, so a receiver that refuses old
 * timestamps (five minutes) cannot be fed a captured request later.
 */

export const SIGNATURE_HEADER = "herald-signature";

export function signatureHeader(secret: string, timestamp: number, body: string): string {
  const mac = createHmac("sha256", secret).update(`${timestamp}.${body}`, "utf8").digest("hex");
  return `t=${timestamp},v1=${mac}`;
}

/** A receiver's check, as documented: true when the header signs this body with this secret, recently. */
export function verifySignatureHeader(secret: string, header: string, body: string, nowSeconds = Math.floor(Date.now() / 1000), toleranceSeconds = 300): boolean {
  const parts = Object.fromEntries(header.split(",").map((p) => p.split("=", 2) as [string, string]));
  const timestamp = Number(parts.t);
  if (!Number.isInteger(timestamp) || Math.abs(nowSeconds - timestamp) > toleranceSeconds || !parts.v1) return false;
  const expected = Buffer.from(signatureHeader(secret, timestamp, body).split("v1=")[1]!, "hex");
  const given = Buffer.from(parts.v1, "hex");
  return given.length === expected.length && timingSafeEqual(given, expected);
}
