import fs from "node:fs";
import path from "node:path";
import type pg from "pg";
import { describe, expect, it } from "vitest";
import { ROLES } from "../src/db/urls.ts";
import { projectRoot } from "../src/paths.ts";
import { exposedTables, hasFixture } from "./helpers/attack-tables.ts";
import { useTestDatabase, withRootDb } from "./helpers/db.ts";

/**
 * Rules read from the catalog, so that they hold for every table, including
 * the next one: a privilege a request role holds has a policy to go with it;
 * every table is in the attack matrix; every tenant table writes the audit
 * log. Each is also shown to fail on a planted defect (inside a transaction
 * that is rolled back).
 */

const db = useTestDatabase();
const EXPOSED = "('herald_public', 'herald_hidden')";

/**
 * Privileges without a policy for that command and role. Under forced RLS such
 * a privilege fails silently: the statement runs and matches no row (an
 * INSERT is refused). herald_owner is left out: it owns the tables, and its
 * few policies serve the definer helpers.
 */
async function privilegesWithoutPolicy(c: pg.PoolClient): Promise<string[]> {
  const { rows } = await c.query<{ finding: string }>(
    `with tables as (
       select c.oid, c.oid::regclass::text as name from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname in ${EXPOSED} and c.relkind in ('r', 'p')),
     roles as (select oid, rolname from pg_roles where rolname = any ($1)),
     commands(privilege, polcmd) as (values ('SELECT', 'r'), ('INSERT', 'a'), ('UPDATE', 'w'), ('DELETE', 'd'))
     select format('%s: %s holds %s%s but no policy for it', t.name, r.rolname, k.privilege,
                   case when has_table_privilege(r.oid, t.oid, k.privilege) then '' else ' (on columns)' end) as finding
       from tables t cross join roles r cross join commands k
      where (has_table_privilege(r.oid, t.oid, k.privilege)
             or (k.privilege <> 'DELETE' and has_any_column_privilege(r.oid, t.oid, k.privilege)))
        and not exists (select 1 from pg_policy p
                         where p.polrelid = t.oid and p.polcmd in (k.polcmd, '*')
                           and (r.oid = any (p.polroles) or p.polroles = '{0}'))
      order by 1`,
    [[ROLES.authenticator, ROLES.member, ROLES.admin, ROLES.worker]],
  );
  return rows.map((r) => r.finding);
}

/** Exposed tables as the catalog has them now (the planted tests add one). */
async function tablesNow(c: pg.PoolClient): Promise<string[]> {
  const { rows } = await c.query<{ name: string }>(
    `select c.oid::regclass::text as name from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where n.nspname in ${EXPOSED} and c.relkind in ('r', 'p') order by 1`,
  );
  return rows.map((r) => r.name);
}

const AUDIT_TRIGGERS = ["_900_audit_delete", "_900_audit_insert", "_900_audit_update"];

/**
 * Tables whose changes are deliberately not audited by migration 000008's
 * statement triggers (herald_private.tg__audit), or only in part: the
 * triggers they do have, and why.
 */
const AUDIT_EXCEPTIONS: Record<string, { triggers: string[]; reason: string }> = {
  "herald_public.users": {
    triggers: ["_900_audit"],
    reason:
      "global rows: a row trigger (tg_users__audit) writes each change to the log of every tenant the user belongs to",
  },
  "herald_public.audit_log": { triggers: [], reason: "the log itself: append-only, written by the audit trigger" },
  "herald_public.deliveries": { triggers: [], reason: "a record of sending, written by the pipeline" },
  "herald_public.delivery_events": { triggers: [], reason: "a record of providers' reports" },
  "herald_public.delivery_engagement": { triggers: [], reason: "counters of providers' reports (delivery_events)" },
  "herald_public.consent_events": { triggers: [], reason: "a record of consent (itself the audit trail of opt-outs)" },
  "herald_public.inbound_messages": {
    triggers: ["_900_audit_delete"],
    reason: "a record of what a person wrote: only erasing one is worth a log row",
  },
  "herald_public.webhook_deliveries": { triggers: [], reason: "a record of posts to the tenant's endpoints" },
  "herald_hidden.pings": { triggers: [], reason: "proves the insert → job → task path; holds no tenant data" },
  "herald_hidden.provider_tests": {
    triggers: [],
    reason: "a request for one test message; its outcome is recorded on the (audited) provider account",
  },
  "herald_hidden.monthly_usage": { triggers: [], reason: "counters the worker keeps" },
  "herald_hidden.send_plans": { triggers: [], reason: "pacing state the worker keeps" },
  "herald_hidden.message_segment_members": {
    triggers: [],
    reason: "a broadcast's segment members, snapshotted by the worker at fan-out and emptied when it is done",
  },
  "herald_hidden.provider_reports": {
    triggers: [],
    reason: "a journal of providers' reports, emptied as they are applied (to delivery_events, themselves a record)",
  },
};

