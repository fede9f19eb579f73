import { beforeAll, describe, expect, it } from "vitest";
import { MAX_PAGE_SIZE } from "../src/api/guards.ts";
import { graphql, tokenFor, useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";

/** Abuse limits and error hygiene of the GraphQL endpoint (production mode). */

const db = useTestDatabase();
const api = useApiServer(db);
let a: TenantFixture;
let token: string;

beforeAll(async () => {
  ({ a } = await seedTwoTenants(db.current));
  token = await tokenFor(api.current, a, "owner");
});

describe("page size", () => {
  it(`accepts first: ${MAX_PAGE_SIZE}`, async () => {
    const { status, body } = await graphql(
      api.current,
      token,
      `{ allApiKeys(first: ${MAX_PAGE_SIZE}) { totalCount } }`,
    );
    expect(status).toBe(200);
    expect(body.data).toEqual({ allApiKeys: { totalCount: 1 } });
  });

  it(`refuses a literal first: ${MAX_PAGE_SIZE + 1}`, async () => {
    const { body } = await graphql(api.current, token, `{ allApiKeys(first: ${MAX_PAGE_SIZE + 1}) { totalCount } }`);
    expect(body.data).toBeUndefined();
    expect(body.errors?.[0]?.message).toContain(`at most ${MAX_PAGE_SIZE}`);
  });

  it("refuses a page size passed as a variable", async () => {
    const { status, body } = await graphql(
      api.current,
      token,
      `
        query ($n: Int) {
          allUsers(last: $n) {
            totalCount
          }
        }
      `,
      { n: 5000 },
    );
    expect(status).toBe(400);
    expect(body.data ?? null).toBeNull();
    expect(body.errors?.[0]?.message).toContain(`at most ${MAX_PAGE_SIZE}`);
  });
});

it("refuses a page size hidden in a variable's default value", async () => {
  const { status, body } = await graphql(
    api.current,
    token,
    `
      query ($n: Int = 5000) {
        allUsers(first: $n) {
          totalCount
        }
      }
    `,
  );
  expect(status).toBe(400);
  expect(body.errors?.[0]?.message).toContain(`at most ${MAX_PAGE_SIZE}`);
});

describe("operation size", () => {
  it("refuses an over-deep query", async () => {
    let selection = "rowId";
    for (let i = 0; i < 8; i++) selection = `tenantByTenantId { apiKeysByTenantId { nodes { ${selection} } } }`;
    const { body } = await graphql(api.current, token, `{ allApiKeys { nodes { ${selection} } } }`);
    expect(body.data).toBeUndefined();
    expect(body.errors?.[0]?.message).toMatch(/depth/i);
  });

  it("refuses a query that repeats a field through thousands of aliases", async () => {
    const aliases = Array.from({ length: 1200 }, (_, i) => `a${i}: currentTenantId`).join(" ");
    const { body } = await graphql(api.current, token, `{ ${aliases} }`);
    expect(body.data).toBeUndefined();
    expect(body.errors?.[0]?.message).toMatch(/more than \d+ fields/);
  });

  it("counts a fragment's fields each time it is spread", async () => {
    // 40 fields, spread 30 times: 1,200 selections in a document of 70 lines.
    const fields = Array.from({ length: 40 }, (_, i) => `f${i}: currentTenantId`).join(" ");
    const spreads = Array.from({ length: 30 }, (_, i) => `s${i}: currentTenant { ...F }`).join(" ");
    const fragment = `fragment F on Tenant { ${fields.replaceAll("currentTenantId", "name")} }`;
    const { body } = await graphql(api.current, token, `{ ${spreads} } ${fragment}`);
    expect(body.data).toBeUndefined();
    expect(body.errors?.[0]?.message).toMatch(/more than \d+ fields/);
    // The same fragment spread a few times is an ordinary query.
    const few = Array.from({ length: 3 }, (_, i) => `s${i}: currentTenant { ...F }`).join(" ");
    const allowed = await graphql(api.current, token, `{ ${few} } ${fragment}`);
    expect(allowed.body.errors).toBeUndefined();
    expect(allowed.body.data!.s0.f0).toBe("Tenant A");
  });

  it("refuses a request body over the limit with 413", async () => {
    const response = await fetch(`${api.current.url}/graphql`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: JSON.stringify({ query: `{ currentTenantId }`, variables: { pad: "x".repeat(200_000) } }),
    });
    expect(response.status).toBe(413);
  });
});

it("serves no GraphiQL in production", async () => {
  expect((await fetch(`${api.current.url}/graphiql`)).status).toBe(404);
});

describe("errors", () => {
  it("say what is wrong with an input, naming the field, without SQL", async () => {
    const { body } = await graphql(
      api.current,
      token,
      `
        mutation ($id: UUID!) {
          updateTenantSettingByTenantId(input: { tenantId: $id, tenantSettingPatch: { timezone: "Mars/Olympus" } }) {
            tenantSetting {
              timezone
            }
          }
        }
      `,
      { id: a.id },
    );
    const error = body.errors?.[0];
    expect(error?.extensions).toMatchObject({ code: "INVALID_INPUT", field: "timezone" });
    expect(error?.message).toContain("Mars/Olympus");
  });

  it("do not leak SQL, constraint internals or stack traces in production", async () => {
    const { body } = await graphql(
      api.current,
      token,
      `
        mutation ($id: UUID!) {
          updateTenantSettingByTenantId(input: { tenantId: $id, tenantSettingPatch: { rateBatchSize: -5 } }) {
            tenantSetting {
              rateBatchSize
            }
          }
        }
      `,
      { id: a.id },
    );
    const text = JSON.stringify(body);
    expect(body.errors?.[0]?.extensions?.code).toBe("INVALID_INPUT");
    expect(text).not.toMatch(/herald_public|select |update |stack|\.ts:|node_modules/i);
  });
});
