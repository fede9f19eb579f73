import { inject } from "vitest";
import { inTransaction } from "../../src/db/session.ts";
import { ROLES } from "../../src/db/urls.ts";
import type { RequestRole, TestDb } from "./db.ts";
import { seedTwoTenants, type TenantFixture } from "./fixtures.ts";

/**
 * The attack matrix's tables are the catalog's: every table of herald_public
 * and herald_hidden in the migrated template (read by the global setup), not
 * a list kept by hand. What cannot be read from the catalog is each table's
 * fixture below: how to name tenant A's rows and how to insert a row pointing
 * into A. A new table without one fails the matrix, naming the table; add its
 * entry here (and, if the two-tenant fixture has no row of it, seed one in
 * `seedAttackRows`). Which columns a role may read or update is read from the
 * catalog per role (test/isolation.sql.test.ts).
 */

/** The tenant fixture, with a row of the tables the shared fixture does not seed. */
export interface AttackTenant extends TenantFixture {
  emailDomainId: string;
  providerTestId: string;
  providerReportId: string;
  invitationId: string;
  messagingServiceId: string;
  segmentId: string;
  numberRequestId: string;
}

export interface TableSpec {
  table: string;
  /** Predicate selecting tenant A's row(s) by id, with its parameters. */
  victim: (t: AttackTenant) => { where: string; params: unknown[] };
  /** The column naming a row's tenant, or null for a table of no one tenant (users belong to tenants through memberships). */
  tenantKey: "tenant_id" | "id" | null;
  /**
   * The update to try, for roles that may update `column`: set `to` a
   * constant. A constant reads no column, so that without a WHERE clause only
   * the UPDATE policy stands in the way, not the SELECT one. Without it (or for
   * a role that may not update that column), the first column the role may
   * update is set to its DEFAULT, which reads no column either.
   */
  update?: { column: string; to: string };
  /**
   * An insert that points into tenant A, made by `actor` (the attacking user, if
   * any). No RETURNING: that would add the SELECT policy's check and hide a
   * missing WITH CHECK.
   */
  insertInto: (
    victim: AttackTenant,
    actor: string | undefined,
    attacker: AttackTenant,
  ) => { sql: string; params: unknown[] };
}

/** Every exposed table, from the catalog. */
export const exposedTables = (): string[] => inject("exposedTables");

export const hasFixture = (table: string): boolean => FIXTURES.some((s) => s.table === table);

/** The table's fixture; a table the matrix does not know yet fails every test that needs it, saying what to do. */
export function specFor(table: string): TableSpec {
  const spec = FIXTURES.find((s) => s.table === table);
  if (!spec) {
    throw new Error(
      `${table} has no attack fixture: add its entry (victim, tenantKey, insertInto) to FIXTURES in test/helpers/attack-tables.ts, ` +
        "and seed a row of it for both tenants in seedAttackRows if the shared fixture has none",
    );
  }
  return spec;
}

/** Tenants A and B with a row in every exposed table (committed as superuser into this file's database). */
export async function seedAttackTenants(db: TestDb): Promise<{ a: AttackTenant; b: AttackTenant }> {
  const { a, b } = await seedTwoTenants(db);
  return { a: await seedAttackRows(db, a), b: await seedAttackRows(db, b) };
}

/**
 * Rows of the tables the shared fixture leaves empty. Their insert triggers
 * queue jobs; no worker runs on the attack files' databases.
 */
