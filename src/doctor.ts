import type pg from "pg";
import { CHECKS as CATALOG_CHECKS } from "./doctor/catalog.ts";
import { heldGrants, unlistedGrants } from "./doctor/grants.ts";
import { runProbes } from "./doctor/probes.ts";

/**
 * `herald doctor`: fails when the isolation model is broken anywhere, not just
 * where someone remembered to look. Three kinds of check: catalog rules
 * (src/doctor/catalog.ts), the request roles' grants against a reviewed
 * allow-list (src/doctor/grants.ts), and behavioural probes that act as the
 * request roles with a tenant that owns nothing (src/doctor/probes.ts).
 */

export interface Finding {
  check: string;
  object: string;
  detail: string;
}

export interface CheckInfo {
  name: string;
  description: string;
}

export const CHECKS: CheckInfo[] = [
  ...CATALOG_CHECKS.map(({ name, description }) => ({ name, description })),
  {
    name: "grants-allow-list",
    description:
      "every privilege of a request role on any relation, in any schema, is in the reviewed list (src/doctor/allowed-grants.ts)",
  },
  {
    name: "probe-reads",
    description:
      "as herald_member and herald_worker with a tenant and user that own nothing, every relation they can read, in any schema, shows no row",
  },
  {
    name: "probe-writes",
    description:
      "as those, UPDATE and DELETE `where true` touch no row, and an INSERT naming another tenant is refused by row-level security",
  },
];

/**
 * Runs every check. `client` reads the catalog; `probeClient` (default: the
 * same) must be inside a transaction and able to become the request roles —
 * the authenticator, or a superuser — and is left as it was: every probe
 * runs in a savepoint that is rolled back.
 */
export async function runDoctor(
  client: pg.ClientBase,
  probeClient: pg.ClientBase = client,
): Promise<{ findings: Finding[]; checks: CheckInfo[] }> {
  const findings: Finding[] = [];
  for (const check of CATALOG_CHECKS) {
    const { rows } = await client.query<{ object: string; detail: string }>(check.sql);
    for (const row of rows) findings.push({ check: check.name, object: row.object, detail: row.detail });
  }
  for (const f of unlistedGrants(await heldGrants(client))) findings.push({ check: "grants-allow-list", ...f });
  findings.push(...(await runProbes(probeClient)));
  return { findings, checks: CHECKS };
}

export function formatReport(result: { findings: Finding[]; checks: CheckInfo[] }): string {
  const lines: string[] = [];
  for (const check of result.checks) {
    const failures = result.findings.filter((f) => f.check === check.name);
    lines.push(`${failures.length === 0 ? "ok  " : "FAIL"}  ${check.name}: ${check.description}`);
    for (const f of failures) lines.push(`        ${f.object}: ${f.detail}`);
  }
  const failed = new Set(result.findings.map((f) => f.check)).size;
  lines.push(
    "",
    failed === 0
      ? `All ${result.checks.length} isolation checks passed.`
      : `${failed} of ${result.checks.length} checks failed.`,
  );
  return lines.join("\n");
}
