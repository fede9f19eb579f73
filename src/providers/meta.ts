import type { TenantAccount } from "./clients.ts";
import { SendError } from "./errors.ts";

/**
 * Meta's WhatsApp Cloud API: one WhatsApp message sent through a tenant's
 * `meta` provider account, `POST {graph}/{version}/{phone_number_id}/messages`
 * with the account's access token as a bearer token. What is sent:
 *
 * - an approved template, when the message's template names one (its body
 *   parameters already filled from the contact); a first media URL becomes
 *   the template's header;
 * - else media by link (image, video, audio or document, by the URL's file
 *   extension), one Graph message each, the text as the first one's caption
 *   (an audio takes none: the text then goes first, on its own);
 * - else a text message.
 *
 * Plain `fetch` with a timeout; no SDK. Graph errors become SendErrors with
 * Meta's error code (src/providers/errors.ts lists the ones that mean
 * something) and an HTTP status the delivery engine understands: Meta's
 * rate limits answer as 429 (retried later), an invalid token as 401.
 * The provider message id is the `wamid` of the message that carries the
 * text; status webhooks (src/provider-callbacks/meta.ts) find the delivery
 * by it, or by `biz_opaque_callback_data` (the delivery's id), which Meta
 * echoes in them.
 */

export const DEFAULT_META_GRAPH = { url: "https://graph.facebook.com", version: "v21.0" };

/** How long one Graph request may take, connect to last byte. */
const REQUEST_TIMEOUT_MS = 15_000;

/** Meta's codes for "too many requests" (app, WABA, throughput, pair rate limits): retried later, like a 429. */
export const META_RATE_LIMIT_CODES: ReadonlySet<number> = new Set([4, 80007, 130429, 131056]);
/** Meta's code for an access token that is invalid or expired: the account's fault. */
export const META_TOKEN_INVALID = 190;

export interface MetaTemplate {
  name: string;
  language: string;
  /** The body's parameters in order ({{1}}, {{2}}, …), rendered for the recipient. */
  parameters: string[];
}

export interface MetaMessage {
  /** E.164 (`+1…`); Meta takes the digits. */
  to: string;
  body: string;
  mediaUrls?: readonly string[];
  template?: MetaTemplate | null;
  /** Echoed by Meta in the message's status webhooks. */
  deliveryId?: string;
}

export interface MetaAccount {
  phoneNumberId: string;
  accessToken: string;
}

