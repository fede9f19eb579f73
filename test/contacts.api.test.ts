import { beforeAll, describe, expect, it } from "vitest";
import { ROLES } from "../src/db/urls.ts";
import { graphql, tokenFor, useApiServer } from "./helpers/api.ts";
import { useTestDatabase, withRootDb } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";

/** Contacts through the real GraphQL API: normalisation, writes, lookups, tags and lists, and B attacking A. */

const db = useTestDatabase();
const api = useApiServer(db);
let a: TenantFixture;
let b: TenantFixture;
let tokenA: string;
let tokenB: string;

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  tokenA = await tokenFor(api.current, a, "owner");
  tokenB = await tokenFor(api.current, b, "owner");
});

const gqlA = (query: string, variables?: Record<string, unknown>) => graphql(api.current, tokenA, query, variables);
const gqlB = (query: string, variables?: Record<string, unknown>) => graphql(api.current, tokenB, query, variables);

/** Every stored row of a tenant, including ciphertext, as a superuser sees it. */
const storedContacts = (tenantId: string) =>
  withRootDb(
    db.current,
    async (c) =>
      (await c.query("select * from herald_public.contacts where tenant_id = $1 order by id", [tenantId])).rows,
  );

describe("phone and email normalisation", () => {
  it("+1 (415) 555-2671, 4155552671 (US tenant) and +14155552671 are one contact with one hash", async () => {
    const created = await gqlA(
      `mutation { createContact(input: {firstName: "Ann", phone: "+1 (415) 555-2671"}) { contact { rowId phone } } }`,
    );
    expect(created.body.errors).toBeUndefined();
    const { rowId, phone } = created.body.data!.createContact.contact;
    expect(phone).toBe("+14155552671");

    const upserted = await gqlA(
      `mutation { upsertContacts(contacts: [{phone: "4155552671", lastName: "Lee"}]) { results { action contact { rowId } } } }`,
    );
    expect(upserted.body.data!.upsertContacts.results).toEqual([{ action: "UPDATED", contact: { rowId } }]);

    for (const format of ["+14155552671", "(415) 555-2671", "+1 415 555 2671"]) {
      const found = await gqlA(`query($p: String!) { contactByPhone(phone: $p) { rowId lastName } }`, { p: format });
      expect(found.body.data!.contactByPhone, format).toEqual({ rowId, lastName: "Lee" });
    }
    const rows = (await storedContacts(a.id)).filter((r) => r.id === rowId);
    expect(rows).toHaveLength(1);
    const withSameHash = (await storedContacts(a.id)).filter((r) => r.phone_hash.equals(rows[0].phone_hash));
    expect(withSameHash).toHaveLength(1);
  });

  it("emails are trimmed and lower-cased, and looked up case-insensitively", async () => {
    const created = await gqlA(
      `mutation { createContact(input: {email: "  Mixed.Case@Example.COM "}) { contact { rowId email } } }`,
    );
    expect(created.body.data!.createContact.contact.email).toBe("mixed.case@example.com");
    const found = await gqlA(`{ contactByEmail(email: "MIXED.case@example.com") { rowId } }`);
    expect(found.body.data!.contactByEmail.rowId).toBe(created.body.data!.createContact.contact.rowId);
  });

  it("an invalid phone or email is an INVALID_INPUT error naming the field, and nothing is stored", async () => {
    const before = (await storedContacts(a.id)).length;
    const cases: [string, string][] = [
      [`mutation { createContact(input: {firstName: "X", phone: "12345"}) { contact { rowId } } }`, "phone"],
      [`mutation { createContact(input: {email: "not-an-email"}) { contact { rowId } } }`, "email"],
      [
        `mutation { upsertContacts(contacts: [{phone: "+14155550999"}, {phone: "555"}]) { inserted } }`,
        "contacts[1].phone",
      ],
      [
        `mutation { upsertContacts(contacts: [{email: "a@b.co", timezone: "Mars/Olympus"}]) { inserted } }`,
        "contacts[0].timezone",
      ],
      [`{ contactByPhone(phone: "call me") { rowId } }`, "phone"],
    ];
    for (const [query, field] of cases) {
      const { body } = await gqlA(query);
      expect(body.errors?.[0]?.extensions, query).toMatchObject({ code: "INVALID_INPUT", field });
      expect(body.errors?.[0]?.message, query).toMatch(new RegExp(`^${field.replace(/[[\].]/g, "\\$&")} `));
    }
    expect((await storedContacts(a.id)).length).toBe(before);
  });
});

