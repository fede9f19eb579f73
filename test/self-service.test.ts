import type pg from "pg";
import { beforeAll, describe, expect, it } from "vitest";
import { enterSession } from "../src/db/session.ts";
import { ROLES } from "../src/db/urls.ts";
import { graphql, tokenFor, useApiServer } from "./helpers/api.ts";
import { expectPgError, useTestDatabase, withRootDb } from "./helpers/db.ts";
import { seedExtraTenant, seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";

/**
 * Tenant self-service (migration 070): owners and admins invite people by
 * email, the person invited accepts with the token while signed in (to any
 * tenant), owners change roles and remove members, users leave, operators
 * create tenants. All of it through row-level security as the request roles;
 * a tenant never loses its last owner; another tenant's invitation or member
 * looks like one that does not exist.
 */

const db = useTestDatabase();
const api = useApiServer(db);
let a: TenantFixture;
let b: TenantFixture;

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
});

/** One rolled-back transaction in which `as` switches request role and claims, as each request would. */
const scenario = <T>(fn: (c: pg.PoolClient, as: (who: Who) => Promise<void>) => Promise<T>) =>
  withRootDb(db.current, (c) =>
    fn(c, async (who) => {
      await c.query("reset role");
      await enterSession(c, who);
    }),
  );
type Who = Parameters<typeof enterSession>[1];
const ownerOf = (t: TenantFixture): Who => ({ role: ROLES.member, tenantId: t.id, userId: t.ownerId });
const memberOf = (t: TenantFixture): Who => ({ role: ROLES.member, tenantId: t.id, userId: t.memberId });
const apiKeyOf = (t: TenantFixture): Who => ({ role: ROLES.member, tenantId: t.id });

const invite = async (c: pg.PoolClient, email: string, role = "member") =>
  (
    await c.query<{ invitation_id: string; token: string; expires_at: Date }>(
      "select * from herald_public.invite_member($1, $2)",
      [email, role],
    )
  ).rows[0]!;
const accept = async (c: pg.PoolClient, token: string) =>
  (await c.query("select * from herald_public.accept_invitation($1)", [token])).rows[0];
const roleIn = async (c: pg.PoolClient, tenantId: string, userId: string) => {
  await c.query("reset role");
  const { rows } = await c.query("select role from herald_public.memberships where tenant_id = $1 and user_id = $2", [
    tenantId,
    userId,
  ]);
  return rows[0]?.role as string | undefined;
};

