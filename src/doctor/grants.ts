import type pg from "pg";
import { ROLES } from "../db/urls.ts";
import { ALLOWED_GRANTS, type RoleKey } from "./allowed-grants.ts";

/**
 * Every privilege the request roles hold on any relation, in any schema,
 * compared with the reviewed list in src/doctor/allowed-grants.ts. A grant
 * nobody reviewed — TRUNCATE, a column, a view in `public` — is a finding,
 * whatever the policies say. `herald doctor --print-grants` prints what the
 * database holds in the list's own format, for a change under review.
 */

const ROLE_KEYS: RoleKey[] = ["authenticator", "member", "admin", "worker"];

/** One privilege of one role on one relation: the whole relation (`columns` null) or those columns. */
export interface HeldGrant {
  role: RoleKey;
  relation: string;
  privilege: string;
  columns: string[] | null;
}

const HELD_GRANTS_SQL = `
  with roles(key, name) as (select * from unnest($1::text[], $2::text[])),
  rels as (
    select c.oid, c.oid::regclass::text as relation, c.relkind
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where c.relkind in ('r', 'p', 'v', 'm', 'f', 'S')
       and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname !~ '^pg_(toast|temp)'
  ),
  whole as (
    select r.key, rel.relation, p.privilege, null::text as col
      from roles r cross join rels rel
      cross join lateral unnest(case when rel.relkind = 'S' then array['USAGE', 'SELECT', 'UPDATE']
                                     else array['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER'] end) p(privilege)
     where case when rel.relkind = 'S' then has_sequence_privilege(r.name, rel.oid, p.privilege)
                else has_table_privilege(r.name, rel.oid, p.privilege) end
  ),
  by_column as (
    select r.key, rel.relation, p.privilege, a.attname::text as col
      from roles r cross join rels rel
      join pg_attribute a on a.attrelid = rel.oid and a.attnum > 0 and not a.attisdropped
      cross join unnest(array['SELECT', 'INSERT', 'UPDATE', 'REFERENCES']) p(privilege)
     where rel.relkind <> 'S'
       and not has_table_privilege(r.name, rel.oid, p.privilege)
       and has_column_privilege(r.name, rel.oid, a.attnum, p.privilege)
  )
  select key as role, relation, privilege,
         array_agg(col order by col) filter (where col is not null) as columns
    from (select * from whole union all select * from by_column) g
   group by key, relation, privilege
   order by relation, key, privilege`;

export async function heldGrants(client: pg.ClientBase): Promise<HeldGrant[]> {
  const { rows } = await client.query<HeldGrant>(HELD_GRANTS_SQL, [ROLE_KEYS, ROLE_KEYS.map((k) => ROLES[k])]);
  return rows;
}

/** "INSERT(a, b)" → INSERT on columns a and b; "DELETE" → on the whole relation. */
function parseAllowed(entry: string): { privilege: string; columns: Set<string> | null } {
  const match = /^([A-Z]+)(?:\(([^)]*)\))?$/.exec(entry.trim());
  if (!match) throw new Error(`allowed-grants.ts: cannot read "${entry}"`);
  return {
    privilege: match[1]!,
    columns: match[2] === undefined ? null : new Set(match[2].split(",").map((c) => c.trim())),
  };
}

/** The held grants the allow-list does not cover, one finding per role, relation and privilege. */
export function unlistedGrants(held: HeldGrant[], allowed = ALLOWED_GRANTS): Array<{ object: string; detail: string }> {
  const findings: Array<{ object: string; detail: string }> = [];
  for (const grant of held) {
    const entries = (allowed[grant.relation]?.[grant.role] ?? [])
      .map(parseAllowed)
      .filter((e) => e.privilege === grant.privilege);
    const wholeAllowed = entries.some((e) => e.columns === null);
    if (wholeAllowed) continue;
    const who = ROLES[grant.role];
    if (grant.columns === null) {
      findings.push({
        object: grant.relation,
        detail: `${who} has ${grant.privilege} on the whole relation, which allowed-grants.ts does not list`,
      });
      continue;
    }
    const allowedColumns = new Set(entries.flatMap((e) => [...(e.columns ?? [])]));
    const extra = grant.columns.filter((c) => !allowedColumns.has(c));
    if (extra.length > 0)
      findings.push({
        object: grant.relation,
        detail: `${who} has ${grant.privilege}(${extra.join(", ")}), which allowed-grants.ts does not list`,
      });
  }
  return findings;
}

/** The held grants in allowed-grants.ts's format (the object literal), for review. */
export function formatAllowList(held: HeldGrant[]): string {
  const byRelation = new Map<string, Map<RoleKey, string[]>>();
  for (const g of held) {
    const roles = byRelation.get(g.relation) ?? new Map<RoleKey, string[]>();
    byRelation.set(g.relation, roles);
    const list = roles.get(g.role) ?? [];
    roles.set(g.role, list);
    list.push(g.columns === null ? g.privilege : `${g.privilege}(${g.columns.join(", ")})`);
  }
  const lines = ["{"];
  for (const [relation, roles] of byRelation) {
    lines.push(`  ${JSON.stringify(relation)}: {`);
    for (const key of ROLE_KEYS) {
      const list = roles.get(key);
      if (list) lines.push(`    ${key}: [${list.map((e) => JSON.stringify(e)).join(", ")}],`);
    }
    lines.push("  },");
  }
  lines.push("}");
  return lines.join("\n");
}
