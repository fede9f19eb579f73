import { escapeHtml } from "../html.ts";

/**
 * Filling a template's variables for one contact: `{{first_name}}`,
 * `{{attributes.plan}}`, with a default after a bar: `{{first_name|there}}`.
 * Which names are allowed is decided when a template is saved
 * (herald_hidden.template_variables in SQL); this side only fills them in. A
 * variable with no value and no default renders as nothing, and the spaces it
 * leaves doubled are closed up, so "Hi {{first_name}}, …" reads "Hi, …".
 */

export interface RenderContact {
  first_name: string | null;
  last_name: string | null;
  phone: string | null;
  email: string | null;
  external_id: string | null;
  attributes: Record<string, unknown>;
}

const VARIABLE = /\{\{\s*([a-z_]+(?:\.[A-Za-z_][A-Za-z0-9_]*)?)\s*(?:\|([^{}|]*))?\}\}/g;

function valueOf(contact: RenderContact, name: string): string | undefined {
  const [head, attribute] = name.split(".");
  const raw =
    head === "attributes" && attribute !== undefined
      ? contact.attributes[attribute]
      : (contact as unknown as Record<string, unknown>)[head!];
  if (raw === null || raw === undefined || raw === "") return undefined;
  return typeof raw === "object" ? JSON.stringify(raw) : String(raw);
}

export function render(text: string, contact: RenderContact): string {
  let emptied = false;
  const filled = text.replace(VARIABLE, (_whole, name: string, fallback: string | undefined) => {
    const value = valueOf(contact, name) ?? fallback?.trim();
    if (value === undefined || value === "") emptied = true;
    return value ?? "";
  });
  return emptied ? filled.replace(/ {2,}/g, " ").replace(/ ([,.!?;:])/g, "$1") : filled;
}

export interface Content {
  body: string;
  subject: string | null;
  html_body: string | null;
}

/** Every part of a message, rendered for one contact (HTML values are escaped). */
export function renderContent(content: Content, contact: RenderContact): Content {
  const escaped: RenderContact = {
    ...contact,
    first_name: contact.first_name && escapeHtml(contact.first_name),
    last_name: contact.last_name && escapeHtml(contact.last_name),
    email: contact.email && escapeHtml(contact.email),
    external_id: contact.external_id && escapeHtml(contact.external_id),
    attributes: Object.fromEntries(
      Object.entries(contact.attributes).map(([k, v]) => [k, typeof v === "string" ? escapeHtml(v) : v]),
    ),
  };
  return {
    body: render(content.body, contact),
    subject: content.subject === null ? null : render(content.subject, contact),
    html_body: content.html_body === null ? null : render(content.html_body, escaped),
  };
}
