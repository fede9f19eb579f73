import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { importContacts } from "../src/contacts/import.ts";
import { graphql, tokenFor, useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import type { TenantFixture } from "./helpers/fixtures.ts";
import { DEFAULT_START, useInboundTenants } from "./helpers/inbound.ts";
import { testKeyring } from "./helpers/keys.ts";
import { asWorker } from "./helpers/messaging.ts";
import { webhookEnv } from "./helpers/webhooks.ts";

/**
 * Consent changed by the tenant — a GraphQL update, upsertContacts, a CSV
 * import — is recorded as consent events with their source; the contact's own
 * keywords keep recording theirs (once). Optional SMS double opt-in: the
 * tenant's subscription waits for the contact's START or YES.
 */

const db = useTestDatabase();
const api = useApiServer(db, { env: () => webhookEnv() });
const { tenants, freshPhone, text, consentOf } = useInboundTenants(db, api);
let a: TenantFixture;
let token: string;
let dir: string;

beforeAll(async () => {
  a = tenants.a;
  token = await tokenFor(api.current, a, "owner");
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "herald-consent-"));
});

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const CONTACT = "contact { rowId smsSubscribed emailSubscribed whatsappSubscribed smsOptInPending smsConsent }";

async function create(input: Record<string, unknown>) {
  const r = await graphql(
    api.current,
    token,
    `mutation ($input: ContactFields!) { createContact(input: $input) { ${CONTACT} } }`,
    { input },
  );
  expect(r.body.errors).toBeUndefined();
  return r.body.data!.createContact.contact;
}

async function update(rowId: string, patch: Record<string, unknown>) {
  const r = await graphql(
    api.current,
    token,
    `mutation ($rowId: UUID!, $patch: ContactFields!) { updateContact(rowId: $rowId, patch: $patch) { ${CONTACT} } }`,
    { rowId, patch },
  );
  expect(r.body.errors).toBeUndefined();
  return r.body.data!.updateContact.contact;
}

