import fs from "node:fs";
import { parse } from "csv-parse";
import type pg from "pg";
import type { Keyring } from "../crypto/keyring.ts";
import { withSession } from "../db/session.ts";
import { ROLES } from "../db/urls.ts";
import { containsEmailLike, csvLine, MAX_CELL_CHARS, MAX_RECORD_CHARS, withoutFormulaGuard } from "./csv-safety.ts";
import { normalizeContact, type ContactDocument, type ContactInput } from "./normalize.ts";
import { MAX_UPSERT_BATCH, tenantDefaultCountry, upsertContacts, type RunQuery, type UpsertOutcome } from "./store.ts";

/**
 * CSV import (`herald contacts import`). Streams the file: memory holds one
 * batch of rows plus the identifiers seen so far (to report repeats), never
 * the file. Each batch is its own transaction inside the tenant, as
 * herald_worker with the tenant's keys, so an interrupted import keeps what it
 * committed and a re-run simply finds those rows unchanged.
 */

export interface ImportOptions {
  /** herald_authenticator pool: the import runs under RLS like any job. */
  pool: pg.Pool;
  keyring: Keyring;
  tenantId: string;
  file: string;
  /** Country for national phone formats; the tenant's default_country otherwise. */
  defaultCountry?: string;
  tags?: string[];
  lists?: string[];
  /** Where rejected rows are described (line, column, reason). */
  rejectsFile: string;
  batchSize?: number;
  /** Batches written at once, each on its own connection (Postgres does the crypto: use its cores). */
  parallel?: number;
  onProgress?: (progress: ImportProgress) => void;
}

export interface ImportProgress {
  rows: number;
  bytesRead: number;
  totalBytes: number;
}

export interface ImportSummary {
  rows: number;
  inserted: number;
  updated: number;
  unchanged: number;
  rejected: number;
  rejectsFile?: string;
}

interface Reject {
  line: number;
  column: string;
  reason: string;
}

/** Header spellings we accept → the contact field. Other columns become attributes. */
const FIELD_BY_HEADER: Record<string, keyof ContactInput> = {
  firstname: "firstName",
  lastname: "lastName",
  phone: "phone",
  phonenumber: "phone",
  mobile: "phone",
  email: "email",
  emailaddress: "email",
  timezone: "timezone",
  locale: "locale",
  externalid: "externalId",
  smssubscribed: "smsSubscribed",
  emailsubscribed: "emailSubscribed",
  whatsappsubscribed: "whatsappSubscribed",
};
const headerKey = (header: string) => header.toLowerCase().replace(/[^a-z0-9]/g, "");

/**
 * Other columns become `attributes`, which are stored as they are. A column
 * that looks like a second phone or email ("Mobile Phone", "Work Email") would
 * put PII there unencrypted, so the import refuses to start instead.
 */
const PII_LOOKING_HEADER = /phone|mobile|cell|tel|fax|whatsapp|e-?mail/i;
/** Column names become attribute keys: a name this long is not a column name. */
const MAX_HEADER_CHARS = 200;

export class ImportError extends Error {
  override name = "ImportError";
}

function checkHeaders(headers: string[]): string[] {
  const long = headers.findIndex((h) => h.length > MAX_HEADER_CHARS);
  if (long !== -1) {
    throw new ImportError(
      `column ${long + 1}'s name is ${headers[long]!.length.toLocaleString("en-US")} characters long; a column name may have at most ${MAX_HEADER_CHARS}.`,
    );
  }
  const suspicious = headers.filter((h) => !FIELD_BY_HEADER[headerKey(h)] && PII_LOOKING_HEADER.test(h));
  if (suspicious.length > 0) {
    throw new ImportError(
      `column${suspicious.length > 1 ? "s" : ""} ${suspicious.map((h) => `"${h}"`).join(", ")} look${suspicious.length > 1 ? "" : "s"} like a phone or email ` +
        "but is not the contact's phone or email; other columns are stored as plain attributes, never encrypted. " +
        "Rename it to phone or email, or remove it from the file.",
    );
  }
  return headers;
}
const BOOLEAN_FIELDS = new Set<keyof ContactInput>(["smsSubscribed", "emailSubscribed", "whatsappSubscribed"]);

function parseBoolean(value: string): boolean | undefined {
  const v = value.toLowerCase();
  if (["true", "yes", "y", "1"].includes(v)) return true;
  if (["false", "no", "n", "0"].includes(v)) return false;
  return undefined;
}

