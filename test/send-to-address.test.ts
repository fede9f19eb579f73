import { parsePhoneNumberFromString } from "libphonenumber-js/max";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { WorkerHandle } from "../src/worker/worker.ts";
import { graphql, tokenFor, useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedExtraTenant, type TenantFixture } from "./helpers/fixtures.ts";
import {
  asOwner,
  readyToSend,
  settled,
  startSandboxServer,
  startSendingWorker,
  type SandboxServer,
} from "./helpers/messaging.ts";

/**
 * sendMessage(to: …): an address as people write it finds the contact holding
 * it (normalised like imports, by keyed hash) or creates one flagged as
 * created by a send; then the normal pipeline: idempotency, suppression.
 */

const db = useTestDatabase();
const api = useApiServer(db);
let server: SandboxServer;
let worker: WorkerHandle;
let t: TenantFixture;
let token: string;

beforeAll(async () => {
  server = await startSandboxServer();
  worker = await startSendingWorker(db.current, server, 4);
  t = await seedExtraTenant(db.current, "to-address");
  await readyToSend(db.current, server, t);
  token = await tokenFor(api.current, t, "owner");
});

afterAll(async () => {
  await worker?.stop();
  await server?.close();
});

const SEND = `
  mutation ($input: SendMessageInput!) {
    sendMessage(input: $input) {
      message {
        rowId
        contactIds
      }
    }
  }
`;

const send = (input: Record<string, unknown>) => graphql(api.current, token, SEND, { input });

const contactsCreatedBySend = async () =>
  (
    await db.current.root.query<{ n: number }>(
      "select count(*)::int as n from herald_public.contacts where tenant_id = $1 and created_by_send",
      [t.id],
    )
  ).rows[0]!.n;

describe("sendMessage(to:)", () => {
  it("a formatted phone and a mixed-case email find the contact that already holds them", async () => {
    const national = parsePhoneNumberFromString(t.contactPhone)!.formatNational(); // e.g. (415) 555-0101
    expect(national).not.toBe(t.contactPhone);
    const bySms = await send({ channel: "sms", body: "Your code is 1234", purpose: "transactional", to: national });
    expect(bySms.body.errors).toBeUndefined();
    expect(bySms.body.data!.sendMessage.message.contactIds).toEqual([t.contactId]);

    const byEmail = await send({
      channel: "email",
      subject: "Receipt",
      body: "Thanks",
      to: `  ${t.contactEmail.toUpperCase()} `,
    });
    expect(byEmail.body.errors).toBeUndefined();
    expect(byEmail.body.data!.sendMessage.message.contactIds).toEqual([t.contactId]);
    expect(await contactsCreatedBySend()).toBe(0);
  });

  it("twice at once with one idempotency key: one contact, one message; the new contact is flagged", async () => {
    const input = {
      channel: "sms",
      body: "Your appointment is tomorrow at 10",
      purpose: "transactional",
      to: "+1 415 555 2671",
      idempotencyKey: "reminder-2671",
    };
    const [one, two] = await Promise.all([send(input), send(input)]);
    expect(one.body.errors).toBeUndefined();
    expect(two.body.errors).toBeUndefined();
    const id = one.body.data!.sendMessage.message.rowId;
    expect(two.body.data!.sendMessage.message.rowId).toBe(id);
    // The same again, written another way: the same request (the address is normalised first).
    const again = await send({ ...input, to: "(415) 555-2671" });
    expect(again.body.errors).toBeUndefined();
    expect(again.body.data!.sendMessage.message.rowId).toBe(id);

    const { rows } = await db.current.root.query(
      "select count(*)::int as n from herald_public.messages where tenant_id = $1 and idempotency_key = 'reminder-2671'",
      [t.id],
    );
    expect(rows[0].n).toBe(1);
    expect(await contactsCreatedBySend()).toBe(1);
    const contact = await graphql(
      api.current,
      token,
      `
        {
          contactByPhone(phone: "+14155552671") {
            rowId
            phone
            createdBySend
            smsSubscribed
          }
        }
      `,
    );
    expect(contact.body.data!.contactByPhone).toMatchObject({
      rowId: one.body.data!.sendMessage.message.contactIds[0],
      phone: "+14155552671",
      createdBySend: true,
    });
    const result = await settled(db.current, id, 20_000);
    expect(result.byStatus).toEqual({ sent: 1 });
    expect(server.sandbox.messages.filter((m) => m.to === "+14155552671")).toHaveLength(1);
  });

  it("to a suppressed address: the delivery is skipped with the reason", async () => {
    await asOwner(db.current, t, (c) =>
      c.query("select herald_public.add_suppression('email', 'blocked@example.org', 'manual', 'asked by phone')"),
    );
    const r = await send({ channel: "email", subject: "Hello", body: "Hi", to: "Blocked@Example.org" });
    expect(r.body.errors).toBeUndefined();
    const result = await settled(db.current, r.body.data!.sendMessage.message.rowId, 20_000);
    expect(result.byReason).toEqual({ "skipped/suppressed": 1 });
    expect(server.sandbox.messages.filter((m) => m.to === "blocked@example.org")).toHaveLength(0);
  });

  it("an invalid address, or one that does not fit the channel, is an error naming `to`; nothing is created", async () => {
    const before = await contactsCreatedBySend();
    for (const [channel, to] of [
      ["sms", "not a number"],
      ["sms", "+1 415 555"],
      ["email", "ada@"],
      ["email", "+1 415 555 2672"],
      ["sms", "ada@example.org"],
    ] as const) {
      const r = await send({ channel, body: "x", ...(channel === "email" ? { subject: "x" } : {}), to });
      expect(r.body.data?.sendMessage ?? null, `${channel} ${to}`).toBeNull();
      expect(r.body.errors?.[0]?.extensions, `${channel} ${to}`).toMatchObject({ field: "to" });
    }
    expect(await contactsCreatedBySend()).toBe(before);
  });

  it("another tenant's contact with the same phone is not used: each tenant gets its own", async () => {
    const other = await seedExtraTenant(db.current, "to-address-other");
    const otherToken = await tokenFor(api.current, other, "owner");
    const r = await graphql(api.current, otherToken, SEND, {
      input: { channel: "sms", body: "Hi", to: t.contactPhone, purpose: "transactional" },
    });
    expect(r.body.errors).toBeUndefined();
    expect(r.body.data!.sendMessage.message.contactIds).not.toContain(t.contactId);
  });
});
