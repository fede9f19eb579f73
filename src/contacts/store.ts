import type { ContactDocument } from "./normalize.ts";

/**
 * The SQL side of contact writes and lookups, for any caller that runs inside a
 * tenant session holding its keys (GraphQL request, worker job, CSV import).
 */

/**
 * Runs one statement with bind parameters and returns its rows. A `name` makes
 * it a prepared statement, planned once per connection (as PostGraphile does
 * for its own queries).
 */
export type RunQuery = <T>(text: string, values: unknown[], name?: string) => Promise<T[]>;

export type UpsertAction = "inserted" | "updated" | "unchanged" | "duplicate" | "conflict" | "exists" | "not_found";

export interface UpsertOutcome {
  ordinal: number;
  contactId: string | null;
  action: UpsertAction;
}

export const MAX_UPSERT_BATCH = 1000;

/**
 * Where a change of consent comes from, for the consent_events rows the
 * contacts trigger writes (migration 000012).
 * Without one, a member's request counts as `api`.
 */
export type ConsentSource = "api" | "import" | "upsert";

export async function upsertContacts(
  run: RunQuery,
  documents: ContactDocument[],
  mode: "upsert" | "insert" | "update" = "upsert",
  consentSource?: ConsentSource,
): Promise<UpsertOutcome[]> {
  // Transaction-local, and cleared after: a later statement of the same transaction is not this one.
  if (consentSource) await run("select set_config('herald.consent_source', $1, true)", [consentSource]);
  const rows = await run<{ ordinal: number; contact_id: string | null; action: UpsertAction }>(
    "select ordinal, contact_id, action from herald_hidden.upsert_contacts($1::jsonb, $2)",
    [JSON.stringify(documents), mode],
    "herald_upsert_contacts",
  );
  if (consentSource) await run("select set_config('herald.consent_source', '', true)", []);
  return rows.map((r) => ({ ordinal: r.ordinal, contactId: r.contact_id, action: r.action }));
}

/** The session tenant's country for national-format phone numbers; null outside a tenant. */
export async function tenantDefaultCountry(run: RunQuery): Promise<string | null> {
  const rows = await run<{ default_country: string }>(
    "select default_country from herald_public.tenant_settings where tenant_id = herald_public.current_tenant_id()",
    [],
    "herald_tenant_country",
  );
  return rows[0]?.default_country ?? null;
}

/**
 * The lookup by keyed hash. The hashes are computed in an InitPlan, `(select …)`:
 * written inline, the non-leakproof crypto helpers would have to run after the
 * RLS policy, row by row, and the planner could not use the (tenant_id, hash)
 * index at all. Exported so the EXPLAIN test checks this very statement.
 */
export const contactLookupSql = (kind: "phone" | "email") => `
  select id from herald_public.contacts
   where tenant_id = herald_public.current_tenant_id()
     and ${kind === "phone" ? "phone_hash" : "email_hash"} = any ((select herald_hidden.pii_hashes($1, $2))::bytea[])`;

/** The contact holding a normalised phone or email (one index probe per hash version). */
export async function findContactId(
  run: RunQuery,
  kind: "phone" | "email",
  normalized: string,
): Promise<string | null> {
  const rows = await run<{ id: string }>(contactLookupSql(kind), [kind, normalized], `herald_contact_by_${kind}`);
  return rows[0]?.id ?? null;
}
