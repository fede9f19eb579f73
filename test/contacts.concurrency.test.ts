import type pg from "pg";
import { beforeAll, describe, expect, it } from "vitest";
import { enterSession, withSession } from "../src/db/session.ts";
import { ROLES } from "../src/db/urls.ts";
import { useTestDatabase, withRootDb } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import { testKeyring } from "./helpers/keys.ts";

/**
 * Two writers on one contact. Each test holds a row lock in one transaction
 * while another statement waits on it, then checks that the waiting statement
 * built on the committed row, not on the snapshot it started from.
 */

const db = useTestDatabase();
let a: TenantFixture;
let settings: Record<string, string>;

beforeAll(async () => {
  ({ a } = await seedTwoTenants(db.current));
  settings = await testKeyring().sessionSettings(db.current.root, a.id);
});

/** Opens a transaction as A's worker and leaves it open until `finish` is called. */
async function openWriter(): Promise<{ client: pg.PoolClient; finish: (how: "commit" | "rollback") => Promise<void> }> {
  const client = await db.current.authenticator.connect();
  await client.query("begin");
  await enterSession(client, { role: ROLES.worker, tenantId: a.id, settings });
  return {
    client,
    finish: async (how) => {
      await client.query(how);
      client.release();
    },
  };
}

const asWorker = <T>(fn: (client: pg.PoolClient) => Promise<T>, keys = settings) =>
  withSession(db.current.authenticator, { role: ROLES.worker, tenantId: a.id, settings: keys }, fn);

const readContact = (id: string) =>
  asWorker(
    async (c) =>
      (
        await c.query(
          "select first_name, herald_public.contacts_phone(x) as phone, herald_public.contacts_email(x) as email, key_version from herald_public.contacts x where id = $1",
          [id],
        )
      ).rows[0],
  );

/** Resolves once `pid` is waiting for a lock: the race is really on. */
async function waitUntilBlocked(pid: number) {
  for (let i = 0; i < 100; i++) {
    const blocked = await withRootDb(
      db.current,
      async (c) => (await c.query("select cardinality(pg_blocking_pids($1)) > 0 as b", [pid])).rows[0].b,
    );
    if (blocked) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`backend ${pid} never waited for the lock`);
}

async function backendPid<T>(run: (client: pg.PoolClient) => Promise<T>) {
  const client = await db.current.authenticator.connect();
  const pid = (await client.query("select pg_backend_pid() as pid")).rows[0].pid as number;
  return { pid, done: run(client).finally(() => client.release()) };
}

describe("concurrent writers", () => {
  it("an upsert that waited for a row lock keeps the fields another writer committed meanwhile", async () => {
    const [contact] = await asWorker(
      async (c) =>
        (
          await c.query("select contact_id from herald_hidden.upsert_contacts($1)", [
            JSON.stringify([{ external_id: "race-1", first_name: "Old", phone: "+14155550901" }]),
          ])
        ).rows,
    );
    const first = await openWriter();
    await first.client.query("select * from herald_hidden.upsert_contacts($1, 'update')", [
      JSON.stringify([{ id: contact.contact_id, first_name: "New", phone: "+14155550902" }]),
    ]);
    const second = await backendPid(async (client) => {
      await client.query("begin");
      await enterSession(client, { role: ROLES.worker, tenantId: a.id, settings });
      await client.query("select * from herald_hidden.upsert_contacts($1)", [
        JSON.stringify([{ external_id: "race-1", email: "race@example.com" }]),
      ]);
      await client.query("commit");
    });
    await waitUntilBlocked(second.pid);
    await first.finish("commit");
    await second.done;
    expect(await readContact(contact.contact_id)).toMatchObject({
      first_name: "New",
      phone: "+14155550902",
      email: "race@example.com",
    });
  });

  it("a rekey batch that waited for a row lock re-encrypts the committed phone, not the one it first saw", async () => {
    const [contact] = await asWorker(
      async (c) =>
        (
          await c.query("select contact_id from herald_hidden.upsert_contacts($1)", [
            JSON.stringify([{ phone: "+14155550911" }]),
          ])
        ).rows,
    );
    const member = await openWriter();
    await member.client.query("select * from herald_hidden.upsert_contacts($1, 'update')", [
      JSON.stringify([{ id: contact.contact_id, phone: "+14155550912" }]),
    ]);
    // A rekey to a new hash key version, as during `herald keys rotate-hash`.
    const rotated = {
      ...settings,
      "herald.hash_key_previous": settings["herald.hash_key"]!,
      "herald.hash_key_previous_version": settings["herald.hash_key_version"]!,
      "herald.hash_key": Buffer.alloc(32, 7).toString("base64"),
      "herald.hash_key_version": "999",
    };
    const rekey = await backendPid(async (client) => {
      await client.query("begin");
      await enterSession(client, { role: ROLES.worker, tenantId: a.id, settings: rotated });
      await client.query("select * from herald_hidden.rekey_contacts('00000000-0000-0000-0000-000000000000', 100000)");
      // What the rekey wrote, read inside its own transaction (then rolled back: the test's key is made up).
      const { rows } = await client.query(
        `select herald_public.contacts_phone(x) as phone, hash_version,
                phone_hash = herald_hidden.pii_hash('phone', herald_public.contacts_phone(x), 999::smallint) as hash_matches
           from herald_public.contacts x where id = $1`,
        [contact.contact_id],
      );
      await client.query("rollback");
      return rows[0];
    });
    await waitUntilBlocked(rekey.pid);
    await member.finish("commit");
    expect(await rekey.done).toEqual({ phone: "+14155550912", hash_version: 999, hash_matches: true });
  });
});
