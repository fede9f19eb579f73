import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { WorkerHandle } from "../src/worker/worker.ts";
import { graphql, tokenFor, useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import {
  asRoot,
  readyToSend,
  seedAudience,
  sendThroughApi,
  settled,
  startSandboxServer,
  startSendingWorker,
  type SandboxServer,
} from "./helpers/messaging.ts";

/**
 * Segments through GraphQL: saving one (and the error naming the path of an
 * invalid filter), searchContacts(filter:) and the preview of a saved or
 * unsaved filter, a broadcast to a segment through the worker and the
 * sandbox, and tenant B using tenant A's segment.
 */

const db = useTestDatabase();
const api = useApiServer(db);
let a: TenantFixture;
let b: TenantFixture;
let server: SandboxServer;
let worker: WorkerHandle;
const tokens = { a: "", b: "" };
let audience: { id: string; phone: string }[];
let vip: string;
let churned: string;

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  server = await startSandboxServer();
  await readyToSend(db.current, server, a);
  tokens.a = await tokenFor(api.current, a, "member");
  tokens.b = await tokenFor(api.current, b, "member");
  ({ contacts: audience } = await seedAudience(db.current, a, { count: 8, exchange: 731, list: "segment-audience" }));
  // Contacts 0-3 are gold, 0-5 are vip, 1 is churned: the segment is 0, 2 and 3.
  await asRoot(db.current, async (c) => {
    await c.query(
      `update herald_public.contacts set attributes = jsonb_build_object('plan', case when id = any ($1::uuid[]) then 'gold' else 'silver' end)
        where tenant_id = $2 and id = any ($3::uuid[])`,
      [audience.slice(0, 4).map((p) => p.id), a.id, audience.map((p) => p.id)],
    );
    vip = (
      await c.query("insert into herald_public.tags (tenant_id, name) values ($1, 'vip-api') returning id", [a.id])
    ).rows[0].id;
    churned = (
      await c.query("insert into herald_public.lists (tenant_id, name) values ($1, 'churned') returning id", [a.id])
    ).rows[0].id;
    await c.query(
      "insert into herald_public.contact_tags (tenant_id, tag_id, contact_id) select $1, $2, unnest($3::uuid[])",
      [a.id, vip, audience.slice(0, 6).map((p) => p.id)],
    );
    await c.query("insert into herald_public.list_members (tenant_id, list_id, contact_id) values ($1, $2, $3)", [
      a.id,
      churned,
      audience[1]!.id,
    ]);
  });
  worker = await startSendingWorker(db.current, server, 4);
});

afterAll(async () => {
  await worker?.stop();
  await server?.close();
});

const filter = () => ({
  all: [{ attribute: { key: "plan", equals: "gold" } }, { tags: { any: [vip] } }, { lists: { none: [churned] } }],
});
const CREATE = `mutation($s: SegmentInput!) { createSegment(input: { segment: $s }) { segment { rowId name contactCount } } }`;
let segmentId: string;

describe("saving a segment", () => {
  it("stores a valid filter and counts its contacts", async () => {
    const { body } = await graphql(api.current, tokens.a, CREATE, { s: { name: "Gold VIPs", filter: filter() } });
    expect(body.errors).toBeUndefined();
    expect(body.data!.createSegment.segment).toMatchObject({ name: "Gold VIPs", contactCount: 3 });
    segmentId = body.data!.createSegment.segment.rowId;
  });

  it("refuses an invalid filter with an error naming its path", async () => {
    const bad = { all: [{ subscribed: { sms: true } }, { attribute: { key: "seats", gte: "lots" } }] };
    const { body } = await graphql(api.current, tokens.a, CREATE, { s: { name: "Bad", filter: bad } });
    expect(body.errors?.[0]?.extensions).toEqual({ code: "INVALID_INPUT", field: "filter.all[1].attribute.gte" });
    expect(body.errors?.[0]?.message).toMatch(/^filter\.all\[1\]\.attribute\.gte: must be a date/);
    const update = await graphql(
      api.current,
      tokens.a,
      `mutation($id: UUID!, $f: JSON!) { updateSegmentByTenantIdAndRowId(input: { tenantId: "${a.id}", rowId: $id, segmentPatch: { filter: $f } }) { segment { rowId } } }`,
      { id: segmentId, f: { tags: { none: ["x"] } } },
    );
    expect(update.body.errors?.[0]?.extensions).toEqual({ code: "INVALID_INPUT", field: "filter.tags.none[0]" });
  });
});

