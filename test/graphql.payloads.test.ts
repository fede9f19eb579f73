import { getIntrospectionQuery, type IntrospectionObjectType, type IntrospectionQuery } from "graphql";
import { beforeAll, describe, expect, it } from "vitest";
import { graphql, tokenFor, useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";

/**
 * Mutation payloads follow one convention (src/api/payload-names-plugin.ts):
 * the object a mutation returns is the field named after its type, in
 * camelCase; older names stay, deprecated, and answer the same.
 */

const db = useTestDatabase();
const api = useApiServer(db);
let a: TenantFixture;

beforeAll(async () => {
  ({ a } = await seedTwoTenants(db.current));
});

const lowerFirst = (name: string) => name.charAt(0).toLowerCase() + name.slice(1);

describe("mutation payloads", () => {
  it("name every returned object after its type; other object fields are deprecated", async () => {
    const token = await tokenFor(api.current, a, "owner");
    const { body } = await graphql(api.current, token, getIntrospectionQuery());
    const schema = body.data as unknown as IntrospectionQuery;
    const types = new Map(schema.__schema.types.map((t) => [t.name, t]));
    const mutation = types.get(schema.__schema.mutationType!.name) as IntrospectionObjectType;
    const misnamed: string[] = [];
    for (const field of mutation.fields) {
      let ref = field.type;
      while (ref.kind === "NON_NULL" || ref.kind === "LIST") ref = ref.ofType;
      const payload = types.get(ref.name) as IntrospectionObjectType;
      for (const f of payload.fields.filter((f) => !f.isDeprecated && f.name !== "query")) {
        let t = f.type;
        while (t.kind === "NON_NULL" || t.kind === "LIST") t = t.ofType;
        // Objects only (scalars are `result`, ids `deleted…Id`); edges and count summaries are not returned objects.
        if (t.kind !== "OBJECT" || t.name.endsWith("Edge") || payload.name === "UpsertContactsPayload") continue;
        if (f.name !== lowerFirst(t.name)) misnamed.push(`${payload.name}.${f.name}: ${t.name}`);
      }
    }
    expect(misnamed).toEqual([]);
  });

  it("answer the same through the deprecated name", async () => {
    const token = await tokenFor(api.current, a, "owner");
    const { body } = await graphql(
      api.current,
      token,
      `
        mutation {
          createApiKey(input: { name: "payload names" }) {
            createdApiKey {
              apiKeyId
              secret
            }
            result {
              apiKeyId
              secret
            }
          }
        }
      `,
    );
    expect(body.errors).toBeUndefined();
    const payload = body.data!.createApiKey;
    expect(payload.createdApiKey.secret).toMatch(/^hk_/);
    expect(payload.result).toEqual(payload.createdApiKey);
  });
});
