import pg from "pg";
import { beforeAll, describe, expect, it } from "vitest";
import { asRole, expectPgError, useTestDatabase, withRootDb } from "./helpers/db.ts";
import {
  attackerIdentities,
  exposedTables,
  hasFixture,
  seedAttackTenants,
  specFor,
  type AttackTenant,
  type TableSpec,
} from "./helpers/attack-tables.ts";
import { asRoot } from "./helpers/messaging.ts";

/**
 * Tenant B attacks tenant A's rows in every table of herald_public and
 * herald_hidden (the catalog's list, not a hand-kept one) through raw SQL, as
 * each identity B can have: its owner (a tenant admin), a plain member, an API
 * key (no user) and a worker job. Every attack must see nothing, change
 * nothing, or be refused — and where a grant refuses, the test asserts that the
 * role really lacks the privilege, so no table is skipped. What each role may
 * read or update is read from the catalog per role. Attacks that name A's rows
 * from B's own, and connections across roles: isolation.references.test.ts.
 */

const db = useTestDatabase();
let a: AttackTenant;
let b: AttackTenant;

beforeAll(async () => {
  ({ a, b } = await seedAttackTenants(db.current));
  await installLeakTripwires();
});

/** The SQLSTATE a tripwire raises: no refusal the tests accept. */
const LEAK = "HLEAK";

/**
 * A tripwire on every table with a tenant key (this file's database only): an
 * UPDATE or DELETE that reaches a row of tenant A from another tenant's
 * session raises LEAK. A row BEFORE trigger fires as each row is reached,
 * before any foreign-key or WITH CHECK refusal can end the statement, so a
 * leak cannot hide behind a refusal of B's own row, whatever order the rows
 * are visited in. A session with no tenant (the superuser arranging data, an
 * operator) passes, and so does one of A's own.
 */
async function installLeakTripwires() {
  await asRoot(db.current, async (c) => {
    await c.query(`
      create function herald_private.tg__test_leak_tripwire() returns trigger
        language plpgsql
      as $$
      begin
        if pg_catalog.to_jsonb(old) ->> tg_argv[0] = tg_argv[1]
           and herald_public.current_tenant_id() is not null
           and herald_public.current_tenant_id() <> tg_argv[1]::uuid then
          raise exception '% on %.% reached tenant A''s row from tenant %', tg_op, tg_table_schema, tg_table_name, herald_public.current_tenant_id()
            using errcode = '${LEAK}';
        end if;
        return case when tg_op = 'DELETE' then old else new end;
      end;
      $$`);
    // Tables without a fixture are reported by their own tests (specFor); users have no tenant key.
    for (const spec of exposedTables().flatMap((t) => (hasFixture(t) ? [specFor(t)] : []))) {
      if (!spec.tenantKey) continue;
      // Named to fire before the table's own BEFORE triggers (they fire in name order).
      await c.query(
        `create trigger "_000_test_leak_tripwire" before update or delete on ${spec.table}
           for each row execute function herald_private.tg__test_leak_tripwire('${spec.tenantKey}', '${a.id}')`,
      );
    }
  });
}

const identities = () => attackerIdentities(b);

/** The table's columns the current role holds `privilege` on, in column order (from the catalog). */
async function columnsHeld(c: pg.PoolClient, table: string, privilege: "SELECT" | "UPDATE" | "INSERT") {
  const { rows } = await c.query<{ name: string; usable: boolean; held: boolean }>(
    `select quote_ident(attname) as name, (not attnotnull or atthasdef) as usable, has_column_privilege($1::regclass, attnum, $2) as held
       from pg_attribute where attrelid = $1::regclass and attnum > 0 and not attisdropped order by attnum`,
    [table, privilege],
  );
  return { all: rows.map((r) => r.name), held: rows.filter((r) => r.held), first: rows[0]!.name };
}

/** Every uuid of tenant A's fixture rows (not the audit log's bigint, whose digits any row may contain). */
const aIds = () =>
  Object.entries(a)
    .filter(([key, value]) => (key === "id" || key.endsWith("Id")) && /^[0-9a-f]{8}-[0-9a-f]{4}-/.test(String(value)))
    .map(([, id]) => id as string);

