import { beforeAll, describe, expect, it } from "vitest";
import { ROLES } from "../src/db/urls.ts";
import { graphql, tokenFor, useApiServer, type GraphQLResponse } from "./helpers/api.ts";
import { asRole, expectPgError, useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import { asRoot, asWorker } from "./helpers/messaging.ts";
import { textIn, webhookEnv } from "./helpers/webhooks.ts";

/**
 * The audit log: every kind of actor is named, only column names are kept,
 * tenant owners and admins read their own tenant's log, and nobody can change it.
 */

const db = useTestDatabase();
const api = useApiServer(db, { env: () => webhookEnv() });
let a: TenantFixture;
let b: TenantFixture;
const tokens = { owner: "", member: "", ownerB: "", admin: "" };
let operatorId: string;

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  tokens.owner = await tokenFor(api.current, a, "owner");
  tokens.member = await tokenFor(api.current, a, "member");
  tokens.ownerB = await tokenFor(api.current, b, "owner");
  operatorId = (
    await db.current.root.query("insert into herald_public.users (email) values ('operator@herald.test') returning id")
  ).rows[0].id;
  tokens.admin = await api.current.authenticator.sign({ role: ROLES.admin, sub: operatorId });
});

/** The log rows written since `since` (an id), oldest first. */
const logSince = async (since: number) =>
  (
    await db.current.root.query(
      "select tenant_id, actor_kind, actor_id, db_user, actor_detail, action, table_name, record_id, changed_columns from herald_public.audit_log where id > $1 order by id",
      [since],
    )
  ).rows;
const lastId = async () =>
  Number((await db.current.root.query("select coalesce(max(id), 0) as id from herald_public.audit_log")).rows[0].id);

/** The texts A received from `phone`, decrypted as the tenant reads them (sender and text are stored encrypted). */
const textsFrom = async (phone: string) =>
  asWorker(db.current, a, async (c) => {
    const { rows } = await c.query(
      `select herald_public.inbound_messages_body(m) as body from herald_public.inbound_messages m
        where herald_public.inbound_messages_from(m) = $1 order by m.received_at`,
      [phone],
    );
    return rows.map((r) => r.body as string);
  });