describe("writes", () => {
  it("upsertContacts matches by externalId, then phone, then email, and reports each item", async () => {
    const first = await gqlA(`mutation {
      upsertContacts(contacts: [
        {externalId: "crm-1", phone: "+14155550301", firstName: "One"},
        {email: "two@example.com", firstName: "Two"},
        {email: "TWO@example.com", firstName: "Two again"}
      ]) { inserted updated unchanged skipped results { index action } }
    }`);
    expect(first.body.data!.upsertContacts).toEqual({
      inserted: 2,
      updated: 0,
      unchanged: 0,
      skipped: 1,
      results: [
        { index: 0, action: "INSERTED" },
        { index: 1, action: "INSERTED" },
        { index: 2, action: "DUPLICATE" },
      ],
    });
    const second = await gqlA(`mutation {
      upsertContacts(contacts: [
        {externalId: "crm-1", firstName: "One"},
        {externalId: "crm-1b", phone: "415-555-0301"},
        {email: "two@example.com", firstName: "Deux"},
        {phone: "+14155550301", email: "two@example.com"}
      ]) { results { index action contact { firstName externalId phone email } } }
    }`);
    expect(second.body.data!.upsertContacts.results).toEqual([
      {
        index: 0,
        action: "UNCHANGED",
        contact: { firstName: "One", externalId: "crm-1", phone: "+14155550301", email: null },
      },
      // Its phone is crm-1's: the same contact as item 0, so it is skipped rather than applied twice.
      {
        index: 1,
        action: "DUPLICATE",
        contact: { firstName: "One", externalId: "crm-1", phone: "+14155550301", email: null },
      },
      {
        index: 2,
        action: "UPDATED",
        contact: { firstName: "Deux", externalId: null, phone: null, email: "two@example.com" },
      },
      // Repeats item 1's phone (and item 2's email).
      {
        index: 3,
        action: "DUPLICATE",
        contact: { firstName: "One", externalId: "crm-1", phone: "+14155550301", email: null },
      },
    ]);
  });

  it("refuses a phone and email that belong to two different contacts (CONFLICT), leaving both alone", async () => {
    await gqlA(
      `mutation { upsertContacts(contacts: [{phone: "+14155550401"}, {email: "four@example.com"}]) { inserted } }`,
    );
    const before = await storedContacts(a.id);
    const { body } = await gqlA(
      `mutation { upsertContacts(contacts: [{phone: "+14155550401", email: "four@example.com"}]) { skipped results { action } } }`,
    );
    expect(body.data!.upsertContacts).toEqual({ skipped: 1, results: [{ action: "CONFLICT" }] });
    expect(await storedContacts(a.id)).toEqual(before);
  });

  it("createContact refuses an existing phone with CONFLICT", async () => {
    const { body } = await gqlA(
      `mutation { createContact(input: {phone: "${a.contactPhone}"}) { contact { rowId } } }`,
    );
    expect(body.errors?.[0]?.extensions?.code).toBe("CONFLICT");
  });

  it("updateContact changes only the given fields; null clears one; re-encryption keeps the other field", async () => {
    const created =
      await gqlA(`mutation { createContact(input: {firstName: "Up", phone: "+14155550501", email: "up@example.com", locale: "pt_br"}) {
      contact { rowId locale } } }`);
    const { rowId, locale } = created.body.data!.createContact.contact;
    expect(locale).toBe("pt-BR");
    const updated = await gqlA(
      `mutation($id: UUID!) { updateContact(rowId: $id, patch: {phone: "+14155550502", lastName: "Date"}) {
      contact { firstName lastName phone email } } }`,
      { id: rowId },
    );
    expect(updated.body.data!.updateContact.contact).toEqual({
      firstName: "Up",
      lastName: "Date",
      phone: "+14155550502",
      email: "up@example.com",
    });
    const cleared = await gqlA(
      `mutation($id: UUID!) { updateContact(rowId: $id, patch: {email: null}) { contact { email phone } } }`,
      { id: rowId },
    );
    expect(cleared.body.data!.updateContact.contact).toEqual({ email: null, phone: "+14155550502" });
    expect((await gqlA(`{ contactByPhone(phone: "+14155550501") { rowId } }`)).body.data!.contactByPhone).toBeNull();
  });

  it("upsertContacts takes at most 1,000 items", async () => {
    const contacts = Array.from({ length: 1001 }, (_, i) => ({ email: `bulk${i}@example.com` }));
    const { body } = await gqlA(`mutation($c: [ContactFields!]!) { upsertContacts(contacts: $c) { inserted } }`, {
      c: contacts,
    });
    expect(body.errors?.[0]?.extensions).toMatchObject({ code: "INVALID_INPUT", field: "contacts" });
  });
});

describe("tags and lists", () => {
  it("counts members, and searchContacts filters by tag and by list", async () => {
    const { body } = await gqlA(
      `query($tag: UUID!, $list: UUID!) {
      tag: tagByTenantIdAndRowId(tenantId: "${a.id}", rowId: $tag) { name contactCount }
      list: listByTenantIdAndRowId(tenantId: "${a.id}", rowId: $list) { name memberCount }
      byTag: searchContacts(tagId: $tag) { totalCount nodes { rowId phone } }
      byBoth: searchContacts(tagId: $tag, listId: $list) { nodes { rowId } }
    }`,
      { tag: a.tagId, list: a.listId },
    );
    expect(body.errors).toBeUndefined();
    expect(body.data).toEqual({
      tag: { name: "vip", contactCount: 1 },
      list: { name: "newsletter", memberCount: 1 },
      byTag: { totalCount: 1, nodes: [{ rowId: a.contactId, phone: a.contactPhone }] },
      byBoth: { nodes: [{ rowId: a.contactId }] },
    });
  });
});