describe("invitations", () => {
  it("an owner invites; the token is kept only as a hash; the person invited accepts it once, signed in to another tenant", async () => {
    await scenario(async (c, as) => {
      await as(ownerOf(a));
      const created = await invite(c, `member@${b.slug}.test`, "admin");
      expect(created.token).toMatch(/^hi_[0-9a-f]{48}$/);
      const days = (created.expires_at.getTime() - Date.now()) / 86_400_000;
      expect(days).toBeGreaterThan(6.9);
      expect(days).toBeLessThanOrEqual(7);

      await c.query("reset role");
      const stored = await c.query(
        "select token_hash = public.digest($2, 'sha256') as hashed, presented_token from herald_public.invitations where id = $1",
        [created.invitation_id, created.token],
      );
      expect(stored.rows).toEqual([{ hashed: true, presented_token: null }]);

      // B's member, signed in to B, accepts: a membership of A with the invitation's role.
      await as(memberOf(b));
      expect(await accept(c, created.token)).toEqual({ tenant_id: a.id, tenant_slug: a.slug, role: "admin" });
      expect(await roleIn(c, a.id, b.memberId)).toBe("admin");
      // Single use.
      await as(memberOf(b));
      expect((await expectPgError(c, () => accept(c, created.token)))?.code).toBe("NTFND");

      // In A's audit log, as that user, the membership and the invitation.
      await c.query("reset role");
      const { rows } = await c.query(
        `select table_name, action, actor_kind, actor_id from herald_public.audit_log
          where tenant_id = $1 and table_name in ('memberships', 'invitations') and actor_kind = 'user' order by id`,
        [a.id],
      );
      expect(rows).toEqual([
        { table_name: "invitations", action: "insert", actor_kind: "user", actor_id: a.ownerId },
        { table_name: "memberships", action: "insert", actor_kind: "user", actor_id: b.memberId },
        { table_name: "invitations", action: "update", actor_kind: "user", actor_id: b.memberId },
      ]);
    });
  });

  it("refuses another email, an expired, withdrawn or replaced invitation, a guessed token, and an API key", async () => {
    await scenario(async (c, as) => {
      await as(ownerOf(a));
      const forMember = await invite(c, `member@${b.slug}.test`);
      const forOwner = await invite(c, `owner@${b.slug}.test`);
      // B's owner holds the token for B's member: not theirs.
      await as(ownerOf(b));
      expect((await expectPgError(c, () => accept(c, forMember.token)))?.code).toBe("NTFND");
      expect((await expectPgError(c, () => accept(c, "hi_" + "0".repeat(48))))?.code).toBe("NTFND");
      // Nor may they mark it accepted by hand, or present the wrong token for their own.
      const byHand = await c.query(
        "update herald_public.invitations set accepted_by = $1, presented_token = 'hi_guess' where id = $2",
        [b.ownerId, forOwner.invitation_id],
      );
      expect(byHand.rowCount).toBe(0); // the wrong token leaves it untouched
      const forMemberByHand = await c.query(
        "update herald_public.invitations set accepted_by = $1, presented_token = $2 where id = $3",
        [b.ownerId, forMember.token, forMember.invitation_id],
      );
      expect(forMemberByHand.rowCount).toBe(0); // not theirs: not even visible
      await as(apiKeyOf(b));
      expect((await expectPgError(c, () => accept(c, forOwner.token)))?.code).toBe("42501");

      // Withdrawn, then replaced by a new invitation, then expired.
      await as(ownerOf(a));
      await c.query("select herald_public.revoke_invitation($1)", [forOwner.invitation_id]);
      await as(ownerOf(b));
      expect((await expectPgError(c, () => accept(c, forOwner.token)))?.code).toBe("NTFND");
      await as(ownerOf(a));
      const first = await invite(c, `owner@${b.slug}.test`);
      const second = await invite(c, `owner@${b.slug}.test`);
      await as(ownerOf(b));
      expect((await expectPgError(c, () => accept(c, first.token)))?.code).toBe("NTFND");
      await c.query("reset role");
      await c.query("update herald_public.invitations set expires_at = now() - interval '1 second' where id = $1", [
        second.invitation_id,
      ]);
      await as(ownerOf(b));
      expect((await expectPgError(c, () => accept(c, second.token)))?.code).toBe("NTFND");
      expect(await roleIn(c, a.id, b.ownerId)).toBeUndefined();
    });
  });

  it("only owners and admins invite, only owners invite owners, and someone already a member is a conflict", async () => {
    await scenario(async (c, as) => {
      await as(memberOf(a));
      expect((await expectPgError(c, () => invite(c, "someone@example.test")))?.code).toBe("42501");
      // Nor by hand: the insert policy says the same.
      const byHand = await expectPgError(c, () =>
        c.query(
          "insert into herald_public.invitations (tenant_id, email, role, token_hash, invited_by) values ($1, 'x@example.test', 'member', '\\x00', $2)",
          [a.id, a.memberId],
        ),
      );
      expect(byHand?.code).toBe("42501");
      await as(apiKeyOf(a));
      expect((await expectPgError(c, () => invite(c, "someone@example.test")))?.code).toBe("42501");

      await as(ownerOf(a));
      await c.query("select herald_public.change_member_role($1, 'admin')", [a.memberId]);
      await as(memberOf(a)); // now an admin
      expect((await invite(c, "someone@example.test", "admin")).token).toBeTruthy();
      expect((await expectPgError(c, () => invite(c, "boss@example.test", "owner")))?.code).toBe("42501");
      expect((await expectPgError(c, () => invite(c, `owner@${a.slug}.test`)))?.code).toBe("23505");
    });
  });

  it("a platform operator's user cannot join by invitation either", async () => {
    await scenario(async (c, as) => {
      const { rows } = await c.query("insert into herald_public.users (email) values ('ops@herald.test') returning id");
      await c.query("select herald_private.register_operator($1)", [rows[0].id]);
      await as(ownerOf(a));
      const created = await invite(c, "ops@herald.test", "owner");
      // An operator who sets member claims naming itself, as from psql.
      await as({ role: ROLES.member, tenantId: b.id, userId: rows[0].id });
      expect((await expectPgError(c, () => accept(c, created.token)))?.code).toBe("OPSLF");
    });
  });
});