/**
 * The UPDATE to try as the current role: the spec's, when the role may update
 * its column; else the first column the role may update (preferring one that
 * may be null or has a default) set to DEFAULT; with no updatable column, the
 * first column, which the grant must refuse.
 */
async function updateFor(c: pg.PoolClient, spec: TableSpec): Promise<{ granted: boolean; set: string }> {
  const { held, first } = await columnsHeld(c, spec.table, "UPDATE");
  if (spec.update && held.some((h) => h.name === spec.update!.column))
    return { granted: true, set: `${spec.update.column} = ${spec.update.to}` };
  const column = held.find((h) => h.usable) ?? held[0];
  return column ? { granted: true, set: `${column.name} = default` } : { granted: false, set: `${first} = default` };
}

const deletable = async (c: pg.PoolClient, table: string) =>
  (await c.query<{ granted: boolean }>("select has_table_privilege($1, 'DELETE') as granted", [table])).rows[0]!
    .granted;

/**
 * Runs an attack and asserts which layer stops it: without the privilege, the
 * grant ("permission denied"); with it, row-level security — `attempt`'s own
 * expectations hold (nothing of A seen or touched) or RLS raises its error.
 */
async function expectRefused(c: pg.PoolClient, label: string, granted: boolean, attempt: () => Promise<void>) {
  const error = await expectPgError(c, attempt);
  if (granted) {
    if (error) expect(error.message, label).toMatch(/row-level security/);
  } else {
    expect(error?.message, label).toMatch(/permission denied/);
  }
}

describe.each(exposedTables())("%s", (table) => {
  it("tenant B cannot read tenant A's rows, by id or by scanning: grants refuse, or RLS hides them", async () => {
    const spec = specFor(table);
    for (const who of identities()) {
      await asRole(db.current, who, async (c) => {
        const { where, params } = spec.victim(a);
        const { held, first } = await columnsHeld(c, table, "SELECT");
        // Every column the role may read; with none, the grant must refuse the first.
        const granted = held.length > 0;
        const columns = granted ? held.map((h) => h.name).join(", ") : first;
        await expectRefused(c, `${who.name} read A's row by id`, granted, async () => {
          const { rowCount } = await c.query(`select ${columns} from ${table} where ${where}`, params);
          expect(rowCount, `${who.name} read A's row by id`).toBe(0);
        });
        await expectRefused(c, `${who.name} scanned`, granted, async () => {
          const { rows } = await c.query(`select ${columns} from ${table}`);
          const ids = aIds();
          const leaked = rows.filter(
            (r) => (spec.tenantKey && r[spec.tenantKey] === a.id) || ids.some((id) => JSON.stringify(r).includes(id)),
          );
          expect(leaked, `${who.name} saw A's rows in a full scan`).toEqual([]);
        });
      });
    }
  });

  it("tenant B cannot update or delete tenant A's rows: grants refuse, or RLS hides the row", async () => {
    const spec = specFor(table);
    for (const who of identities()) {
      await asRole(db.current, who, async (c) => {
        const { where, params } = spec.victim(a);
        const update = await updateFor(c, spec);
        for (const [granted, statement] of [
          [update.granted, `update ${table} set ${update.set} where ${where}`],
          [await deletable(c, table), `delete from ${table} where ${where}`],
        ] as const) {
          await expectRefused(c, `${who.name}: ${statement}`, granted, async () => {
            const { rowCount } = await c.query(statement, params);
            expect(rowCount, `${who.name}: ${statement}`).toBe(0);
          });
        }
      });
    }
  });

  // The refusals that prove nothing leaked: privilege or policy, a foreign key (restrict or no action), a check, a not-null,
  // and removing B's own last owner (LSTOW: B's owner deleting every membership it may, B's own included).
  // (A statement that reaches one of A's rows raises LEAK first: see installLeakTripwires.)
  const REFUSALS = ["42501", "23001", "23503", "23514", "23502", "LSTOW"];
  it("tenant B's UPDATE or DELETE without a WHERE clause touches B's rows at most", async () => {
    const spec = specFor(table);
    // Without a WHERE clause (and with a SET that reads no column) only the
    // UPDATE/DELETE policy stands between B and A's rows: the SELECT policy
    // that hides them from a filtered statement does not apply.
    const ownRows = await withRootDb(db.current, async (c) => {
      const own = spec.tenantKey
        ? `${spec.tenantKey} = $1`
        : "id in (select user_id from herald_public.memberships where tenant_id = $1)";
      return (await c.query<{ n: number }>(`select count(*)::int as n from ${table} where ${own}`, [b.id])).rows[0]!.n;
    });
    for (const who of identities()) {
      await asRole(db.current, who, async (c) => {
        const update = await updateFor(c, spec);
        for (const [granted, statement] of [
          [update.granted, `update ${table} set ${update.set}`],
          [await deletable(c, table), `delete from ${table}`],
        ] as const) {
          let touched = 0;
          const refused = await expectPgError(c, async () => {
            touched = (await c.query(statement)).rowCount ?? 0;
          });
          if (!granted) {
            // Not skipped: the catalog says the role lacks the privilege, and the grant must say so too.
            expect(refused?.message, `${who.name}: ${statement}`).toMatch(/permission denied/);
          } else if (refused) {
            // A refusal is fine (a WITH CHECK, a foreign key still in use); reaching A's rows is not.
            expect(REFUSALS, `${who.name}: ${statement}: ${refused.message}`).toContain(refused.code);
            // A key still referenced: it must be one of B's own.
            expect(refused.detail ?? "", `${who.name}: ${statement}`).not.toContain(a.id);
          } else expect(touched, `${who.name}: ${statement}`).toBeLessThanOrEqual(ownRows);
        }
      });
    }
  });

  it("tenant B cannot insert rows pointing into tenant A", async () => {
    const spec = specFor(table);
    for (const who of identities()) {
      await asRole(db.current, who, async (c) => {
        const { sql, params } = spec.insertInto(a, who.userId, b);
        // The layer that refuses: the grant when the role may not insert every column named, else the policy's WITH CHECK.
        const named = /\(([^)]*)\)\s+values/i
          .exec(sql)![1]!
          .split(",")
          .map((col) => col.trim());
        const { held } = await columnsHeld(c, table, "INSERT");
        const granted = named.every((col) => held.some((h) => h.name === col));
        const error = await expectPgError(c, () => c.query(sql, params));
        expect(error, `${who.name} inserted into A: ${sql}`).toBeDefined();
        expect(error!.message, `${who.name}: ${sql}`).toMatch(granted ? /row-level security/ : /permission denied/);
      });
    }
  });
});

