import { loadOneWithPgClient, sideEffectWithPgClient, type PgClient } from "postgraphile/@dataplan/pg";
import { access, SafeError, type Step } from "postgraphile/grafast";
import { extendSchema, gql } from "postgraphile/utils";
import {
  hasIdentifier,
  normalizeContact,
  normalizeEmail,
  normalizePhone,
  type ContactInput,
} from "../contacts/normalize.ts";
import {
  findContactId,
  MAX_UPSERT_BATCH,
  tenantDefaultCountry,
  upsertContacts,
  type RunQuery,
  type UpsertOutcome,
} from "../contacts/store.ts";

/**
 * Contact writes and lookups take plaintext phone/email, which must be
 * normalised (libphonenumber-js, tenant's default country) before SQL hashes
 * them. These fields do that in Node, then call herald_hidden.upsert_contacts
 * or look up by keyed hash, all inside the request's transaction (its role,
 * tenant and keys), and return the rows through PostGraphile's own Contact type.
 */

/** SafeError: its message and extensions reach the client as they are (src/api/errors.ts). */
function inputError(field: string, message: string, code = "INVALID_INPUT"): SafeError {
  return new SafeError(`${field} ${message}`, { code, field });
}

const runOn =
  (client: PgClient): RunQuery =>
  async <T>(text: string, values: unknown[], name?: string) =>
    (await client.query<T>({ text, values, name })).rows as T[];

async function defaultCountryOrFail(run: RunQuery): Promise<string> {
  const country = await tenantDefaultCountry(run);
  if (!country) throw inputError("tenant", "is not set: contacts belong to a tenant", "NO_TENANT");
  return country;
}

/** Normalises each input; the first bad field fails the whole call, named by its path. */
function normalizeAll(
  inputs: ContactInput[],
  country: string,
  path: (index: number) => string,
  requireIdentifier: boolean,
) {
  return inputs.map((input, index) => {
    const { document, errors } = normalizeContact(input, country);
    const first = errors[0];
    if (first) throw inputError(`${path(index)}${first.field}`, first.message);
    if (requireIdentifier && !hasIdentifier(document)) {
      throw inputError(`${path(index)}phone`, "is required (or email, or externalId)");
    }
    return document;
  });
}

const REFUSALS: Record<string, () => SafeError> = {
  not_found: () => new SafeError("No such contact.", { code: "NOT_FOUND" }),
  exists: () => new SafeError("A contact with that phone, email or externalId already exists.", { code: "CONFLICT" }),
  conflict: () => new SafeError("That phone, email or externalId belongs to another contact.", { code: "CONFLICT" }),
};

/** createContact / updateContact: one row, and a refusal is an error. */
function singleWrite(outcome: UpsertOutcome | undefined, tenantId: string): { tenantId: string; contactId: string } {
  if (!outcome) throw new Error("upsert_contacts returned no row");
  const refuse = REFUSALS[outcome.action];
  if (refuse) throw refuse();
  return { tenantId, contactId: outcome.contactId! };
}

const currentTenant = async (run: RunQuery) =>
  (await run<{ id: string }>("select herald_public.current_tenant_id() as id", []))[0]!.id;

