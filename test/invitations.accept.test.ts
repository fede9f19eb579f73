import { beforeAll, describe, expect, it } from "vitest";
import { ROLES } from "../src/db/urls.ts";
import { createLogger } from "../src/logger.ts";
import { graphql, tokenFor, useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";

/**
 * POST /auth/accept-invitation (migration 080): a person invited, with no
 * Herald user yet, accepts with the token and a password of their own, and is
 * signed in to the tenant with the invited role. An existing user gives their
 * own password. Every refusal of the token (unknown, expired, withdrawn,
 * used) or of an existing user's password is one and the same answer.
 */

const lines: string[] = [];
const logger = createLogger("debug", { write: (line: string) => void lines.push(line) });
const db = useTestDatabase();
// The client address is X-Forwarded-For's, so that each test counts its attempts apart.
const api = useApiServer(db, { logger, env: () => ({ HERALD_TRUST_PROXY: "true" }) });
let a: TenantFixture;
let b: TenantFixture;

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
});

/** Every token and password a test sent: none may reach the logs. */
const secrets: string[] = [];

interface Answer {
  status: number;
  body: {
    token?: string;
    tenant?: { id: string; slug: string };
    role?: string;
    error?: { code: string; message: string; field?: string };
  };
}

const acceptInvitation = async (token: string, password: string, from = "198.51.100.1"): Promise<Answer> => {
  secrets.push(token, password);
  const response = await fetch(`${api.current.url}/auth/accept-invitation`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-forwarded-for": from },
    body: JSON.stringify({ token, password }),
  });
  return { status: response.status, body: (await response.json()) as Answer["body"] };
};

/** An invitation from the tenant's owner, through GraphQL: its id and token. */
const invite = async (t: TenantFixture, email: string, role = "member") => {
  const invited = await graphql(
    api.current,
    await tokenFor(api.current, t, "owner"),
    `
      mutation ($email: String!, $role: String) {
        inviteMember(input: { email: $email, role: $role }) {
          result {
            invitationId
            token
          }
        }
      }
    `,
    { email, role },
  );
  expect(invited.body.errors, JSON.stringify(invited.body)).toBeUndefined();
  const result = invited.body.data!.inviteMember.result as { invitationId: string; token: string };
  secrets.push(result.token);
  return result;
};

/** The tenant a JWT acts in, its user, and that user's role there (from the tenant's memberships). */
const whoAmI = async (token: string) => {
  const answer = await graphql(
    api.current,
    token,
    `
      {
        currentTenantId
        currentUser {
          rowId
          email
        }
        allMemberships {
          nodes {
            tenantId
            userId
            role
          }
        }
      }
    `,
  );
  const data = answer.body.data as
    | {
        currentTenantId: string;
        currentUser: { rowId: string; email: string };
        allMemberships: { nodes: Array<{ tenantId: string; userId: string; role: string }> };
      }
    | undefined;
  const role = data?.allMemberships.nodes.find(
    (m) => m.tenantId === data.currentTenantId && m.userId === data.currentUser.rowId,
  )?.role;
  return {
    status: answer.status,
    body: answer.body,
    tenantId: data?.currentTenantId,
    email: data?.currentUser.email,
    role,
  };
};

const pending = async (invitationId: string) =>
  (
    await db.current.root.query<{ pending: boolean }>(
      "select accepted_at is null and revoked_at is null as pending from herald_public.invitations where id = $1",
      [invitationId],
    )
  ).rows[0]!.pending;

const INVALID = {
  status: 404,
  body: {
    error: {
      code: "INVALID_INVITATION",
      message: "Invalid or expired invitation, or not the password of the account it was sent to.",
    },
  },
};