describe("the leak tripwire", () => {
  it("raises LEAK for each of A's rows that a statement in B's session reaches, and not for the superuser's", async () => {
    // The superuser passes RLS: in B's name, its statements reach A's rows as a leak would.
    /** The error `statement` raises in the tenant `tenantId` names ('' for none); whatever it did is undone. */
    const raisedIn = async (c: pg.PoolClient, tenantId: string, statement: string, params: unknown[]) => {
      await c.query("savepoint attempt");
      try {
        await c.query("select set_config('jwt.claims.tenant_id', $1, true)", [tenantId]);
        await c.query(statement, params);
        return undefined;
      } catch (error) {
        return (error as { code?: string }).code;
      } finally {
        await c.query("rollback to savepoint attempt");
      }
    };
    for (const spec of exposedTables()
      .filter(hasFixture)
      .map(specFor)
      .filter((t) => t.tenantKey)) {
      await withRootDb(db.current, async (c) => {
        const { where, params } = spec.victim(a);
        const key = spec.tenantKey!;
        for (const statement of [
          `update ${spec.table} set ${key} = ${key} where ${where}`,
          `delete from ${spec.table} where ${where}`,
        ]) {
          expect(await raisedIn(c, b.id, statement, params), `in B's name: ${statement}`).toBe(LEAK);
          // It may fail for reasons of its own, but never trips the wire.
          expect(await raisedIn(c, "", statement, params), `as the superuser: ${statement}`).not.toBe(LEAK);
          expect(await raisedIn(c, a.id, statement, params), `in A's own name: ${statement}`).not.toBe(LEAK);
        }
      });
    }
  });
});
