import path from "node:path";
import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import { MAX_RECORD_CHARS } from "../contacts/csv-safety.ts";
import { ImportError, importContacts } from "../contacts/import.ts";
import { keyringFromConfig } from "../crypto/keyring.ts";
import { startProgress } from "./progress.ts";
import { CliError, print, requireTenant, slugArg, withDatabase } from "./shared.ts";

const countryArg = (value: string) => {
  if (!/^[A-Za-z]{2}$/.test(value)) throw new InvalidArgumentError("use a two-letter country code, e.g. US or GB");
  return value.toUpperCase();
};
const collect = (value: string, previous: string[]) => [...previous, value];

export function registerContactCommands(program: Command): void {
  const contacts = program.command("contacts").description("Bulk work on a tenant's contacts.");
  contacts
    .command("import")
    .description(
      "Import contacts from a CSV file (header row required), updating existing ones by phone, email or external_id.",
    )
    .argument(
      "<file>",
      "CSV with columns such as first_name, last_name, phone, email, external_id; other columns become attributes",
    )
    .requiredOption("--tenant <slug>", "the tenant that owns the contacts", slugArg)
    .option(
      "--default-country <code>",
      "country for phone numbers without +country code (default: the tenant's)",
      countryArg,
    )
    .option("--tag <name>", "tag every imported contact (repeatable)", collect, [])
    .option("--list <name>", "add every imported contact to this list (repeatable)", collect, [])
    .option("--rejects <file>", "where to describe rejected rows (default: <file>.rejects.csv)")
    .action(
      async (
        file: string,
        opts: { tenant: string; defaultCountry?: string; tag: string[]; list: string[]; rejects?: string },
      ) =>
        withDatabase(async ({ config, pool }) => {
          const tenant = await requireTenant(pool, opts.tenant);
          const rejectsFile = opts.rejects ?? file.replace(/\.csv$/i, "") + ".rejects.csv";
          const progress = startProgress(`Importing ${path.basename(file)}`, "rows");
          const started = Date.now();
          const summary = await importContacts({
            pool,
            keyring: keyringFromConfig(config),
            tenantId: tenant.id,
            file,
            defaultCountry: opts.defaultCountry,
            tags: opts.tag,
            lists: opts.list,
            rejectsFile,
            onProgress: (p) => progress.update(p.bytesRead, p.totalBytes, p.rows),
          })
            .catch((error: Error & { code?: string; lines?: number }) => {
              // A malformed CSV stops the import where it broke; batches before it are committed.
              if (error instanceof ImportError) throw new CliError(`${file}: ${error.message} Nothing was imported.`);
              if (error.code === "CSV_MAX_RECORD_SIZE") {
                throw new CliError(
                  `${file}, line ${error.lines}: a row longer than ${MAX_RECORD_CHARS.toLocaleString("en-US")} characters is no contact row; the import stops there. ` +
                    "Rows before it were imported; fix the file and re-run.",
                );
              }
              if (error.code?.startsWith("CSV_")) {
                throw new CliError(
                  `${file}, line ${error.lines}: ${error.message}. Rows before it were imported; fix the file and re-run.`,
                );
              }
              throw error;
            })
            .finally(() => progress.stop());
          const seconds = (Date.now() - started) / 1000;
          const n = (x: number) => x.toLocaleString("en-US");
          print(
            `Imported ${path.basename(file)} into ${tenant.slug}: ${n(summary.inserted)} inserted, ${n(summary.updated)} updated, ` +
              `${n(summary.unchanged)} unchanged, ${n(summary.rejected)} rejected — ${n(summary.rows)} rows in ${seconds.toFixed(1)} s ` +
              `(${n(Math.round(summary.rows / Math.max(seconds, 0.001)))} rows/s).`,
          );
          if (summary.rejectsFile)
            print(`Rejected rows are described in ${summary.rejectsFile} (line, column, reason).`);
        }),
    );
}
