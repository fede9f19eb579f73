import pg from "pg";
import { beforeAll, describe, expect, it } from "vitest";
import { ROLES } from "../src/db/urls.ts";
import {
  attackerIdentities,
  exposedTables,
  seedAttackTenants,
  specFor,
  type AttackTenant,
} from "./helpers/attack-tables.ts";
import { asRole, expectPgError, useTestDatabase, withRootDb } from "./helpers/db.ts";
import { testKeyring } from "./helpers/keys.ts";

/**
 * Tenant B, through raw SQL, naming tenant A's rows from its own (foreign
 * keys, function arguments, hashes); who may act inside their own tenant; and
 * what a connection sees across roles and reuse. The per-table read, update,
 * delete and insert matrix is isolation.sql.test.ts.
 */

const db = useTestDatabase();
let a: AttackTenant;
let b: AttackTenant;

beforeAll(async () => {
  ({ a, b } = await seedAttackTenants(db.current));
});

describe("tenant B referencing tenant A's rows", () => {
  it("cannot record another tenant's user as an API key's creator", async () => {
    await asRole(db.current, { role: ROLES.member, tenantId: b.id, userId: b.ownerId }, async (c) => {
      const error = await expectPgError(c, () =>
        c.query(
          `insert into herald_public.api_keys (tenant_id, name, token_prefix, secret_hash, created_by)
           values ($1, 'forged', 'hk_forged', '\\x01'::bytea, $2)`,
          [b.id, a.ownerId],
        ),
      );
      expect(error?.code).toBe("42501");
    });
  });

  it("cannot revoke, or learn of, tenant A's API key through revoke_api_key", async () => {
    await asRole(db.current, { role: ROLES.member, tenantId: b.id, userId: b.ownerId }, async (c) => {
      const { rows } = await c.query("select * from herald_public.revoke_api_key($1)", [a.apiKeyId]);
      // A composite-returning function yields one all-null row for "nothing".
      expect(rows.every((r) => r.id === null)).toBe(true);
    });
    await withRootDb(db.current, async (c) => {
      const { rows } = await c.query("select revoked_at from herald_public.api_keys where id = $1", [a.apiKeyId]);
      expect(rows[0].revoked_at).toBeNull();
    });
  });

  it("cannot read tenant A's ping through ping_answered_at, even after the worker answered it", async () => {
    await withRootDb(db.current, async (c) => {
      await c.query("update herald_hidden.pings set answered_at = now() where id = $1", [a.pingId]);
      await c.query("select set_config('role', 'herald_member', true), set_config('jwt.claims.tenant_id', $1, true)", [
        b.id,
      ]);
      const { rows } = await c.query("select herald_public.ping_answered_at($1) as at", [a.pingId]);
      expect(rows[0].at).toBeNull();
    });
  });
});

