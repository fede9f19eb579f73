import type pg from "pg";
import { inTransaction, withSession } from "../../src/db/session.ts";
import { ROLES } from "../../src/db/urls.ts";
import type { TestDb } from "./db.ts";
import { testKeyring } from "./keys.ts";
import { proveSenderNumbers } from "./numbers.ts";

/**
 * Two tenants with a row in every table, committed (as superuser) into the
 * file's own database: tenant A is the victim, tenant B the attacker.
 */
export interface TenantFixture {
  id: string;
  slug: string;
  ownerId: string;
  memberId: string;
  apiKeyId: string;
  apiKeySecret: string;
  pingId: string;
  /** One contact (encrypted phone and email), tagged and on a list. */
  contactId: string;
  contactPhone: string;
  contactEmail: string;
  tagId: string;
  listId: string;
  /** A Twilio account (secret `${slug}-twilio-secret`), a sender number on it, an email sender. */
  providerAccountId: string;
  providerSecret: string;
  senderNumberId: string;
  /** That sender number's phone number: where the tenant's contacts text it. */
  senderNumber: string;
  emailSenderId: string;
  /** A template, a message (a request only: its fan-out job is removed), a delivery of it, a suppression. */
  templateId: string;
  messageId: string;
  deliveryId: string;
  suppressionId: string;
  /** The contact's HELP to the sender number (an inbound message and its consent event), and a status callback's event on the delivery. */
  inboundMessageId: string;
  consentEventId: string;
  deliveryEventId: string;
  /** An outbound webhook endpoint (disabled, so that no test's worker posts to it), one delivery logged for it, and an audit log row. */
  webhookEndpointId: string;
  webhookDeliveryId: string;
  auditLogId: string;
}

type TenantRows = Omit<
  TenantFixture,
  | "contactId"
  | "contactPhone"
  | "contactEmail"
  | "tagId"
  | "listId"
  | "providerAccountId"
  | "providerSecret"
  | "senderNumberId"
  | "senderNumber"
  | "emailSenderId"
  | "templateId"
  | "messageId"
  | "deliveryId"
  | "suppressionId"
  | "inboundMessageId"
  | "consentEventId"
  | "deliveryEventId"
  | "webhookEndpointId"
  | "webhookDeliveryId"
  | "auditLogId"
>;

async function seedTenant(client: pg.PoolClient, slug: string, name: string): Promise<TenantRows> {
  const one = async <T extends pg.QueryResultRow>(sql: string, params: unknown[]) =>
    (await client.query<T>(sql, params)).rows[0]!;
  const { id } = await one<{ id: string }>(
    "insert into herald_public.tenants (slug, name) values ($1, $2) returning id",
    [slug, name],
  );
  const owner = await one<{ id: string }>("insert into herald_public.users (email) values ($1) returning id", [
    `owner@${slug}.test`,
  ]);
  const member = await one<{ id: string }>("insert into herald_public.users (email) values ($1) returning id", [
    `member@${slug}.test`,
  ]);
  await client.query(
    "insert into herald_public.memberships (tenant_id, user_id, role) values ($1, $2, 'owner'), ($1, $3, 'member')",
    [id, owner.id, member.id],
  );
  await client.query("select herald_private.set_user_password($1, $2)", [owner.id, `${slug}-password`]);
  // Through the real function, as the tenant's owner would.
  await client.query(
    "select set_config('jwt.claims.tenant_id', $1, true), set_config('jwt.claims.user_id', $2, true)",
    [id, owner.id],
  );
  const key = await one<{ api_key_id: string; secret: string }>(
    "select api_key_id, secret from herald_public.create_api_key($1)",
    [`${slug} key`],
  );
  const ping = await one<{ id: string }>("insert into herald_hidden.pings (tenant_id) values ($1) returning id", [id]);
  return {
    id,
    slug,
    ownerId: owner.id,
    memberId: member.id,
    apiKeyId: key.api_key_id,
    apiKeySecret: key.secret,
    pingId: ping.id,
  };
}