/** Tables whose audit triggers differ from what they should have, and triggers naming a key column the table lacks. */
async function auditFindings(c: pg.PoolClient): Promise<string[]> {
  const { rows } = await c.query<{ name: string; triggers: string[]; bad_keys: string[] }>(
    `select c.oid::regclass::text as name,
            array(select t.tgname::text from pg_trigger t join pg_proc p on p.oid = t.tgfoid
                   where t.tgrelid = c.oid and not t.tgisinternal
                     and p.oid in ('herald_private.tg__audit()'::regprocedure, 'herald_private.tg_users__audit()'::regprocedure)
                   order by 1) as triggers,
            array(select t.tgname || ' keys ' || k from pg_trigger t
                    cross join unnest(string_to_array(split_part(encode(t.tgargs, 'escape'), '\\000', 1), ',')) k
                   where t.tgrelid = c.oid and t.tgfoid = 'herald_private.tg__audit()'::regprocedure
                     and not exists (select 1 from pg_attribute a where a.attrelid = c.oid and a.attname = k and not a.attisdropped)) as bad_keys
       from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where n.nspname in ${EXPOSED} and c.relkind in ('r', 'p')
      order by 1`,
  );
  const findings: string[] = [];
  for (const row of rows) {
    const expected = AUDIT_EXCEPTIONS[row.name]?.triggers ?? AUDIT_TRIGGERS;
    if (row.triggers.join() !== expected.join()) {
      findings.push(
        `${row.name}: audit triggers [${row.triggers.join(", ")}], expected [${expected.join(", ")}]` +
          (AUDIT_EXCEPTIONS[row.name]
            ? ""
            : " (as 000008 creates them; or list the table in AUDIT_EXCEPTIONS with a reason)"),
      );
    }
    findings.push(...row.bad_keys.map((k) => `${row.name}: audit trigger ${k}: no such column`));
  }
  for (const table of Object.keys(AUDIT_EXCEPTIONS)) {
    if (!rows.some((r) => r.name === table)) findings.push(`${table}: listed in AUDIT_EXCEPTIONS but no longer exists`);
  }
  return findings;
}

describe("every privilege a request role holds has a policy for that command and role", () => {
  it("holds for every table of herald_public and herald_hidden", async () => {
    await withRootDb(db.current, async (c) => expect(await privilegesWithoutPolicy(c)).toEqual([]));
  });

  it("finds the defects it was written for: UPDATE of sender_numbers' pace, and the worker's UPDATE of tags and lists", async () => {
    await withRootDb(db.current, async (c) => {
      // As before migrations/current/700: the grants of 000002 and 000006, without their policies.
      await c.query(`
        drop policy update_member on herald_public.sender_numbers;
        drop policy update_admin on herald_public.sender_numbers;
        grant update (name) on herald_public.tags to herald_worker;
        grant update (name, description) on herald_public.lists to herald_worker;`);
      expect(await privilegesWithoutPolicy(c)).toEqual([
        "herald_public.lists: herald_worker holds UPDATE (on columns) but no policy for it",
        "herald_public.sender_numbers: herald_admin holds UPDATE (on columns) but no policy for it",
        "herald_public.sender_numbers: herald_member holds UPDATE (on columns) but no policy for it",
        "herald_public.tags: herald_worker holds UPDATE (on columns) but no policy for it",
      ]);
    });
  });

  it("a FOR ALL policy or a policy of another role does not count; a table-level grant is named as such", async () => {
    await withRootDb(db.current, async (c) => {
      await c.query(`
        grant delete on herald_public.templates to herald_worker;
        create policy delete_member_planted on herald_public.templates for delete to herald_admin using (false);`);
      expect(await privilegesWithoutPolicy(c)).toEqual([
        "herald_public.templates: herald_worker holds DELETE but no policy for it",
      ]);
      await c.query(
        "create policy all_worker_planted on herald_public.templates for all to herald_worker using (false)",
      );
      expect(await privilegesWithoutPolicy(c)).toEqual([]);
    });
  });
});

