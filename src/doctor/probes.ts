import { randomUUID } from "node:crypto";
import type pg from "pg";
import { ROLES } from "../db/urls.ts";

/**
 * Behavioural probes: what a request role can really do, whatever its
 * policies look like. As herald_member and as herald_worker, with the claims
 * of a tenant and a user that own nothing (fresh random ids), exactly as a
 * request or a job sets them, every relation the role can reach, in any
 * schema, must show no row, and every write it holds must touch no row:
 * UPDATE and DELETE `where true` affect nothing, and an INSERT naming another
 * tenant is refused by row-level security. A policy with `or true` appended
 * still "mentions current_tenant_id()"; here it shows the rows it lets through.
 *
 * Runs inside the caller's transaction, every step in a savepoint that is
 * rolled back, so nothing is left behind; the caller must be able to become
 * the request roles (the authenticator, as the API does, or a superuser).
 * herald_admin reads across tenants by design: its grants and policies are
 * the catalog rules' and the allow-list's to check.
 */

export const PROBED_ROLES = [ROLES.member, ROLES.worker] as const;

export interface ProbeFinding {
  check: "probe-reads" | "probe-writes";
  object: string;
  detail: string;
}

interface Reachable {
  relation: string;
  can_select: boolean;
  can_delete: boolean;
  /** A column the role may update (to probe UPDATE with `set c = c`), if any. */
  update_column: string | null;
  /** Whether the role may name tenant_id in an INSERT. */
  can_insert_tenant: boolean;
}

const REACHABLE_SQL = `
  select c.oid::regclass::text as relation,
         has_any_column_privilege($1, c.oid, 'SELECT') as can_select,
         has_table_privilege($1, c.oid, 'DELETE') as can_delete,
         (select a.attname from pg_attribute a
           where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
             and has_column_privilege($1, c.oid, a.attnum, 'UPDATE')
           order by a.attnum limit 1) as update_column,
         exists (select 1 from pg_attribute a
                  where a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped
                    and has_column_privilege($1, c.oid, a.attnum, 'INSERT')) as can_insert_tenant
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
   where c.relkind in ('r', 'p', 'v', 'm', 'f')
     and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname !~ '^pg_(toast|temp)'
     and has_schema_privilege($1, n.oid, 'USAGE')
     and (has_any_column_privilege($1, c.oid, 'SELECT, INSERT, UPDATE') or has_table_privilege($1, c.oid, 'DELETE'))
   order by 1`;

const quoteIdent = (name: string) => `"${name.replace(/"/g, '""')}"`;

/** A statement in a savepoint that is always rolled back: its row count, or the error it raised. */
async function attempt(
  client: pg.ClientBase,
  sql: string,
  values: unknown[] = [],
): Promise<{ rows: number; first?: unknown } | { error: { code?: string; message: string } }> {
  await client.query("savepoint herald_doctor_attempt");
  try {
    const result = await client.query(sql, values);
    return { rows: result.rowCount ?? 0, first: result.rows[0] };
  } catch (error) {
    return { error: error as { code?: string; message: string } };
  } finally {
    await client.query("rollback to savepoint herald_doctor_attempt");
    await client.query("release savepoint herald_doctor_attempt");
  }
}

/** Row-level security's refusal of a row (42501 "new row violates row-level security policy"), or no right to the column. */
const refused = (error: { code?: string }) => error.code === "42501";

export async function runProbes(client: pg.ClientBase): Promise<ProbeFinding[]> {
  const findings: ProbeFinding[] = [];
  for (const role of PROBED_ROLES) {
    const { rows: reachable } = await client.query<Reachable>(REACHABLE_SQL, [role]);
    const tenantId = randomUUID();
    const userId = randomUUID();
    const anotherTenant = randomUUID();
    await client.query("savepoint herald_doctor_role");
    try {
      // As src/db/session.ts enterSession does: the role and claims, transaction-local.
      const { rows } = await client.query<{ current_user: string }>(
        `select set_config('role', $1, true), set_config('jwt.claims.tenant_id', $2, true),
                set_config('jwt.claims.user_id', $3, true), set_config('statement_timeout', '15s', true), current_user`,
        [role, tenantId, userId],
      );
      if (rows[0]?.current_user !== role)
        throw new Error(`doctor could not become ${role} (it runs as ${rows[0]?.current_user})`);
      const claims = `${role} with a tenant and user that own nothing`;
      for (const r of reachable) {
        if (r.can_select) {
          const read = await attempt(client, `select exists (select 1 from ${r.relation}) as found`);
          if ("error" in read) {
            findings.push({
              check: "probe-reads",
              object: r.relation,
              detail: `${claims}: reading failed (${read.error.code}: ${read.error.message})`,
            });
          } else if ((read.first as { found: boolean }).found) {
            findings.push({
              check: "probe-reads",
              object: r.relation,
              detail: `${claims} sees rows (of other tenants)`,
            });
          }
        }
        if (r.update_column) {
          // `= default` reads no column, so no SELECT right or policy is involved: the update policy alone decides which rows it reaches.
          const update = await attempt(
            client,
            `update ${r.relation} set ${quoteIdent(r.update_column)} = default where true`,
          );
          if ("error" in update) {
            const detail = /row-level security/.test(update.error.message)
              ? `${claims}: UPDATE … where true reached rows, which WITH CHECK then refused`
              : `${claims}: UPDATE … where true failed (${update.error.code}: ${update.error.message}), so it reached rows`;
            findings.push({ check: "probe-writes", object: r.relation, detail });
          } else if (update.rows > 0) {
            findings.push({
              check: "probe-writes",
              object: r.relation,
              detail: `${claims} updated ${update.rows} row(s) (of other tenants)`,
            });
          }
        }
        if (r.can_delete) {
          const removed = await attempt(client, `delete from ${r.relation} where true`);
          if ("error" in removed) {
            findings.push({
              check: "probe-writes",
              object: r.relation,
              detail: `${claims}: DELETE … where true failed (${removed.error.code}: ${removed.error.message}), so it reached rows`,
            });
          } else if (removed.rows > 0) {
            findings.push({
              check: "probe-writes",
              object: r.relation,
              detail: `${claims} deleted ${removed.rows} row(s) (of other tenants)`,
            });
          }
        }
        if (r.can_insert_tenant) {
          // Row-level security is checked before NOT NULL, CHECK and foreign
          // keys, so a sound WITH CHECK refuses this row (42501) before any
          // other column is missed; a constraint error means it let it through.
          const insert = await attempt(client, `insert into ${r.relation} (tenant_id) values ($1)`, [anotherTenant]);
          if (!("error" in insert)) {
            findings.push({
              check: "probe-writes",
              object: r.relation,
              detail: `${claims} inserted a row into another tenant`,
            });
          } else if (!refused(insert.error)) {
            findings.push({
              check: "probe-writes",
              object: r.relation,
              detail: `${claims}: an INSERT naming another tenant passed row-level security (then: ${insert.error.code}: ${insert.error.message})`,
            });
          }
        }
      }
    } finally {
      await client.query("rollback to savepoint herald_doctor_role");
      await client.query("release savepoint herald_doctor_role");
    }
  }
  return findings;
}