describe("tenant B referencing tenant A's contacts, tags and lists from its own rows", () => {
  // B's own tenant_id passes RLS; the composite foreign keys (tenant_id, …) refuse A's ids.
  const attacks = () =>
    [
      [
        "put A's contact on B's list",
        "insert into herald_public.list_members (list_id, contact_id) values ($1, $2)",
        [b.listId, a.contactId],
      ],
      [
        "put B's contact on A's list",
        "insert into herald_public.list_members (list_id, contact_id) values ($1, $2)",
        [a.listId, b.contactId],
      ],
      [
        "tag A's contact with B's tag",
        "insert into herald_public.contact_tags (tag_id, contact_id) values ($1, $2)",
        [b.tagId, a.contactId],
      ],
      [
        "tag B's contact with A's tag",
        "insert into herald_public.contact_tags (tag_id, contact_id) values ($1, $2)",
        [a.tagId, b.contactId],
      ],
    ] as const;
  // The rows only webhooks write (as a worker): B's own rows naming A's contact, delivery or inbound message.
  const workerAttacks = () =>
    [
      [
        "record an opt-out of A's contact",
        "insert into herald_public.consent_events (contact_id, channel, action, source) values ($1, 'sms', 'opt_out', 'keyword')",
        [a.contactId],
      ],
      [
        "record a consent event of A's inbound message",
        "insert into herald_public.consent_events (contact_id, channel, action, source, inbound_message_id) values ($1, 'sms', 'help', 'keyword', $2)",
        [b.contactId, a.inboundMessageId],
      ],
      [
        "report on A's delivery",
        "insert into herald_public.delivery_events (delivery_id, provider, event, dedupe_key, applied, status) values ($1, 'twilio', 'delivered', 'evil-b', true, 'delivered')",
        [a.deliveryId],
      ],
      [
        "file an inbound message under A's contact",
        `insert into herald_public.inbound_messages (channel, to_number, contact_id, from_encrypted, body_encrypted, key_version, provider_message_id, account)
       values ('sms', '+14155550000', $1, '\\x00'::bytea, '\\x00'::bytea, 1, 'SMevil-b', 'system')`,
        [a.contactId],
      ],
    ] as const;

  it("a worker in B cannot point consent, delivery events or inbound messages at A's rows", async () => {
    const settings = await testKeyring().sessionSettings(db.current.root, b.id);
    for (const [label, sql, params] of workerAttacks()) {
      await asRole(db.current, { role: ROLES.worker, tenantId: b.id, settings }, async (c) => {
        const error = await expectPgError(c, () => c.query(sql, [...params]));
        expect(error?.code, label).toBe("23503");
      });
    }
  });

  it("a worker in B applying a provider's report to A's delivery, by id or by provider id, finds nothing", async () => {
    await db.current.root.query("update herald_public.deliveries set provider_message_id = 'SMvictim' where id = $1", [
      a.deliveryId,
    ]);
    await asRole(db.current, { role: ROLES.worker, tenantId: b.id }, async (c) => {
      for (const [id, sid] of [
        [a.deliveryId, null],
        [null, "SMvictim"],
      ]) {
        const { rows } = await c.query(
          "select outcome from herald_hidden.apply_delivery_event($1, $2, 'twilio', 'failed', 'failed', 'evil', null, null)",
          [id, sid],
        );
        expect(rows[0].outcome).toBe("not_found");
      }
    });
    await withRootDb(db.current, async (c) => {
      const { rows } = await c.query("select status, provider_message_id from herald_public.deliveries where id = $1", [
        a.deliveryId,
      ]);
      expect(rows[0]).toEqual({ status: "skipped", provider_message_id: "SMvictim" });
    });
  });

  it("receiving at A's number inside B's context is refused", async () => {
    const settings = await testKeyring().sessionSettings(db.current.root, b.id);
    await asRole(db.current, { role: ROLES.worker, tenantId: b.id, settings }, async (c) => {
      const error = await expectPgError(c, () =>
        c.query("select herald_hidden.receive_inbound('sms', $1, $2, 'STOP', 'SMcross', 0, 'stop', 'STOP')", [
          a.senderNumber,
          a.contactPhone,
        ]),
      );
      expect(error?.code).toBe("NTFND");
    });
  });

  it.each(["B's owner", "B's member", "B's API key", "a worker in B"])(
    "%s is refused by the composite foreign key",
    async (name) => {
      const who = attackerIdentities(b).find((i) => i.name === name)!;
      for (const [label, sql, params] of attacks()) {
        await asRole(db.current, who, async (c) => {
          const error = await expectPgError(c, () => c.query(sql, [...params]));
          expect(error?.code, `${name}: ${label}`).toBe("23503");
        });
      }
      await withRootDb(db.current, async (c) => {
        const { rows } = await c.query(
          "select (select count(*)::int from herald_public.list_members) as members, (select count(*)::int from herald_public.contact_tags) as tags",
        );
        expect(rows[0]).toEqual({ members: 2, tags: 2 });
      });
    },
  );

  it("cannot find tenant A's contact by its phone or email hash, even with A's hash values in hand", async () => {
    const aHashes = await withRootDb(
      db.current,
      async (c) =>
        (await c.query("select phone_hash, email_hash from herald_public.contacts where id = $1", [a.contactId]))
          .rows[0],
    );
    const settings = await testKeyring().sessionSettings(db.current.root, b.id);
    await asRole(db.current, { role: ROLES.member, tenantId: b.id, userId: b.ownerId, settings }, async (c) => {
      const { rowCount } = await c.query(
        "select id from herald_public.contacts where phone_hash = $1 or email_hash = $2",
        [aHashes.phone_hash, aHashes.email_hash],
      );
      expect(rowCount).toBe(0);
      // And B's own hash of A's number is a different value: hash keys are per tenant.
      const { rows } = await c.query("select herald_hidden.pii_hashes('phone', $1) as hashes", [a.contactPhone]);
      expect(rows[0].hashes.map((h: Buffer) => h.toString("hex"))).not.toContain(aHashes.phone_hash.toString("hex"));
    });
  });
});