/** A Graph API error, as the delivery engine reads provider errors (`code`, `status`). */
export class MetaGraphError extends Error {
  override name = "MetaGraphError";
  readonly code: number | undefined;
  readonly status: number | undefined;
  constructor(message: string, code: number | undefined, status: number | undefined) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

type MediaType = "image" | "video" | "audio" | "document";

const EXTENSIONS: Record<string, MediaType> = {
  jpg: "image",
  jpeg: "image",
  png: "image",
  webp: "image",
  mp4: "video",
  "3gp": "video",
  mp3: "audio",
  ogg: "audio",
  opus: "audio",
  aac: "audio",
  amr: "audio",
  m4a: "audio",
};

/** What kind of WhatsApp media a URL is, by its path's extension (a document when unknown). */
export function mediaTypeOf(url: string): MediaType {
  let path = url;
  try {
    path = new URL(url).pathname;
  } catch {
    // Not a URL: judged by the text itself.
  }
  const extension = /\.([a-z0-9]{1,5})$/i.exec(path)?.[1]?.toLowerCase() ?? "";
  return EXTENSIONS[extension] ?? "document";
}

function fileName(url: string): string | undefined {
  try {
    const last = new URL(url).pathname.split("/").pop();
    return last ? decodeURIComponent(last).slice(0, 240) : undefined;
  } catch {
    return undefined;
  }
}

/** One media object, by link (`caption` where the type takes one). */
function mediaObject(type: MediaType, url: string, caption?: string) {
  return {
    link: url,
    ...(caption && type !== "audio" ? { caption } : {}),
    ...(type === "document" && fileName(url) ? { filename: fileName(url) } : {}),
  };
}

/**
 * The Graph request bodies for one message, in the order to send them; the
 * index of the one whose `wamid` is the delivery's.
 */
export function metaRequests(message: MetaMessage): { bodies: Record<string, unknown>[]; primary: number } {
  const base = {
    messaging_product: "whatsapp",
    recipient_type: "individual",
    to: message.to.replace(/^\+/, ""),
    ...(message.deliveryId ? { biz_opaque_callback_data: message.deliveryId } : {}),
  };
  const media = message.mediaUrls ?? [];
  if (message.template) {
    const components: Record<string, unknown>[] = [];
    if (media[0]) {
      const type = mediaTypeOf(media[0]);
      components.push({ type: "header", parameters: [{ type, [type]: mediaObject(type, media[0]) }] });
    }
    if (message.template.parameters.length > 0) {
      components.push({
        type: "body",
        parameters: message.template.parameters.map((text) => ({ type: "text", text })),
      });
    }
    return {
      bodies: [
        {
          ...base,
          type: "template",
          template: {
            name: message.template.name,
            language: { code: message.template.language },
            ...(components.length > 0 ? { components } : {}),
          },
        },
      ],
      primary: 0,
    };
  }
  const text = { ...base, type: "text", text: { preview_url: false, body: message.body } };
  if (media.length === 0) return { bodies: [text], primary: 0 };
  const types = media.map(mediaTypeOf);
  const captioned = types[0] !== "audio";
  const bodies = media.map((url, i) => ({
    ...base,
    type: types[i],
    [types[i]!]: mediaObject(types[i]!, url, i === 0 && captioned ? message.body : undefined),
  }));
  // An audio cannot carry the text: it goes first, on its own.
  return captioned || !message.body.trim() ? { bodies, primary: 0 } : { bodies: [text, ...bodies], primary: 0 };
}

interface GraphErrorBody {
  error?: { message?: string; code?: number; error_subcode?: number; error_data?: { details?: string } };
}

async function post(
  graph: { url: string; version: string },
  account: MetaAccount,
  body: Record<string, unknown>,
): Promise<string> {
  const response = await fetch(`${graph.url}/${graph.version}/${encodeURIComponent(account.phoneNumberId)}/messages`, {
    method: "POST",
    headers: { authorization: `Bearer ${account.accessToken}`, "content-type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  });
  const text = await response.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  if (!response.ok) {
    const error = (json as GraphErrorBody | undefined)?.error;
    const code = typeof error?.code === "number" ? error.code : undefined;
    // Meta answers its rate limits with 400 or 429: both are "not now", retried later.
    const status =
      code !== undefined && META_RATE_LIMIT_CODES.has(code) ? 429 : code === META_TOKEN_INVALID ? 401 : response.status;
    const detail = error?.error_data?.details ? ` (${error.error_data.details})` : "";
    throw new MetaGraphError(
      `Meta Graph API ${response.status}${code !== undefined ? ` error ${code}` : ""}: ${(error?.message ?? text).slice(0, 300)}${detail.slice(0, 300)}`,
      code,
      status,
    );
  }
  const id = (json as { messages?: { id?: unknown }[] } | undefined)?.messages?.[0]?.id;
  // Accepted, but no id to know it by: whether it went is not in doubt, what it is called is.
  if (typeof id !== "string" || id.length === 0 || id.length > 300)
    throw new MetaGraphError("Meta Graph API answered without a message id", undefined, undefined);
  return id;
}

/**
 * The number a Meta account's phone number id sends from, as the Graph API
 * names it (`display_phone_number`), in E.164; undefined when Meta does not
 * know the id (the number is not this account's). Ownership checks
 * (src/numbers/verify.ts) compare it with the registered sender number.
 */
export async function metaDisplayNumber(
  graph: { url: string; version: string } | undefined,
  account: MetaAccount,
): Promise<string | undefined> {
  const { url, version } = graph ?? DEFAULT_META_GRAPH;
  const response = await fetch(
    `${url}/${version}/${encodeURIComponent(account.phoneNumberId)}?fields=display_phone_number`,
    { headers: { authorization: `Bearer ${account.accessToken}` }, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) },
  );
  const json = (await response.json().catch(() => undefined)) as
    ({ display_phone_number?: unknown } & GraphErrorBody) | undefined;
  if (response.ok) {
    const digits = String(json?.display_phone_number ?? "").replace(/[^0-9]/g, "");
    return digits ? `+${digits}` : undefined;
  }
  const code = json?.error?.code;
  // 100: no such object (or not visible to this token): the id is not this account's.
  if (response.status === 404 || code === 100) return undefined;
  throw new MetaGraphError(
    `Meta Graph API ${response.status}${code !== undefined ? ` error ${code}` : ""}: ${String(json?.error?.message ?? "").slice(0, 300)}`,
    code,
    code === META_TOKEN_INVALID ? 401 : response.status,
  );
}

/** Sends one WhatsApp message through a Meta account; the `wamid` the delivery is known by. */
export async function sendViaMeta(
  graph: { url: string; version: string } | undefined,
  account: MetaAccount,
  message: MetaMessage,
): Promise<string> {
  const { bodies, primary } = metaRequests(message);
  let id = "";
  for (const [i, body] of bodies.entries()) {
    // Only the first request decides whether the message went: a later one failing after it was accepted is not retried.
    try {
      const sent = await post(graph ?? DEFAULT_META_GRAPH, account, body);
      if (i === primary) id = sent;
    } catch (error) {
      if (i === 0) throw error;
      break;
    }
  }
  return id;
}

/**
 * The transport's check (transmit.ts) before a WhatsApp message goes through
 * the tenant's Meta account: it goes from the number registered on that
 * account. A sender that is not that number (a Twilio WhatsApp number of the
 * tenant, say) cannot go through Meta: refused before any call.
 */
export function metaSender(account: TenantAccount, from: string): MetaAccount {
  if (!account.meta_phone_number_id || from !== account.default_number)
    throw new SendError(
      `${from} is not the WhatsApp number of the tenant's Meta account (register it as a whatsapp sender number of that account)`,
      "tenant",
      "NOT_OWN_SENDER",
    );
  return { phoneNumberId: account.meta_phone_number_id, accessToken: account.secret };
}