describe("consent events from the tenant's changes", () => {
  it("through the API: each change of smsSubscribed, emailSubscribed, whatsappSubscribed, with source api", async () => {
    const contact = await create({ phone: freshPhone(), firstName: "Ada" });
    // Defaults (SMS and email yes, WhatsApp no) are no change of anyone's consent.
    expect((await consentOf(a, contact.rowId)).events).toEqual([]);
    await update(contact.rowId, { smsSubscribed: false, whatsappSubscribed: true });
    await update(contact.rowId, { firstName: "Ada L." }); // no consent change: no event
    await update(contact.rowId, { emailSubscribed: false, smsSubscribed: true });
    const events = (await consentOf(a, contact.rowId)).events;
    expect(events).toHaveLength(4);
    expect(events.slice(0, 2)).toEqual(
      expect.arrayContaining([
        { channel: "sms", action: "opt_out", source: "api", detail: null },
        { channel: "whatsapp", action: "opt_in", source: "api", detail: null },
      ]),
    );
    expect(events.slice(2)).toEqual(
      expect.arrayContaining([
        { channel: "email", action: "opt_out", source: "api", detail: null },
        { channel: "sms", action: "opt_in", source: "api", detail: null },
      ]),
    );
    // Created unsubscribed: that is a choice, recorded too.
    const quiet = await create({ email: "quiet@example.org", emailSubscribed: false });
    expect((await consentOf(a, quiet.rowId)).events).toEqual([
      { channel: "email", action: "opt_out", source: "api", detail: null },
    ]);
  });

  it("through upsertContacts, with source upsert", async () => {
    const existing = await create({ phone: freshPhone() });
    const fresh = freshPhone();
    const r = await graphql(
      api.current,
      token,
      `
        mutation ($contacts: [ContactFields!]!) {
          upsertContacts(contacts: $contacts) {
            results {
              action
              contact {
                rowId
              }
            }
          }
        }
      `,
      { contacts: [{ phone: fresh, smsSubscribed: false }] },
    );
    expect(r.body.errors).toBeUndefined();
    const inserted = r.body.data!.upsertContacts.results[0].contact.rowId;
    const r2 = await graphql(
      api.current,
      token,
      `
        mutation ($contacts: [ContactFields!]!) {
          upsertContacts(contacts: $contacts) {
            results {
              action
            }
          }
        }
      `,
      { contacts: [{ phone: fresh, emailSubscribed: false }] },
    );
    expect(r2.body.errors).toBeUndefined();
    expect((await consentOf(a, inserted)).events).toEqual([
      { channel: "sms", action: "opt_out", source: "upsert", detail: null },
      { channel: "email", action: "opt_out", source: "upsert", detail: null },
    ]);
    // A later API change in the same tenant is `api` again: the source does not leak.
    await update(existing.rowId, { smsSubscribed: false });
    expect((await consentOf(a, existing.rowId)).events).toEqual([
      { channel: "sms", action: "opt_out", source: "api", detail: null },
    ]);
  });

  it("through a CSV import, with source import", async () => {
    const [one, two] = [freshPhone(), freshPhone()];
    const file = path.join(dir, "consent.csv");
    fs.writeFileSync(file, `phone,first name,sms subscribed\n${one},One,no\n${two},Two,yes\n`);
    const summary = await importContacts({
      pool: db.current.authenticator,
      keyring: testKeyring(),
      tenantId: a.id,
      file,
      rejectsFile: path.join(dir, "consent.rejects.csv"),
    });
    expect(summary).toMatchObject({ inserted: 2, rejected: 0 });
    const ids = await asWorker(db.current, a, async (c) => {
      const { rows } = await c.query<{ id: string; first_name: string }>(
        "select id, first_name from herald_public.contacts where first_name in ('One', 'Two') order by first_name",
      );
      return rows.map((r) => r.id);
    });
    expect((await consentOf(a, ids[0]!)).events).toEqual([
      { channel: "sms", action: "opt_out", source: "import", detail: null },
    ]);
    expect((await consentOf(a, ids[1]!)).events).toEqual([]);
    // Imported again with SMS switched back on: the change is recorded, as an import.
    fs.writeFileSync(file, `phone,sms subscribed\n${one},yes\n`);
    await importContacts({
      pool: db.current.authenticator,
      keyring: testKeyring(),
      tenantId: a.id,
      file,
      rejectsFile: path.join(dir, "consent.rejects.csv"),
    });
    expect((await consentOf(a, ids[0]!)).events).toEqual([
      { channel: "sms", action: "opt_out", source: "import", detail: null },
      { channel: "sms", action: "opt_in", source: "import", detail: null },
    ]);
  });

  it("the contact's own STOP and START are recorded once, by the keyword, not again as the tenant's", async () => {
    const phone = freshPhone();
    const contact = await create({ phone });
    await text(phone, "STOP");
    await text(phone, "START");
    expect((await consentOf(a, contact.rowId)).events).toEqual([
      { channel: "sms", action: "opt_out", source: "keyword", detail: "STOP" },
      { channel: "sms", action: "opt_in", source: "keyword", detail: "START" },
    ]);
  });
});

