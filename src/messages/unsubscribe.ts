import { createCipheriv, createDecipheriv, createHmac, hkdfSync, timingSafeEqual } from "node:crypto";
import type { Content } from "./render.ts";

/**
 * One-click unsubscribe (RFC 8058) for marketing email: every such email
 * carries `List-Unsubscribe: <https://…/unsubscribe/TOKEN>` with
 * `List-Unsubscribe-Post: List-Unsubscribe=One-Click`, and a visible link —
 * the template's `{{unsubscribe_url}}`, or a footer added to its text and
 * HTML parts when it has none. Transactional email carries neither.
 *
 * The token names a tenant and one of its contacts and never expires:
 * version (1 byte) ‖ tenant id (16) ‖ the contact id encrypted (16: one
 * AES-256 block, so the id is not in clear and the same contact always gets
 * the same link) ‖ HMAC-SHA-256 over all of that (16), base64url. Both keys
 * are derived (HKDF) from HERALD_UNSUBSCRIBE_KEY. A token altered in any bit
 * — another tenant's id, another contact — fails the HMAC and is refused
 * before anything touches the database (src/api/routes/unsubscribe.ts).
 */

export interface UnsubscribeConfig {
  /** HERALD_PUBLIC_URL (the links' origin; https in production). */
  baseUrl: string;
  /** HERALD_UNSUBSCRIBE_KEY (32 bytes). */
  key: Buffer;
}

const VERSION = 1;
const TOKEN_BYTES = 1 + 16 + 16 + 16;

interface Keys {
  seal: Buffer;
  mac: Buffer;
}
const derived = new WeakMap<Buffer, Keys>();
function keysOf(key: Buffer): Keys {
  let keys = derived.get(key);
  if (!keys) {
    const bytes = Buffer.from(hkdfSync("sha256", key, Buffer.alloc(0), "herald unsubscribe link v1", 64));
    keys = { seal: bytes.subarray(0, 32), mac: bytes.subarray(32) };
    derived.set(key, keys);
  }
  return keys;
}

const uuidBytes = (id: string) => Buffer.from(id.replace(/-/g, ""), "hex");
const uuidText = (bytes: Buffer) =>
  bytes.toString("hex").replace(/^(.{8})(.{4})(.{4})(.{4})(.{12})$/, "$1-$2-$3-$4-$5");
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function block(key: Buffer, data: Buffer, encrypt: boolean): Buffer {
  const cipher = encrypt ? createCipheriv("aes-256-ecb", key, null) : createDecipheriv("aes-256-ecb", key, null);
  cipher.setAutoPadding(false);
  return Buffer.concat([cipher.update(data), cipher.final()]);
}

const macOf = (key: Buffer, signed: Buffer) => createHmac("sha256", key).update(signed).digest().subarray(0, 16);

export function unsubscribeToken(key: Buffer, tenantId: string, contactId: string): string {
  if (!UUID.test(tenantId) || !UUID.test(contactId)) throw new Error("unsubscribeToken needs uuids");
  const keys = keysOf(key);
  const signed = Buffer.concat([
    Buffer.from([VERSION]),
    uuidBytes(tenantId),
    block(keys.seal, uuidBytes(contactId), true),
  ]);
  return Buffer.concat([signed, macOf(keys.mac, signed)]).toString("base64url");
}

/** The tenant and contact a token names, or null for anything Herald did not sign. */
export function readUnsubscribeToken(key: Buffer, token: string): { tenantId: string; contactId: string } | null {
  if (token.length > 100 || !/^[A-Za-z0-9_-]+$/.test(token)) return null;
  const bytes = Buffer.from(token, "base64url");
  // base64url has several spellings of the same bytes: only the canonical one is Herald's.
  if (bytes.length !== TOKEN_BYTES || bytes[0] !== VERSION || bytes.toString("base64url") !== token) return null;
  const keys = keysOf(key);
  const signed = bytes.subarray(0, 33);
  if (!timingSafeEqual(macOf(keys.mac, signed), bytes.subarray(33))) return null;
  return {
    tenantId: uuidText(bytes.subarray(1, 17)),
    contactId: uuidText(block(keys.seal, bytes.subarray(17, 33), false)),
  };
}

export function unsubscribeUrl(config: UnsubscribeConfig, tenantId: string, contactId: string): string {
  return `${config.baseUrl.replace(/\/$/, "")}/unsubscribe/${unsubscribeToken(config.key, tenantId, contactId)}`;
}

/** Whether a message carries the unsubscribe link and headers: marketing email only. */
export const carriesUnsubscribe = (channel: string, purpose: string | undefined) =>
  channel === "email" && purpose !== "transactional";

/** RFC 8058's two headers, for one recipient. */
export const unsubscribeHeaders = (url: string): Record<string, string> => ({
  "List-Unsubscribe": `<${url}>`,
  "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
});

const HAS_LINK = /\{\{[ \t\r\n]*unsubscribe_url[ \t\r\n]*(\|[^{}|]*)?\}\}/;
const TEXT_FOOTER = "\n\n--\nUnsubscribe: {{unsubscribe_url}}";
const HTML_FOOTER =
  '<p style="font-size:12px;color:#666">Don\'t want these emails? <a href="{{unsubscribe_url}}">Unsubscribe</a>.</p>';

/** A marketing email's content with the unsubscribe link: where the template lacks `{{unsubscribe_url}}`, a footer (text and HTML apart). */
export function withUnsubscribeFooter(content: Content): Content {
  const html = content.html_body;
  return {
    ...content,
    // An empty text part is derived from the HTML later, footer and all.
    body:
      HAS_LINK.test(content.body) || (html !== null && content.body.trim() === "")
        ? content.body
        : content.body + TEXT_FOOTER,
    html_body:
      html === null || HAS_LINK.test(html)
        ? html
        : /<\/body>/i.test(html)
          ? html.replace(/<\/body>(?![\s\S]*<\/body>)/i, `${HTML_FOOTER}</body>`)
          : html + HTML_FOOTER,
  };
}
