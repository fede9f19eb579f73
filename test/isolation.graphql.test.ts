import { beforeAll, describe, expect, it } from "vitest";
import { ROLES } from "../src/db/urls.ts";
import { graphql, useApiServer } from "./helpers/api.ts";
import { useTestDatabase, withRootDb } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";

/**
 * The same attacks through the GraphQL API with tenant B's credentials: a JWT
 * for B's owner and B's API key. Tenant A's rows must be "not found" (null or
 * empty), and writes aimed at them must change nothing.
 */

const db = useTestDatabase();
const api = useApiServer(db);
// One connection for every request: each must find it as if new.
const singleConnectionApi = useApiServer(db, { poolSize: 1 });
let a: TenantFixture;
let b: TenantFixture;
let tokenA: string;
let attackers: Array<{ name: string; token: string }>;
let nodeIds: Record<string, string>;

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  const sign = api.current.authenticator.sign;
  tokenA = await sign({ role: ROLES.member, tenant_id: a.id, sub: a.ownerId });
  attackers = [
    { name: "B's owner (JWT)", token: await sign({ role: ROLES.member, tenant_id: b.id, sub: b.ownerId }) },
    { name: "B's API key", token: b.apiKeySecret },
  ];
  // Tenant A reads its own global node ids, which an attacker might obtain.
  const { body } = await graphql(
    api.current,
    tokenA,
    `
      {
        allTenants {
          nodes {
            id
          }
        }
        allApiKeys {
          nodes {
            id
          }
        }
        allTenantSettings {
          nodes {
            id
          }
        }
        allMemberships {
          nodes {
            id
          }
        }
        currentUser {
          id
        }
      }
    `,
  );
  expect(body.errors).toBeUndefined();
  const data = body.data!;
  nodeIds = {
    tenant: data.allTenants.nodes[0].id,
    apiKey: data.allApiKeys.nodes[0].id,
    tenantSetting: data.allTenantSettings.nodes[0].id,
    membership: data.allMemberships.nodes[0].id,
    user: data.currentUser.id,
  };
});

describe("tenant A through its own token", () => {
  it("sees its tenant and data only", async () => {
    const { body } = await graphql(
      api.current,
      tokenA,
      `
        {
          allTenants {
            nodes {
              slug
            }
          }
          allApiKeys {
            nodes {
              tenantId
            }
          }
          allMemberships {
            nodes {
              tenantId
            }
          }
          allTenantSettings {
            nodes {
              tenantId
            }
          }
          allUsers {
            nodes {
              email
            }
          }
        }
      `,
    );
    const data = body.data!;
    expect(data.allTenants.nodes).toEqual([{ slug: "tenant-a" }]);
    for (const list of [data.allApiKeys, data.allMemberships, data.allTenantSettings]) {
      expect(list.nodes.length).toBeGreaterThan(0);
      expect(list.nodes.every((n: { tenantId: string }) => n.tenantId === a.id)).toBe(true);
    }
    expect(data.allUsers.nodes.map((u: { email: string }) => u.email).sort()).toEqual([
      "member@tenant-a.test",
      "owner@tenant-a.test",
    ]);
  });
});

/** Tenant A's rows that the attacks below aim at, read as superuser. */
const snapshotVictimRows = () =>
  withRootDb(db.current, async (c) => {
    const { rows } = await c.query(
      `select (select row_to_json(s) from herald_public.tenant_settings s where tenant_id = $1) as settings,
              (select name from herald_public.tenants where id = $1) as name,
              (select display_name from herald_public.users where id = $2) as display_name,
              (select revoked_at from herald_public.api_keys where id = $3) as revoked_at`,
      [a.id, a.ownerId, a.apiKeyId],
    );
    return JSON.stringify(rows);
  });

