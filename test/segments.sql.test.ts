import { beforeAll, describe, expect, it } from "vitest";
import { ROLES } from "../src/db/urls.ts";
import { asRole, expectPgError, useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import { asOwner, asRoot, asWorker } from "./helpers/messaging.ts";

/**
 * Segments in SQL (migration 000012):
 * the compiler's text and parameters, hostile filters, invalid filters named
 * by path, exact recipients of a broadcast to a segment, the snapshot taken
 * when fan-out starts, and another tenant's segment.
 */

const db = useTestDatabase();
let a: TenantFixture;
let b: TenantFixture;
/** Tenant A's contacts by name. */
const people: Record<string, string> = {};
let vip: string;
let churned: string;
let other: string;

const GOLD_VIP_NOT_CHURNED = () => ({
  all: [{ attribute: { key: "plan", equals: "gold" } }, { tags: { any: [vip] } }, { lists: { none: [churned] } }],
});

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  await asRoot(db.current, async (c) => {
    const add = async (name: string, attributes: object, extra = "") => {
      const { rows } = await c.query(
        `insert into herald_public.contacts (tenant_id, first_name, key_version, hash_version, attributes ${extra ? ", timezone" : ""})
         values ($1, $2, (select max(version) from herald_private.tenant_data_keys where tenant_id = $1), 1, $3 ${extra ? ", $4" : ""})
         returning id`,
        extra ? [a.id, name, JSON.stringify(attributes), extra] : [a.id, name, JSON.stringify(attributes)],
      );
      people[name] = rows[0].id as string;
    };
    await add("goldVip", { plan: "gold", seats: 12, renews: "2027-03-01" }, "Europe/Paris");
    await add("goldVipChurned", { plan: "gold", seats: 3 });
    await add("goldPlain", { plan: "gold" });
    await add("silverVip", { plan: "silver", seats: 40 });
    await add("goldVipToo", { plan: "gold", seats: "many", renews: "not a date" });
    await add("goldVipOther", { plan: "gold" });
    // Hostile text stored as data: a filter naming it must match it literally.
    await add("hostile", { "plan'); drop table herald_public.contacts; --": "x' or '1'='1" });
    vip = (
      await c.query("insert into herald_public.tags (tenant_id, name) values ($1, 'vip-seg') returning id", [a.id])
    ).rows[0].id;
    churned = (
      await c.query("insert into herald_public.lists (tenant_id, name) values ($1, 'churned') returning id", [a.id])
    ).rows[0].id;
    other = (
      await c.query("insert into herald_public.lists (tenant_id, name) values ($1, 'other') returning id", [a.id])
    ).rows[0].id;
    await c.query(
      "insert into herald_public.contact_tags (tenant_id, tag_id, contact_id) select $1, $2, unnest($3::uuid[])",
      [a.id, vip, [people.goldVip, people.goldVipChurned, people.silverVip, people.goldVipToo, people.goldVipOther]],
    );
    await c.query(
      "insert into herald_public.list_members (tenant_id, list_id, contact_id) select $1, $2, unnest($3::uuid[])",
      [a.id, churned, [people.goldVipChurned]],
    );
    await c.query(
      "insert into herald_public.list_members (tenant_id, list_id, contact_id) select $1, $2, unnest($3::uuid[])",
      [a.id, other, [people.goldVipOther]],
    );
  });
});

/** The ids of A's contacts a filter matches, as A's owner, by name. */
async function matching(filter: unknown): Promise<string[]> {
  const ids = await asOwner(db.current, a, async (c) =>
    (
      await c.query("select id from herald_public.search_contacts(filter => $1::jsonb)", [JSON.stringify(filter)])
    ).rows.map((r) => r.id as string),
  );
  return Object.entries(people)
    .filter(([, id]) => ids.includes(id))
    .map(([name]) => name)
    .sort();
}

async function compile(filter: unknown): Promise<{ sql: string; params: string[] }> {
  return asOwner(db.current, a, async (c) => {
    const { rows } = await c.query("select sql, params from herald_hidden.segment_filter_sql($1::jsonb)", [
      JSON.stringify(filter),
    ]);
    return rows[0] as { sql: string; params: string[] };
  });
}

async function refusal(filter: unknown): Promise<{ code?: string; message: string; column?: string } | undefined> {
  return asRole(db.current, { role: ROLES.member, tenantId: a.id, userId: a.ownerId }, (c) =>
    expectPgError(c, () =>
      c.query("insert into herald_public.segments (name, filter) values ('bad', $1::jsonb)", [JSON.stringify(filter)]),
    ),
  );
}

