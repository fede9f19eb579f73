import type pg from "pg";
import { beforeAll, describe, expect, it } from "vitest";
import { ROLES } from "../src/db/urls.ts";
import { asRole, expectPgError, useTestDatabase, withRootDb } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";

/**
 * A delivery's life, as the database enforces it (migrations/current/010):
 * the allowed moves between statuses, refused otherwise for every role (the
 * worker and the superuser alike), and the hold reason that only a queued
 * delivery carries.
 */

const db = useTestDatabase();
let a: TenantFixture;

beforeAll(async () => {
  ({ a } = await seedTwoTenants(db.current));
});

const STATUSES = ["queued", "sending", "unknown", "sent", "delivered", "undelivered", "failed", "skipped", "canceled"];

/** The lifecycle of docs/sending.md, written out: from → the statuses it may move to (besides staying). */
const ALLOWED: Record<string, string[]> = {
  queued: ["sending", "skipped", "canceled", "failed", "sent", "delivered", "undelivered"],
  sending: ["queued", "unknown", "sent", "delivered", "undelivered", "failed"],
  unknown: ["queued", "sent", "delivered", "undelivered", "failed"],
  sent: ["delivered", "undelivered", "failed"],
  delivered: [],
  undelivered: [],
  failed: [],
  skipped: [],
  canceled: [],
};

/** A delivery of the fixture's message in this status (no contact: any number of them fit the unique key). */
async function deliveryIn(c: pg.PoolClient, status: string, holdReason: string | null = null): Promise<string> {
  const { rows } = await c.query<{ id: string }>(
    `insert into herald_public.deliveries (tenant_id, message_id, channel, status, hold_reason)
     values ($1, $2, 'sms', $3, $4) returning id`,
    [a.id, a.messageId, status, holdReason],
  );
  return rows[0]!.id;
}

/** A delivery made as root, then moved as `who`: the worker in the tenant, or root itself. */
async function tryMove(who: "worker" | "root", from: string, to: string) {
  if (who === "root")
    return withRootDb(db.current, async (root) => {
      const id = await deliveryIn(root, from);
      return expectPgError(root, () =>
        root.query("update herald_public.deliveries set status = $2 where id = $1", [id, to]),
      );
    });
  const root = await db.current.root.connect();
  try {
    const id = await deliveryIn(root, from);
    try {
      return await asRole(db.current, { role: ROLES.worker, tenantId: a.id }, (c) =>
        expectPgError(c, async () => {
          const { rowCount } = await c.query(
            "update herald_public.deliveries set status = $2 where tenant_id = herald_public.current_tenant_id() and id = $1",
            [id, to],
          );
          expect(rowCount).toBe(1);
        }),
      );
    } finally {
      await root.query("delete from herald_public.deliveries where id = $1", [id]);
    }
  } finally {
    root.release();
  }
}

describe("the delivery lifecycle", () => {
  it("delivery_transition_allowed is exactly the documented table", async () => {
    const { rows } = await db.current.root.query<{ from: string; to: string }>(
      `select f as from, t as to from unnest($1::text[]) f, unnest($1::text[]) t
        where f <> t and herald_hidden.delivery_transition_allowed(f, t)`,
      [STATUSES],
    );
    const allowed: Record<string, string[]> = Object.fromEntries(STATUSES.map((s) => [s, []]));
    for (const r of rows) allowed[r.from]!.push(r.to);
    for (const s of STATUSES) allowed[s]!.sort();
    expect(allowed).toEqual(Object.fromEntries(Object.entries(ALLOWED).map(([k, v]) => [k, [...v].sort()])));
    const { rows: finals } = await db.current.root.query<{ status: string }>(
      "select s as status from unnest($1::text[]) s where herald_hidden.delivery_is_final(s)",
      [STATUSES],
    );
    expect(finals.map((f) => f.status)).toEqual(STATUSES.filter((s) => ALLOWED[s]!.length === 0));
  });

  it.each(["worker", "root"] as const)(
    "refuses an illegal move as %s, with DLVST and both statuses named",
    async (who) => {
      for (const [from, to] of [
        ["delivered", "sent"],
        ["failed", "queued"],
        ["canceled", "sending"],
        ["skipped", "delivered"],
        ["sent", "queued"],
        ["sent", "sending"],
        ["queued", "unknown"],
      ] as const) {
        const error = await tryMove(who, from, to);
        expect(error?.code, `${who}: ${from} → ${to}`).toBe("DLVST");
        expect(error?.message).toContain(`from ${from} to ${to}`);
      }
    },
  );

  it.each(["worker", "root"] as const)("lets every legal move through as %s", async (who) => {
    for (const [from, to] of [
      ["queued", "sending"],
      ["sending", "unknown"],
      ["unknown", "queued"],
      ["sending", "delivered"],
      ["sent", "undelivered"],
      ["queued", "canceled"],
    ] as const) {
      expect(await tryMove(who, from, to), `${who}: ${from} → ${to}`).toBeUndefined();
    }
  });

  it("a final status set by a callback stays when the send's answer is recorded", async () => {
    await withRootDb(db.current, async (c) => {
      const id = await deliveryIn(c, "delivered");
      // record.ts's statement: a final status is kept, anything else becomes sent.
      await c.query(
        `update herald_public.deliveries d
            set status = case when herald_hidden.delivery_is_final(d.status) then d.status else 'sent' end
          where id = $1`,
        [id],
      );
      const { rows } = await c.query("select status from herald_public.deliveries where id = $1", [id]);
      expect(rows[0].status).toBe("delivered");
    });
  });

  it("only a queued delivery has a hold reason, one of the known kinds; leaving queued clears it", async () => {
    await withRootDb(db.current, async (c) => {
      const held = await deliveryIn(c, "queued", "quiet_hours");
      await c.query("update herald_public.deliveries set status = 'sending' where id = $1", [held]);
      const { rows } = await c.query("select hold_reason from herald_public.deliveries where id = $1", [held]);
      expect(rows[0].hold_reason).toBeNull();

      const sent = await deliveryIn(c, "sent");
      const onSent = await expectPgError(c, () =>
        c.query("update herald_public.deliveries set hold_reason = 'monthly_cap' where id = $1", [sent]),
      );
      expect(onSent?.message).toContain("deliveries_hold_reason_queued");
      const unknownKind = await expectPgError(c, () => deliveryIn(c, "queued", "because"));
      expect(unknownKind?.message).toContain("deliveries_hold_reason");
    });
  });
});
