import type pg from "pg";
import { ROLES } from "./urls.ts";

/**
 * `data/schema.sql`: the schema as the migrated database has it, read from the
 * catalog — roles, tables with their row-level security, policies, triggers,
 * views, functions and every grant — so that a change to a migration shows its
 * effect on the security model in review, in one place, however many files
 * built it. pg_dump cannot serve: the system's pg_dump refuses a newer server
 * (the embedded PostgreSQL ships none), and its output is ordered by
 * dependencies rather than by name. Every list here is sorted, so the text
 * changes only when the schema does.
 *
 * Deparsed text (policy expressions, defaults, checks, view and function
 * definitions, trigger and index definitions) is PostgreSQL's own and may
 * differ between major versions; the header records the version the file
 * was written with. `structuralLines` keeps only what does not depend on
 * deparsing, for comparing a dump across versions.
 */

export const DUMPED_SCHEMAS = ["herald_public", "herald_hidden", "herald_private"] as const;
/** Schemas of the tools Herald runs: only the rights Herald's roles hold on them are dumped. */
const TOOL_SCHEMAS = ["graphile_worker", "graphile_migrate"] as const;
const HERALD_ROLES = Object.values(ROLES);

/** Every line of deparsed text starts with four spaces (a table's columns and constraints' names, with two). */
const DEPARSED = "    ";

const SCHEMAS = `array['${DUMPED_SCHEMAS.join("', '")}']`;
const ALL_SCHEMAS = `array['${[...DUMPED_SCHEMAS, ...TOOL_SCHEMAS].join("', '")}']`;
const ROLE_LIST = `array['${HERALD_ROLES.join("', '")}']`;

const quoteLiteral = (text: string) => `'${text.replaceAll("'", "''")}'`;
/** Deparsed text, indented so that every one of its lines is recognisably deparsed. */
const indent = (text: string) =>
  text
    .trimEnd()
    .split("\n")
    .map((line) => `${DEPARSED}${line}`.trimEnd())
    .join("\n");

/** One line of grants: privileges per grantee, columns merged, sorted. */
interface AclRow {
  object: string;
  kind: string;
  column: string | null;
  grantee: string;
  privilege: string;
  grantable: boolean;
}

/** Every grant on objects of the given schemas, from the ACLs (with the built-in defaults where an ACL is null). */
const ACL_SQL = `
  with acl as (
    select n.nspname, c.oid::regclass::text as object, case c.relkind when 'S' then 'sequence' else 'table' end as kind,
           null::text as column_name, c.relowner as owner, (aclexplode(coalesce(c.relacl, acldefault('r', c.relowner)))).*
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = any (${ALL_SCHEMAS}) and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f')
    union all
    select n.nspname, c.oid::regclass::text, 'table', a.attname::text, c.relowner, (aclexplode(a.attacl)).*
      from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = any (${ALL_SCHEMAS}) and a.attnum > 0 and not a.attisdropped and a.attacl is not null
    union all
    select n.nspname, p.oid::regprocedure::text, case p.prokind when 'p' then 'procedure' else 'function' end, null, p.proowner,
           (aclexplode(coalesce(p.proacl, acldefault('f', p.proowner)))).*
      from pg_proc p join pg_namespace n on n.oid = p.pronamespace
     where n.nspname = any (${ALL_SCHEMAS})
    union all
    select n.nspname, quote_ident(n.nspname), 'schema', null, n.nspowner, (aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner)))).*
      from pg_namespace n
     where n.nspname = any (${ALL_SCHEMAS})
  )
  select acl.object, acl.kind, acl.column_name as column, case when acl.grantee = 0 then 'public' else r.rolname::text end as grantee,
         lower(acl.privilege_type) as privilege, acl.is_grantable as grantable
    from acl left join pg_roles r on r.oid = acl.grantee
   -- An owner's own rights go without saying; in the tools' schemas, only what Herald's other roles (or PUBLIC) hold.
   where acl.grantee <> acl.owner
     and (acl.nspname = any (${SCHEMAS}) or acl.grantee = 0 or r.rolname = any (${ROLE_LIST}))`;

