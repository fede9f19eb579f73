import { beforeAll, describe, expect, it } from "vitest";
import { useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import { asRoot, asWorker } from "./helpers/messaging.ts";

/**
 * herald_hidden.fan_out_batch in small batches over an audience drawn from
 * every source at once (explicit contacts, two lists, a tag, overlapping):
 * each recipient gets exactly one delivery, batches follow contact id order,
 * and a batch reads each source only from the cursor on.
 */

const db = useTestDatabase();
let a: TenantFixture;
let ids: string[]; // the audience's 12 contacts, in id order
let lists: string[];
let tag: string;

beforeAll(async () => {
  ({ a } = await seedTwoTenants(db.current));
  await asRoot(db.current, async (c) => {
    // Contacts without PII: the fan-out skips them as no_phone, which is a delivery all the same.
    const { rows } = await c.query(
      `insert into herald_public.contacts (tenant_id, first_name, key_version, hash_version)
       select $1, 'Batch' || g, (select max(version) from herald_private.tenant_data_keys where tenant_id = $1), 1
         from generate_series(1, 12) g returning id`,
      [a.id],
    );
    ids = rows.map((r) => r.id as string).sort();
    const made = await c.query(
      "insert into herald_public.lists (tenant_id, name) values ($1, 'batch-1'), ($1, 'batch-2') returning id",
      [a.id],
    );
    lists = made.rows.map((r) => r.id as string);
    tag = (
      await c.query("insert into herald_public.tags (tenant_id, name) values ($1, 'batch-tag') returning id", [a.id])
    ).rows[0].id;
    // Overlapping sources: list 1 holds 0-5, list 2 holds 4-8, the tag 7-10, the message names 10, 11 and 2.
    const members = (list: string, range: string[]) =>
      c.query(
        "insert into herald_public.list_members (tenant_id, list_id, contact_id) select $1, $2, unnest($3::uuid[])",
        [a.id, list, range],
      );
    await members(lists[0]!, ids.slice(0, 6));
    await members(lists[1]!, ids.slice(4, 9));
    await c.query(
      "insert into herald_public.contact_tags (tenant_id, tag_id, contact_id) select $1, $2, unnest($3::uuid[])",
      [a.id, tag, ids.slice(7, 11)],
    );
  });
});

describe("fan_out_batch", () => {
  it("writes one delivery per audience member, batch by batch in contact id order, across overlapping sources", async () => {
    const message = await asRoot(db.current, async (c) => {
      const { rows } = await c.query(
        `insert into herald_public.messages (tenant_id, channel, body, contact_ids, list_ids, tag_ids)
         values ($1, 'sms', 'hi', $2, $3, $4) returning id`,
        [a.id, [ids[10], ids[11], ids[2]], lists, [tag]],
      );
      await c.query("select graphile_worker.remove_job($1)", [`message:${rows[0].id}`]);
      return rows[0].id as string;
    });
    const batches: { contacts: number; done: boolean; delivered: string[] }[] = [];
    for (let i = 0; i < 10; i++) {
      const batch = await asWorker(db.current, a, async (c) => {
        const { rows } = await c.query("select * from herald_hidden.fan_out_batch($1, 5, null, 1)", [message]);
        return rows[0];
      });
      const delivered = await asRoot(db.current, async (c) =>
        (
          await c.query("select contact_id from herald_public.deliveries where message_id = $1 order by contact_id", [
            message,
          ])
        ).rows.map((r) => r.contact_id as string),
      );
      batches.push({ contacts: batch.contacts, done: batch.done, delivered });
      if (batch.done) break;
    }
    expect(batches.map((b) => [b.contacts, b.done])).toEqual([
      [5, false],
      [5, false],
      [2, true],
    ]);
    expect(batches.map((b) => b.delivered)).toEqual([ids.slice(0, 5), ids.slice(0, 10), ids]);
    const after = await asRoot(
      db.current,
      async (c) =>
        (
          await c.query("select status, recipient_count, fan_out_cursor from herald_public.messages where id = $1", [
            message,
          ])
        ).rows[0],
    );
    expect(after).toEqual({ status: "fanned_out", recipient_count: 12, fan_out_cursor: ids[11] });
  });
});
