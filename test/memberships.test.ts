import { beforeAll, describe, expect, it } from "vitest";
import { ROLES } from "../src/db/urls.ts";
import { runCli } from "./helpers/cli.ts";
import { asRole, expectPgError, useTestDatabase, withRootDb } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";

/**
 * Operators and memberships: a membership is what lets a person sign in to a
 * tenant and read its decrypted PII, so an operator cannot write one from
 * psql, cannot grant one to its own user, and every grant lands in the
 * tenant's audit log.
 */

const db = useTestDatabase();
let a: TenantFixture;
let b: TenantFixture;
let operatorId: string;

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  operatorId = (
    await db.current.root.query("insert into herald_public.users (email) values ('ops@herald.test') returning id")
  ).rows[0].id;
});

const memberships = async (userId: string) =>
  (
    await db.current.root.query(
      "select tenant_id, role from herald_public.memberships where user_id = $1 order by tenant_id",
      [userId],
    )
  ).rows;

describe("operators and memberships", () => {
  it("herald_admin, as in psql, cannot insert, promote or delete a membership", async () => {
    await asRole(db.current, { role: ROLES.admin, userId: operatorId }, async (c) => {
      const insert = await expectPgError(c, () =>
        c.query("insert into herald_public.memberships (tenant_id, user_id, role) values ($1, $2, 'owner')", [
          a.id,
          operatorId,
        ]),
      );
      expect(insert?.code).toBe("42501");
      const promote = await expectPgError(c, () =>
        c.query("update herald_public.memberships set role = 'owner' where user_id = $1", [a.memberId]),
      );
      expect(promote?.code).toBe("42501");
      const remove = await expectPgError(c, () =>
        c.query("delete from herald_public.memberships where tenant_id = $1", [a.id]),
      );
      expect(remove?.code).toBe("42501");
      // Nor may it call the authenticator's helpers.
      const helper = await expectPgError(c, () =>
        c.query("select herald_private.grant_membership($1, $2, 'owner')", [a.id, operatorId]),
      );
      expect(helper?.code).toBe("42501");
    });
    expect(await memberships(operatorId)).toEqual([]);
  });

  it("the audited function refuses an operator's own user, registered or naming itself, and logs every grant in the tenant's audit log", async () => {
    await withRootDb(db.current, async (c) => {
      await c.query("set local role herald_authenticator");
      // An operator who names itself in the session's claims.
      await c.query("select set_config('jwt.claims.user_id', $1, true)", [operatorId]);
      const self = await expectPgError(c, () =>
        c.query("select herald_private.grant_membership($1, $2, 'owner')", [a.id, operatorId]),
      );
      expect(self?.code).toBe("OPSLF");
      await c.query("select set_config('jwt.claims.user_id', '', true)");
      // A user that admin tokens name is an operator's, whoever asks.
      await c.query("select herald_private.register_operator($1)", [operatorId]);
      const registered = await expectPgError(c, () =>
        c.query("select herald_private.grant_membership($1, $2, 'member')", [b.id, operatorId]),
      );
      expect(registered?.code).toBe("OPSLF");
      // A user who belongs to a tenant cannot become an operator's.
      const member = await expectPgError(c, () => c.query("select herald_private.register_operator($1)", [a.memberId]));
      expect(member?.code).toBe("OPMEM");

      // An ordinary grant goes through and is in A's audit log, as the operator's login.
      await c.query("select set_config('herald.actor_detail', 'support ticket 42', true)");
      await c.query("select herald_private.grant_membership($1, $2, 'admin')", [a.id, b.memberId]);
      await c.query("reset role");
      const { rows } = await c.query(
        `select actor_kind, db_user, actor_detail, action, record_id from herald_public.audit_log
          where tenant_id = $1 and table_name = 'memberships' order by id desc limit 1`,
        [a.id],
      );
      expect(rows).toEqual([
        {
          actor_kind: "operator",
          db_user: expect.any(String),
          actor_detail: "support ticket 42",
          action: "insert",
          record_id: b.memberId,
        },
      ]);
    });
  });

  it("`herald user create` still adds members; a user named by `herald token --admin` can never join a tenant", async () => {
    const created = await runCli(db.current, [
      "user",
      "create",
      "new-hire@tenant-a.test",
      "--tenant",
      a.slug,
      "--role",
      "admin",
    ]);
    expect(created.code, created.stderr).toBe(0);
    const newHire = (
      await db.current.root.query("select id from herald_public.users where email = 'new-hire@tenant-a.test'")
    ).rows[0].id;
    expect(await memberships(newHire)).toEqual([{ tenant_id: a.id, role: "admin" }]);

    const token = await runCli(db.current, ["token", "--admin", "--user", "night-shift@herald.test"]);
    expect(token.code, token.stderr).toBe(0);
    const selfGrant = await runCli(db.current, [
      "user",
      "create",
      "night-shift@herald.test",
      "--tenant",
      b.slug,
      "--role",
      "owner",
    ]);
    expect(selfGrant.code).not.toBe(0);
    expect(selfGrant.stderr).toContain("operators cannot make themselves members of a tenant");
    const nightShift = (
      await db.current.root.query("select id from herald_public.users where email = 'night-shift@herald.test'")
    ).rows[0].id;
    expect(await memberships(nightShift)).toEqual([]);
  }, 90_000); // four CLI processes, each opening the database
});