describe("members", () => {
  it("owners change roles and remove members; others may not; users leave", async () => {
    await scenario(async (c, as) => {
      await as(memberOf(a));
      const promote = await expectPgError(c, () =>
        c.query("select herald_public.change_member_role($1, 'owner')", [a.memberId]),
      );
      expect(promote?.code).toBe("42501");
      const evict = await expectPgError(c, () => c.query("select herald_public.remove_member($1)", [a.ownerId]));
      expect(evict?.code).toBe("42501");

      await as(ownerOf(a));
      const changed = await c.query("select role from herald_public.change_member_role($1, 'admin')", [a.memberId]);
      expect(changed.rows).toEqual([{ role: "admin" }]);
      expect(await roleIn(c, a.id, a.memberId)).toBe("admin");
      await as(ownerOf(a));
      await c.query("select herald_public.remove_member($1)", [a.memberId]);
      expect(await roleIn(c, a.id, a.memberId)).toBeUndefined();

      await as(memberOf(b));
      expect((await c.query("select herald_public.leave_tenant() as left")).rows).toEqual([{ left: true }]);
      expect(await roleIn(c, b.id, b.memberId)).toBeUndefined();
    });
  });

  it("a tenant keeps at least one owner: not demoted, removed or leaving, until another owner exists", async () => {
    await scenario(async (c, as) => {
      await as(ownerOf(a));
      const demote = await expectPgError(c, () =>
        c.query("select herald_public.change_member_role($1, 'member')", [a.ownerId]),
      );
      expect(demote?.code).toBe("LSTOW");
      expect((await expectPgError(c, () => c.query("select herald_public.leave_tenant()")))?.code).toBe("LSTOW");
      expect((await expectPgError(c, () => c.query("select herald_public.remove_member($1)", [a.ownerId])))?.code).toBe(
        "LSTOW",
      );
      // Nor by deleting the user, as an operator would.
      await c.query("reset role");
      expect(
        (await expectPgError(c, () => c.query("delete from herald_public.users where id = $1", [a.ownerId])))?.code,
      ).toBe("LSTOW");

      await as(ownerOf(a));
      await c.query("select herald_public.change_member_role($1, 'owner')", [a.memberId]);
      await c.query("select herald_public.leave_tenant()");
      expect(await roleIn(c, a.id, a.ownerId)).toBeUndefined();
      expect(await roleIn(c, a.id, a.memberId)).toBe("owner");
      // Deleting the tenant takes its last owner with it.
      await c.query("delete from herald_public.tenants where id = $1", [a.id]);
    });
  });
});