describe("who did it", () => {
  it("names a tenant's user, by user id", async () => {
    const since = await lastId();
    const { body } = await graphql(
      api.current,
      tokens.owner,
      `
        mutation {
          createTag(input: { tag: { name: "audited" } }) {
            tag {
              rowId
            }
          }
        }
      `,
    );
    expect(body.errors).toBeUndefined();
    expect(await logSince(since)).toEqual([
      expect.objectContaining({
        tenant_id: a.id,
        actor_kind: "user",
        actor_id: a.ownerId,
        action: "insert",
        table_name: "tags",
        record_id: body.data!.createTag.tag.rowId,
        changed_columns: ["id", "name", "tenant_id"],
      }),
    ]);
  });

  it("names an API key, by key id", async () => {
    const since = await lastId();
    const { body } = await graphql(
      api.current,
      a.apiKeySecret,
      `
        mutation {
          createContact(input: { firstName: "Keyed", phone: "+14155550177" }) {
            contact {
              rowId
            }
          }
        }
      `,
    );
    expect(body.errors).toBeUndefined();
    const rows = await logSince(since);
    expect(rows).toEqual([
      expect.objectContaining({
        actor_kind: "api_key",
        actor_id: a.apiKeyId,
        action: "insert",
        table_name: "contacts",
        record_id: body.data!.createContact.contact.rowId,
      }),
    ]);
    expect(rows[0].changed_columns).toEqual(expect.arrayContaining(["first_name", "phone_encrypted", "phone_hash"]));
  });

  it("names a worker job, and a provider's webhook (with which provider)", async () => {
    let since = await lastId();
    await asWorker(db.current, a, (c) =>
      c.query("select herald_hidden.upsert_contacts($1)", [
        JSON.stringify([{ phone: "+14155550178", first_name: "Worked" }]),
      ]),
    );
    expect((await logSince(since)).map((r) => [r.actor_kind, r.actor_id, r.table_name, r.action])).toEqual([
      ["worker", null, "contacts", "insert"],
    ]);

    since = await lastId();
    const stop = await textIn(api.current, a, { from: "+14155550178", body: "STOP" });
    expect(stop.status).toBe(200);
    expect(
      (await logSince(since)).map((r) => [r.actor_kind, r.actor_detail, r.table_name, r.action, r.changed_columns]),
    ).toEqual([
      ["webhook", "twilio", "contacts", "update", ["sms_subscribed"]],
      [
        "webhook",
        "twilio",
        "suppressions",
        "insert",
        expect.arrayContaining(["address_encrypted", "address_hash", "reason"]),
      ],
    ]);
  });

  it("names a platform operator: through GraphQL by the operator's user id, in psql by the database login", async () => {
    let since = await lastId();
    const { body } = await graphql(
      api.current,
      tokens.admin,
      `
        mutation ($t: UUID!) {
          suspendTenant(input: { tenantId: $t, reason: "unpaid invoice" }) {
            tenant {
              status
            }
          }
        }
      `,
      { t: b.id },
    );
    expect(body.errors).toBeUndefined();
    expect(await logSince(since)).toEqual([
      expect.objectContaining({
        tenant_id: b.id,
        actor_kind: "admin",
        actor_id: operatorId,
        table_name: "tenants",
        action: "update",
        record_id: b.id,
        changed_columns: ["status", "suspended_at", "suspension_reason"],
      }),
    ]);
    await graphql(
      api.current,
      tokens.admin,
      `
        mutation ($t: UUID!) {
          resumeTenant(input: { tenantId: $t }) {
            tenant {
              status
            }
          }
        }
      `,
      { t: b.id },
    );

    since = await lastId();
    await asRoot(db.current, async (c) => {
      await c.query("set local role herald_admin");
      await c.query("update herald_public.tenants set name = 'Tenant B, Inc.' where id = $1", [b.id]);
    });
    // Not through SET ROLE: the login acting as itself.
    await asRoot(db.current, (c) =>
      c.query("update herald_public.tenants set name = 'Tenant B' where id = $1", [b.id]),
    );
    // A membership, through the audited function (operators write none directly), names the login too.
    await asRoot(db.current, (c) =>
      c.query("select herald_private.grant_membership($1, $2, 'member')", [b.id, operatorId]),
    );
    const rows = await logSince(since);
    const login = (await db.current.root.query("select session_user as u")).rows[0].u;
    expect(rows.map((r) => [r.actor_kind, r.actor_id, r.db_user, r.action, r.changed_columns])).toEqual([
      ["admin", null, login, "update", ["name"]],
      ["operator", null, login, "update", ["name"]],
      ["operator", null, login, "insert", ["role", "tenant_id", "user_id"]],
    ]);
  });

  it("names a token that carries no user as a user without an id, not as an API key", async () => {
    const since = await lastId();
    const token = await api.current.authenticator.sign({ role: ROLES.member, tenant_id: a.id });
    const { body } = await graphql(
      api.current,
      token,
      `
        mutation {
          createTag(input: { tag: { name: "machine" } }) {
            tag {
              rowId
            }
          }
        }
      `,
    );
    expect(body.errors).toBeUndefined();
    expect((await logSince(since)).map((r) => [r.actor_kind, r.actor_id, r.actor_detail])).toEqual([
      ["user", null, "a token without a user"],
    ]);
  });

  it("logs a change to a user (global) in every tenant the user belongs to, and a new password by name only", async () => {
    // B's owner also belongs to A.
    await asRoot(db.current, (c) =>
      c.query("insert into herald_public.memberships (tenant_id, user_id, role) values ($1, $2, 'member')", [
        a.id,
        b.ownerId,
      ]),
    );
    const since = await lastId();
    const { body } = await graphql(
      api.current,
      tokens.admin,
      `
        mutation ($u: UUID!) {
          updateUserByRowId(input: { rowId: $u, userPatch: { email: "renamed@tenant-b.test" } }) {
            user {
              email
            }
          }
        }
      `,
      { u: b.ownerId },
    );
    expect(body.errors).toBeUndefined();
    await asRoot(db.current, (c) =>
      c.query("select herald_private.set_user_password($1, 'a-new-password-1234')", [b.ownerId]),
    );
    const rows = await logSince(since);
    expect(rows.map((r) => [r.tenant_id, r.actor_kind, r.table_name, r.record_id, r.changed_columns]).sort()).toEqual(
      [
        [a.id, "admin", "users", b.ownerId, ["email"]],
        [b.id, "admin", "users", b.ownerId, ["email"]],
        [a.id, "operator", "user_passwords", b.ownerId, ["password_hash"]],
        [b.id, "operator", "user_passwords", b.ownerId, ["password_hash"]],
      ].sort(),
    );
    expect(JSON.stringify(rows)).not.toMatch(/renamed@|a-new-password/);
  });

  it("logs deletes, and erasing what a person wrote", async () => {
    const { body } = await graphql(
      api.current,
      tokens.owner,
      `
        mutation {
          createTag(input: { tag: { name: "short-lived" } }) {
            tag {
              rowId
            }
          }
        }
      `,
    );
    const tagId = body.data!.createTag.tag.rowId;
    const since = await lastId();
    await graphql(
      api.current,
      tokens.owner,
      `mutation($t: UUID!) { deleteTagByTenantIdAndRowId(input: { tenantId: "${a.id}", rowId: $t }) { tag { rowId } } }`,
      { t: tagId },
    );
    const erased = await graphql(
      api.current,
      tokens.owner,
      `mutation($m: UUID!) { deleteInboundMessageByTenantIdAndRowId(input: { tenantId: "${a.id}", rowId: $m }) { inboundMessage { rowId } } }`,
      { m: a.inboundMessageId },
    );
    expect(erased.body.errors).toBeUndefined();
    expect(
      (await logSince(since)).map((r) => [r.actor_kind, r.action, r.table_name, r.record_id, r.changed_columns]),
    ).toEqual([
      ["user", "delete", "tags", tagId, []],
      ["user", "delete", "inbound_messages", a.inboundMessageId, []],
    ]);
  });

  it("writes nothing for an update that changes nothing, or only what Herald stamps (an API key's last use)", async () => {
    const since = await lastId();
    await asRoot(db.current, async (c) => {
      await c.query("update herald_public.tags set name = name where tenant_id = $1", [a.id]);
      await c.query("update herald_public.api_keys set last_used_at = now() where id = $1", [a.apiKeyId]);
    });
    expect(await logSince(since)).toEqual([]);
  });

  it("logs an import of a thousand contacts as a thousand rows, from one statement", async () => {
    const since = await lastId();
    const docs = Array.from({ length: 1000 }, (_, i) => ({
      phone: `+1628559${String(1000 + i)}`,
      email: `bulk${i}@example.com`,
    }));
    await asWorker(db.current, a, (c) => c.query("select herald_hidden.upsert_contacts($1)", [JSON.stringify(docs)]));
    const rows = await logSince(since);
    expect(rows).toHaveLength(1000);
    expect(new Set(rows.map((r) => r.record_id)).size).toBe(1000);
    // Imported again with a change: the upsert's update names the one column that changed.
    const again = await lastId();
    await asWorker(db.current, a, (c) =>
      c.query("select herald_hidden.upsert_contacts($1)", [
        JSON.stringify(docs.map((d, i) => ({ ...d, first_name: `Bulk ${i}` }))),
      ]),
    );
    const updates = await logSince(again);
    expect(updates).toHaveLength(1000);
    expect(new Set(updates.map((r) => `${r.action} ${r.changed_columns.join(",")}`))).toEqual(
      new Set(["update first_name"]),
    );
  });

  it("names exactly the columns an insert set and an update changed, as the values' own text would", async () => {
    const since = await lastId();
    const [contact] = await asWorker(db.current, a, async (c) => {
      const { rows } = await c.query("select contact_id from herald_hidden.upsert_contacts($1)", [
        JSON.stringify([{ email: "columns@example.com", first_name: "Col", attributes: { tier: 1 } }]),
      ]);
      return rows.map((r) => r.contact_id as string);
    });
    await asRoot(db.current, async (c) => {
      // The same JSON object written differently: no change.
      await c.query(
        `update herald_public.contacts set attributes = '{ "tier" : 1 }' where tenant_id = $1 and id = $2`,
        [a.id, contact],
      );
      // A citext name whose case alone changes: its text changed, so it is logged (as it always was).
      await c.query("insert into herald_public.tags (tenant_id, name) values ($1, 'Columns')", [a.id]);
      await c.query("update herald_public.tags set name = 'COLUMNS' where tenant_id = $1 and name = 'columns'", [a.id]);
    });
    const rows = (await logSince(since)).map((r) => [r.action, r.table_name, r.changed_columns]);
    expect(rows).toEqual([
      [
        "insert",
        "contacts",
        [
          "attributes",
          "created_by_inbound",
          "created_by_send",
          "email_encrypted",
          "email_hash",
          "email_subscribed",
          "first_name",
          "hash_version",
          "id",
          "key_version",
          "sms_opt_in_pending",
          "sms_subscribed",
          "tenant_id",
          "whatsapp_subscribed",
        ],
      ],
      ["insert", "tags", ["id", "name", "tenant_id"]],
      ["update", "tags", ["name"]],
    ]);
  });
});