describe.each([0, 1])("tenant B attacking tenant A (attacker %i)", (index) => {
  const attacker = () => attackers[index]!;

  it("lists nothing of tenant A", async () => {
    const { body } = await graphql(
      api.current,
      attacker().token,
      `
        {
          allTenants {
            nodes {
              rowId
            }
          }
          allApiKeys {
            nodes {
              tenantId
            }
          }
          allMemberships {
            nodes {
              tenantId
            }
          }
          allTenantSettings {
            nodes {
              tenantId
            }
          }
          allUsers {
            nodes {
              rowId
            }
          }
        }
      `,
    );
    expect(body.errors).toBeUndefined();
    expect(JSON.stringify(body.data)).not.toContain(a.id);
    expect(JSON.stringify(body.data)).not.toContain(a.ownerId);
    expect(body.data!.allTenants.nodes).toEqual([{ rowId: b.id }]);
  });

  it("finds none of tenant A's rows by id, unique key or global node id", async () => {
    const { body } = await graphql(
      api.current,
      attacker().token,
      `
        query (
          $a: UUID!
          $key: UUID!
          $owner: UUID!
          $tenantNode: ID!
          $keyNode: ID!
          $settingNode: ID!
          $membershipNode: ID!
          $userNode: ID!
        ) {
          tenantByRowId(rowId: $a) {
            slug
          }
          tenantBySlug(slug: "tenant-a") {
            slug
          }
          tenantSettingByTenantId(tenantId: $a) {
            tenantId
          }
          apiKeyByTenantIdAndRowId(tenantId: $a, rowId: $key) {
            name
          }
          membershipByTenantIdAndUserId(tenantId: $a, userId: $owner) {
            role
          }
          userByRowId(rowId: $owner) {
            email
          }
          userByEmail(email: "owner@tenant-a.test") {
            email
          }
          t: node(id: $tenantNode) {
            id
          }
          k: node(id: $keyNode) {
            id
          }
          s: node(id: $settingNode) {
            id
          }
          m: node(id: $membershipNode) {
            id
          }
          u: node(id: $userNode) {
            id
          }
        }
      `,
      {
        a: a.id,
        key: a.apiKeyId,
        owner: a.ownerId,
        tenantNode: nodeIds.tenant,
        keyNode: nodeIds.apiKey,
        settingNode: nodeIds.tenantSetting,
        membershipNode: nodeIds.membership,
        userNode: nodeIds.user,
      },
    );
    expect(body.errors).toBeUndefined();
    expect(Object.values(body.data!).every((v) => v === null)).toBe(true);
  });

  it("cannot update tenant A's settings, tenant, user or API key", async () => {
    const before = await snapshotVictimRows();
    const attempts = [
      [
        `mutation($a: UUID!) { updateTenantSettingByTenantId(input: { tenantId: $a, tenantSettingPatch: { helpText: "pwned" } }) { tenantSetting { helpText } } }`,
        { a: a.id },
      ],
      [
        `mutation($id: ID!) { updateTenantSetting(input: { id: $id, tenantSettingPatch: { helpText: "pwned" } }) { tenantSetting { helpText } } }`,
        { id: nodeIds.tenantSetting },
      ],
      [
        `mutation($a: UUID!) { updateTenantByRowId(input: { rowId: $a, tenantPatch: { name: "pwned" } }) { tenant { name } } }`,
        { a: a.id },
      ],
      [
        `mutation($u: UUID!) { updateUserByRowId(input: { rowId: $u, userPatch: { displayName: "pwned" } }) { user { displayName } } }`,
        { u: a.ownerId },
      ],
      [`mutation($k: UUID!) { revokeApiKey(input: { apiKeyId: $k }) { result { revokedAt } } }`, { k: a.apiKeyId }],
    ] as const;
    for (const [mutation, variables] of attempts) {
      const { status, body } = await graphql(api.current, attacker().token, mutation, variables);
      expect(status, JSON.stringify(body)).toBe(200);
      // Either an error (not found / permission denied) or a null payload: never A's row.
      const payload = body.data ? Object.values(body.data)[0] : null;
      const leaked = payload && Object.values(payload as object).some((v) => v !== null);
      expect(leaked, `${attacker().name}: ${mutation} -> ${JSON.stringify(body)}`).toBeFalsy();
      for (const error of body.errors ?? []) {
        expect(["NOT_FOUND", "FORBIDDEN"]).toContain(error.extensions?.code);
        expect(error.message).not.toMatch(/select|insert|update|policy|herald_/i);
      }
    }
    const after = await snapshotVictimRows();
    expect(after).toBe(before);
  });

  it("cannot read tenant A's ping", async () => {
    const { body } = await graphql(
      api.current,
      attacker().token,
      `
        query ($p: UUID!) {
          pingAnsweredAt(pingId: $p)
        }
      `,
      { p: a.pingId },
    );
    expect(body.data).toEqual({ pingAnsweredAt: null });
  });
});