describe("SMS double opt-in", () => {
  const setDoubleOptIn = async (on: boolean) => {
    const r = await graphql(
      api.current,
      token,
      `
        mutation ($id: UUID!, $on: Boolean!) {
          updateTenantSettingByTenantId(input: { tenantId: $id, tenantSettingPatch: { smsDoubleOptIn: $on } }) {
            tenantSetting {
              smsDoubleOptIn
            }
          }
        }
      `,
      { id: a.id, on },
    );
    expect(r.body.errors).toBeUndefined();
    expect(r.body.data!.updateTenantSettingByTenantId.tenantSetting.smsDoubleOptIn).toBe(on);
  };

  it("a new SMS subscription is pending, gets no marketing SMS, and the contact's YES confirms it", async () => {
    await setDoubleOptIn(true);
    try {
      const phone = freshPhone();
      const contact = await create({ phone, smsSubscribed: true });
      expect(contact).toMatchObject({ smsSubscribed: false, smsOptInPending: true, smsConsent: "pending" });
      expect((await consentOf(a, contact.rowId)).events).toEqual([
        { channel: "sms", action: "opt_in", source: "api", detail: "pending: awaiting START or YES" },
      ]);
      // Editing the contact leaves it pending; setting smsSubscribed again does not subscribe it either.
      expect(await update(contact.rowId, { firstName: "Pat", smsSubscribed: true })).toMatchObject({
        smsSubscribed: false,
        smsOptInPending: true,
      });

      // A marketing text to them: skipped as not subscribed (the fan-out's own check).
      const messageId = (
        await graphql(
          api.current,
          token,
          `
            mutation ($input: SendMessageInput!) {
              sendMessage(input: $input) {
                message {
                  rowId
                }
              }
            }
          `,
          { input: { channel: "sms", body: "Sale!", contactIds: [contact.rowId] } },
        )
      ).body.data!.sendMessage.message.rowId as string;
      const skipped = await asWorker(db.current, a, async (c) => {
        await c.query("select * from herald_hidden.fan_out_batch($1, 100, null, 1)", [messageId]);
        const { rows } = await c.query("select status, reason from herald_public.deliveries where message_id = $1", [
          messageId,
        ]);
        return rows;
      });
      expect(skipped).toEqual([{ status: "skipped", reason: "unsubscribed" }]);

      // The contact replies YES: subscribed, no longer pending.
      const reply = await text(phone, "YES");
      expect(reply.replies).toEqual([DEFAULT_START]);
      const confirmed = await update(contact.rowId, {});
      expect(confirmed).toMatchObject({ smsSubscribed: true, smsOptInPending: false, smsConsent: "subscribed" });
      expect((await consentOf(a, contact.rowId)).events).toEqual([
        { channel: "sms", action: "opt_in", source: "api", detail: "pending: awaiting START or YES" },
        { channel: "sms", action: "opt_in", source: "keyword", detail: "YES" },
      ]);
    } finally {
      await setDoubleOptIn(false);
    }
  });

  it("STOP from a pending contact ends it; without double opt-in a subscription is immediate", async () => {
    await setDoubleOptIn(true);
    let pendingId: string;
    let phone: string;
    try {
      phone = freshPhone();
      pendingId = (await create({ phone, smsSubscribed: true })).rowId;
      await text(phone, "STOP");
      expect(await update(pendingId, {})).toMatchObject({ smsSubscribed: false, smsOptInPending: false });
    } finally {
      await setDoubleOptIn(false);
    }
    const immediate = await create({ phone: freshPhone() });
    expect(immediate).toMatchObject({ smsSubscribed: true, smsOptInPending: false, smsConsent: "subscribed" });
  });

  it("an import into a tenant with double opt-in: new SMS subscriptions are pending, recorded as the import's", async () => {
    await setDoubleOptIn(true);
    try {
      const file = path.join(dir, "pending.csv");
      fs.writeFileSync(file, `phone,first name\n${freshPhone()},Imported Pending\n`);
      await importContacts({
        pool: db.current.authenticator,
        keyring: testKeyring(),
        tenantId: a.id,
        file,
        rejectsFile: path.join(dir, "pending.rejects.csv"),
      });
    } finally {
      await setDoubleOptIn(false);
    }
    const [row] = await asWorker(db.current, a, async (c) => {
      const { rows } = await c.query(
        "select id, sms_subscribed, sms_opt_in_pending from herald_public.contacts where first_name = 'Imported Pending'",
      );
      return rows;
    });
    expect(row).toMatchObject({ sms_subscribed: false, sms_opt_in_pending: true });
    expect((await consentOf(a, row.id)).events).toEqual([
      { channel: "sms", action: "opt_in", source: "import", detail: "pending: awaiting START or YES" },
    ]);
  });
});
