import { SignJWT, UnsecuredJWT } from "jose";
import { beforeAll, describe, expect, it } from "vitest";
import { ROLES } from "../src/db/urls.ts";
import { graphql, tokenFor, useApiServer } from "./helpers/api.ts";
import { useTestDatabase, withRootDb } from "./helpers/db.ts";
import { seedExtraTenant, seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";

const db = useTestDatabase();
const api = useApiServer(db);
let a: TenantFixture;
let b: TenantFixture;

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
});

const secret = () => {
  const { jwt } = api.config;
  if (jwt.kind !== "hs256") throw new Error("tests expect HS256");
  return jwt.secret;
};

const signWith = (
  key: Uint8Array,
  claims: Record<string, unknown>,
  options: { expires?: string | number; audience?: string } = {},
) =>
  new SignJWT(claims)
    .setProtectedHeader({ alg: "HS256" })
    .setAudience(options.audience ?? "herald")
    .setExpirationTime(options.expires ?? "5m")
    .sign(key);

const QUERY = "{ allTenants { nodes { slug } } }";

describe("requests without a valid credential get 401 and no data", () => {
  const cases: Array<[string, () => Promise<string | undefined>, string]> = [
    ["no Authorization header", async () => undefined, "MISSING_TOKEN"],
    ["a garbage token", async () => "not-a-jwt", "INVALID_TOKEN"],
    [
      "a token signed with another secret",
      async () => signWith(new TextEncoder().encode("x".repeat(48)), { role: ROLES.member, tenant_id: a.id }),
      "INVALID_TOKEN",
    ],
    [
      "an expired token",
      async () =>
        signWith(secret(), { role: ROLES.member, tenant_id: a.id }, { expires: Math.floor(Date.now() / 1000) - 60 }),
      "TOKEN_EXPIRED",
    ],
    [
      "alg: none",
      async () =>
        new UnsecuredJWT({ role: ROLES.member, tenant_id: a.id })
          .setAudience("herald")
          .setExpirationTime("5m")
          .encode(),
      "INVALID_TOKEN",
    ],
    [
      "the wrong audience",
      async () => signWith(secret(), { role: ROLES.member, tenant_id: a.id }, { audience: "someone-else" }),
      "INVALID_TOKEN",
    ],
    [
      "no expiry",
      async () =>
        new SignJWT({ role: ROLES.member, tenant_id: a.id })
          .setProtectedHeader({ alg: "HS256" })
          .setAudience("herald")
          .sign(secret()),
      "INVALID_TOKEN",
    ],
    ["a member token without tenant_id", async () => signWith(secret(), { role: ROLES.member }), "INVALID_CLAIMS"],
    [
      "a role Herald does not grant",
      async () => signWith(secret(), { role: "herald_owner", tenant_id: a.id }),
      "INVALID_CLAIMS",
    ],
    [
      "a non-uuid tenant_id",
      async () => signWith(secret(), { role: ROLES.member, tenant_id: "1; drop table x" }),
      "INVALID_CLAIMS",
    ],
    ["an unknown API key", async () => `hk_${"0".repeat(48)}`, "INVALID_API_KEY"],
    ["a malformed API key", async () => "hk_short", "INVALID_API_KEY"],
  ];

  it.each(cases)("%s", async (_name, makeToken, code) => {
    const token = await makeToken();
    const { status, body } = await graphql(api.current, token, QUERY);
    expect(status).toBe(401);
    expect(body.data).toBeUndefined();
    expect(body.error?.code).toBe(code);
  });

  it("a non-Bearer Authorization header", async () => {
    const response = await fetch(`${api.current.url}/graphql`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: "Basic dXNlcjpwYXNz" },
      body: JSON.stringify({ query: QUERY }),
    });
    expect(response.status).toBe(401);
    expect(((await response.json()) as { error: { code: string } }).error.code).toBe("MALFORMED_AUTHORIZATION");
  });
});