describe("tenant B attacking tenant A's contacts through GraphQL", () => {
  it("finds nothing of A by phone, email, id, node id, tag or list", async () => {
    const nodeId = (
      await gqlA(`query($id: UUID!) { contactByTenantIdAndRowId(tenantId: "${a.id}", rowId: $id) { id } }`, {
        id: a.contactId,
      })
    ).body.data!.contactByTenantIdAndRowId.id;
    const { body } = await gqlB(
      `query($phone: String!, $email: String!, $id: UUID!, $node: ID!, $tag: UUID!, $list: UUID!) {
      byPhone: contactByPhone(phone: $phone) { rowId }
      byEmail: contactByEmail(email: $email) { rowId }
      byId: contactByTenantIdAndRowId(tenantId: "${a.id}", rowId: $id) { rowId }
      byNode: contact(id: $node) { rowId }
      byTag: searchContacts(tagId: $tag) { totalCount }
      byList: searchContacts(listId: $list) { totalCount }
      all: allContacts { nodes { rowId } }
      tags: allTags { nodes { rowId } }
    }`,
      { phone: a.contactPhone, email: a.contactEmail, id: a.contactId, node: nodeId, tag: a.tagId, list: a.listId },
    );
    expect(body.errors).toBeUndefined();
    expect(body.data).toEqual({
      byPhone: null,
      byEmail: null,
      byId: null,
      byNode: null,
      byTag: { totalCount: 0 },
      byList: { totalCount: 0 },
      all: { nodes: [{ rowId: b.contactId }] },
      tags: { nodes: [{ rowId: b.tagId }] },
    });
  });

  it("cannot update, delete, list or tag A's contact; A's rows are untouched", async () => {
    const before = await storedContacts(a.id);
    const nodeId = (
      await gqlA(`query($id: UUID!) { contactByTenantIdAndRowId(tenantId: "${a.id}", rowId: $id) { id } }`, {
        id: a.contactId,
      })
    ).body.data!.contactByTenantIdAndRowId.id;
    const update = await gqlB(
      `mutation($id: UUID!) { updateContact(rowId: $id, patch: {firstName: "pwned"}) { contact { rowId } } }`,
      { id: a.contactId },
    );
    expect(update.body.errors?.[0]?.extensions?.code).toBe("NOT_FOUND");
    const del = await gqlB(`mutation($id: ID!) { deleteContact(input: {id: $id}) { contact { rowId } } }`, {
      id: nodeId,
    });
    expect(del.body.data?.deleteContact ?? null).toBeNull();
    const listIt = await gqlB(
      `mutation($c: UUID!, $l: UUID!) { createListMember(input: {listMember: {contactId: $c, listId: $l}}) { listMember { contactId } } }`,
      {
        c: a.contactId,
        l: b.listId,
      },
    );
    expect(listIt.body.errors?.[0]?.extensions?.code).toBe("NOT_FOUND");
    const tagIt = await gqlB(
      `mutation($c: UUID!, $t: UUID!) { createContactTag(input: {contactTag: {contactId: $c, tagId: $t}}) { contactTag { tagId } } }`,
      {
        c: b.contactId,
        t: a.tagId,
      },
    );
    expect(tagIt.body.errors?.[0]?.extensions?.code).toBe("NOT_FOUND");
    // Upserting A's phone in B creates B's own contact; A's is not matched or touched.
    const upsert = await gqlB(
      `mutation($p: String!) { upsertContacts(contacts: [{phone: $p, firstName: "B's copy"}]) { results { action contact { rowId } } } }`,
      {
        p: a.contactPhone,
      },
    );
    expect(upsert.body.data!.upsertContacts.results[0].action).toBe("INSERTED");
    expect(upsert.body.data!.upsertContacts.results[0].contact.rowId).not.toBe(a.contactId);
    expect(await storedContacts(a.id)).toEqual(before);
  });

  it("an operator (herald_admin) sees that contacts exist but holds no key to read their PII", async () => {
    const adminToken = await api.current.authenticator.sign({ role: ROLES.admin });
    const { body } = await graphql(
      api.current,
      adminToken,
      `
        {
          allContacts {
            totalCount
          }
          phones: allContacts {
            nodes {
              phone
            }
          }
        }
      `,
    );
    expect(body.data?.allContacts?.totalCount, JSON.stringify(body)).toBeGreaterThanOrEqual(2);
    expect(body.errors?.[0]?.message, JSON.stringify(body)).toMatch(/no data key/);
    // Naming a tenant in an operator token changes nothing: keys go to the tenant's own users and API keys only.
    const scopedAdmin = await api.current.authenticator.sign({ role: ROLES.admin, tenant_id: a.id });
    const scoped = await graphql(
      api.current,
      scopedAdmin,
      `
        {
          allContacts {
            nodes {
              phone
              email
            }
          }
        }
      `,
    );
    expect(scoped.body.errors?.[0]?.extensions?.code, JSON.stringify(scoped.body)).toBe("NO_KEY");
    expect(JSON.stringify(scoped.body)).not.toContain(a.contactPhone);
  });
});
