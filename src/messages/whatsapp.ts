import type { MetaTemplate } from "../providers/meta.ts";
import type { DeliveryRow } from "./claim.ts";
import { contactOf, render } from "./render.ts";

/**
 * What an SMS or WhatsApp delivery carries besides its text: media (MMS, or
 * WhatsApp's one medium) and, for WhatsApp, a provider-approved template
 * (Twilio's Content SID) whose variables are rendered from the contact like
 * any other template text: `{"1": "{{first_name|there}}"}` → `{"1": "Ada"}`.
 * The rules (https, how many, which types; the 24-hour window) are in SQL
 * (migration 000012)
 * and the claim's decision (decide.ts), the same for every provider.
 */

export interface WhatsAppExtras {
  mediaUrls?: string[];
  contentSid?: string | null;
  contentVariables?: Record<string, string> | null;
}

/** Each variable's text with the contact's values filled in (names kept as given). */
export function renderContentVariables(
  variables: Record<string, string> | null,
  d: Pick<DeliveryRow, "first_name" | "last_name" | "phone" | "email" | "external_id" | "attributes">,
): Record<string, string> | null {
  if (!variables) return null;
  const contact = contactOf(d);
  return Object.fromEntries(Object.entries(variables).map(([name, text]) => [name, render(String(text), contact)]));
}

/** The media and approved template a claimed SMS/WhatsApp delivery is sent with. */
export function whatsappExtras(d: DeliveryRow): WhatsAppExtras {
  const extras: WhatsAppExtras = {};
  if (d.media_urls?.length) extras.mediaUrls = d.media_urls;
  if (d.channel === "whatsapp" && d.content_sid) {
    extras.contentSid = d.content_sid;
    extras.contentVariables = renderContentVariables(d.content_variables, d);
  }
  return extras;
}

/** A Meta template's body parameters filled in for the delivery's contact (src/providers/meta.ts). */
export function renderMetaTemplate(d: DeliveryRow): MetaTemplate | null {
  if (!d.meta_template) return null;
  const contact = contactOf(d);
  return { ...d.meta_template, parameters: d.meta_template.parameters.map((p) => render(p, contact)) };
}