function formatGrants(rows: AclRow[], object: string): string[] {
  const mine = rows.filter((r) => r.object === object);
  const byKey = new Map<string, { columns: string[]; row: AclRow }>();
  for (const row of mine) {
    const key = `${row.grantee}\0${row.privilege}\0${row.grantable}\0${row.column === null ? "table" : "columns"}`;
    const entry = byKey.get(key) ?? { columns: [], row };
    if (row.column !== null) entry.columns.push(row.column);
    byKey.set(key, entry);
  }
  // GRANT's own words: `on schema s`, `on sequence q`, `on function f(…)`; a table or view is named alone.
  const kind = mine[0]?.kind;
  const target = kind && kind !== "table" ? `${kind} ${object}` : object;
  return [...byKey.values()]
    .map(({ columns, row }) => {
      const cols = columns.length > 0 ? ` (${columns.sort().join(", ")})` : "";
      return `grant ${row.privilege}${cols} on ${target} to ${row.grantee}${row.grantable ? " with grant option" : ""};`;
    })
    .sort();
}

async function rows<T extends pg.QueryResultRow>(client: pg.ClientBase, sql: string): Promise<T[]> {
  return (await client.query<T>(sql)).rows;
}

async function dumpRoles(client: pg.ClientBase): Promise<string[]> {
  const roles = await rows<Record<string, unknown> & { rolname: string }>(
    client,
    `select rolname, rolcanlogin, rolinherit, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolconnlimit
       from pg_roles where rolname = any (${ROLE_LIST}) order by rolname`,
  );
  const flag = (on: unknown, name: string) => (on ? name : `no${name}`);
  const out = roles.map(
    (r) =>
      `create role ${r.rolname} ${flag(r.rolcanlogin, "login")} ${flag(r.rolinherit, "inherit")} ${flag(r.rolsuper, "superuser")} ` +
      `${flag(r.rolcreatedb, "createdb")} ${flag(r.rolcreaterole, "createrole")} ${flag(r.rolreplication, "replication")} ` +
      `${flag(r.rolbypassrls, "bypassrls")}${r.rolconnlimit === -1 ? "" : ` connection limit ${r.rolconnlimit}`};`,
  );
  const members = await rows<{ role: string; member: string; admin_option: boolean }>(
    client,
    `select r.rolname as role, m.rolname as member, am.admin_option
       from pg_auth_members am join pg_roles r on r.oid = am.roleid join pg_roles m on m.oid = am.member
      where r.rolname = any (${ROLE_LIST}) or m.rolname = any (${ROLE_LIST})
      order by 1, 2`,
  );
  out.push(...members.map((m) => `grant ${m.role} to ${m.member}${m.admin_option ? " with admin option" : ""};`));
  const settings = await rows<{ role: string; setting: string }>(
    client,
    `select r.rolname as role, unnest(s.setconfig) as setting
       from pg_db_role_setting s join pg_roles r on r.oid = s.setrole
      where r.rolname = any (${ROLE_LIST}) and s.setdatabase in (0, (select oid from pg_database where datname = current_database()))
      order by 1, 2`,
  );
  out.push(...settings.map((s) => `alter role ${s.role} set ${s.setting};`));
  return out;
}

async function dumpTypes(client: pg.ClientBase): Promise<string[]> {
  const types = await rows<{ name: string; kind: string; body: string }>(
    client,
    `select t.oid::regtype::text as name, t.typtype as kind,
            case t.typtype
              when 'c' then (select string_agg(quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod), ', ' order by a.attnum)
                               from pg_attribute a where a.attrelid = t.typrelid and a.attnum > 0 and not a.attisdropped)
              when 'e' then (select string_agg(quote_literal(e.enumlabel), ', ' order by e.enumsortorder) from pg_enum e where e.enumtypid = t.oid)
              when 'd' then format_type(t.typbasetype, t.typtypmod)
            end as body
       from pg_type t join pg_namespace n on n.oid = t.typnamespace
      where n.nspname = any (${SCHEMAS}) and t.typtype in ('c', 'e', 'd')
        and (t.typtype <> 'c' or (select relkind from pg_class where oid = t.typrelid) = 'c')
      order by 1`,
  );
  return types.map((t) =>
    t.kind === "c"
      ? `create type ${t.name} as (${t.body});`
      : t.kind === "e"
        ? `create type ${t.name} as enum (${t.body});`
        : `create domain ${t.name} as ${t.body};`,
  );
}

