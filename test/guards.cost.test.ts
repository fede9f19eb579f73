import { beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_PAGE_SIZE, MAX_ESTIMATED_NODES, MAX_FETCHED_BYTES, MAX_PAGE_SIZE } from "../src/api/limits.ts";
import { graphql, useApiServer } from "./helpers/api.ts";
import { seedManyContacts } from "./helpers/bulk.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";

/**
 * The cost limit (issue: one tenant's query took the API process down): every
 * connection has a default and a maximum page, an operation's estimated node
 * count is bounded before it runs (literal and variable page sizes, aliases,
 * fragments), and a data budget holds where the estimate is low. Also: a
 * negative count or a NUL character is INVALID_INPUT, not INTERNAL.
 */

const CONTACTS = 1500;
const db = useTestDatabase();
const api = useApiServer(db);
let a: TenantFixture;
let b: TenantFixture;
let key: string;

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  key = a.apiKeySecret;
  await seedManyContacts(db.current, a.id, { contacts: CONTACTS });
});

const codeOf = (body: { errors?: Array<{ extensions?: Record<string, unknown> }> }) => body.errors?.[0]?.extensions?.code;

describe("page sizes", () => {
  it(`a connection without first or last returns the first ${DEFAULT_PAGE_SIZE} rows, and says there are more`, async () => {
    const { body } = await graphql(api.current, key, `{ allContacts { totalCount pageInfo { hasNextPage } nodes { rowId } } }`);
    expect(body.errors).toBeUndefined();
    expect(body.data!.allContacts.totalCount).toBe(CONTACTS + 1);
    expect(body.data!.allContacts.nodes).toHaveLength(DEFAULT_PAGE_SIZE);
    expect(body.data!.allContacts.pageInfo.hasNextPage).toBe(true);
  });

  it("a null page size, literal or variable, is the default page too", async () => {
    const literal = await graphql(api.current, key, `{ allContacts(first: null) { nodes { rowId } } }`);
    expect(literal.body.data!.allContacts.nodes).toHaveLength(DEFAULT_PAGE_SIZE);
    const variable = await graphql(api.current, key, `query($n: Int) { allContacts(first: $n) { nodes { rowId } } }`, { n: null });
    expect(variable.body.data!.allContacts.nodes).toHaveLength(DEFAULT_PAGE_SIZE);
  });

  it("nested connections default too", async () => {
    const { body } = await graphql(api.current, key, `{ allLists(first: 10) { nodes { name members { totalCount nodes { contactId } } } } }`);
    expect(body.errors).toBeUndefined();
    const bulk = body.data!.allLists.nodes.find((list: { name: string }) => list.name === "bulk");
    expect(bulk.members.totalCount).toBe(CONTACTS + 1);
    expect(bulk.members.nodes).toHaveLength(DEFAULT_PAGE_SIZE);
  });

  it("first, last, and both, still mean what they say", async () => {
    const { body } = await graphql(
      api.current,
      key,
      `{ f: allContacts(first: 3, orderBy: ROW_ID_ASC) { nodes { rowId } }
         l: allContacts(last: 2, orderBy: ROW_ID_ASC) { nodes { rowId } }
         d: allContacts(first: 2, orderBy: ROW_ID_DESC) { nodes { rowId } }
         fl: allContacts(first: 3, last: 1, orderBy: ROW_ID_ASC) { nodes { rowId } }
         all: allContacts(first: ${MAX_PAGE_SIZE}) { nodes { rowId } } }`,
    );
    expect(body.errors).toBeUndefined();
    expect(body.data!.f.nodes).toHaveLength(3);
    // The last two of all rows, not of a default first page.
    expect(body.data!.l.nodes).toEqual([...body.data!.d.nodes].reverse());
    expect(body.data!.fl.nodes).toEqual([body.data!.f.nodes[2]]);
    expect(body.data!.all.nodes).toHaveLength(MAX_PAGE_SIZE);
  });
});