/** One CSV record → a contact input, with the header each field came from. */
function toInput(record: Record<string, string>): {
  input: ContactInput;
  headerOf: Map<string, string>;
  rejects: Omit<Reject, "line">[];
} {
  const input: ContactInput = {};
  const headerOf = new Map<string, string>();
  const attributes: Record<string, string> = {};
  const rejects: Omit<Reject, "line">[] = [];
  for (const [header, raw] of Object.entries(record)) {
    const value = withoutFormulaGuard(raw?.trim() ?? "");
    if (value === "") continue; // an empty cell means "not given", never "clear"
    const field = FIELD_BY_HEADER[headerKey(header)];
    if (!field) {
      if (containsEmailLike(value)) {
        rejects.push({ column: header, reason: "holds an email address; attributes are stored unencrypted" });
      } else {
        attributes[header] = value;
      }
      continue;
    }
    headerOf.set(field, header);
    if (BOOLEAN_FIELDS.has(field)) {
      const flag = parseBoolean(value);
      if (flag === undefined) rejects.push({ column: header, reason: "must be true/false (or yes/no, 1/0)" });
      else (input as Record<string, unknown>)[field] = flag;
    } else {
      (input as Record<string, unknown>)[field] = value;
    }
  }
  if (Object.keys(attributes).length > 0) input.attributes = attributes;
  return { input, headerOf, rejects };
}

/** The first cell over MAX_CELL_CHARS, as a reject: checked before anything else reads the row. */
function oversizedCell(record: Record<string, string>): Omit<Reject, "line"> | undefined {
  for (const [header, value] of Object.entries(record)) {
    if (typeof value === "string" && value.length > MAX_CELL_CHARS) {
      return {
        column: header,
        reason: `is ${value.length.toLocaleString("en-US")} characters long; a cell may hold at most ${MAX_CELL_CHARS.toLocaleString("en-US")}`,
      };
    }
  }
  return undefined;
}

const REFUSAL_REASONS: Partial<Record<UpsertOutcome["action"], string>> = {
  conflict: "its phone, email and external id belong to different existing contacts",
  duplicate: "repeats a contact of an earlier row",
};