interface Relation {
  oid: number;
  name: string;
  kind: string;
  owner: string;
  rls: boolean;
  force_rls: boolean;
  options: string[] | null;
  comment: string | null;
}

async function dumpRelation(client: pg.ClientBase, rel: Relation, acl: AclRow[]): Promise<string[]> {
  const out: string[] = [];
  const q = <T extends pg.QueryResultRow>(sql: string) => client.query<T>(sql, [rel.oid]).then((r) => r.rows);
  if (rel.kind === "v" || rel.kind === "m") {
    const [view] = await q<{ definition: string }>("select pg_get_viewdef($1::oid, true) as definition");
    const options = rel.options?.length ? ` with (${[...rel.options].sort().join(", ")})` : "";
    out.push(
      `create ${rel.kind === "m" ? "materialized view" : "view"} ${rel.name}${options} as`,
      indent(view!.definition.trim()) + ";",
    );
  } else {
    const columns = await q<{
      name: string;
      type: string;
      not_null: boolean;
      default: string | null;
      identity: string;
      generated: string;
    }>(
      `select quote_ident(attname) as name, format_type(atttypid, atttypmod) as type, attnotnull as not_null,
              pg_get_expr(d.adbin, d.adrelid) as default, attidentity as identity, attgenerated as generated
         from pg_attribute a left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
        where a.attrelid = $1::oid and a.attnum > 0 and not a.attisdropped order by a.attnum`,
    );
    // Not-null constraints are catalogued as constraints from PostgreSQL 18 on: the columns say it already.
    const constraints = await q<{ name: string; definition: string }>(
      `select quote_ident(conname) as name, pg_get_constraintdef(oid) as definition
         from pg_constraint where conrelid = $1::oid and contype <> 'n' order by conname`,
    );
    // Each column and constraint: its name on a line of its own, deparsed text (a default, a check) below it.
    const items: string[][] = [];
    for (const c of columns) {
      const identity = c.identity ? ` generated ${c.identity === "a" ? "always" : "by default"} as identity` : "";
      const item = [`  ${c.name} ${c.type}${c.not_null ? " not null" : ""}${identity}`];
      if (c.default !== null)
        item.push(indent(c.generated ? `generated always as (${c.default}) stored` : `default ${c.default}`));
      items.push(item);
    }
    for (const c of constraints) items.push([`  constraint ${c.name}`, indent(c.definition)]);
    out.push(
      `create table ${rel.name} (`,
      ...items.map((item, i) => (i < items.length - 1 ? [...item.slice(0, -1), `${item.at(-1)},`] : item).join("\n")),
      ");",
    );
  }
  if (rel.owner !== ROLES.owner) out.push(`alter table ${rel.name} owner to ${rel.owner};`);
  if (rel.kind === "r" || rel.kind === "p") {
    out.push(`alter table ${rel.name} ${rel.rls ? "enable" : "disable"} row level security;`);
    if (rel.force_rls) out.push(`alter table ${rel.name} force row level security;`);
  }
  const indexes = await q<{ definition: string }>(
    `select pg_get_indexdef(i.indexrelid) as definition from pg_index i
      where i.indrelid = $1::oid and not exists (select 1 from pg_constraint c where c.conindid = i.indexrelid and c.conrelid = i.indrelid)
      order by i.indexrelid::regclass::text`,
  );
  out.push(...indexes.map((i) => indent(`${i.definition};`)));
  const triggers = await q<{ name: string; definition: string }>(
    "select tgname as name, pg_get_triggerdef(oid) as definition from pg_trigger where tgrelid = $1::oid and not tgisinternal order by tgname",
  );
  for (const t of triggers) out.push(`-- trigger ${t.name} on ${rel.name}`, indent(`${t.definition};`));
  const policies = await q<{
    name: string;
    permissive: string;
    cmd: string;
    roles: string[];
    qual: string | null;
    with_check: string | null;
    comment: string | null;
  }>(
    `select quote_ident(p.polname) as name, case when p.polpermissive then 'permissive' else 'restrictive' end as permissive,
            case p.polcmd when 'r' then 'select' when 'a' then 'insert' when 'w' then 'update' when 'd' then 'delete' else 'all' end as cmd,
            array(select case when r = 0 then 'public' else r::regrole::text end from unnest(p.polroles) r order by 1) as roles,
            pg_get_expr(p.polqual, p.polrelid) as qual, pg_get_expr(p.polwithcheck, p.polrelid) as with_check,
            obj_description(p.oid, 'pg_policy') as comment
       from pg_policy p where p.polrelid = $1::oid order by p.polname`,
  );
  for (const p of policies) {
    const expressions = [
      p.qual !== null ? `using (${p.qual})` : null,
      p.with_check !== null ? `with check (${p.with_check})` : null,
    ].filter((e) => e !== null);
    out.push(
      `create policy ${p.name} on ${rel.name} as ${p.permissive} for ${p.cmd} to ${p.roles.join(", ")}${expressions.length === 0 ? ";" : ""}`,
    );
    if (expressions.length > 0) out.push(indent(`${expressions.join("\n")};`));
    if (p.comment !== null) out.push(`comment on policy ${p.name} on ${rel.name} is ${quoteLiteral(p.comment)};`);
  }
  if (rel.comment !== null)
    out.push(`comment on ${rel.kind === "v" ? "view" : "table"} ${rel.name} is ${quoteLiteral(rel.comment)};`);
  const comments = await q<{ target: string; comment: string }>(
    `select 'column ' || $1::oid::regclass::text || '.' || quote_ident(a.attname) as target, d.description as comment
       from pg_description d join pg_attribute a on a.attrelid = d.objoid and a.attnum = d.objsubid
      where d.classoid = 'pg_class'::regclass and d.objoid = $1::oid and d.objsubid > 0
     union all
     select 'constraint ' || quote_ident(c.conname) || ' on ' || $1::oid::regclass::text, obj_description(c.oid, 'pg_constraint')
       from pg_constraint c where c.conrelid = $1::oid and obj_description(c.oid, 'pg_constraint') is not null
     union all
     select 'trigger ' || quote_ident(t.tgname) || ' on ' || $1::oid::regclass::text, obj_description(t.oid, 'pg_trigger')
       from pg_trigger t where t.tgrelid = $1::oid and obj_description(t.oid, 'pg_trigger') is not null
     order by 1`,
  );
  out.push(...comments.map((c) => `comment on ${c.target} is ${quoteLiteral(c.comment)};`));
  out.push(...formatGrants(acl, rel.name));
  return out;
}