export const ContactsPlugin = extendSchema((build) => {
  const contacts = build.input.pgRegistry.pgResources.contacts;
  if (!contacts) throw new Error("ContactsPlugin: herald_public.contacts is not in the schema");
  const executor = contacts.executor;
  const contactFrom = ($ref: Step) =>
    contacts.get({ tenant_id: access($ref, "tenantId"), id: access($ref, "contactId") });

  const lookup = (kind: "phone" | "email") => (_: Step, fieldArgs: { getRaw(name: string): Step }) => {
    const $ref = loadOneWithPgClient(executor, fieldArgs.getRaw(kind), async (client, values) => {
      const run = runOn(client);
      const country = kind === "phone" ? await defaultCountryOrFail(run) : "";
      const tenantId = await currentTenant(run);
      return Promise.all(
        values.map(async (raw) => {
          const normalized = kind === "phone" ? normalizePhone(String(raw), country) : normalizeEmail(String(raw));
          if ("error" in normalized) throw inputError(kind, normalized.error);
          const contactId = await findContactId(run, kind, normalized.value);
          return contactId ? { tenantId, contactId } : null;
        }),
      );
    });
    return contactFrom($ref);
  };

  return {
    typeDefs: gql`
      """
      A contact's fields for createContact, updateContact and upsertContacts.
      Absent fields are left unchanged; null clears a field. Phones may be in
      national format (read in the tenant's default country); they are stored
      as E.164. Emails are stored lower-cased.
      """
      input ContactFields {
        firstName: String
        lastName: String
        phone: String
        email: String
        "IANA time zone, e.g. America/New_York."
        timezone: String
        "BCP 47 language tag, e.g. en or pt-BR."
        locale: String
        attributes: JSON
        externalId: String
        smsSubscribed: Boolean
        emailSubscribed: Boolean
        whatsappSubscribed: Boolean
      }

      type ContactMutationPayload {
        contact: Contact
      }

      enum ContactUpsertAction {
        INSERTED
        UPDATED
        UNCHANGED
        "Names the same contact as an earlier item in this call (by phone, email or externalId); skipped. \`contact\` is that contact."
        DUPLICATE
        "Its phone, email and externalId belong to different contacts; skipped."
        CONFLICT
      }

      type ContactUpsertResult {
        "Position in the input list."
        index: Int!
        action: ContactUpsertAction!
        contact: Contact
      }

      type UpsertContactsPayload {
        results: [ContactUpsertResult!]!
        inserted: Int!
        updated: Int!
        unchanged: Int!
        skipped: Int!
      }

      extend type Mutation {
        "Create a contact; fails with CONFLICT if its phone, email or externalId is taken."
        createContact(input: ContactFields!): ContactMutationPayload
        "Change a contact; absent fields stay as they are."
        updateContact(rowId: UUID!, patch: ContactFields!): ContactMutationPayload
        "Insert or update up to 1,000 contacts, matched by externalId, then phone, then email."
        upsertContacts(contacts: [ContactFields!]!): UpsertContactsPayload
      }

      extend type Query {
        "The contact with this phone number (any format; national numbers use the tenant's default country)."
        contactByPhone(phone: String!): Contact
        "The contact with this email address (case-insensitive)."
        contactByEmail(email: String!): Contact
      }
    `,
    objects: {
      Mutation: {
        plans: {
          createContact(_, fieldArgs) {
            return sideEffectWithPgClient(executor, fieldArgs.getRaw("input"), async (client, input) => {
              const run = runOn(client);
              const [document] = normalizeAll(
                [input as ContactInput],
                await defaultCountryOrFail(run),
                () => "",
                false,
              );
              if (!document!.phone && !document!.email) throw inputError("phone", "is required (or email)");
              return singleWrite((await upsertContacts(run, [document!], "insert"))[0], await currentTenant(run));
            });
          },
          updateContact(_, fieldArgs) {
            return sideEffectWithPgClient(
              executor,
              { rowId: fieldArgs.getRaw("rowId"), patch: fieldArgs.getRaw("patch") },
              async (client, { rowId, patch }) => {
                const run = runOn(client);
                const [document] = normalizeAll(
                  [patch as ContactInput],
                  await defaultCountryOrFail(run),
                  () => "",
                  false,
                );
                const outcome = (await upsertContacts(run, [{ ...document!, id: rowId as string }], "update"))[0];
                return singleWrite(outcome, await currentTenant(run));
              },
            );
          },
          upsertContacts(_, fieldArgs) {
            return sideEffectWithPgClient(executor, fieldArgs.getRaw("contacts"), async (client, inputs) => {
              const list = inputs as ContactInput[];
              if (list.length > MAX_UPSERT_BATCH) {
                throw inputError("contacts", `has ${list.length} items; at most ${MAX_UPSERT_BATCH} per call`);
              }
              const run = runOn(client);
              const documents = normalizeAll(list, await defaultCountryOrFail(run), (i) => `contacts[${i}].`, true);
              const outcomes = list.length ? await upsertContacts(run, documents, "upsert", "upsert") : [];
              const tenantId = await currentTenant(run);
              const count = (action: string) => outcomes.filter((o) => o.action === action).length;
              return {
                results: outcomes.map((o) => ({
                  index: o.ordinal,
                  action: o.action.toUpperCase(),
                  tenantId,
                  contactId: o.contactId,
                })),
                inserted: count("inserted"),
                updated: count("updated"),
                unchanged: count("unchanged"),
                skipped: outcomes.length - count("inserted") - count("updated") - count("unchanged"),
              };
            });
          },
        },
      },
      ContactMutationPayload: {
        plans: {
          contact($ref: Step) {
            return contactFrom($ref);
          },
        },
      },
      ContactUpsertResult: {
        plans: {
          contact($result: Step) {
            return contactFrom($result);
          },
        },
      },
      Query: {
        plans: {
          contactByPhone: lookup("phone"),
          contactByEmail: lookup("email"),
        },
      },
    },
  };
});