export async function importContacts(options: ImportOptions): Promise<ImportSummary> {
  const batchSize = Math.min(options.batchSize ?? MAX_UPSERT_BATCH, MAX_UPSERT_BATCH);
  const totalBytes = fs.statSync(options.file).size;
  // Keys per batch (the keyring caches them briefly), so a long import follows a
  // key rotation instead of writing with a retired key until it ends.
  const inTenant = async <T>(fn: (run: RunQuery) => Promise<T>) =>
    withSession(
      options.pool,
      {
        role: ROLES.worker,
        tenantId: options.tenantId,
        settings: await options.keyring.sessionSettings(options.pool, options.tenantId),
      },
      (client) =>
        fn(
          async <R>(text: string, values: unknown[], name?: string) =>
            (await client.query({ text, values, name })).rows as R[],
        ),
    );

  const { country, tagIds, listIds } = await inTenant(async (run) => ({
    country: options.defaultCountry ?? (await tenantDefaultCountry(run)) ?? "US",
    tagIds: await ensureNamed(run, "tags", options.tags ?? []),
    listIds: await ensureNamed(run, "lists", options.lists ?? []),
  }));

  const summary: ImportSummary = { rows: 0, inserted: 0, updated: 0, unchanged: 0, rejected: 0 };
  let rejectsOut: fs.WriteStream | undefined;
  const reject = (r: Reject) => {
    summary.rejected++;
    rejectsOut ??= fs.createWriteStream(options.rejectsFile).on("error", () => undefined);
    if (summary.rejected === 1) rejectsOut.write(csvLine(["line", "column", "reason"]));
    // The column is the file's own header text: a spreadsheet must not run it (csvCell).
    rejectsOut.write(csvLine([r.line, r.column, r.reason]));
  };
  // First line of each identifier, to report repeats inside the file.
  const firstLine = new Map<string, number>();

  let bytesRead = 0;
  const input = fs.createReadStream(options.file);
  input.on("data", (chunk) => (bytesRead += chunk.length));
  const parser = input.pipe(
    parse({
      columns: checkHeaders,
      bom: true,
      info: true,
      raw: true,
      skip_empty_lines: true,
      relax_column_count: true,
      trim: false,
      max_record_size: MAX_RECORD_CHARS,
    }),
  );

  let batch: { line: number; document: ContactDocument }[] = [];
  // Batches never share an identifier (repeats are rejected above), so they
  // cannot conflict with each other and may be written concurrently.
  const inFlight = new Set<Promise<void>>();
  const parallel = Math.max(1, options.parallel ?? 2);
  const flush = async () => {
    if (batch.length === 0) return;
    while (inFlight.size >= parallel) await Promise.race(inFlight);
    const pending = batch;
    batch = [];
    const write = writeBatch(pending).finally(() => inFlight.delete(write));
    write.catch(() => undefined); // surfaced by the race/all that awaits it, not as an unhandled rejection
    inFlight.add(write);
  };
  const writeBatch = async (pending: { line: number; document: ContactDocument }[]) => {
    const outcomes = await inTenant(async (run) => {
      const result = await upsertContacts(
        run,
        pending.map((p) => p.document),
        "upsert",
        "import",
      );
      const kept = result.filter((o) => o.contactId && !REFUSAL_REASONS[o.action]).map((o) => o.contactId!);
      await attach(run, "contact_tags", "tag_id", tagIds, kept);
      await attach(run, "list_members", "list_id", listIds, kept);
      return result;
    });
    for (const outcome of outcomes) {
      const reason = REFUSAL_REASONS[outcome.action];
      if (reason) reject({ line: pending[outcome.ordinal]!.line, column: "", reason });
      else if (outcome.action === "inserted") summary.inserted++;
      else if (outcome.action === "updated") summary.updated++;
      else summary.unchanged++;
    }
    options.onProgress?.({ rows: summary.rows, bytesRead, totalBytes });
  };

  const readRecords = async () => {
    for await (const { record, info, raw } of parser as AsyncIterable<{
      record: Record<string, string>;
      info: { lines: number };
      raw: string;
    }>) {
      summary.rows++;
      // info.lines is where the record ends; a quoted field may span lines.
      const line = info.lines - (raw.replace(/\r?\n$/, "").match(/\n/g)?.length ?? 0);
      const oversized = oversizedCell(record);
      if (oversized) {
        reject({ line, ...oversized });
        continue;
      }
      const { input: contact, headerOf, rejects } = toInput(record);
      const { document, errors } = normalizeContact(contact, country);
      for (const r of rejects) reject({ line, ...r });
      for (const e of errors) reject({ line, column: headerOf.get(e.field) ?? e.field, reason: e.message });
      if (rejects.length > 0 || errors.length > 0) continue;
      if (!document.phone && !document.email) {
        reject({ line, column: "phone", reason: "a contact needs a phone or an email" });
        continue;
      }
      const identifiers = (
        [
          ["phone", document.phone],
          ["email", document.email],
          ["externalId", document.external_id],
        ] as [keyof ContactInput, unknown][]
      ).filter((pair): pair is [keyof ContactInput, string] => typeof pair[1] === "string");
      const repeat = identifiers.find(([field, value]) => firstLine.has(`${field}:${value}`));
      if (repeat) {
        const [field, value] = repeat;
        reject({
          line,
          column: headerOf.get(field) ?? field,
          reason: `same ${field} as line ${firstLine.get(`${field}:${value}`)}`,
        });
        continue;
      }
      for (const [field, value] of identifiers) firstLine.set(`${field}:${value}`, line);
      batch.push({ line, document });
      if (batch.length >= batchSize) await flush();
    }
  };

  try {
    try {
      await readRecords();
    } catch (error) {
      // A malformed record stops the import there; the rows before it are still written.
      if ((error as { code?: string }).code?.startsWith("CSV_")) await flush().catch(() => undefined);
      throw error;
    }
    await flush();
    await Promise.all(inFlight);
  } finally {
    // On an error, let the other batches settle (they commit or roll back) before returning.
    await Promise.allSettled(inFlight);
    if (rejectsOut) await new Promise((resolve) => rejectsOut!.end(resolve));
  }
  return { ...summary, rejectsFile: summary.rejected > 0 ? options.rejectsFile : undefined };
}

/** Ids of the named tags or lists, creating those that do not exist yet. */
async function ensureNamed(run: RunQuery, table: "tags" | "lists", names: string[]): Promise<string[]> {
  if (names.length === 0) return [];
  await run(`insert into herald_public.${table} (name) select unnest($1::text[]) on conflict do nothing`, [names]);
  const rows = await run<{ id: string }>(
    `select id from herald_public.${table} where tenant_id = herald_public.current_tenant_id() and name = any ($1::public.citext[])`,
    [names],
  );
  return rows.map((r) => r.id);
}

async function attach(
  run: RunQuery,
  table: "contact_tags" | "list_members",
  column: "tag_id" | "list_id",
  ids: string[],
  contactIds: string[],
) {
  if (ids.length === 0 || contactIds.length === 0) return;
  await run(
    `insert into herald_public.${table} (${column}, contact_id)
     select g, c from unnest($1::uuid[]) g cross join unnest($2::uuid[]) c
     on conflict do nothing`,
    [ids, contactIds],
  );
}