async function seedAttackRows(db: TestDb, t: TenantFixture): Promise<AttackTenant> {
  const rows = await inTransaction(db.root, async (c) => {
    const domain = await c.query<{ id: string }>(
      "insert into herald_public.email_domains (tenant_id, domain, provider_account_id) values ($1, $2, $3) returning id",
      [t.id, `mail.${t.slug}.test`, t.providerAccountId],
    );
    const test = await c.query<{ id: string }>(
      "insert into herald_hidden.provider_tests (tenant_id, provider_account_id) values ($1, $2) returning id",
      [t.id, t.providerAccountId],
    );
    // A status callback acknowledged but not yet applied (no worker runs here).
    const report = await c.query<{ id: string }>(
      `insert into herald_hidden.provider_reports (tenant_id, provider, delivery_id, event, status, dedupe_key)
       values ($1, 'twilio', $2, 'delivered', 'delivered', 'attack-fixture') returning id`,
      [t.id, t.deliveryId],
    );
    // Engagement of the delivery (written by a trigger as the owner; here as superuser).
    await c.query(
      "insert into herald_public.delivery_engagement (tenant_id, delivery_id, opens, clicks) values ($1, $2, 1, 0)",
      [t.id, t.deliveryId],
    );
    // A pending invitation (written as superuser: no request role inserts one itself).
    const invitation = await c.query<{ id: string }>(
      `insert into herald_public.invitations (tenant_id, email, role, token_hash)
       values ($1, $2, 'admin', public.digest($3, 'sha256')) returning id`,
      [t.id, `invited@${t.slug}.test`, `hi_attack-fixture-${t.slug}`],
    );
    // A Twilio Messaging Service (its sync job is queued; no worker runs here).
    const service = await c.query<{ id: string }>(
      `insert into herald_public.messaging_services (tenant_id, provider_account_id, name, service_sid)
       values ($1::uuid, $2, 'Pool', 'MG' || md5($1::text)) returning id`,
      [t.id, t.providerAccountId],
    );
    const segment = await c.query<{ id: string }>(
      `insert into herald_public.segments (tenant_id, name, filter) values ($1, 'attack-fixture', '{"subscribed": {"sms": true}}')
       returning id`,
      [t.id],
    );
    // A broadcast's snapshotted segment member (the worker writes these at fan-out).
    await c.query(
      "insert into herald_hidden.message_segment_members (tenant_id, message_id, contact_id) values ($1, $2, $3)",
      [t.id, t.messageId, t.contactId],
    );
    // A number request no worker has run (search, sync, buy… go through it).
    const request = await c.query<{ id: string }>(
      "insert into herald_public.number_requests (tenant_id, kind, provider_account_id) values ($1, 'sync', $2) returning id",
      [t.id, t.providerAccountId],
    );
    return {
      messagingServiceId: service.rows[0]!.id,
      segmentId: segment.rows[0]!.id,
      numberRequestId: request.rows[0]!.id,
      invitationId: invitation.rows[0]!.id,
      emailDomainId: domain.rows[0]!.id,
      providerTestId: test.rows[0]!.id,
      providerReportId: report.rows[0]!.id,
    };
  });
  return { ...t, ...rows };
}