describe("who may act inside their own tenant", () => {
  it("a tenant's owner can update its settings; a plain member and an API key cannot", async () => {
    const attempt = (userId: string | undefined) =>
      asRole(db.current, { role: ROLES.member, tenantId: b.id, userId }, async (c) => {
        const { rowCount } = await c.query(
          "update herald_public.tenant_settings set help_text = 'hi' where tenant_id = $1",
          [b.id],
        );
        return rowCount;
      });
    expect(await attempt(b.ownerId)).toBe(1);
    expect(await attempt(b.memberId)).toBe(0);
    expect(await attempt(undefined)).toBe(0);
  });

  it("a tenant's owner and an operator can change a sender number's pace; a plain member and an API key cannot", async () => {
    const attempt = (who: { role: typeof ROLES.member | typeof ROLES.admin; userId?: string }) =>
      asRole(db.current, { ...who, tenantId: b.id }, async (c) => {
        const { rowCount } = await c.query(
          "update herald_public.sender_numbers set messages_per_second = 3 where id = $1",
          [b.senderNumberId],
        );
        return rowCount;
      });
    expect(await attempt({ role: ROLES.member, userId: b.ownerId })).toBe(1);
    expect(await attempt({ role: ROLES.admin })).toBe(1);
    expect(await attempt({ role: ROLES.member, userId: b.memberId })).toBe(0);
    expect(await attempt({ role: ROLES.member })).toBe(0);
    // Only the pace: the number itself stays as registered.
    await asRole(db.current, { role: ROLES.member, tenantId: b.id, userId: b.ownerId }, async (c) => {
      const error = await expectPgError(c, () =>
        c.query("update herald_public.sender_numbers set phone_number = '+15005550006' where id = $1", [
          b.senderNumberId,
        ]),
      );
      expect(error?.code).toBe("42501");
    });
  });

  it("an owner of tenant B who is a plain member of tenant A has no owner rights in A", async () => {
    await withRootDb(db.current, async (c) => {
      await c.query("insert into herald_public.memberships (tenant_id, user_id, role) values ($1, $2, 'member')", [
        a.id,
        b.ownerId,
      ]);
      await c.query(
        `select set_config('role', 'herald_member', true), set_config('jwt.claims.tenant_id', $1, true),
                set_config('jwt.claims.user_id', $2, true)`,
        [a.id, b.ownerId],
      );
      const settings = await c.query("update herald_public.tenant_settings set help_text = 'x' where tenant_id = $1", [
        a.id,
      ]);
      expect(settings.rowCount).toBe(0);
      const error = await expectPgError(c, () => c.query("select herald_public.create_api_key('sneaky')"));
      expect(error?.message).toMatch(/row-level security/);
    });
  });

  it("only a tenant's owners and admins erase what a person wrote (inbound messages)", async () => {
    const attempt = (userId: string | undefined) =>
      asRole(
        db.current,
        { role: ROLES.member, tenantId: b.id, userId },
        async (c) =>
          (await c.query("delete from herald_public.inbound_messages where id = $1", [b.inboundMessageId])).rowCount,
      );
    expect(await attempt(b.memberId)).toBe(0);
    expect(await attempt(undefined)).toBe(0); // an API key
    expect(await attempt(b.ownerId)).toBe(1); // rolled back: the fixture stays
  });

  it("a revoked API key stays revoked", async () => {
    await asRole(db.current, { role: ROLES.member, tenantId: b.id, userId: b.ownerId }, async (c) => {
      const { rows } = await c.query("select id, revoked_at from herald_public.revoke_api_key($1)", [b.apiKeyId]);
      expect(rows[0].revoked_at).not.toBeNull();
      const error = await expectPgError(c, () =>
        c.query("update herald_public.api_keys set revoked_at = null where id = $1", [b.apiKeyId]),
      );
      expect(error?.code).toBe("REVKD");
    });
  });

  it("members never read API key hashes", async () => {
    await asRole(db.current, { role: ROLES.member, tenantId: b.id, userId: b.ownerId }, async (c) => {
      const error = await expectPgError(c, () => c.query("select secret_hash from herald_public.api_keys"));
      expect(error?.code).toBe("42501");
    });
  });
});

