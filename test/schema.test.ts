import fs from "node:fs";
import { describe, expect, it } from "vitest";
import { compareDumps, dumpMajorVersion, structuralLines } from "../src/db/schema-dump.ts";
import { dumpCatalog, printGraphqlSchema, SCHEMA_GRAPHQL_PATH, SCHEMA_SQL_PATH } from "../src/db/schema-files.ts";
import { runCli } from "./helpers/cli.ts";
import { useTestDatabase } from "./helpers/db.ts";

/**
 * data/schema.sql and schema.graphql are the schema as review sees it: they
 * must match the database the suite built (committed migrations plus
 * migrations/current/). When they do not, `npm run herald -- db dump` rewrites
 * them. data/schema.sql is compared exactly on the PostgreSQL major version it
 * was written with; on another major (the suite also runs against an external
 * PostgreSQL 15), deparsed text (policy expressions, defaults, checks, view and
 * function definitions) may legitimately differ, so only its structural lines
 * are compared there: tables, columns and types, constraint and trigger names,
 * row-level security, policies' names, commands and roles, grants, roles, and
 * functions' signatures, volatility, SECURITY DEFINER and settings.
 */

const db = useTestDatabase();
const HOW =
  "data/schema.sql or schema.graphql is stale: run `npm run herald -- db watch --once && npm run herald -- db dump` and commit both files";

const committedFile = (file: string) => (fs.existsSync(file) ? fs.readFileSync(file, "utf8") : "");

describe("the committed schema files", () => {
  it("data/schema.sql matches the migrated database", async () => {
    const fresh = await dumpCatalog(db.current.urls.admin);
    const { differences } = compareDumps(committedFile(SCHEMA_SQL_PATH), fresh);
    expect(differences, HOW).toEqual([]);
  });

  it("schema.graphql matches the API built from the migrated database", async () => {
    const fresh = await printGraphqlSchema(db.current.urls.authenticator);
    expect(fresh === committedFile(SCHEMA_GRAPHQL_PATH), HOW).toBe(true);
  });

  // Last: they change this file's database.
  it("a planted change to the security model shows in the dump: a grant, a policy, a definer function", async () => {
    const before = await dumpCatalog(db.current.urls.admin);
    await db.current.root.query(`
      grant update (name) on herald_public.templates to herald_worker;
      create policy update_worker on herald_public.templates for update to herald_worker using (true);
      create function herald_private.planted() returns int language sql security definer as 'select 1';`);
    const after = await dumpCatalog(db.current.urls.admin);
    const { differences } = compareDumps(before, after);
    expect(differences).toEqual(
      expect.arrayContaining([
        "+ grant update (name) on herald_public.templates to herald_worker;",
        "+ create policy update_worker on herald_public.templates as permissive for update to herald_worker",
        expect.stringMatching(
          /^\+ -- function herald_private\.planted\(\) returns integer; sql; volatile; security definer$/,
        ),
      ]),
    );
  });

  it("a planted change to the API shows in the SDL", async () => {
    const before = await printGraphqlSchema(db.current.urls.authenticator);
    await db.current.root.query(`
      create function herald_public.planted_probe() returns int language sql stable as 'select 1';
      grant execute on function herald_public.planted_probe() to herald_member;`);
    const after = await printGraphqlSchema(db.current.urls.authenticator);
    expect(before).not.toContain("plantedProbe");
    expect(after).toContain("plantedProbe: Int");
  });

  // The CLI compares as the tests above do (it passes on an unchanged database: `npm run herald -- db dump --check`).
  it("`herald db dump --check` fails on the changed database, naming what is stale", { timeout: 90_000 }, async () => {
    const result = await runCli(db.current, ["db", "dump", "--check"]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("grant update (name) on herald_public.templates to herald_worker;");
    expect(result.stderr).toContain("schema.graphql");
  });
});

describe("comparing dumps across PostgreSQL major versions", () => {
  const dump = (major: number, expression: string, grantee = "herald_member") =>
    [
      "-- header",
      `-- PostgreSQL major version: ${major}`,
      "create policy select_member on herald_public.tags as permissive for select to herald_member",
      `    using (${expression});`,
      `grant select on herald_public.tags to ${grantee};`,
      "",
    ].join("\n");

  it("on the same major, deparsed text must match too", () => {
    expect(dumpMajorVersion(dump(18, "x"))).toBe(18);
    expect(compareDumps(dump(18, "(tenant_id = 1)"), dump(18, "tenant_id = 1"))).toEqual({
      exact: true,
      differences: ["-     using ((tenant_id = 1));", "+     using (tenant_id = 1);"],
    });
  });

  it("on another major, deparsed text may differ but structure may not", () => {
    expect(compareDumps(dump(18, "(tenant_id = 1)"), dump(15, "tenant_id = 1"))).toEqual({
      exact: false,
      differences: [],
    });
    expect(compareDumps(dump(18, "x"), dump(15, "x", "herald_worker")).differences).toEqual([
      "- grant select on herald_public.tags to herald_member;",
      "+ grant select on herald_public.tags to herald_worker;",
    ]);
    expect(structuralLines(dump(15, "x"))).not.toContain("    using (x);");
  });
});