const FIXTURES: TableSpec[] = [
  {
    table: "herald_public.tenants",
    tenantKey: "id",
    victim: (t) => ({ where: "id = $1", params: [t.id] }),
    update: { column: "name", to: "'pwned'" },
    insertInto: () => ({ sql: "insert into herald_public.tenants (slug, name) values ('evil', 'Evil')", params: [] }),
  },
  {
    table: "herald_public.users",
    tenantKey: null,
    victim: (t) => ({ where: "id = $1", params: [t.memberId] }),
    update: { column: "display_name", to: "'pwned'" },
    insertInto: () => ({ sql: "insert into herald_public.users (email) values ('evil@evil.test')", params: [] }),
  },
  {
    table: "herald_public.memberships",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and user_id = $2", params: [t.id, t.memberId] }),
    update: { column: "role", to: "'owner'" },
    insertInto: (victim, _actor, attacker) => ({
      sql: "insert into herald_public.memberships (tenant_id, user_id, role) values ($1, $2, 'owner')",
      params: [victim.id, attacker.ownerId],
    }),
  },
  {
    table: "herald_public.invitations",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and id = $2", params: [t.id, t.invitationId] }),
    update: { column: "role", to: "'owner'" },
    // An invitation into A for the attacker's own email, as owner: a token B would then hold.
    insertInto: (victim, actor) => ({
      sql: `insert into herald_public.invitations (tenant_id, email, role, token_hash, invited_by)
            values ($1, 'evil@evil.test', 'owner', '\\x00'::bytea, $2)`,
      params: [victim.id, actor ?? null],
    }),
  },
  {
    table: "herald_public.api_keys",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and id = $2", params: [t.id, t.apiKeyId] }),
    update: { column: "revoked_at", to: "now()" },
    // created_by is the actor, so only the tenant clause of the policy can refuse B's owner.
    insertInto: (victim, actor) => ({
      sql: `insert into herald_public.api_keys (tenant_id, name, token_prefix, secret_hash, created_by)
            values ($1, 'evil', 'hk_evil', '\\x00'::bytea, $2)`,
      params: [victim.id, actor ?? null],
    }),
  },
  {
    table: "herald_public.tenant_settings",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1", params: [t.id] }),
    update: { column: "help_text", to: "'pwned'" },
    insertInto: (victim) => ({
      sql: "insert into herald_public.tenant_settings (tenant_id) values ($1)",
      params: [victim.id],
    }),
  },
  {
    table: "herald_hidden.pings",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and id = $2", params: [t.id, t.pingId] }),
    update: { column: "answered_by", to: "'pwned'" },
    insertInto: (victim) => ({ sql: "insert into herald_hidden.pings (tenant_id) values ($1)", params: [victim.id] }),
  },
  {
    table: "herald_public.contacts",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and id = $2", params: [t.id, t.contactId] }),
    update: { column: "first_name", to: "'pwned'" },
    insertInto: (victim) => ({
      sql: "insert into herald_public.contacts (tenant_id, first_name, key_version, hash_version) values ($1, 'evil', 1, 1)",
      params: [victim.id],
    }),
  },
  {
    table: "herald_public.tags",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and id = $2", params: [t.id, t.tagId] }),
    update: { column: "name", to: "'pwned'" },
    insertInto: (victim) => ({
      sql: "insert into herald_public.tags (tenant_id, name) values ($1, 'evil')",
      params: [victim.id],
    }),
  },
  {
    table: "herald_public.contact_tags",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and contact_id = $2", params: [t.id, t.contactId] }),
    // No column of contact_tags is updatable: the grant refuses.
    update: { column: "tag_id", to: "'00000000-0000-4000-8000-000000000000'" },
    insertInto: (victim) => ({
      sql: "insert into herald_public.contact_tags (tenant_id, contact_id, tag_id) values ($1, $2, $3)",
      params: [victim.id, victim.contactId, victim.tagId],
    }),
  },
  {
    table: "herald_public.lists",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and id = $2", params: [t.id, t.listId] }),
    update: { column: "description", to: "'pwned'" },
    insertInto: (victim) => ({
      sql: "insert into herald_public.lists (tenant_id, name) values ($1, 'evil')",
      params: [victim.id],
    }),
  },
  {
    table: "herald_public.list_members",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and list_id = $2", params: [t.id, t.listId] }),
    // No column is updatable: the grant refuses.
    update: { column: "contact_id", to: "'00000000-0000-4000-8000-000000000000'" },
    insertInto: (victim) => ({
      sql: "insert into herald_public.list_members (tenant_id, list_id, contact_id) values ($1, $2, $3)",
      params: [victim.id, victim.listId, victim.contactId],
    }),
  },
  {
    table: "herald_public.provider_accounts",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and id = $2", params: [t.id, t.providerAccountId] }),
    update: { column: "name", to: "'pwned'" },
    insertInto: (victim) => ({
      sql: `insert into herald_public.provider_accounts (tenant_id, kind, name, twilio_account_sid, secret_encrypted, secret_hint, key_version)
            values ($1, 'twilio', 'evil', 'AC00000000000000000000000000000000', '\\x00'::bytea, 'evil', 1)`,
      params: [victim.id],
    }),
  },
  {
    table: "herald_public.sender_numbers",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and id = $2", params: [t.id, t.senderNumberId] }),
    // Members may set a number's pace: the policy must hide A's numbers from them.
    update: { column: "messages_per_second", to: "1" },
    insertInto: (victim) => ({
      sql: "insert into herald_public.sender_numbers (tenant_id, phone_number) values ($1, '+15005550006')",
      params: [victim.id],
    }),
  },
  {
    table: "herald_public.number_requests",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and id = $2", params: [t.id, t.numberRequestId] }),
    // The worker completes requests: only its own tenant's.
    update: { column: "status", to: "'done'" },
    insertInto: (victim) => ({
      sql: "insert into herald_public.number_requests (tenant_id, kind, provider_account_id) values ($1, 'sync', $2)",
      params: [victim.id, victim.providerAccountId],
    }),
  },
  {
    // The fixture's numbers were proven: each has its check row.
    table: "herald_hidden.sender_number_checks",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and sender_number_id = $2", params: [t.id, t.senderNumberId] }),
    insertInto: (victim) => ({
      sql: "insert into herald_hidden.sender_number_checks (tenant_id, action, sender_number_id, owned) values ($1, 'check', $2, true)",
      params: [victim.id, victim.senderNumberId],
    }),
  },
  {
    table: "herald_public.email_senders",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and id = $2", params: [t.id, t.emailSenderId] }),
    // No column is updatable: the grant refuses.
    update: { column: "from_email", to: "'evil@evil.test'" },
    insertInto: (victim) => ({
      sql: "insert into herald_public.email_senders (tenant_id, from_email) values ($1, 'evil@evil.test')",
      params: [victim.id],
    }),
  },
  {
    table: "herald_public.templates",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and id = $2", params: [t.id, t.templateId] }),
    update: { column: "body", to: "'pwned'" },
    insertInto: (victim) => ({
      sql: "insert into herald_public.templates (tenant_id, channel, name, body) values ($1, 'sms', 'evil', 'x')",
      params: [victim.id],
    }),
  },
  {
    table: "herald_public.messages",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and id = $2", params: [t.id, t.messageId] }),
    update: { column: "canceled_at", to: "now()" },
    insertInto: (victim) => ({
      sql: "insert into herald_public.messages (tenant_id, channel, body) values ($1, 'sms', 'x')",
      params: [victim.id],
    }),
  },
  {
    table: "herald_public.deliveries",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and id = $2", params: [t.id, t.deliveryId] }),
    // Not the status: B's own fixture delivery is skipped, and the lifecycle guard refuses moving it.
    update: { column: "reason", to: "'probe'" },
    insertInto: (victim) => ({
      sql: "insert into herald_public.deliveries (tenant_id, message_id, contact_id, channel, status) values ($1, $2, $3, 'sms', 'skipped')",
      params: [victim.id, victim.messageId, victim.contactId],
    }),
  },
  {
    table: "herald_public.suppressions",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and id = $2", params: [t.id, t.suppressionId] }),
    // The worker may re-key suppressions: the policy must hide A's from it.
    update: { column: "key_version", to: "1" },
    insertInto: (victim) => ({
      sql: `insert into herald_public.suppressions (tenant_id, kind, address_encrypted, address_hash, key_version, hash_version, reason)
            values ($1, 'phone', '\\x00'::bytea, '\\x00'::bytea, 1, 1, 'manual')`,
      params: [victim.id],
    }),
  },
  {
    table: "herald_public.inbound_messages",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and id = $2", params: [t.id, t.inboundMessageId] }),
    // The worker may update the encrypted columns (key rotation): the policy must hide A's rows from it.
    update: { column: "key_version", to: "1" },
    insertInto: (victim) => ({
      sql: `insert into herald_public.inbound_messages (tenant_id, channel, to_number, from_encrypted, body_encrypted, key_version, provider_message_id, account)
            values ($1, 'sms', '+14155550000', '\\x00'::bytea, '\\x00'::bytea, 1, 'SMevil', 'system')`,
      params: [victim.id],
    }),
  },
  {
    table: "herald_public.consent_events",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and id = $2", params: [t.id, t.consentEventId] }),
    update: { column: "action", to: "'opt_in'" }, // a record: nobody may update it
    insertInto: (victim) => ({
      sql: "insert into herald_public.consent_events (tenant_id, contact_id, channel, action, source) values ($1, $2, 'sms', 'opt_in', 'keyword')",
      params: [victim.id, victim.contactId],
    }),
  },
  {
    table: "herald_public.delivery_events",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and id = $2", params: [t.id, t.deliveryEventId] }),
    update: { column: "applied", to: "true" },
    insertInto: (victim) => ({
      sql: `insert into herald_public.delivery_events (tenant_id, delivery_id, provider, event, dedupe_key, applied, status)
            values ($1, $2, 'twilio', 'delivered', 'evil', true, 'delivered')`,
      params: [victim.id, victim.deliveryId],
    }),
  },
  {
    table: "herald_public.delivery_engagement",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and delivery_id = $2", params: [t.id, t.deliveryId] }),
    update: { column: "opens", to: "1000" }, // only Herald's trigger writes it
    insertInto: (victim) => ({
      sql: "insert into herald_public.delivery_engagement (tenant_id, delivery_id, opens) values ($1, $2, 1000)",
      params: [victim.id, victim.deliveryId],
    }),
  },
  {
    table: "herald_public.audit_log",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and id = $2", params: [t.id, t.auditLogId] }),
    update: { column: "table_name", to: "'pwned'" }, // append-only: nobody may update it
    insertInto: (victim) => ({
      sql: "insert into herald_public.audit_log (tenant_id, actor_kind, db_user, action, table_name, record_id) values ($1, 'user', 'evil', 'insert', 'tags', 'x')",
      params: [victim.id],
    }),
  },
  {
    table: "herald_public.webhook_endpoints",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and id = $2", params: [t.id, t.webhookEndpointId] }),
    update: { column: "status", to: "'disabled'" }, // a column both members and the worker may update: RLS, not a grant, must stop it
    insertInto: (victim) => ({
      sql: `insert into herald_public.webhook_endpoints (tenant_id, url, event_types, secret_encrypted, secret_hint, key_version)
            values ($1, 'https://evil.example/hook', '{inbound.received}', '\\x00'::bytea, 'evil', 1)`,
      params: [victim.id],
    }),
  },
  {
    table: "herald_public.webhook_deliveries",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and id = $2", params: [t.id, t.webhookDeliveryId] }),
    update: { column: "status", to: "'succeeded'" },
    insertInto: (victim) => ({
      sql: "insert into herald_public.webhook_deliveries (tenant_id, endpoint_id, event_id, event_type, payload) values ($1, $2, gen_random_uuid(), 'inbound.received', '{}')",
      params: [victim.id, victim.webhookEndpointId],
    }),
  },
  {
    table: "herald_hidden.monthly_usage",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1", params: [t.id] }),
    update: { column: "messages", to: "0" },
    insertInto: (victim) => ({
      sql: "insert into herald_hidden.monthly_usage (tenant_id, month) values ($1, '2001-01-01')",
      params: [victim.id],
    }),
  },
  {
    table: "herald_hidden.send_plans",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1", params: [t.id] }),
    update: { column: "next_at", to: "now()" },
    insertInto: (victim) => ({
      sql: "insert into herald_hidden.send_plans (tenant_id, scope, next_at) values ($1, 'evil', now())",
      params: [victim.id],
    }),
  },
  {
    table: "herald_public.email_domains",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and id = $2", params: [t.id, t.emailDomainId] }),
    insertInto: (victim) => ({
      sql: "insert into herald_public.email_domains (tenant_id, domain, provider_account_id) values ($1, 'evil.test', $2)",
      params: [victim.id, victim.providerAccountId],
    }),
  },
  {
    table: "herald_public.messaging_services",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and id = $2", params: [t.id, t.messagingServiceId] }),
    update: { column: "name", to: "'pwned'" },
    insertInto: (victim) => ({
      sql: `insert into herald_public.messaging_services (tenant_id, provider_account_id, name, service_sid)
            values ($1, $2, 'evil', 'MG' || repeat('e', 32))`,
      params: [victim.id, victim.providerAccountId],
    }),
  },
  {
    table: "herald_hidden.provider_tests",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and id = $2", params: [t.id, t.providerTestId] }),
    insertInto: (victim) => ({
      sql: "insert into herald_hidden.provider_tests (tenant_id, provider_account_id) values ($1, $2)",
      params: [victim.id, victim.providerAccountId],
    }),
  },
  {
    table: "herald_hidden.provider_reports",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and id = $2", params: [t.id, t.providerReportId] }),
    insertInto: (victim) => ({
      sql: `insert into herald_hidden.provider_reports (tenant_id, provider, delivery_id, event, status, dedupe_key)
            values ($1, 'twilio', $2, 'delivered', 'delivered', 'evil')`,
      params: [victim.id, victim.deliveryId],
    }),
  },
  {
    table: "herald_public.segments",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and id = $2", params: [t.id, t.segmentId] }),
    update: { column: "name", to: "'pwned'" },
    insertInto: (victim) => ({
      sql: `insert into herald_public.segments (tenant_id, name, filter) values ($1, 'evil', '{"subscribed": {"sms": true}}')`,
      params: [victim.id],
    }),
  },
  {
    table: "herald_hidden.message_segment_members",
    tenantKey: "tenant_id",
    victim: (t) => ({ where: "tenant_id = $1 and message_id = $2", params: [t.id, t.messageId] }),
    // No column is updatable: the grant refuses.
    update: { column: "contact_id", to: "'00000000-0000-4000-8000-000000000000'" },
    insertInto: (victim) => ({
      sql: "insert into herald_hidden.message_segment_members (tenant_id, message_id, contact_id) values ($1, $2, $3)",
      params: [victim.id, victim.messageId, victim.contactId],
    }),
  },
];

/** Every identity tenant B can act as: its owner (a tenant admin), a plain member, an API key (no user), and a worker job. */
export const attackerIdentities = (b: AttackTenant) => [
  { name: "B's owner", role: ROLES.member as RequestRole, tenantId: b.id, userId: b.ownerId },
  { name: "B's member", role: ROLES.member as RequestRole, tenantId: b.id, userId: b.memberId },
  { name: "B's API key", role: ROLES.member as RequestRole, tenantId: b.id, userId: undefined },
  { name: "a worker in B", role: ROLES.worker as RequestRole, tenantId: b.id, userId: undefined },
];
