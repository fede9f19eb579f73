import { withSession } from "../db/session.ts";
import { ROLES } from "../db/urls.ts";
import type { WebhookContext } from "./tenant.ts";

/**
 * Media of an inbound MMS or WhatsApp message: Twilio posts `NumMedia` and,
 * for each medium n, `MediaUrl<n>` (where Twilio keeps it: fetching needs the
 * account's credentials) and `MediaContentType<n>`. They are stored with the
 * inbound message (herald_hidden.store_inbound_media), after it: a retry of
 * the webhook (the same MessageSid) finds the message and stores them then if
 * they are not there yet. Members fetch them through Herald
 * (src/api/routes/media.ts), never from the provider.
 */

export interface InboundMedia {
  urls: string[];
  types: string[];
}

/** At most what Twilio sends (10), each URL http(s) and bounded, each type a MIME type. */
const MAX_MEDIA = 10;
const URL_SHAPE = /^https?:\/\/[^\s/?#@]+\/\S{1,1900}$/;
const MIME_TYPE = /^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}\/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}$/i;

/** The media a verified inbound webhook names (those of a wrong shape are left out). */
export function inboundMedia(params: Record<string, string>): InboundMedia {
  const count = Math.min(Math.max(Number(params.NumMedia) || 0, 0), MAX_MEDIA);
  const media: InboundMedia = { urls: [], types: [] };
  for (let i = 0; i < count; i++) {
    const url = params[`MediaUrl${i}`] ?? "";
    const type = (params[`MediaContentType${i}`] ?? "").toLowerCase();
    if (!URL_SHAPE.test(url) || !MIME_TYPE.test(type)) continue;
    media.urls.push(url);
    media.types.push(type);
  }
  return media;
}

/** Stores them with the tenant's inbound message (once: a message's media are never replaced). */
export async function storeInboundMedia(
  ctx: WebhookContext,
  tenantId: string,
  inboundMessageId: string,
  media: InboundMedia,
): Promise<void> {
  if (media.urls.length === 0) return;
  await withSession(ctx.pool, { role: ROLES.worker, tenantId }, (client) =>
    client.query("select herald_hidden.store_inbound_media($1, $2, $3)", [inboundMessageId, media.urls, media.types]),
  );
}
