import { createHmac } from "node:crypto";

/**
 * How Herald signs what it posts to a tenant's endpoint, and how a receiver
 * checks it (docs/operators-and-admins.md, "Outbound webhooks"):
 *
 *   Herald-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>
 *
 * The timestamp is signed with the body, so a receiver that refuses old
 * timestamps (five minutes) cannot be fed a captured request later. (Herald
 * only signs; the tests check posts with the recipe written out afresh.)
 */

export const SIGNATURE_HEADER = "herald-signature";

export function signatureHeader(secret: string, timestamp: number, body: string): string {
  const mac = createHmac("sha256", secret).update(`${timestamp}.${body}`, "utf8").digest("hex");
  return `t=${timestamp},v1=${mac}`;
}
