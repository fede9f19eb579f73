import { parsePhoneNumberFromString, type CountryCode } from "libphonenumber-js/max";
import { z } from "zod";

/**
 * One contact's input, checked and normalised in Node before SQL sees it:
 * SQL hashes exactly what it is given, so `+1 (415) 555-2671`, `4155552671`
 * (for a US tenant) and `+14155552671` must all arrive as `+14155552671`.
 * Shared by the GraphQL mutations and the CSV import.
 */

export interface ContactInput {
  id?: string;
  firstName?: string | null;
  lastName?: string | null;
  phone?: string | null;
  email?: string | null;
  timezone?: string | null;
  locale?: string | null;
  attributes?: unknown;
  externalId?: string | null;
  smsSubscribed?: boolean | null;
  emailSubscribed?: boolean | null;
  whatsappSubscribed?: boolean | null;
}

/** The snake_case document `herald_hidden.upsert_contacts` reads; absent keys are left unchanged. */
export type ContactDocument = Record<string, string | boolean | null | Record<string, unknown>>;

export interface FieldError {
  field: keyof ContactInput;
  message: string;
}

/** E.164, or an explanation. National formats are read in the tenant's default country. */
export function normalizePhone(raw: string, defaultCountry: string): { value: string } | { error: string } {
  const text = raw.trim();
  if (text === "") return { error: "is empty" };
  const parsed = parsePhoneNumberFromString(text, { defaultCountry: defaultCountry as CountryCode, extract: false });
  if (!parsed || !parsed.isValid()) {
    return { error: `is not a valid phone number (numbers without +country code are read as ${defaultCountry})` };
  }
  return { value: parsed.number };
}

const emailSchema = z.email();

export function normalizeEmail(raw: string): { value: string } | { error: string } {
  const value = raw.trim().toLowerCase();
  if (value === "") return { error: "is empty" };
  if (value.length > 254 || !emailSchema.safeParse(value).success) return { error: "is not a valid email address" };
  return { value };
}

const timeZones = new Set([...Intl.supportedValuesOf("timeZone"), "UTC"]);

function normalizeLocale(raw: string): string | undefined {
  try {
    const [canonical] = Intl.getCanonicalLocales(raw.trim().replace(/_/g, "-"));
    return canonical;
  } catch {
    return undefined;
  }
}

const textField = (max: number) => (value: string) =>
  value.length > max ? { error: `is longer than ${max} characters` } : { value };

/** Validates and normalises every present field; `errors` names each bad one. */
export function normalizeContact(
  input: ContactInput,
  defaultCountry: string,
): { document: ContactDocument; errors: FieldError[] } {
  const document: ContactDocument = {};
  const errors: FieldError[] = [];
  const text = (
    field: keyof ContactInput,
    column: string,
    check: (value: string) => { value: string } | { error: string },
  ) => {
    const value = input[field];
    if (value === undefined) return;
    if (value === null) {
      document[column] = null;
      return;
    }
    if (typeof value !== "string") {
      errors.push({ field, message: "must be a string" });
      return;
    }
    const result = check(value);
    if ("error" in result) errors.push({ field, message: result.error });
    else document[column] = result.value;
  };

  if (input.id !== undefined) document.id = input.id;
  text("firstName", "first_name", textField(200));
  text("lastName", "last_name", textField(200));
  text("phone", "phone", (v) => normalizePhone(v, defaultCountry));
  text("email", "email", normalizeEmail);
  text("timezone", "timezone", (v) =>
    timeZones.has(v.trim()) ? { value: v.trim() } : { error: "is not an IANA time zone (e.g. America/New_York)" },
  );
  text("locale", "locale", (v) => {
    const canonical = normalizeLocale(v);
    return canonical ? { value: canonical } : { error: "is not a BCP 47 language tag (e.g. en or pt-BR)" };
  });
  text("externalId", "external_id", (v) => (v.trim() === "" ? { error: "is empty" } : textField(200)(v.trim())));

  if (input.attributes !== undefined) {
    const a = input.attributes;
    if (a === null) document.attributes = {};
    else if (typeof a === "object" && !Array.isArray(a)) document.attributes = a as Record<string, unknown>;
    else errors.push({ field: "attributes", message: "must be a JSON object" });
  }
  for (const [field, column] of [
    ["smsSubscribed", "sms_subscribed"],
    ["emailSubscribed", "email_subscribed"],
    ["whatsappSubscribed", "whatsapp_subscribed"],
  ] as const) {
    const value = input[field];
    if (value === undefined || value === null) continue; // null means "leave as is" for a flag
    if (typeof value !== "boolean") errors.push({ field, message: "must be true or false" });
    else document[column] = value;
  }
  return { document, errors };
}

/** An upsert row must say who it is about. */
export function hasIdentifier(document: ContactDocument): boolean {
  return Boolean(document.phone || document.email || document.external_id || document.id);
}