describe("the compiler", () => {
  it("puts every value and attribute key in the parameters, never in the SQL text", async () => {
    const filter = {
      all: [
        { attribute: { key: "plan", equals: "gold" } },
        { attribute: { key: "seats", gte: 10, lt: 100 } },
        { attribute: { key: "tier", in: ["a", "b"] } },
        { attribute: { key: "nickname", exists: true } },
        { tags: { any: [vip], none: [churned] } },
        { lists: { all: [other] } },
        { timezone: { in: ["Europe/Paris"] } },
        { locale: { equals: "fr" } },
        { subscribed: { sms: true } },
        { createdAt: { gte: "2020-01-01" } },
        { lastInboundAt: { gte: { ago: "30 days" } } },
        { not: { lastDeliveredAt: { exists: true } } },
      ],
    };
    const { sql, params } = await compile(filter);
    // The text without its parameter references ($1[n]) holds no input value.
    const text = sql.replace(/\$1\[\d+\]/g, "$");
    for (const value of [
      "plan",
      "gold",
      "seats",
      "tier",
      "nickname",
      vip,
      churned,
      other,
      "Europe",
      "2020",
      "30 days",
    ]) {
      expect(text).not.toContain(value);
    }
    expect(text).not.toMatch(/\b(10|100|fr)\b/);
    // Its only literal is the compiler's own (a delivery status).
    expect(text.match(/'[^']*'/g)).toEqual(["'delivered'"]);
    expect(sql).toMatch(/^\(c\.attributes @> \$1\[2\]::jsonb and /);
    expect(params).toEqual([
      "plan",
      '{"plan": "gold"}',
      "seats",
      "10",
      "100",
      "tier",
      '["a", "b"]',
      "nickname",
      `{${vip}}`,
      `{${churned}}`,
      `{${other}}`,
      "1",
      "{Europe/Paris}",
      "fr",
      "true",
      "2020-01-01",
      "30 days",
    ]);
  });

  it("matches the exact contacts of a segment on plan = gold, tag vip and not list churned", async () => {
    expect(await matching(GOLD_VIP_NOT_CHURNED())).toEqual(["goldVip", "goldVipOther", "goldVipToo"]);
  });

  it("compares numbers with numbers and dates with dates; other values match no bound", async () => {
    expect(await matching({ attribute: { key: "seats", gte: 10 } })).toEqual(["goldVip", "silverVip"]);
    expect(await matching({ attribute: { key: "renews", lt: "2028-01-01" } })).toEqual(["goldVip"]);
    expect(await matching({ attribute: { key: "plan", in: ["silver", "platinum"] } })).toEqual(["silverVip"]);
    expect(await matching({ attribute: { key: "seats", exists: false } })).toEqual([
      "goldPlain",
      "goldVipOther",
      "hostile",
    ]);
    expect(await matching({ timezone: { equals: "Europe/Paris" } })).toEqual(["goldVip"]);
    expect(await matching({ any: [{ tags: { all: [vip] } }, { lists: { any: [other] } }] })).toEqual([
      "goldVip",
      "goldVipChurned",
      "goldVipOther",
      "goldVipToo",
      "silverVip",
    ]);
    expect(await matching({ createdAt: { gte: { ago: "1 hour" } } })).toHaveLength(Object.keys(people).length);
  });

  it("finds the last inbound message and the last delivery where they live", async () => {
    await asRoot(db.current, async (c) => {
      // As written by the webhook and the delivery engine (their triggers and lifecycle guard off: arranging history).
      await c.query("set local session_replication_role = replica");
      await c.query(
        `insert into herald_public.inbound_messages (tenant_id, channel, to_number, contact_id, from_encrypted, body_encrypted, key_version, provider_message_id, account, received_at)
         values ($1, 'sms', '+14155550000', $2, '\\x00'::bytea, '\\x00'::bytea, 1, 'SMsegments', 'system', now() - interval '2 days')`,
        [a.id, people.goldPlain],
      );
      await c.query(
        `insert into herald_public.deliveries (tenant_id, message_id, contact_id, channel, status, completed_at)
         values ($1, $2, $3, 'sms', 'delivered', now() - interval '3 days'), ($1, $2, $4, 'sms', 'failed', now())`,
        [a.id, a.messageId, people.silverVip, people.goldVip],
      );
    });
    expect(await matching({ lastInboundAt: { exists: true } })).toEqual(["goldPlain"]);
    expect(await matching({ lastInboundAt: { gte: { ago: "3 days" }, lt: { ago: "1 day" } } })).toEqual(["goldPlain"]);
    expect(await matching({ lastInboundAt: { gte: { ago: "1 day" } } })).toEqual([]);
    expect(await matching({ lastDeliveredAt: { exists: true } })).toEqual(["silverVip"]);
    expect(await matching({ lastDeliveredAt: { lte: { ago: "2 days" } } })).toEqual(["silverVip"]);
    expect(await matching({ lastDeliveredAt: { gte: { ago: "2 days" } } })).toEqual([]);
  });

  it("matches SQL in a key or a value literally, as data", async () => {
    expect(
      await matching({ attribute: { key: "plan'); drop table herald_public.contacts; --", equals: "x' or '1'='1" } }),
    ).toEqual(["hostile"]);
    expect(await matching({ attribute: { key: "plan", equals: "gold' or '1'='1" } })).toEqual([]);
    expect(await matching({ timezone: { in: ['x", "Europe/Paris', "'}"] } })).toEqual([]);
    expect(await refusal({ "attributes; drop table x": {} })).toMatchObject({
      code: "22023",
      column: "filter.attributes; drop table x",
    });
    const contacts = await asRoot(
      db.current,
      async (c) => (await c.query("select count(*)::int as n from herald_public.contacts")).rows[0].n,
    );
    expect(contacts).toBeGreaterThan(7);
  });
});

describe("invalid filters", () => {
  it("are refused, naming the path of what is wrong", async () => {
    const cases: [unknown, string][] = [
      [
        { all: [{ subscribed: { sms: true } }, { attribute: { key: "seats", gte: [1] } }] },
        "filter.all[1].attribute.gte",
      ],
      [{ all: [{ attribute: { key: "x", gte: 1, lt: "2026-01-01" } }] }, "filter.all[0].attribute.lt"],
      [{ any: [{ tags: { any: ["not-a-uuid"] } }] }, "filter.any[0].tags.any[0]"],
      [{ not: { bogus: 1 } }, "filter.not.bogus"],
      [{ attribute: { equals: "gold" } }, "filter.attribute.key"],
      [{ attribute: { key: "plan", equals: "gold", in: ["x"] } }, "filter.attribute.in"],
      [{ subscribed: { fax: true } }, "filter.subscribed.fax"],
      [{ createdAt: { gte: "yesterday-ish" } }, "filter.createdAt.gte"],
      [{ lastInboundAt: { gte: { ago: "a while" } } }, "filter.lastInboundAt.gte.ago"],
      [{ locale: { equals: "fr", in: ["fr"] } }, "filter.locale"],
      [{ all: [] }, "filter.all"],
      [[{ tags: {} }], "filter"],
      [{ plan: "gold", tags: {} }, "filter"],
    ];
    for (const [filter, path] of cases) {
      const error = await refusal(filter);
      expect(error, JSON.stringify(filter)).toMatchObject({ code: "22023", column: path });
      expect(error!.message.startsWith(`${path}: `)).toBe(true);
    }
  });

  it("are bounded in depth and size", async () => {
    let deep: unknown = { subscribed: { sms: true } };
    for (let i = 0; i < 6; i++) deep = { not: deep };
    expect(await refusal(deep)).toMatchObject({ column: "filter.not.not.not.not.not.not" });
    const wide = { any: Array.from({ length: 100 }, () => ({ subscribed: { sms: true } })) };
    expect((await refusal(wide))?.column).toBe("filter.any[99]");
    const many = { tags: { any: Array.from({ length: 501 }, () => vip) } };
    expect(await refusal(many)).toMatchObject({ column: "filter.tags.any" });
  });

  it("are not stored, by insert or update; a valid one is", async () => {
    await asOwner(db.current, a, async (c) => {
      const { rows } = await c.query(
        "insert into herald_public.segments (name, filter) values ('ok', $1) returning id",
        [JSON.stringify(GOLD_VIP_NOT_CHURNED())],
      );
      const error = await expectPgError(c, () =>
        c.query('update herald_public.segments set filter = \'{"tags": {"any": []}}\' where id = $1', [rows[0].id]),
      );
      expect(error).toMatchObject({ code: "22023" });
      const count = await c.query(
        "select herald_public.segments_contact_count(s) as n from herald_public.segments s where id = $1",
        [rows[0].id],
      );
      expect(count.rows[0].n).toBe(3);
      await c.query("delete from herald_public.segments where id = $1", [rows[0].id]);
    });
  });
});

describe("a broadcast to a segment", () => {
  it("reaches exactly the matching contacts, as they were when fan-out started", async () => {
    const segment = await asOwner(
      db.current,
      a,
      async (c) =>
        (
          await c.query("insert into herald_public.segments (name, filter) values ('gold vips', $1) returning id", [
            JSON.stringify(GOLD_VIP_NOT_CHURNED()),
          ])
        ).rows[0].id as string,
    );
    const message = await asOwner(db.current, a, async (c) => {
      const { rows } = await c.query(
        "select id from herald_public.send_message(channel => 'sms', body => 'hi', segment_ids => $1::uuid[])",
        [[segment]],
      );
      return rows[0].id as string;
    });
    await asRoot(db.current, (c) => c.query("select graphile_worker.remove_job($1)", [`message:${message}`]));

    // Fan-out starts: the snapshot, then a first batch of one.
    const snapshot = await asWorker(
      db.current,
      a,
      async (c) => (await c.query("select herald_hidden.snapshot_segment_audience($1) as n", [message])).rows[0].n,
    );
    expect(snapshot).toBe(3);
    const batch = async () =>
      asWorker(
        db.current,
        a,
        async (c) => (await c.query("select * from herald_hidden.fan_out_batch($1, 1, null, 1)", [message])).rows[0],
      );
    expect((await batch()).done).toBe(false);

    // Mid-way: a matching contact stops matching, a non-matching one starts to.
    await asRoot(db.current, async (c) => {
      await c.query('update herald_public.contacts set attributes = \'{"plan": "bronze"}\' where id = $1', [
        people.goldVipToo,
      ]);
      await c.query("delete from herald_public.list_members where contact_id = $1", [people.goldVipChurned]);
    });
    // A second snapshot call (a retried task) changes nothing once batches have begun.
    const again = await asWorker(
      db.current,
      a,
      async (c) => (await c.query("select herald_hidden.snapshot_segment_audience($1) as n", [message])).rows[0].n,
    );
    expect(again).toBeNull();
    for (let i = 0; i < 10 && !(await batch()).done; i++);

    const recipients = await asRoot(db.current, async (c) =>
      (await c.query("select contact_id from herald_public.deliveries where message_id = $1", [message])).rows.map(
        (r) => r.contact_id as string,
      ),
    );
    const names = Object.entries(people)
      .filter(([, id]) => recipients.includes(id))
      .map(([n]) => n)
      .sort();
    expect(names).toEqual(["goldVip", "goldVipOther", "goldVipToo"]);
    expect(recipients).toHaveLength(3);
    // Fan-out over (src/messages/fan-out.ts then forgets the snapshot).
    const forgotten = await asWorker(
      db.current,
      a,
      async (c) => (await c.query("select herald_hidden.forget_segment_audience($1) as n", [message])).rows[0].n,
    );
    expect(forgotten).toBe(3);
    const left = await asRoot(
      db.current,
      async (c) =>
        (
          await c.query("select count(*)::int as n from herald_hidden.message_segment_members where message_id = $1", [
            message,
          ])
        ).rows[0].n,
    );
    expect(left).toBe(0);
    // Put the data back for other tests.
    await asRoot(db.current, async (c) => {
      await c.query('update herald_public.contacts set attributes = \'{"plan": "gold"}\' where id = $1', [
        people.goldVipToo,
      ]);
      await c.query("insert into herald_public.list_members (tenant_id, list_id, contact_id) values ($1, $2, $3)", [
        a.id,
        churned,
        people.goldVipChurned,
      ]);
    });
  });
});

describe("another tenant's segment", () => {
  it("does not exist for tenant B: send_message, search_contacts and missing_segments say NOT_FOUND", async () => {
    const segment = await asOwner(
      db.current,
      a,
      async (c) =>
        (
          await c.query("insert into herald_public.segments (name, filter) values ('a only', $1) returning id", [
            JSON.stringify({ subscribed: { sms: true } }),
          ])
        ).rows[0].id as string,
    );
    await asRole(db.current, { role: ROLES.member, tenantId: b.id, userId: b.ownerId }, async (c) => {
      const send = await expectPgError(c, () =>
        c.query("select herald_public.send_message(channel => 'sms', body => 'x', segment_ids => $1::uuid[])", [
          [segment],
        ]),
      );
      expect(send).toMatchObject({ code: "NTFND", column: "segmentIds" });
      const search = await expectPgError(c, () =>
        c.query("select * from herald_public.search_contacts(segment_id => $1)", [segment]),
      );
      expect(search).toMatchObject({ code: "NTFND", column: "segmentId" });
      const missing = await c.query("select herald_hidden.missing_segments($1::uuid[]) as n", [[segment]]);
      expect(missing.rows[0].n).toBe(1);
      const seen = await c.query("select count(*)::int as n from herald_public.segments");
      expect(seen.rows[0].n).toBe(0);
      const updated = await c.query("update herald_public.segments set name = 'pwned' where id = $1 returning id", [
        segment,
      ]);
      expect(updated.rows).toHaveLength(0);
    });
    await asRole(db.current, { role: ROLES.member, tenantId: a.id, userId: a.ownerId }, async (c) => {
      const missing = await c.query("select herald_hidden.missing_segments($1::uuid[]) as n", [[segment]]);
      expect(missing.rows[0].n).toBe(0);
    });
  });
});
