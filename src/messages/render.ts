import { escapeHtml } from "../html.ts";
import { htmlToText } from "./html-text.ts";

/**
 * Filling a template's variables for one contact: `{{first_name}}`,
 * `{{attributes.plan}}`, with a default after a bar: `{{first_name|there}}`.
 * The grammar is herald_hidden.template_variables's (migration
 * 021-template-grammar), which decides when a template is saved whether a
 * text is valid; `parseTemplate` is the same grammar here, and one table of
 * cases (test/fixtures/template-grammar.json) runs against both. A variable
 * with no value and no default renders as nothing, and the spaces it leaves
 * doubled are closed up, so "Hi {{first_name}}, …" reads "Hi, …".
 */

export interface RenderContact {
  first_name: string | null;
  last_name: string | null;
  phone: string | null;
  email: string | null;
  external_id: string | null;
  attributes: Record<string, unknown>;
  /** A marketing email's unsubscribe link (src/messages/unsubscribe.ts); none elsewhere. */
  unsubscribe_url?: string | null;
}

/** The contact fields a template may name, taken from a row that carries them (a claimed delivery). */
export function contactOf(
  row: Omit<RenderContact, "unsubscribe_url" | "attributes"> & { attributes: Record<string, unknown> | null },
): RenderContact {
  const { first_name, last_name, phone, email, external_id } = row;
  return { first_name, last_name, phone, email, external_id, attributes: row.attributes ?? {} };
}

/** A "{{" and the first "}}" after it (what is between may span lines). */
const TOKEN = /\{\{([\s\S]*?)\}\}/g;
/**
 * What a token may hold: a name, and optionally a default after a bar. Spaces
 * are spelled out (not `\s`, which means more in JavaScript than in
 * PostgreSQL): space, tab, CR, LF.
 */
const VARIABLE =
  /^[ \t\r\n]*(first_name|last_name|phone|email|external_id|unsubscribe_url|attributes\.[A-Za-z_][A-Za-z0-9_]*)[ \t\r\n]*(?:\|([^{}|]*))?$/;
const SPACES = /^[ \t\r\n]+|[ \t\r\n]+$/g;

export type Parsed =
  | { ok: true; variables: string[] }
  | { ok: false; error: "unknown_variable"; token: string }
  | { ok: false; error: "unclosed" };

/** The variables a text uses (sorted, once each), or why it is not a valid template. */
export function parseTemplate(text: string): Parsed {
  const names = new Set<string>();
  for (const [, token] of text.matchAll(TOKEN)) {
    const variable = VARIABLE.exec(token!);
    if (!variable) return { ok: false, error: "unknown_variable", token: token! };
    names.add(variable[1]!);
  }
  if (/\{\{|\}\}/.test(text.replace(TOKEN, ""))) return { ok: false, error: "unclosed" };
  return { ok: true, variables: [...names].sort() };
}

function valueOf(contact: RenderContact, name: string): string | undefined {
  const [head, attribute] = name.split(".");
  const raw =
    head === "attributes" && attribute !== undefined
      ? contact.attributes[attribute]
      : (contact as unknown as Record<string, unknown>)[head!];
  if (raw === null || raw === undefined || raw === "") return undefined;
  return typeof raw === "object" ? JSON.stringify(raw) : String(raw);
}

/**
 * The text with each variable filled in. A token outside the grammar is left
 * as written: saving refuses such a text, so only one that skipped that
 * check (none should) shows it.
 */
export function render(text: string, contact: RenderContact, escape: (value: string) => string = (v) => v): string {
  let emptied = false;
  const filled = text.replace(TOKEN, (whole, token: string) => {
    const variable = VARIABLE.exec(token);
    if (!variable) return whole;
    // A contact's value is escaped for the part (HTML); a default is the template's own text, as written.
    const own = valueOf(contact, variable[1]!);
    const value = own !== undefined ? escape(own) : variable[2]?.replace(SPACES, "");
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

/**
 * Every part of a message, rendered for one contact. In the HTML part every
 * value is HTML-escaped (objects after they become JSON, so no value can open
 * a tag or leave an attribute); the subject and text part get them verbatim.
 * An email given only HTML (an empty text part) gets a text part derived from
 * the rendered HTML (src/messages/html-text.ts).
 */
export function renderContent(content: Content, contact: RenderContact): Content {
  const html_body = content.html_body === null ? null : render(content.html_body, contact, escapeHtml);
  return {
    body: html_body !== null && content.body.trim() === "" ? htmlToText(html_body) : render(content.body, contact),
    subject: content.subject === null ? null : render(content.subject, contact),
    html_body,
  };
}