const committed = <T>(db: TestDb, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> => inTransaction(db.root, fn);

let phoneSuffix = 100;

/** The tenant's contact data, written the way the worker would: as herald_worker with the tenant's keys. */
async function seedContacts(db: TestDb, tenant: TenantRows): Promise<TenantFixture> {
  const contactPhone = `+1415555${String(phoneSuffix++).padStart(4, "0")}`;
  const contactEmail = `person@${tenant.slug}.test`;
  const settings = await testKeyring().sessionSettings(db.root, tenant.id);
  // Provider credentials are managed by the tenant's owner, through the real function.
  const providerSecret = `${tenant.slug}-twilio-secret`;
  const senderNumber = `+1415555${String(phoneSuffix + 5000).padStart(4, "0")}`;
  const providers = await withSession(
    db.authenticator,
    { role: ROLES.member, tenantId: tenant.id, userId: tenant.ownerId, settings },
    async (client) => {
      const one = async (sql: string, params: unknown[]) => (await client.query(sql, params)).rows[0];
      const account = await one("select id from herald_public.create_provider_account('twilio', 'Main', $1, $2)", [
        providerSecret,
        `AC${String(phoneSuffix).padStart(32, "0")}`,
      ]);
      const number = await one(
        "insert into herald_public.sender_numbers (phone_number, provider_account_id) values ($1, $2) returning id",
        [senderNumber, account.id],
      );
      const sender = await one(
        "insert into herald_public.email_senders (from_email, provider_account_id) values ($1, $2) returning id",
        [`hello@${tenant.slug}.test`, account.id],
      );
      return {
        providerAccountId: account.id,
        providerSecret,
        senderNumberId: number.id,
        senderNumber,
        emailSenderId: sender.id,
      };
    },
  );
  const audience = await withSession(
    db.authenticator,
    { role: ROLES.worker, tenantId: tenant.id, settings },
    async (client) => {
      const one = async (sql: string, params: unknown[]) => (await client.query(sql, params)).rows[0];
      const contact = await one("select contact_id from herald_hidden.upsert_contacts($1)", [
        JSON.stringify([{ first_name: `Person of ${tenant.slug}`, phone: contactPhone, email: contactEmail }]),
      ]);
      const tag = await one("insert into herald_public.tags (name) values ('vip') returning id", []);
      const list = await one("insert into herald_public.lists (name) values ('newsletter') returning id", []);
      await client.query("insert into herald_public.contact_tags (contact_id, tag_id) values ($1, $2)", [
        contact.contact_id,
        tag.id,
      ]);
      await client.query("insert into herald_public.list_members (contact_id, list_id) values ($1, $2)", [
        contact.contact_id,
        list.id,
      ]);
      return { contactId: contact.contact_id as string, tagId: tag.id as string, listId: list.id as string };
    },
  );
  // Sending, as the owner would: a template, a message to the contact, a suppression.
  const sending = await withSession(
    db.authenticator,
    { role: ROLES.member, tenantId: tenant.id, userId: tenant.ownerId, settings },
    async (client) => {
      const one = async (sql: string, params: unknown[]) => (await client.query(sql, params)).rows[0];
      const template = await one(
        "insert into herald_public.templates (channel, name, body) values ('sms', 'hello', 'Hi {{first_name|there}}') returning id",
        [],
      );
      // Scheduled far ahead, so that no worker running meanwhile starts its fan-out before the job is removed below.
      const message = await one(
        "select id from herald_public.send_message('sms', $1, contact_ids => $2, scheduled_at => now() + interval '300 days')",
        [template.id, [audience.contactId]],
      );
      const suppression = await one("select id from herald_public.add_suppression('email', $1, 'bounce')", [
        `bounced@${tenant.slug}.test`,
      ]);
      return {
        templateId: template.id as string,
        messageId: message.id as string,
        suppressionId: suppression.id as string,
      };
    },
  );
  // The message stays a request (no worker should send it in other tests); its delivery is written as the fan-out would.
  const deliveryId = await committed(db, async (client) => {
    await client.query("select graphile_worker.remove_job($1)", [`message:${sending.messageId}`]);
    await client.query(
      "insert into herald_hidden.monthly_usage (tenant_id, month, messages) values ($1, date_trunc('month', now())::date, 0)",
      [tenant.id],
    );
    await client.query(
      "insert into herald_hidden.send_plans (tenant_id, scope, next_at) values ($1, 'tenant', now())",
      [tenant.id],
    );
    const { rows } = await client.query(
      "insert into herald_public.deliveries (tenant_id, message_id, contact_id, channel, status, reason) values ($1, $2, $3, 'sms', 'skipped', 'fixture') returning id",
      [tenant.id, sending.messageId, audience.contactId],
    );
    return rows[0].id as string;
  });
  // What the webhooks write, through the functions they call (as herald_worker inside the tenant).
  const reported = await withSession(
    db.authenticator,
    { role: ROLES.worker, tenantId: tenant.id, settings },
    async (client) => {
      const one = async (sql: string, params: unknown[]) => (await client.query(sql, params)).rows[0];
      const inbound = await one(
        "select (r).inbound_message_id as id from (select herald_hidden.receive_inbound('sms', $1, $2, 'HELP', $3, 0, 'help', 'HELP') as r) s",
        [senderNumber, contactPhone, `SMfixture${tenant.slug}`],
      );
      const consent = await one("select id from herald_public.consent_events where inbound_message_id = $1", [
        inbound.id,
      ]);
      await client.query(
        "select herald_hidden.apply_delivery_event($1, null, 'twilio', 'delivered', 'delivered', $2, null, null)",
        [deliveryId, `fixture:${tenant.slug}`],
      );
      const event = await one("select id from herald_public.delivery_events where delivery_id = $1", [deliveryId]);
      return {
        inboundMessageId: inbound.id as string,
        consentEventId: consent.id as string,
        deliveryEventId: event.id as string,
      };
    },
  );
  const webhook = await withSession(
    db.authenticator,
    { role: ROLES.member, tenantId: tenant.id, userId: tenant.ownerId, settings },
    async (client) => {
      const { rows } = await client.query(
        "select webhook_endpoint_id from herald_public.create_webhook_endpoint('http://127.0.0.1:9/fixture', array['inbound.received'])",
      );
      return rows[0].webhook_endpoint_id as string;
    },
  );
  const logged = await committed(db, async (client) => {
    await client.query("update herald_public.webhook_endpoints set status = 'disabled' where id = $1", [webhook]);
    const delivery = await client.query(
      "insert into herald_public.webhook_deliveries (tenant_id, endpoint_id, event_id, event_type, payload) values ($1, $2, gen_random_uuid(), 'inbound.received', '{}') returning id",
      [tenant.id, webhook],
    );
    const audit = await client.query(
      "select id::text from herald_public.audit_log where tenant_id = $1 order by id limit 1",
      [tenant.id],
    );
    return {
      webhookEndpointId: webhook,
      webhookDeliveryId: delivery.rows[0].id as string,
      auditLogId: audit.rows[0].id as string,
    };
  });
  return {
    ...tenant,
    ...providers,
    ...audience,
    ...sending,
    ...reported,
    ...logged,
    deliveryId,
    contactPhone,
    contactEmail,
  };
}

export async function seedTwoTenants(db: TestDb): Promise<{ a: TenantFixture; b: TenantFixture }> {
  const tenants = await committed(db, async (client) => ({
    a: await seedTenant(client, "tenant-a", "Tenant A"),
    b: await seedTenant(client, "tenant-b", "Tenant B"),
  }));
  const seeded = { a: await seedContacts(db, tenants.a), b: await seedContacts(db, tenants.b) };
  // Each sender number verified as the provider would confirm it (test/helpers/numbers.ts).
  await proveSenderNumbers(db, { phoneNumbers: [seeded.a.senderNumber, seeded.b.senderNumber] });
  return seeded;
}

/** One more tenant, for a test that changes it (suspends it, removes members…). */
export async function seedExtraTenant(db: TestDb, slug: string): Promise<TenantFixture> {
  const seeded = await seedContacts(db, await committed(db, (client) => seedTenant(client, slug, slug)));
  await proveSenderNumbers(db, { phoneNumbers: [seeded.senderNumber] });
  return seeded;
}