async function dumpFunctions(client: pg.ClientBase, acl: AclRow[]): Promise<string[][]> {
  const functions = await rows<{ signature: string; header: string; definition: string; comment: string | null }>(
    client,
    `select p.oid::regprocedure::text as signature,
            format('-- %s %s returns %s; %s; %s%s%s', case p.prokind when 'p' then 'procedure' else 'function' end,
                   p.oid::regprocedure::text, coalesce(pg_get_function_result(p.oid), 'void'), l.lanname,
                   case p.provolatile when 'i' then 'immutable' when 's' then 'stable' else 'volatile' end,
                   case when p.prosecdef then '; security definer' else '' end,
                   case when p.proconfig is not null then '; set ' || array_to_string(array(select unnest(p.proconfig) order by 1), ', ') else '' end) as header,
            pg_get_functiondef(p.oid) as definition, obj_description(p.oid, 'pg_proc') as comment
       from pg_proc p join pg_namespace n on n.oid = p.pronamespace join pg_language l on l.oid = p.prolang
      where n.nspname = any (${SCHEMAS}) and p.prokind in ('f', 'p')
      order by 1`,
  );
  return functions.map((f) => {
    const out = [f.header, indent(f.definition.trim()) + ";"];
    if (f.comment !== null) out.push(`comment on function ${f.signature} is ${quoteLiteral(f.comment)};`);
    out.push(...formatGrants(acl, f.signature));
    return out;
  });
}