describe("every table is in the attack matrix", () => {
  it("each table of herald_public and herald_hidden, as the catalog lists them, has its attack fixture", () => {
    expect(exposedTables().length).toBeGreaterThanOrEqual(28);
    expect(
      exposedTables().filter((t) => !hasFixture(t)),
      "add an entry to FIXTURES in test/helpers/attack-tables.ts",
    ).toEqual([]);
  });

  it("a new table is in the matrix's list at once, and fails until it has a fixture", async () => {
    await withRootDb(db.current, async (c) => {
      await c.query(
        "create table herald_hidden.planted (tenant_id uuid not null, id uuid not null, primary key (tenant_id, id))",
      );
      const tables = await tablesNow(c);
      expect(tables).toContain("herald_hidden.planted");
      expect(tables.filter((t) => !hasFixture(t))).toEqual(["herald_hidden.planted"]);
    });
  });
});

describe("every tenant table writes the audit log", () => {
  it("has 000008's audit triggers, or is a listed exception with its reason", async () => {
    await withRootDb(db.current, async (c) => expect(await auditFindings(c)).toEqual([]));
  });

  it("finds a table that lost a trigger, a new table without them, and a trigger keyed on a missing column", async () => {
    await withRootDb(db.current, async (c) => {
      await c.query(`
        drop trigger _900_audit_update on herald_public.tags;
        create table herald_public.planted (tenant_id uuid not null, id uuid not null, primary key (tenant_id, id));
        drop trigger _900_audit_delete on herald_public.lists;
        create trigger _900_audit_delete after delete on herald_public.lists referencing old table as old_rows
          for each statement execute function herald_private.tg__audit('list_id', '');`);
      expect(await auditFindings(c)).toEqual([
        "herald_public.lists: audit trigger _900_audit_delete keys list_id: no such column",
        "herald_public.planted: audit triggers [], expected [_900_audit_delete, _900_audit_insert, _900_audit_update] (as 000008 creates them; or list the table in AUDIT_EXCEPTIONS with a reason)",
        "herald_public.tags: audit triggers [_900_audit_delete, _900_audit_insert], expected [_900_audit_delete, _900_audit_insert, _900_audit_update] (as 000008 creates them; or list the table in AUDIT_EXCEPTIONS with a reason)",
      ]);
    });
  });
});

describe("row triggers stay cheap", () => {
  it("the timestamps trigger, run for every row written, has no SET clause (saved and restored at each call)", async () => {
    const config = await withRootDb(
      db.current,
      async (c) =>
        (await c.query("select proconfig from pg_proc where oid = 'herald_private.tg__timestamps()'::regprocedure"))
          .rows[0].proconfig,
    );
    expect(config).toBeNull();
  });
});

describe("the tenant table recipe of migrations/README.md", () => {
  /** The README's SQL example, with the role placeholders .gmrc defines. */
  const recipe = () => {
    const readme = fs.readFileSync(path.join(projectRoot, "migrations", "README.md"), "utf8");
    const sql = /```sql\n([\s\S]*?)```/.exec(readme)![1]!;
    return sql.replace(
      /:DATABASE_(OWNER|AUTHENTICATOR|MEMBER|ADMIN|WORKER)\b/g,
      (_, role: string) => ROLES[role.toLowerCase() as keyof typeof ROLES],
    );
  };

  it("applies twice (idempotent) and passes every check above", async () => {
    await withRootDb(db.current, async (c) => {
      await c.query(recipe());
      await c.query(recipe());
      expect(await privilegesWithoutPolicy(c)).toEqual([]);
      expect(await auditFindings(c)).toEqual([]);
      const { rows } = await c.query(
        "select relrowsecurity and relforcerowsecurity as forced from pg_class where oid = 'herald_public.contact_notes'::regclass",
      );
      expect(rows[0].forced).toBe(true);
    });
  });
});