describe("tenant API keys", () => {
  it("authenticate as their tenant and stamp last_used_at", async () => {
    const { status, body } = await graphql(api.current, a.apiKeySecret, QUERY);
    expect(status).toBe(200);
    expect(body.data).toEqual({ allTenants: { nodes: [{ slug: "tenant-a" }] } });
    await withRootDb(db.current, async (c) => {
      const { rows } = await c.query("select last_used_at from herald_public.api_keys where id = $1", [a.apiKeyId]);
      expect(rows[0].last_used_at).not.toBeNull();
    });
  });

  it("are created by a tenant owner with the secret shown once, and stop working when revoked", async () => {
    const ownerToken = await tokenFor(api.current, a, "owner");
    const created = await graphql(
      api.current,
      ownerToken,
      `
        mutation {
          createApiKey(input: { name: "ci" }) {
            result {
              apiKeyId
              secret
              tokenPrefix
            }
          }
        }
      `,
    );
    const { apiKeyId, secret: keySecret, tokenPrefix } = created.body.data!.createApiKey.result;
    expect(keySecret).toMatch(/^hk_[0-9a-f]{48}$/);
    expect(keySecret.startsWith(tokenPrefix)).toBe(true);

    // The secret is never readable again, and the stored hash is not exposed.
    const listed = await graphql(
      api.current,
      ownerToken,
      `
        {
          allApiKeys {
            nodes {
              rowId
              name
              tokenPrefix
            }
          }
        }
      `,
    );
    expect(JSON.stringify(listed.body)).not.toContain(keySecret);
    const hashField = await graphql(
      api.current,
      ownerToken,
      `
        {
          allApiKeys {
            nodes {
              secretHash
            }
          }
        }
      `,
    );
    expect(hashField.status).toBe(400);
    await withRootDb(db.current, async (c) => {
      const dump = await c.query("select to_jsonb(k)::text as row from herald_public.api_keys k where id = $1", [
        apiKeyId,
      ]);
      expect(dump.rows[0].row).not.toContain(keySecret.slice(3));
    });

    expect((await graphql(api.current, keySecret, QUERY)).status).toBe(200);
    const revoked = await graphql(
      api.current,
      ownerToken,
      `
        mutation ($id: UUID!) {
          revokeApiKey(input: { apiKeyId: $id }) {
            result {
              revokedAt
            }
          }
        }
      `,
      { id: apiKeyId },
    );
    expect(revoked.body.data!.revokeApiKey.result.revokedAt).toBeTruthy();
    const after = await graphql(api.current, keySecret, QUERY);
    expect(after.status).toBe(401);
    expect(after.body.error?.code).toBe("INVALID_API_KEY");
  });

  it("cannot be created by a plain member or by another API key", async () => {
    const memberToken = await tokenFor(api.current, a, "member");
    for (const token of [memberToken, a.apiKeySecret]) {
      const { body } = await graphql(
        api.current,
        token,
        `
          mutation {
            createApiKey(input: { name: "sneaky" }) {
              result {
                secret
              }
            }
          }
        `,
      );
      expect(body.data?.createApiKey ?? null).toBeNull();
      expect(body.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
    }
  });
});

describe("password login", () => {
  const login = (body: unknown) =>
    fetch(`${api.current.url}/auth/login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });

  it("returns a JWT for the user's membership that works against /graphql", async () => {
    const response = await login({ email: "OWNER@tenant-a.test", password: "tenant-a-password" });
    expect(response.status).toBe(200);
    const { token, tenant } = (await response.json()) as { token: string; tenant: { slug: string } };
    expect(tenant.slug).toBe("tenant-a");
    const { body } = await graphql(api.current, token, "{ currentUser { email } currentTenant { slug } }");
    expect(body.data).toEqual({ currentUser: { email: "owner@tenant-a.test" }, currentTenant: { slug: "tenant-a" } });
  });

  it.each([
    ["a wrong password", { email: "owner@tenant-a.test", password: "wrong-password" }],
    ["an unknown email", { email: "nobody@tenant-a.test", password: "tenant-a-password" }],
    [
      "a tenant the user is not in",
      { email: "owner@tenant-a.test", password: "tenant-a-password", tenant: "tenant-b" },
    ],
  ])("refuses %s with 401 and the same message", async (_name, body) => {
    const response = await login(body);
    expect(response.status).toBe(401);
    expect(await response.json()).toEqual({
      error: { code: "INVALID_CREDENTIALS", message: "Email, password or tenant is not right." },
    });
  });

  it("answers 400 naming the field for a malformed body", async () => {
    const response = await login({ email: "owner@tenant-a.test" });
    expect(response.status).toBe(400);
    expect(((await response.json()) as { error: { field: string } }).error.field).toBe("password");
  });
});

describe("a token outlives neither its membership nor its tenant's status", () => {
  it("is refused once the user leaves the tenant, and when its user belongs to another tenant", async () => {
    const leaver = await seedExtraTenant(db.current, "tenant-leaver");
    const token = await tokenFor(api.current, leaver, "member");
    expect((await graphql(api.current, token, QUERY)).status).toBe(200);
    await db.current.root.query("delete from herald_public.memberships where tenant_id = $1 and user_id = $2", [
      leaver.id,
      leaver.memberId,
    ]);
    const after = await graphql(api.current, token, QUERY);
    expect(after.status).toBe(401);
    expect(after.body.error?.code).toBe("NOT_A_MEMBER");

    // tenant A's id with tenant B's user: a signed but impossible combination
    const mixed = await api.current.authenticator.sign({ role: ROLES.member, tenant_id: a.id, sub: b.ownerId });
    expect((await graphql(api.current, mixed, QUERY)).status).toBe(401);
  });

  it("a suspended tenant's JWTs, API keys and logins stop working; resuming restores them", async () => {
    const paused = await seedExtraTenant(db.current, "tenant-paused");
    const token = await tokenFor(api.current, paused, "owner");
    const login = () =>
      fetch(`${api.current.url}/auth/login`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ email: "owner@tenant-paused.test", password: "tenant-paused-password" }),
      }).then((r) => r.status);
    const statuses = async () => [
      (await graphql(api.current, token, QUERY)).status,
      (await graphql(api.current, paused.apiKeySecret, QUERY)).status,
      await login(),
    ];
    expect(await statuses()).toEqual([200, 200, 200]);
    // (What suspend_tenant / resume_tenant write; a status and its timestamp go together.)
    await db.current.root.query(
      "update herald_public.tenants set status = 'suspended', suspended_at = now() where id = $1",
      [paused.id],
    );
    expect(await statuses()).toEqual([401, 401, 401]);
    await db.current.root.query(
      "update herald_public.tenants set status = 'active', suspended_at = null where id = $1",
      [paused.id],
    );
    expect(await statuses()).toEqual([200, 200, 200]);
  });
});