/** The dump's text: sections in a fixed order, objects sorted by name within each. */
export async function dumpSchema(client: pg.ClientBase): Promise<string> {
  // One snapshot; and with only pg_catalog on the search path, every name the deparsers print is qualified.
  await client.query("begin isolation level repeatable read read only");
  try {
    await client.query("set local search_path = pg_catalog");
    return await dumpInSnapshot(client);
  } finally {
    await client.query("rollback");
  }
}

async function dumpInSnapshot(client: pg.ClientBase): Promise<string> {
  const { major } = (
    await rows<{ major: string }>(client, "select current_setting('server_version_num')::int / 10000 as major")
  )[0]!;
  const acl = (await rows<AclRow>(client, ACL_SQL)).sort((a, b) =>
    (a.object + a.column).localeCompare(b.object + b.column),
  );
  const sections: Array<[string, string[][]]> = [];
  sections.push(["roles", [await dumpRoles(client)]]);
  const schemas = await rows<{ name: string; owner: string; comment: string | null }>(
    client,
    `select nspname as name, nspowner::regrole::text as owner, obj_description(oid, 'pg_namespace') as comment
       from pg_namespace where nspname = any (${ALL_SCHEMAS}) order by 1`,
  );
  sections.push([
    "schemas",
    schemas.map((s) => {
      const dumped = (DUMPED_SCHEMAS as readonly string[]).includes(s.name);
      const out = dumped
        ? [`create schema ${s.name} authorization ${s.owner};`]
        : [`-- schema ${s.name} (owned by ${s.owner}): only Herald's grants on it are listed`];
      if (dumped && s.comment !== null) out.push(`comment on schema ${s.name} is ${quoteLiteral(s.comment)};`);
      out.push(...formatGrants(acl, s.name));
      return out;
    }),
  ]);
  const defaults = await rows<{ line: string }>(
    client,
    `select format('-- default privileges of %s%s on %s: %s', d.defaclrole::regrole, coalesce(' in schema ' || n.nspname, ''),
                   case d.defaclobjtype when 'r' then 'tables' when 'S' then 'sequences' when 'f' then 'functions' when 'T' then 'types' when 'n' then 'schemas' end,
                   coalesce(array_to_string(array(select a::text from unnest(d.defaclacl) a order by 1), ', '), 'none')) as line
       from pg_default_acl d left join pg_namespace n on n.oid = d.defaclnamespace
      where d.defaclrole::regrole::text = any (${ROLE_LIST}) order by 1`,
  );
  sections.push(["default privileges", [defaults.map((d) => d.line)]]);
  const extensions = await rows<{ line: string }>(
    client,
    "select format('create extension %s schema %s;', e.extname, n.nspname) as line from pg_extension e join pg_namespace n on n.oid = e.extnamespace where e.extname <> 'plpgsql' order by 1",
  );
  sections.push(["extensions", [extensions.map((e) => e.line)]]);
  sections.push(["types", [await dumpTypes(client)]]);
  const relations = await rows<Relation>(
    client,
    `select c.oid, c.oid::regclass::text as name, c.relkind as kind, c.relowner::regrole::text as owner,
            c.relrowsecurity as rls, c.relforcerowsecurity as force_rls, c.reloptions as options,
            obj_description(c.oid, 'pg_class') as comment
       from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where n.nspname = any (${SCHEMAS}) and c.relkind in ('r', 'p', 'v', 'm')
      order by 2`,
  );
  const blocks: string[][] = [];
  for (const rel of relations.filter((r) => r.kind === "r" || r.kind === "p"))
    blocks.push(await dumpRelation(client, rel, acl));
  sections.push([
    "tables: columns, constraints, row-level security, indexes, triggers, policies, comments, grants",
    blocks,
  ]);
  const views: string[][] = [];
  for (const rel of relations.filter((r) => r.kind === "v" || r.kind === "m"))
    views.push(await dumpRelation(client, rel, acl));
  sections.push(["views", views]);
  const sequences = [...new Set(acl.filter((a) => a.kind === "sequence").map((a) => a.object))].sort();
  sections.push(["sequences (grants)", sequences.map((s) => formatGrants(acl, s))]);
  sections.push(["functions", await dumpFunctions(client, acl)]);
  const toolObjects = [
    ...new Set(acl.filter((a) => TOOL_SCHEMAS.some((s) => a.object.startsWith(`${s}.`))).map((a) => a.object)),
  ].sort();
  sections.push([
    `grants on ${TOOL_SCHEMAS.join(" and ")} objects to Herald's roles`,
    toolObjects.map((o) => formatGrants(acl, o)),
  ]);

  const header = [
    "-- Herald's schema as the migrated database has it (committed migrations and migrations/current/):",
    "-- roles, tables, row-level security, policies, triggers, views, functions and grants, read from the",
    "-- catalog and sorted by name. Generated by `npm run herald -- db dump` (src/db/schema-dump.ts): never",
    "-- edit it by hand. Indented lines are PostgreSQL's deparsed text, which may vary by major version.",
    `-- PostgreSQL major version: ${major}`,
  ];
  const body = sections.map(([title, items]) => {
    const blocks = items.filter((b) => b.length > 0).map((b) => `\n${b.join("\n")}`);
    return [`\n---- ${title}`, ...(blocks.length > 0 ? blocks : ["\n-- (none)"])].join("\n");
  });
  return `${header.join("\n")}\n${body.join("\n")}\n`;
}

