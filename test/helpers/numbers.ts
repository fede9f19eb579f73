import { inTransaction } from "../../src/db/session.ts";
import { verifySenderNumber } from "../../src/numbers/verify.ts";
import { SANDBOX_SYSTEM_TWILIO } from "../../src/sandbox/sandbox.ts";
import { startSandboxServer, type SandboxServer } from "../../src/sandbox/server.ts";
import { withWorkerSession } from "../../src/worker/tenant-context.ts";
import type { TestDb } from "./db.ts";
import { testKeyring } from "./keys.ts";

/**
 * Sender numbers are `pending` until the provider confirms them. Tests that
 * register numbers give them the real path to verified: the sandbox's Twilio
 * account (the tenant's, with its credential; or the system's pool) holds the
 * number, and the verification itself — src/numbers/verify.ts, what the
 * sender_numbers__verify task runs — asks the sandbox and records the answer.
 * The job the registration queued is then removed, so that no later worker
 * of the file re-checks it against a sandbox that never heard of the number.
 */

interface PendingNumber {
  id: string;
  tenant_id: string;
  phone_number: string;
  channel: "sms" | "whatsapp";
  provider_account_id: string | null;
  account_sid: string | null;
  api_key_sid: string | null;
  kind: string | null;
}

/**
 * Proves every pending number (or those of `phoneNumbers`) through a sandbox
 * (`sandbox`, or one of its own for the call); returns each number's status.
 */
export async function proveSenderNumbers(
  db: TestDb,
  options: { phoneNumbers?: string[]; sandbox?: SandboxServer } = {},
): Promise<Record<string, string>> {
  const { rows } = await db.root.query<PendingNumber>(
    `select n.id, n.tenant_id, n.phone_number, n.channel, n.provider_account_id, a.twilio_account_sid as account_sid,
            a.twilio_api_key_sid as api_key_sid, a.kind
       from herald_public.sender_numbers n
       left join herald_public.provider_accounts a on a.tenant_id = n.tenant_id and a.id = n.provider_account_id
      where n.status = 'pending' and ($1::text[] is null or n.phone_number = any ($1))`,
    [options.phoneNumbers ?? null],
  );
  const server = options.sandbox ?? (await startSandboxServer(10));
  const statuses: Record<string, string> = {};
  try {
    for (const number of rows) {
      const status = await withWorkerSession(db.authenticator, testKeyring(), number.tenant_id, async (client) => {
        if (number.account_sid) {
          const { rows: secret } = await client.query<{ secret: string }>(
            "select secret from herald_hidden.provider_account_secret($1)",
            [number.provider_account_id],
          );
          server.sandbox.addTwilioAccount(number.api_key_sid ?? number.account_sid, secret[0]!.secret);
        }
        // A Meta account's number is the one its phone number id sends from: the test registers
        // that account with the sandbox's Graph API (`displayPhoneNumber`); nothing to hand over here.
        if (number.kind !== "meta")
          server.sandbox.numbers.assign(
            number.account_sid ?? SANDBOX_SYSTEM_TWILIO.accountSid,
            number.phone_number,
            number.channel,
          );
        return verifySenderNumber(client, server.clients, number.id);
      });
      statuses[`${number.channel}:${number.phone_number}`] = status ?? "missing";
      await inTransaction(db.root, (c) =>
        c.query("select graphile_worker.remove_job($1)", [`sender_number_verify:${number.id}`]),
      );
    }
  } finally {
    if (!options.sandbox) await server.close();
  }
  return statuses;
}

/** The tenant's SMS sender number takes WhatsApp too, on the same Twilio account, proven like any number. */
export async function addWhatsAppSender(
  db: TestDb,
  sandbox: SandboxServer,
  t: { id: string; senderNumber: string; providerAccountId: string },
): Promise<void> {
  await db.root.query(
    "insert into herald_public.sender_numbers (tenant_id, phone_number, channel, provider_account_id) values ($1, $2, 'whatsapp', $3)",
    [t.id, t.senderNumber, t.providerAccountId],
  );
  await proveSenderNumbers(db, { phoneNumbers: [t.senderNumber], sandbox });
}