describe("the node estimate", () => {
  it("refuses the issue's query, nested lists without first, before it runs", async () => {
    const { body } = await graphql(
      api.current,
      key,
      `{ allContacts { nodes { listMemberships { nodes { list { members { nodes { contact { firstName } } } } } } } } }`,
    );
    expect(body.data ?? undefined).toBeUndefined();
    expect(body.errors).toHaveLength(1);
    expect(body.errors![0]!.extensions).toMatchObject({ code: "NODE_LIMIT_EXCEEDED", limit: MAX_ESTIMATED_NODES });
    expect(body.errors![0]!.message).toContain(`the limit is ${MAX_ESTIMATED_NODES}`);
  });

  it("refuses first: 1000 nested three deep", async () => {
    const { body } = await graphql(
      api.current,
      key,
      `{ allContacts(first: 1000) { nodes { contactTags(first: 1000) { nodes { tag { contactTags(first: 1000) { nodes { contactId } } } } } } } }`,
    );
    expect(codeOf(body)).toBe("NODE_LIMIT_EXCEEDED");
    expect(body.errors![0]!.extensions!.estimate).toBe(1000 + 1000 * 1000 + 1000 * 1000 * 1000);
  });

  it("counts aliases and fragment spreads", async () => {
    // 60 aliases of a page of 1,000: each alone is fine, together 60,000 nodes, over the limit.
    const aliases = Array.from({ length: 60 }, (_, i) => `a${i}: allContacts(first: 1000) { ...C }`).join(" ");
    const { body } = await graphql(api.current, key, `{ ${aliases} } fragment C on ContactConnection { nodes { rowId } }`);
    expect(codeOf(body)).toBe("NODE_LIMIT_EXCEEDED");
    expect(body.errors![0]!.extensions!.estimate).toBe(60_000);
    const few = Array.from({ length: 3 }, (_, i) => `a${i}: allContacts(first: 1000) { ...C }`).join(" ");
    const allowed = await graphql(api.current, key, `{ ${few} } fragment C on ContactConnection { nodes { rowId } }`);
    expect(allowed.body.errors).toBeUndefined();
    expect(allowed.body.data!.a2.nodes).toHaveLength(1000);
  });

  it("uses the request's variables", async () => {
    const query = `query($outer: Int, $inner: Int) { allContacts(first: $outer) { nodes { contactTags(first: $inner) { nodes { tagId } } } } }`;
    const refused = await graphql(api.current, key, query, { outer: 1000, inner: 100 });
    expect(codeOf(refused.body)).toBe("NODE_LIMIT_EXCEEDED");
    expect(refused.body.errors![0]!.extensions!.estimate).toBe(1000 + 1000 * 100);
    const allowed = await graphql(api.current, key, query, { outer: 1000, inner: 3 });
    expect(allowed.body.errors).toBeUndefined();
    expect(allowed.body.data!.allContacts.nodes).toHaveLength(1000);
  });
});

describe("the response budget", () => {
  it(`refuses an operation within the estimate that would fetch more than ${MAX_FETCHED_BYTES} bytes`, async () => {
    // 1,000 contacts with 12 kB of attributes each: 1,000 nodes, 12 MB of data.
    await seedManyContacts(db.current, b.id, { contacts: 1000, attributeBytes: 12_000 });
    const { body } = await graphql(api.current, b.apiKeySecret, `{ allContacts(first: 1000) { nodes { attributes } } }`);
    expect(body.data ?? undefined).toBeUndefined();
    expect(body.errors).toHaveLength(1);
    expect(body.errors![0]!.extensions).toMatchObject({ code: "RESPONSE_TOO_LARGE", limit: MAX_FETCHED_BYTES });
    // A smaller page of the same rows is answered.
    const page = await graphql(api.current, b.apiKeySecret, `{ allContacts(first: 100) { nodes { attributes } } }`);
    expect(page.body.errors).toBeUndefined();
    expect(page.body.data!.allContacts.nodes).toHaveLength(100);
  });
});

describe("counts and text that are not valid input (item 10)", () => {
  it.each([
    ["a literal first: -1", `{ allContacts(first: -1) { nodes { rowId } } }`, undefined],
    ["a literal offset: -5", `{ allContacts(offset: -5) { nodes { rowId } } }`, undefined],
    ["a variable first of -1", `query($n: Int) { allContacts(first: $n) { nodes { rowId } } }`, { n: -1 }],
    ["a variable last of -3", `query($n: Int) { allContacts(last: $n) { nodes { rowId } } }`, { n: -3 }],
  ])("%s is INVALID_INPUT", async (_name, query, variables) => {
    const { body } = await graphql(api.current, key, query, variables);
    expect(body.errors?.[0]?.extensions?.code).toBe("INVALID_INPUT");
    expect(body.errors?.[0]?.message).toMatch(/must be 0 or more/);
  });

  it("a NUL character in a variable is INVALID_INPUT naming the field", async () => {
    const { body } = await graphql(api.current, key, `mutation($name: String!) { createTag(input: { tag: { name: $name } }) { tag { rowId } } }`, {
      name: "bad\u0000name",
    });
    expect(body.errors?.[0]?.extensions).toMatchObject({ code: "INVALID_INPUT", field: "$name" });
  });

  it("a NUL character in a string literal is INVALID_INPUT", async () => {
    const { body } = await graphql(api.current, key, `mutation { createTag(input: { tag: { name: "bad\\u0000name" } }) { tag { rowId } } }`);
    expect(body.errors?.[0]?.extensions?.code).toBe("INVALID_INPUT");
    expect(body.errors?.[0]?.message).toContain("NUL");
  });
});