/** The PostgreSQL major version a dump was written with (its header says). */
export function dumpMajorVersion(dump: string): number | undefined {
  const match = /^-- PostgreSQL major version: (\d+)$/m.exec(dump);
  return match ? Number(match[1]) : undefined;
}

/**
 * What of a dump does not depend on how PostgreSQL deparses: tables and
 * columns with their types, constraint and trigger names, row-level security,
 * policies' names, commands and roles, grants, roles, and functions'
 * signatures, volatility, SECURITY DEFINER and settings.
 */
export function structuralLines(dump: string): string[] {
  return dump
    .split("\n")
    .filter(
      (line) => !line.startsWith(DEPARSED) && line.trim() !== "" && !line.startsWith("-- PostgreSQL major version:"),
    );
}

/**
 * Where `committed` (a dump on file) and `fresh` (one just taken) differ: none
 * when they match. On the same major version they must match exactly; on
 * another, deparsed text may legitimately differ, so only `structuralLines`
 * are compared (the result says so).
 */
export function compareDumps(committed: string, fresh: string): { exact: boolean; differences: string[] } {
  const exact = dumpMajorVersion(committed) === dumpMajorVersion(fresh);
  const [a, b] = exact
    ? [committed.split("\n"), fresh.split("\n")]
    : [structuralLines(committed), structuralLines(fresh)];
  const differences: string[] = [];
  const inA = new Set(a);
  const inB = new Set(b);
  for (const line of a) if (!inB.has(line)) differences.push(`- ${line}`);
  for (const line of b) if (!inA.has(line)) differences.push(`+ ${line}`);
  // Same lines, another order (or a repeated line): still a difference.
  if (differences.length === 0 && a.join("\n") !== b.join("\n")) differences.push("(the same lines in another order)");
  return { exact, differences };
}