describe("what it keeps", () => {
  it("holds no phone number or email of any contact, nor any message text", async () => {
    // Its own plaintext to look for: a template, a message, a HELP text, an inbound message, a contact's name and address.
    // Each write must succeed, and its words be stored, for their absence from the log to mean anything.
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- results are read loosely, as in the other tests
    const succeeded = async (request: Promise<GraphQLResponse<Record<string, any>>>) => {
      const { body } = await request;
      expect(body.errors).toBeUndefined();
      return body.data!;
    };
    const template = await succeeded(
      graphql(
        api.current,
        tokens.owner,
        `
          mutation {
            createTemplate(
              input: { template: { channel: "sms", name: "audited template", body: "Template words 4471" } }
            ) {
              template {
                rowId
              }
            }
          }
        `,
      ),
    );
    const contact = await succeeded(
      graphql(
        api.current,
        tokens.owner,
        `
          mutation {
            createContact(
              input: { firstName: "Plaintextname", phone: "+14155550179", email: "plain@audited.example" }
            ) {
              contact {
                rowId
              }
            }
          }
        `,
      ),
    );
    const contactId = contact.createContact.contact.rowId;
    // Scheduled far ahead (within the year Herald allows): it stays a request, its text in the message.
    const message = await succeeded(
      graphql(
        api.current,
        tokens.owner,
        `
          mutation ($c: UUID!, $at: Datetime!) {
            sendMessage(input: { channel: "sms", body: "Message words 8812", contactIds: [$c], scheduledAt: $at }) {
              message {
                rowId
              }
            }
          }
        `,
        {
          c: contactId,
          at: new Date(Date.now() + 300 * 86_400_000).toISOString(),
        },
      ),
    );
    await succeeded(
      graphql(
        api.current,
        tokens.owner,
        `mutation { updateTenantSettingByTenantId(input: { tenantId: "${a.id}", tenantSettingPatch: { helpText: "Help words 5531" } }) { tenantSetting { helpText } } }`,
      ),
    );
    await succeeded(
      graphql(
        api.current,
        tokens.owner,
        `
          mutation ($c: UUID!) {
            updateContact(rowId: $c, patch: { email: "changed@audited.example" }) {
              contact {
                rowId
              }
            }
          }
        `,
        { c: contactId },
      ),
    );
    expect((await textIn(api.current, a, { from: "+14155550179", body: "Inbound words 6620" })).status).toBe(200);
    const {
      rows: [stored],
    } = await db.current.root.query(
      `select (select body from herald_public.templates where id = $1) as template,
              (select body from herald_public.messages where id = $2) as message,
              (select help_text from herald_public.tenant_settings where tenant_id = $3) as help`,
      [template.createTemplate.template.rowId, message.sendMessage.message.rowId, a.id],
    );
    expect(stored).toEqual({ template: "Template words 4471", message: "Message words 8812", help: "Help words 5531" });
    expect(await textsFrom("+14155550179")).toEqual(["Inbound words 6620"]);
    for (const word of [
      "Template words",
      "Message words",
      "Help words",
      "Inbound words",
      "Plaintextname",
      "plain@audited",
      "changed@audited",
      "4155550179",
    ]) {
      const { rows } = await db.current.root.query(
        "select count(*)::int as n from herald_public.audit_log l where row_to_json(l)::text ilike $1",
        [`%${word}%`],
      );
      expect(rows[0].n, word).toBe(0);
    }
    // The changes were logged, by column name.
    const { rows: logged } = await db.current.root.query(
      "select table_name, changed_columns from herald_public.audit_log where record_id = $1 and action = 'update'",
      [contactId],
    );
    expect(logged).toEqual([
      { table_name: "contacts", changed_columns: expect.arrayContaining(["email_encrypted", "email_hash"]) },
    ]);
    // Everything the tenant's contacts are: phones and emails decrypted as the tenant would read them.
    const addresses = await asWorker(db.current, a, async (c) =>
      (
        await c.query(
          "select herald_public.contacts_phone(c) as phone, herald_public.contacts_email(c) as email from herald_public.contacts c",
        )
      ).rows
        .flatMap((r) => [r.phone, r.email])
        .filter(Boolean),
    );
    expect(addresses.length).toBeGreaterThan(1000);
    const { rows } = await db.current.root.query("select row_to_json(l)::text as line from herald_public.audit_log l");
    expect(rows.length).toBeGreaterThan(1000);
    const log = rows.map((r) => r.line).join("\n");
    const leaked = addresses.filter(
      (address: string) => log.includes(address) || log.includes(address.replace(/^\+/, "")),
    );
    expect(leaked).toEqual([]);
    expect(log).not.toMatch(/STOP|Keyed|Worked/);
  });
});

