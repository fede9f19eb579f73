import type { ProviderClients } from "../providers/clients.ts";
import type { DeliveryRow } from "./claim.ts";
import { contactOf, renderContent, type Content } from "./render.ts";
import { carriesUnsubscribe, unsubscribeUrl, withUnsubscribeFooter } from "./unsubscribe.ts";

/** A claimed delivery's content, made for its contact: the template's fields, and a marketing email's unsubscribe link. */

/** The delivery's text; a marketing email's with its unsubscribe link (`{{unsubscribe_url}}`, or a footer). */
export function renderFor(d: DeliveryRow, unsubscribeUrl?: string): Content {
  const link = unsubscribeUrl && carriesUnsubscribe(d.channel, d.purpose) ? unsubscribeUrl : undefined;
  return renderContent(link ? withUnsubscribeFooter(d.content) : d.content, { ...contactOf(d), unsubscribe_url: link });
}

export const NO_UNSUBSCRIBE_LINK =
  "marketing email needs an unsubscribe link: set HERALD_PUBLIC_URL (the https address Herald is reached at)";

/** A marketing email's unsubscribe link for its contact (none for anything else). */
export function unsubscribeLink(clients: ProviderClients, tenantId: string, d: DeliveryRow): string | undefined {
  const config = clients.system.unsubscribe;
  if (!config || !d.contact_id || !carriesUnsubscribe(d.channel, d.purpose)) return undefined;
  return unsubscribeUrl(config, tenantId, d.contact_id);
}