describe("the last owner, concurrently", () => {
  it("two owners demoting each other at once: the second waits for the first, then is refused", async () => {
    const c = await seedExtraTenant(db.current, "tenant-c");
    await db.current.root.query(
      "update herald_public.memberships set role = 'owner' where tenant_id = $1 and user_id = $2",
      [c.id, c.memberId],
    );
    const first = await db.current.authenticator.connect();
    const second = await db.current.authenticator.connect();
    try {
      await first.query("begin");
      await enterSession(first, ownerOf(c));
      await first.query("select herald_public.change_member_role($1, 'member')", [c.ownerId]);
      await second.query("begin");
      await enterSession(second, memberOf(c)); // the other owner
      let settled = false;
      const demotingSelf = second
        .query("select herald_public.change_member_role($1, 'member')", [c.memberId])
        .then(
          () => undefined,
          (error: { code?: string }) => error.code,
        )
        .finally(() => (settled = true));
      // Commit the first only once the second has either finished or is waiting for its lock.
      for (let waited = 0; !settled && waited < 100; waited++) {
        const waiting = await db.current.root.query(
          "select 1 from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'",
        );
        if (waiting.rowCount) break;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      await first.query("commit");
      expect(await demotingSelf).toBe("LSTOW");
      await second.query("rollback");
    } finally {
      await first.query("rollback").catch(() => undefined);
      first.release();
      second.release();
    }
    const owners = await db.current.root.query(
      "select user_id from herald_public.memberships where tenant_id = $1 and role = 'owner'",
      [c.id],
    );
    expect(owners.rows).toEqual([{ user_id: c.memberId }]);
  });
});

describe("isolation", () => {
  it("tenant B cannot see, withdraw or accept A's invitations, nor change or remove A's members, in SQL", async () => {
    await scenario(async (c, as) => {
      await as(ownerOf(a));
      const created = await invite(c, "new@example.test");
      await as(ownerOf(b));
      expect((await c.query("select id from herald_public.invitations")).rows).toEqual([]);
      expect(
        (await expectPgError(c, () => c.query("select herald_public.revoke_invitation($1)", [created.invitation_id])))
          ?.code,
      ).toBe("NTFND");
      expect(
        (
          await c.query("update herald_public.invitations set revoked_at = now() where id = $1", [
            created.invitation_id,
          ])
        ).rowCount,
      ).toBe(0);
      expect((await expectPgError(c, () => accept(c, created.token)))?.code).toBe("NTFND");
      expect(
        (await expectPgError(c, () => c.query("select herald_public.change_member_role($1, 'owner')", [a.memberId])))
          ?.code,
      ).toBe("NTFND");
      expect(
        (await expectPgError(c, () => c.query("select herald_public.remove_member($1)", [a.memberId])))?.code,
      ).toBe("NTFND");
      expect((await c.query("delete from herald_public.memberships where tenant_id = $1", [a.id])).rowCount).toBe(0);
      expect(await roleIn(c, a.id, a.memberId)).toBe("member");
      const pending = await c.query("select revoked_at from herald_public.invitations where id = $1", [
        created.invitation_id,
      ]);
      expect(pending.rows).toEqual([{ revoked_at: null }]);
    });
  });

  it("through GraphQL: B's owner gets NOT_FOUND for A's invitation and member, and sees none of A's invitations", async () => {
    const aOwner = await tokenFor(api.current, a, "owner");
    const bOwner = await tokenFor(api.current, b, "owner");
    const created = await graphql(
      api.current,
      aOwner,
      `
        mutation {
          inviteMember(input: { email: "graphql@example.test", role: "member" }) {
            result {
              invitationId
              token
            }
          }
        }
      `,
    );
    expect(created.body.errors, JSON.stringify(created.body)).toBeUndefined();
    const { invitationId, token } = created.body.data!.inviteMember.result;

    const listed = await graphql(
      api.current,
      bOwner,
      `
        {
          allInvitations {
            nodes {
              rowId
            }
          }
        }
      `,
    );
    expect(listed.body.data!.allInvitations.nodes).toEqual([]);
    const own = await graphql(
      api.current,
      aOwner,
      `
        {
          allInvitations {
            nodes {
              rowId
              email
            }
          }
        }
      `,
    );
    expect(own.body.data!.allInvitations.nodes).toEqual([{ rowId: invitationId, email: "graphql@example.test" }]);

    const revoke = await graphql(
      api.current,
      bOwner,
      `
        mutation ($id: UUID!) {
          revokeInvitation(input: { invitationId: $id }) {
            result {
              rowId
            }
          }
        }
      `,
      { id: invitationId },
    );
    expect(revoke.body.errors?.[0]?.extensions?.code, JSON.stringify(revoke.body)).toBe("NOT_FOUND");
    const acceptIt = await graphql(
      api.current,
      bOwner,
      `
        mutation ($token: String!) {
          acceptInvitation(input: { token: $token }) {
            result {
              tenantSlug
            }
          }
        }
      `,
      { token },
    );
    expect(acceptIt.body.errors?.[0]?.extensions?.code).toBe("NOT_FOUND");
    const remove = await graphql(
      api.current,
      bOwner,
      `
        mutation ($id: UUID!) {
          removeMember(input: { userId: $id }) {
            result
          }
        }
      `,
      { id: a.memberId },
    );
    expect(remove.body.errors?.[0]?.extensions?.code).toBe("NOT_FOUND");
    // A's only owner cannot leave it without an owner: a designed code, not INTERNAL.
    const leave = await graphql(
      api.current,
      aOwner,
      `
        mutation {
          leaveTenant(input: {}) {
            clientMutationId
          }
        }
      `,
    );
    expect(leave.body.errors?.[0]?.extensions?.code, JSON.stringify(leave.body)).toBe("LAST_OWNER");

    // A's owner withdraws it: the same mutation works in its own tenant.
    const withdrawn = await graphql(
      api.current,
      aOwner,
      `
        mutation ($id: UUID!) {
          revokeInvitation(input: { invitationId: $id }) {
            result {
              rowId
              revokedAt
            }
          }
        }
      `,
      { id: invitationId },
    );
    expect(withdrawn.body.errors).toBeUndefined();
    expect(withdrawn.body.data!.revokeInvitation.result.revokedAt).toBeTruthy();
  });

  it("through GraphQL: the person invited accepts, signed in to their own tenant, then acts in the new one", async () => {
    const invited = await graphql(
      api.current,
      await tokenFor(api.current, a, "owner"),
      `mutation { inviteMember(input: { email: "member@${b.slug}.test" }) { result { token role } } }`,
    );
    expect(invited.body.errors).toBeUndefined();
    expect(invited.body.data!.inviteMember.result.role).toBe("member");
    const accepted = await graphql(
      api.current,
      await tokenFor(api.current, b, "member"),
      `
        mutation ($token: String!) {
          acceptInvitation(input: { token: $token }) {
            result {
              tenantId
              tenantSlug
              role
            }
          }
        }
      `,
      { token: invited.body.data!.inviteMember.result.token },
    );
    expect(accepted.body.errors).toBeUndefined();
    expect(accepted.body.data!.acceptInvitation.result).toEqual({ tenantId: a.id, tenantSlug: a.slug, role: "member" });
    // A token for A now works for that user (the API checks the membership on every request).
    const inA = await api.current.authenticator.sign({ role: ROLES.member, tenant_id: a.id, sub: b.memberId });
    const left = await graphql(
      api.current,
      inA,
      `
        mutation {
          leaveTenant(input: {}) {
            result
          }
        }
      `,
    );
    expect(left.body.errors).toBeUndefined();
    expect(left.body.data!.leaveTenant.result).toBe(true);
    expect(
      (
        await graphql(
          api.current,
          inA,
          `
            {
              currentTenantId
            }
          `,
        )
      ).status,
    ).toBe(401);
  });

  it("through GraphQL: operators create tenants, members may not", async () => {
    const admin = await api.current.authenticator.sign({ role: ROLES.admin });
    const query = `mutation { createTenant(input: { slug: "made-by-ops", name: "Made by ops" }) { result { slug } } }`;
    const byMember = await graphql(api.current, await tokenFor(api.current, a, "owner"), query);
    expect(byMember.body.errors?.[0]?.extensions?.code, JSON.stringify(byMember.body)).toBe("FORBIDDEN");
    const byAdmin = await graphql(api.current, admin, query);
    expect(byAdmin.body.errors).toBeUndefined();
    expect(byAdmin.body.data!.createTenant.result).toEqual({ slug: "made-by-ops" });
  });
});