describe("who reads it, and that nobody changes it", () => {
  it("a tenant's owners read their own tenant's log; a plain member, an API key and another tenant see none of it", async () => {
    const query = "{ allAuditLogs(first: 1000) { totalCount nodes { tenantId actorKind tableName changedColumns } } }";
    /** The tenants whose rows a log read returned: exactly one, never none. */
    const tenantsOf = (nodes: { tenantId: string }[]) => [...new Set(nodes.map((n) => n.tenantId))];
    const own = await graphql(api.current, tokens.owner, query);
    expect(own.body.errors).toBeUndefined();
    expect(own.body.data!.allAuditLogs.totalCount).toBeGreaterThan(0);
    expect(tenantsOf(own.body.data!.allAuditLogs.nodes)).toEqual([a.id]);
    for (const token of [tokens.member, a.apiKeySecret]) {
      expect((await graphql(api.current, token, query)).body.data!.allAuditLogs.totalCount).toBe(0);
    }
    const other = await graphql(api.current, tokens.ownerB, query);
    expect(other.body.errors).toBeUndefined();
    expect(tenantsOf(other.body.data!.allAuditLogs.nodes)).toEqual([b.id]);
    // Operators read every tenant's.
    const all = await graphql(
      api.current,
      tokens.admin,
      '{ a: allAuditLogs(condition: { tenantId: "' +
        a.id +
        '" }) { totalCount } b: allAuditLogs(condition: { tenantId: "' +
        b.id +
        '" }) { totalCount } }',
    );
    expect(all.body.data!.a.totalCount).toBeGreaterThan(0);
    expect(all.body.data!.b.totalCount).toBeGreaterThan(0);
  });

  it("no role may insert, update or delete a log row", async () => {
    for (const who of [
      { role: ROLES.member, tenantId: a.id, userId: a.ownerId },
      { role: ROLES.worker, tenantId: a.id },
      { role: ROLES.admin },
    ] as const) {
      await asRole(db.current, who, async (c) => {
        for (const sql of [
          "update herald_public.audit_log set changed_columns = '{}'",
          "delete from herald_public.audit_log",
          `insert into herald_public.audit_log (tenant_id, actor_kind, db_user, action, table_name, record_id) values ('${a.id}', 'user', 'x', 'insert', 'tags', 'x')`,
        ]) {
          const error = await expectPgError(c, () => c.query(sql));
          expect(error?.code, `${who.role}: ${sql}`).toBe("42501");
        }
      });
    }
  });
});
