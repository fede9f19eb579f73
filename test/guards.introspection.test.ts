import { buildClientSchema, getIntrospectionQuery, type IntrospectionQuery } from "graphql";
import { beforeAll, describe, expect, it } from "vitest";
import { MAX_SELECTIONS, MAX_TYPE_DEPTH } from "../src/api/limits.ts";
import { graphql, useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants } from "./helpers/fixtures.ts";

/**
 * Standard introspection (what GraphiQL, codegen, Postman and Apollo tools
 * send, built by graphql's own getIntrospectionQuery) is answered, with every
 * option; introspection stays bounded all the same.
 */

const db = useTestDatabase();
const api = useApiServer(db);
let key: string;

beforeAll(async () => {
  const { a } = await seedTwoTenants(db.current);
  key = a.apiKeySecret;
});

const ALL_OPTIONS = {
  descriptions: true,
  specifiedByUrl: true,
  inputValueDeprecation: true,
  schemaDescription: true,
  directiveIsRepeatable: true,
  oneOf: true,
};

async function introspect(options: Parameters<typeof getIntrospectionQuery>[0]) {
  const { status, body } = await graphql<IntrospectionQuery>(api.current, key, getIntrospectionQuery(options));
  return { status, body };
}

describe("getIntrospectionQuery()", () => {
  it.each([
    ["the defaults", {}],
    ["without descriptions", { descriptions: false }],
    ["every option", ALL_OPTIONS],
    [`every option and typeDepth ${MAX_TYPE_DEPTH}`, { ...ALL_OPTIONS, typeDepth: MAX_TYPE_DEPTH }],
    ["typeDepth 3", { typeDepth: 3 }],
  ])("is answered with %s, and builds the schema", async (_name, options) => {
    const { status, body } = await introspect(options);
    expect(body.errors).toBeUndefined();
    expect(status).toBe(200);
    const schema = buildClientSchema(body.data!);
    expect(Object.keys(schema.getQueryType()!.getFields())).toEqual(
      expect.arrayContaining(["allContacts", "currentTenant"]),
    );
    expect(schema.getMutationType()!.getFields().sendMessage).toBeDefined();
  });

  it("carries the descriptions when asked", async () => {
    const { body } = await introspect(ALL_OPTIONS);
    const schema = buildClientSchema(body.data!);
    const first = schema
      .getQueryType()!
      .getFields()
      .allContacts!.args.find((arg) => arg.name === "first");
    expect(first?.description).toMatch(/at most 1000/);
  });

  it("is answered from the start-up cache exactly as it is built anew", async () => {
    // The default query is answered from the cache filled at start-up; the same
    // operation under another text (a trailing comment) is built by Grafast.
    const cached = await graphql(api.current, key, getIntrospectionQuery());
    const built = await graphql(
      api.current,
      key,
      `
        ${getIntrospectionQuery()}
        # built anew
      `,
    );
    expect(cached.body.errors).toBeUndefined();
    expect(built.body.errors).toBeUndefined();
    expect(cached.body.data).toEqual(built.body.data);
  });
});

describe("introspection stays bounded", () => {
  it(`refuses a typeDepth over ${MAX_TYPE_DEPTH}`, async () => {
    const { body } = await introspect({ typeDepth: MAX_TYPE_DEPTH + 1 });
    expect(body.data ?? undefined).toBeUndefined();
    expect(body.errors?.[0]?.extensions?.code).toBe("DEPTH_LIMIT_EXCEEDED");
  });

  it("refuses types nested through fields over and over", async () => {
    let selection = "name";
    for (let i = 0; i < 4; i++) selection = `fields { type { ${selection} } }`;
    const { body } = await graphql(api.current, key, `{ __schema { types { ${selection} } } }`);
    expect(body.errors?.[0]?.extensions?.code).toBe("DEPTH_LIMIT_EXCEEDED");
  });

  it("refuses the whole introspection repeated through aliases", async () => {
    const full = getIntrospectionQuery();
    // The standard query's operation body, aliased ten times over.
    const body = full.slice(full.indexOf("__schema"), full.indexOf("fragment FullType"));
    const operation = body.slice(0, body.lastIndexOf("}"));
    const aliases = Array.from({ length: 10 }, (_, i) => `s${i}: ${operation}`).join("\n");
    const fragments = full.slice(full.indexOf("fragment FullType"));
    const response = await graphql(api.current, key, `query { ${aliases} } ${fragments}`);
    expect(response.body.data ?? undefined).toBeUndefined();
    expect(response.body.errors?.[0]?.message).toMatch(new RegExp(`more than ${MAX_SELECTIONS} fields`));
  });
});