describe("searchContacts and the preview", () => {
  const ids = (nodes: { rowId: string }[]) => nodes.map((n) => n.rowId).sort();
  const expected = () => [audience[0]!.id, audience[2]!.id, audience[3]!.id].sort();

  it("filters by an unsaved filter or a saved segment, with the count and the first page", async () => {
    const { body } = await graphql(
      api.current,
      tokens.a,
      `
        query ($f: JSON!, $s: UUID!) {
          unsaved: searchContacts(filter: $f) {
            totalCount
            nodes {
              rowId
            }
          }
          preview: searchContacts(segmentId: $s, first: 2) {
            totalCount
            nodes {
              rowId
              phone
            }
          }
          narrowed: searchContacts(segmentId: $s, filter: { attribute: { key: "plan", equals: "silver" } }) {
            totalCount
          }
        }
      `,
      { f: filter(), s: segmentId },
    );
    expect(body.errors).toBeUndefined();
    expect(body.data!.unsaved.totalCount).toBe(3);
    expect(ids(body.data!.unsaved.nodes)).toEqual(expected());
    expect(body.data!.preview.totalCount).toBe(3);
    expect(body.data!.preview.nodes).toHaveLength(2);
    expect(body.data!.narrowed.totalCount).toBe(0);
  });

  it("matches SQL in a key or value literally, and refuses it as a condition's name", async () => {
    const { body } = await graphql(
      api.current,
      tokens.a,
      `
        query ($k: JSON!, $v: JSON!, $n: JSON!) {
          key: searchContacts(filter: $k) {
            totalCount
          }
          value: searchContacts(filter: $v) {
            totalCount
          }
          name: searchContacts(filter: $n) {
            totalCount
          }
        }
      `,
      {
        k: { attribute: { key: "plan' or 1=1 --", exists: true } },
        v: { attribute: { key: "plan", in: ["gold') or true or ('", "x"] } },
        n: { "tags) or true; --": {} },
      },
    );
    expect(body.data?.key).toEqual({ totalCount: 0 });
    expect(body.data?.value).toEqual({ totalCount: 0 });
    expect(body.errors?.map((e) => e.extensions)).toEqual([
      { code: "INVALID_INPUT", field: "filter.tags) or true; --" },
    ]);
  });

  it("names the path of an invalid filter", async () => {
    const { body } = await graphql(
      api.current,
      tokens.a,
      `
        {
          searchContacts(filter: { not: { colour: "red" } }) {
            totalCount
          }
        }
      `,
    );
    expect(body.errors?.[0]?.extensions).toEqual({ code: "INVALID_INPUT", field: "filter.not.colour" });
  });
});

describe("a broadcast to a segment", () => {
  it("reaches exactly the segment's contacts", async () => {
    const messageId = await sendThroughApi(api.current, tokens.a, {
      channel: "sms",
      body: "Gold news",
      segmentIds: [segmentId],
    });
    const done = await settled(db.current, messageId);
    expect(done.total).toBe(3);
    const received = server.sandbox.messages.filter((m) => m.body === "Gold news").map((m) => m.to);
    expect(received.sort()).toEqual([audience[0]!.phone, audience[2]!.phone, audience[3]!.phone].sort());
    // The snapshot served its purpose and is gone.
    const kept = await asRoot(
      db.current,
      async (c) =>
        (
          await c.query("select count(*)::int as n from herald_hidden.message_segment_members where message_id = $1", [
            messageId,
          ])
        ).rows[0].n,
    );
    expect(kept).toBe(0);
  });
});

describe("tenant B and tenant A's segment", () => {
  it("is NOT_FOUND: as an audience, a search, a row and an update", async () => {
    const { body } = await graphql(
      api.current,
      tokens.b,
      `
        mutation ($s: UUID!) {
          sendMessage(input: { channel: "sms", body: "x", segmentIds: [$s] }) {
            message {
              rowId
            }
          }
        }
      `,
      { s: segmentId },
    );
    expect(body.errors?.[0]?.extensions).toMatchObject({ code: "NOT_FOUND", field: "segmentIds" });
    const search = await graphql(
      api.current,
      tokens.b,
      `
        query ($s: UUID!) {
          searchContacts(segmentId: $s) {
            totalCount
          }
        }
      `,
      {
        s: segmentId,
      },
    );
    expect(search.body.errors?.[0]?.extensions).toMatchObject({ code: "NOT_FOUND", field: "segmentId" });
    const read = await graphql(
      api.current,
      tokens.b,
      `query($s: UUID!) { segmentByTenantIdAndRowId(tenantId: "${a.id}", rowId: $s) { name } allSegments { totalCount } }`,
      { s: segmentId },
    );
    expect(read.body.errors).toBeUndefined();
    expect(read.body.data).toEqual({ segmentByTenantIdAndRowId: null, allSegments: { totalCount: 0 } });
    const update = await graphql(
      api.current,
      tokens.b,
      `mutation($s: UUID!) { updateSegmentByTenantIdAndRowId(input: { tenantId: "${a.id}", rowId: $s, segmentPatch: { name: "pwned" } }) { segment { name } } }`,
      { s: segmentId },
    );
    // An error saying not found, or no payload: never A's row.
    for (const error of update.body.errors ?? []) expect(error.extensions?.code).toBe("NOT_FOUND");
    expect(update.body.data?.updateSegmentByTenantIdAndRowId?.segment ?? null).toBeNull();
    const stored = await asRoot(
      db.current,
      async (c) => (await c.query("select name from herald_public.segments where id = $1", [segmentId])).rows[0].name,
    );
    expect(stored).toBe("Gold VIPs");
  });
});
