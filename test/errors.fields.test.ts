import { getIntrospectionQuery, type IntrospectionQuery } from "graphql";
import { beforeAll, describe, expect, it } from "vitest";
import { CONSTRAINT_FIELDS, NOT_FROM_INPUT } from "../src/api/constraint-fields.ts";
import { graphql, useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";

/**
 * Errors name the GraphQL input field a constraint checks, not the constraint
 * (issue: an email template without a subject said `templates_email_subject`).
 * Every check, unique, primary-key, foreign-key and exclusion constraint, and
 * every unique index, on the tables GraphQL exposes has a field in
 * src/api/constraint-fields.ts, or a reason why no input can violate it.
 */

const db = useTestDatabase();
const api = useApiServer(db);
let a: TenantFixture;

beforeAll(async () => {
  ({ a } = await seedTwoTenants(db.current));
});

interface CatalogConstraint {
  name: string;
  table: string;
  kind: string;
  definition: string;
}

async function exposedConstraints(): Promise<CatalogConstraint[]> {
  const { rows } = await db.current.root.query<CatalogConstraint>(
    `select con.conname as name, c.relname as table,
            case con.contype when 'c' then 'check' when 'u' then 'unique' when 'p' then 'primary key'
                             when 'f' then 'foreign key' else 'exclusion' end as kind,
            pg_get_constraintdef(con.oid) as definition
       from pg_constraint con
       join pg_class c on c.oid = con.conrelid
       join pg_namespace n on n.oid = c.relnamespace
      where n.nspname = 'herald_public' and con.contype in ('c', 'u', 'p', 'f', 'x')
     union all
     -- A unique index that backs no constraint raises 23505 with its own name.
     select i.relname, c.relname, 'unique index', pg_get_indexdef(i.oid)
       from pg_index x
       join pg_class i on i.oid = x.indexrelid
       join pg_class c on c.oid = x.indrelid
       join pg_namespace n on n.oid = c.relnamespace
      where n.nspname = 'herald_public' and x.indisunique
        and not exists (select 1 from pg_constraint con where con.conindid = x.indexrelid)
      order by 2, 1`,
  );
  return rows;
}

describe("the constraint map", () => {
  it("has every constraint of the exposed tables, as a field or with a reason no input reaches it", async () => {
    const constraints = await exposedConstraints();
    expect(constraints.length).toBeGreaterThan(100);
    const missing = constraints.filter(({ name }) => !(name in CONSTRAINT_FIELDS) && !(name in NOT_FROM_INPUT));
    const toAdd = missing.map(
      ({ name, table, kind, definition }) =>
        `  ${name}: "<GraphQL input field>", // ${kind} on ${table}: ${definition.slice(0, 100)}`,
    );
    expect(
      missing.map(({ name }) => name),
      `Constraints without a mapping. Add each to CONSTRAINT_FIELDS in src/api/constraint-fields.ts ` +
        `(the GraphQL input field it checks), or to NOT_FROM_INPUT with the reason no input can violate it:\n` +
        toAdd.join("\n"),
    ).toEqual([]);
  });

  it("names no constraint the database does not have, and none in both lists", async () => {
    const names = new Set((await exposedConstraints()).map(({ name }) => name));
    const stale = [...Object.keys(CONSTRAINT_FIELDS), ...Object.keys(NOT_FROM_INPUT)].filter(
      (name) => !names.has(name),
    );
    expect(stale, "remove these from src/api/constraint-fields.ts (no such constraint any more)").toEqual([]);
    const both = Object.keys(CONSTRAINT_FIELDS).filter((name) => name in NOT_FROM_INPUT);
    expect(both).toEqual([]);
  });

  it("maps only to fields the GraphQL schema takes as input", async () => {
    const { body } = await graphql<IntrospectionQuery>(api.current, a.apiKeySecret, getIntrospectionQuery());
    const inputNames = new Set<string>();
    for (const type of body.data!.__schema.types) {
      if (type.kind === "INPUT_OBJECT") for (const field of type.inputFields) inputNames.add(field.name);
      if (type.kind === "OBJECT")
        for (const field of type.fields) for (const arg of field.args) inputNames.add(arg.name);
    }
    const unknown = Object.entries(CONSTRAINT_FIELDS).filter(([, field]) => !inputNames.has(field));
    expect(unknown).toEqual([]);
  });
});

describe("errors name the input field", () => {
  const createTemplate = (template: Record<string, unknown>) =>
    graphql(
      api.current,
      a.apiKeySecret,
      `
        mutation ($template: TemplateInput!) {
          createTemplate(input: { template: $template }) {
            template {
              rowId
            }
          }
        }
      `,
      { template },
    );

  it("an email template without a subject: `subject`", async () => {
    const { body } = await createTemplate({ name: "no subject", channel: "email", body: "Hello" });
    expect(body.errors?.[0]?.extensions).toMatchObject({ code: "INVALID_INPUT", field: "subject" });
    expect(body.errors?.[0]?.message).toMatch(/^`subject`/);
    expect(JSON.stringify(body)).not.toMatch(/templates_/);
  });

  it("a template on channel fax: `channel`", async () => {
    const { body } = await createTemplate({ name: "fax", channel: "fax", body: "Hello" });
    expect(body.errors?.[0]?.extensions).toMatchObject({ code: "INVALID_INPUT", field: "channel" });
    expect(JSON.stringify(body)).not.toMatch(/templates_/);
  });

  it("a tag the contact already has: `tagId`", async () => {
    const { body } = await graphql(
      api.current,
      a.apiKeySecret,
      `
        mutation ($contactId: UUID!, $tagId: UUID!) {
          createContactTag(input: { contactTag: { contactId: $contactId, tagId: $tagId } }) {
            contactTag {
              tagId
            }
          }
        }
      `,
      { contactId: a.contactId, tagId: a.tagId },
    );
    expect(body.errors?.[0]?.extensions).toMatchObject({ code: "CONFLICT", field: "tagId" });
    expect(JSON.stringify(body)).not.toMatch(/contact_tags_/);
  });

  it("a name already taken: `name`", async () => {
    const first = await createTemplate({ name: "twice", channel: "sms", body: "Hello" });
    expect(first.body.errors).toBeUndefined();
    const { body } = await createTemplate({ name: "twice", channel: "sms", body: "Hello again" });
    expect(body.errors?.[0]?.extensions).toMatchObject({ code: "CONFLICT", field: "name" });
  });
});