describe("POST /auth/accept-invitation", () => {
  it("a new person accepts with a password of their own: signed in to the tenant with the invited role, once", async () => {
    const email = `newcomer@${a.slug}.example`;
    const { token } = await invite(a, email, "admin");
    const password = "a-newcomer-passphrase";

    const accepted = await acceptInvitation(token, password);
    expect(accepted.status, JSON.stringify(accepted.body)).toBe(200);
    expect(accepted.body).toMatchObject({ tenant: { id: a.id, slug: a.slug }, role: "admin" });

    // The JWT works for GraphQL in A, as an admin.
    const me = await whoAmI(accepted.body.token!);
    expect(me.body.errors, JSON.stringify(me.body)).toBeUndefined();
    expect(me).toMatchObject({ tenantId: a.id, email, role: "admin" });

    // The password is now theirs: login works.
    const login = await fetch(`${api.current.url}/auth/login`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-forwarded-for": "198.51.100.1" },
      body: JSON.stringify({ email, password }),
    });
    expect(login.status).toBe(200);

    // The membership is in A's audit log, written by the invitation's trigger.
    const audit = await db.current.root.query(
      "select actor_detail from herald_public.audit_log where tenant_id = $1 and table_name = 'memberships' and action = 'insert' and record_id = $2",
      [a.id, (await db.current.root.query("select id from herald_public.users where email = $1", [email])).rows[0]!.id],
    );
    expect(audit.rows).toEqual([{ actor_detail: "accept-invitation" }]);

    // Single use, even with the right password.
    expect(await acceptInvitation(token, password)).toEqual(INVALID);
  });

  it("a wrong, expired, withdrawn or used token gets one and the same answer", async () => {
    const from = "198.51.100.2";
    const expired = await invite(a, `expired@${a.slug}.example`);
    await db.current.root.query(
      "update herald_public.invitations set expires_at = now() - interval '1 second' where id = $1",
      [expired.invitationId],
    );
    const withdrawn = await invite(a, `withdrawn@${a.slug}.example`);
    const revoked = await graphql(
      api.current,
      await tokenFor(api.current, a, "owner"),
      `
        mutation ($id: UUID!) {
          revokeInvitation(input: { invitationId: $id }) {
            result {
              revokedAt
            }
          }
        }
      `,
      { id: withdrawn.invitationId },
    );
    expect(revoked.body.errors).toBeUndefined();
    const used = await invite(a, `used@${a.slug}.example`);
    expect((await acceptInvitation(used.token, "the-first-passphrase", from)).status).toBe(200);

    const password = "any-long-passphrase";
    expect(await acceptInvitation("hi_" + "0".repeat(48), password, from)).toEqual(INVALID);
    expect(await acceptInvitation(used.token.slice(0, -1) + "x", password, from)).toEqual(INVALID);
    expect(await acceptInvitation(expired.token, password, from)).toEqual(INVALID);
    expect(await acceptInvitation(withdrawn.token, password, from)).toEqual(INVALID);
    expect(await acceptInvitation(used.token, password, from)).toEqual(INVALID);
    // Nobody was created for the refused ones.
    const users = await db.current.root.query("select email from herald_public.users where email like any ($1)", [
      [`expired@%`, `withdrawn@%`],
    ]);
    expect(users.rows).toEqual([]);
  });

  it("an existing user must give their own password: a wrong one is the same refusal and spends nothing", async () => {
    const from = "198.51.100.3";
    // B's owner (password `${slug}-password`) is invited to A.
    const { invitationId, token } = await invite(a, `owner@${b.slug}.test`, "member");
    expect(await acceptInvitation(token, "not-their-password", from)).toEqual(INVALID);
    expect(await pending(invitationId)).toBe(true);

    const accepted = await acceptInvitation(token, `${b.slug}-password`, from);
    expect(accepted.status, JSON.stringify(accepted.body)).toBe(200);
    expect(accepted.body).toMatchObject({ tenant: { id: a.id, slug: a.slug }, role: "member" });
    expect(await whoAmI(accepted.body.token!)).toMatchObject({ tenantId: a.id, role: "member" });
    // Still an owner of B, by a login naming it.
    const inB = await fetch(`${api.current.url}/auth/login`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-forwarded-for": from },
      body: JSON.stringify({ email: `owner@${b.slug}.test`, password: `${b.slug}-password`, tenant: b.slug }),
    });
    expect(((await inB.json()) as { role: string }).role).toBe("owner");
  });

  it("tenant A's invitation gives access to A only", async () => {
    const from = "198.51.100.4";
    const email = `only-a@${a.slug}.example`;
    const password = "only-in-tenant-a";
    const accepted = await acceptInvitation((await invite(a, email, "owner")).token, password, from);
    expect(accepted.status).toBe(200);
    expect(accepted.body.tenant!.id).toBe(a.id);
    const userId = (await db.current.root.query("select id from herald_public.users where email = $1", [email]))
      .rows[0]!.id as string;
    const memberships = await db.current.root.query(
      "select tenant_id, role from herald_public.memberships where user_id = $1",
      [userId],
    );
    expect(memberships.rows).toEqual([{ tenant_id: a.id, role: "owner" }]);

    // Signing in to B is refused, and a token naming B for this user is not accepted.
    const login = await fetch(`${api.current.url}/auth/login`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-forwarded-for": from },
      body: JSON.stringify({ email, password, tenant: b.slug }),
    });
    expect(login.status).toBe(401);
    const forB = await api.current.authenticator.sign({ role: ROLES.member, tenant_id: b.id, sub: userId });
    const inB = await whoAmI(forB);
    expect(inB.status).toBe(401);
    expect(inB.body.error?.code).toBe("NOT_A_MEMBER");
    // With A's token, B's rows stay out of sight.
    const tenants = await graphql(
      api.current,
      accepted.body.token!,
      `
        {
          allTenants {
            nodes {
              slug
            }
          }
        }
      `,
    );
    expect(tenants.body.data!.allTenants.nodes).toEqual([{ slug: a.slug }]);
  });

  it("a new person's password follows user create's rule, said before the token is looked at", async () => {
    const from = "198.51.100.5";
    const { invitationId, token } = await invite(a, `short@${a.slug}.example`);
    const weak = await acceptInvitation(token, "short", from);
    expect(weak.status).toBe(400);
    expect(weak.body.error?.code).toBe("WEAK_PASSWORD");
    expect(await pending(invitationId)).toBe(true);
    // An unknown token gets the same answer: a weak password tells nothing about the token.
    expect(await acceptInvitation("hi_" + "1".repeat(48), "short", from)).toEqual(weak);
    const missing = await fetch(`${api.current.url}/auth/accept-invitation`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-forwarded-for": from },
      body: JSON.stringify({ token }),
    });
    expect(missing.status).toBe(400);
    expect(((await missing.json()) as Answer["body"]).error).toMatchObject({
      code: "INVALID_INPUT",
      field: "password",
    });
  });

  it("a password-proven user who cannot join is told why: a platform operator's user, or one already a member", async () => {
    const from = "198.51.100.7";
    const user = async (email: string) => {
      const { rows } = await db.current.root.query<{ id: string }>(
        "insert into herald_public.users (email) values ($1) returning id",
        [email],
      );
      await db.current.root.query("select herald_private.set_user_password($1, 'their-own-passphrase')", [rows[0]!.id]);
      return rows[0]!.id;
    };
    const operatorId = await user("ops@herald.example");
    await db.current.root.query("select herald_private.register_operator($1)", [operatorId]);
    const forOperator = await invite(a, "ops@herald.example");
    expect(await acceptInvitation(forOperator.token, "not-the-passphrase", from)).toEqual(INVALID);
    const operator = await acceptInvitation(forOperator.token, "their-own-passphrase", from);
    expect(operator.status).toBe(403);
    expect(operator.body.error?.code).toBe("FORBIDDEN");
    expect(await pending(forOperator.invitationId)).toBe(true);

    const joinedId = await user(`joined-meanwhile@${a.slug}.example`);
    const forJoined = await invite(a, `joined-meanwhile@${a.slug}.example`);
    await db.current.root.query("select herald_private.grant_membership($1, $2, 'member')", [a.id, joinedId]);
    const joined = await acceptInvitation(forJoined.token, "their-own-passphrase", from);
    expect(joined.status).toBe(409);
    expect(joined.body.error?.code).toBe("ALREADY_MEMBER");
  });

  it("two acceptances of one token at once: one joins, the other gets the one refusal", async () => {
    const { token } = await invite(a, `twice@${a.slug}.example`);
    const answers = await Promise.all([
      // The same password, so that only the invitation's row lock tells the second it came too late.
      acceptInvitation(token, "one-passphrase-twice", "198.51.100.8"),
      acceptInvitation(token, "one-passphrase-twice", "198.51.100.9"),
    ]);
    expect(answers.map((answer) => answer.status).sort()).toEqual([200, 404]);
    expect(answers.find((answer) => answer.status === 404)).toEqual(INVALID);
  });

  it("is rate-limited as login is: ten tries a minute per token and address", async () => {
    const token = "hi_" + "2".repeat(48);
    // Counts are per minute of the database's clock: start early in one, so that all eleven fall in it.
    const { rows } = await db.current.root.query<{ left: number }>(
      "select 60 - extract(second from clock_timestamp())::float8 as left",
    );
    if (rows[0]!.left < 20) await new Promise((r) => setTimeout(r, (rows[0]!.left + 0.5) * 1000));
    const statuses: number[] = [];
    for (let i = 0; i < 11; i++)
      statuses.push((await acceptInvitation(token, "guessing-a-passphrase", "203.0.113.9")).status);
    expect(statuses).toEqual([...Array(10).fill(404), 429]);
  }, 60_000);

  it("nothing in the logs holds a token or a password", async () => {
    // One acceptance of each kind in this test too (the others' requests are in the same log).
    const from = "198.51.100.6";
    const { token } = await invite(a, `quiet@${a.slug}.example`);
    expect((await acceptInvitation(token, "no-log-passphrase-1", from)).status).toBe(200);
    expect((await acceptInvitation(token, "no-log-passphrase-2", from)).status).toBe(404);
    expect((await acceptInvitation(token, "short", from)).status).toBe(400);
    await new Promise((resolve) => setTimeout(resolve, 50)); // request lines are written on 'finish'
    expect(lines.filter((line) => line.includes('"path":"/auth/accept-invitation"')).length).toBeGreaterThan(20);
    const logged = lines.join("\n");
    for (const secret of secrets) expect(logged).not.toContain(secret);
  });
});