describe("connections and roles", () => {
  it("a pooled connection reused after a tenant-A transaction sees nothing with an empty claim", async () => {
    const client = new pg.Client({ connectionString: db.current.urls.authenticator });
    await client.connect();
    try {
      await client.query("begin");
      await client.query(
        "select set_config('role', 'herald_member', true), set_config('jwt.claims.tenant_id', $1, true)",
        [a.id],
      );
      const asA = await client.query("select count(*)::int as n from herald_public.tenants");
      expect(asA.rows[0].n).toBe(1);
      await client.query("commit");

      // The same connection, next transaction: the claim reads as '' now.
      await client.query("begin");
      await client.query("select set_config('role', 'herald_member', true)");
      const leftover = await client.query("select current_setting('jwt.claims.tenant_id', true) as claim");
      expect(leftover.rows[0].claim).toBe("");
      for (const table of exposedTables()) {
        await client.query("savepoint probe");
        const seen = await client.query(`select count(*)::int as n from ${table}`).then(
          ({ rows }) => rows[0].n as number,
          (error: { code?: string }) => error.code,
        );
        await client.query("rollback to savepoint probe");
        // users: a member with no tenant and no user sees no one either; a
        // table members may not read at all (the worker's report journal) refuses.
        expect([0, "42501"], table).toContain(seen);
      }
      await client.query("rollback");
    } finally {
      await client.end();
    }
  });

  it("the authenticator itself, before SET ROLE, can read no tenant table", async () => {
    const client = new pg.Client({ connectionString: db.current.urls.authenticator });
    await client.connect();
    try {
      for (const table of exposedTables()) {
        const error = await client.query(`select 1 from ${table} limit 1`).then(
          () => undefined,
          (e: { code: string }) => e,
        );
        expect(error?.code, table).toBe("42501");
      }
    } finally {
      await client.end();
    }
  });

  it("herald_admin sees both tenants in every table", async () => {
    await asRole(db.current, { role: ROLES.admin }, async (c) => {
      for (const spec of exposedTables().map(specFor)) {
        // Where operators may read only some columns (the report journal: its
        // tenant and age), the tenant's rows are found by tenant alone.
        const { rows: grant } = await c.query("select has_table_privilege($1, 'select') as whole", [spec.table]);
        for (const t of [a, b]) {
          const { where, params } = grant[0].whole
            ? spec.victim(t)
            : { where: `${spec.tenantKey} = $1`, params: [t.id] };
          const { rowCount } = await c.query(`select 1 from ${spec.table} where ${where}`, params);
          expect(rowCount, `${spec.table} for ${t.slug}`).toBeGreaterThan(0);
        }
      }
    });
  });

  it("a worker inside tenant A's context sees only tenant A", async () => {
    await asRole(db.current, { role: ROLES.worker, tenantId: a.id }, async (c) => {
      const { rows } = await c.query("select distinct tenant_id from herald_hidden.pings");
      expect(rows.map((r) => r.tenant_id)).toEqual([a.id]);
    });
  });
});