describe.each([0, 1])("tenant B and what A's contacts wrote and were told (attacker %i)", (index) => {
  const attacker = () => attackers[index]!;

  it("reads none of A's inbound messages, consent events, delivery events or conversations", async () => {
    const { body: own } = await graphql(
      api.current,
      tokenA,
      `
        {
          allInboundMessages {
            nodes {
              id
            }
          }
          allConsentEvents {
            nodes {
              id
            }
          }
          allDeliveryEvents {
            nodes {
              id
            }
          }
        }
      `,
    );
    expect(own.errors).toBeUndefined();
    const ids = [
      own.data!.allInboundMessages.nodes[0].id,
      own.data!.allConsentEvents.nodes[0].id,
      own.data!.allDeliveryEvents.nodes[0].id,
    ];
    const { body } = await graphql(
      api.current,
      attacker().token,
      `
        query ($a: UUID!, $inbound: UUID!, $contact: UUID!, $n1: ID!, $n2: ID!, $n3: ID!) {
          inboundMessageByTenantIdAndRowId(tenantId: $a, rowId: $inbound) {
            body
          }
          contactByTenantIdAndRowId(tenantId: $a, rowId: $contact) {
            conversation {
              nodes {
                body
              }
            }
          }
          n1: node(id: $n1) {
            id
          }
          n2: node(id: $n2) {
            id
          }
          n3: node(id: $n3) {
            id
          }
          allInboundMessages {
            nodes {
              tenantId
            }
          }
          allConsentEvents {
            nodes {
              tenantId
            }
          }
          allDeliveryEvents {
            nodes {
              tenantId
            }
          }
        }
      `,
      { a: a.id, inbound: a.inboundMessageId, contact: a.contactId, n1: ids[0], n2: ids[1], n3: ids[2] },
    );
    expect(body.errors).toBeUndefined();
    const data = body.data!;
    expect([data.inboundMessageByTenantIdAndRowId, data.contactByTenantIdAndRowId, data.n1, data.n2, data.n3]).toEqual([
      null,
      null,
      null,
      null,
      null,
    ]);
    // B's own: its fixture's one inbound message, consent event and delivery event each, and none of A's.
    for (const list of [data.allInboundMessages, data.allConsentEvents, data.allDeliveryEvents]) {
      expect(list.nodes).toEqual([{ tenantId: b.id }]);
    }
  });

  it("cannot delete A's inbound message", async () => {
    const { body } = await graphql(
      api.current,
      attacker().token,
      `
        mutation ($a: UUID!, $m: UUID!) {
          deleteInboundMessageByTenantIdAndRowId(input: { tenantId: $a, rowId: $m }) {
            inboundMessage {
              rowId
            }
          }
        }
      `,
      { a: a.id, m: a.inboundMessageId },
    );
    // The mutation exists (tenant admins erase what a person wrote); for A's row it finds nothing.
    for (const error of body.errors ?? [])
      expect(["NOT_FOUND", "FORBIDDEN"], JSON.stringify(body)).toContain(error.extensions?.code);
    expect(body.data?.deleteInboundMessageByTenantIdAndRowId?.inboundMessage ?? null).toBeNull();
    const { rowCount } = await db.current.root.query("select 1 from herald_public.inbound_messages where id = $1", [
      a.inboundMessageId,
    ]);
    expect(rowCount).toBe(1);
  });
});

describe("platform admin", () => {
  it("sees both tenants through an admin token", async () => {
    const adminToken = await api.current.authenticator.sign({ role: ROLES.admin });
    const { body } = await graphql(
      api.current,
      adminToken,
      `
        {
          allTenants(orderBy: SLUG_ASC) {
            nodes {
              slug
            }
          }
        }
      `,
    );
    expect(body.data!.allTenants.nodes).toEqual([{ slug: "tenant-a" }, { slug: "tenant-b" }]);
  });

  it("a member never sees the other tenant even when asking for admin-only fields", async () => {
    const { body } = await graphql(
      api.current,
      attackers[0]!.token,
      `
        {
          allTenants {
            totalCount
          }
          allUsers {
            totalCount
          }
        }
      `,
    );
    expect(body.data).toEqual({ allTenants: { totalCount: 1 }, allUsers: { totalCount: 2 } });
  });
});

describe("one pooled connection reused across tenants", () => {
  it("carries no claim from one request into the next", async () => {
    const server = singleConnectionApi.current;
    const sign = server.authenticator.sign;
    const ask = (token: string) =>
      graphql(server, token, "{ currentTenantId currentUserId allTenants { nodes { rowId } } }").then(
        (r) => r.body.data!,
      );

    const asA = await ask(await sign({ role: ROLES.member, tenant_id: a.id, sub: a.ownerId }));
    expect(asA).toMatchObject({ currentTenantId: a.id, currentUserId: a.ownerId });
    // Next on the same connection: an admin token with no tenant — the claims read as empty.
    const asAdmin = await ask(await sign({ role: ROLES.admin }));
    expect(asAdmin).toMatchObject({ currentTenantId: null, currentUserId: null });
    // Then tenant B's API key (no user): B only, and no user left over from A.
    const asKey = await ask(b.apiKeySecret);
    expect(asKey).toEqual({ currentTenantId: b.id, currentUserId: null, allTenants: { nodes: [{ rowId: b.id }] } });
  });
});
