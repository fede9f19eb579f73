import { randomBytes } from "node:crypto";
import type { ApiServer } from "../../src/api/server.ts";
import { metaHubSignature } from "../../src/sandbox/meta.ts";
import type { TestDb } from "./db.ts";
import type { TenantFixture } from "./fixtures.ts";
import { asOwner } from "./messaging.ts";

/** A tenant's Meta (WhatsApp Cloud API) account, made through the real function as its owner, with its WhatsApp number. */
export interface MetaFixture {
  accountId: string;
  phoneNumberId: string;
  accessToken: string;
  appSecret: string;
  verifyToken: string;
  /** The account's WhatsApp sender number (E.164). */
  number: string;
  path: string;
}

let counter = 0;

export async function createMetaAccount(db: TestDb, t: TenantFixture): Promise<MetaFixture> {
  counter++;
  const phoneNumberId = `10${Date.now() % 1_000_000}${counter}`;
  const accessToken = `EAAG${randomBytes(16).toString("hex")}`;
  const appSecret = randomBytes(16).toString("hex");
  const number = `+1415777${String(1000 + counter + (process.pid % 4000)).padStart(4, "0")}`;
  return asOwner(db, t, async (c) => {
    const { rows } = await c.query(
      "select provider_account_id, verify_token from herald_public.create_meta_account('WhatsApp', $1, '2000001', $2, $3)",
      [phoneNumberId, accessToken, appSecret],
    );
    const accountId = rows[0].provider_account_id as string;
    await c.query(
      "insert into herald_public.sender_numbers (phone_number, channel, provider_account_id, messages_per_second) values ($1, 'whatsapp', $2, 1000)",
      [number, accountId],
    );
    return {
      accountId,
      phoneNumberId,
      accessToken,
      appSecret,
      verifyToken: rows[0].verify_token as string,
      number,
      path: `/webhooks/meta/${accountId}`,
    };
  });
}

/** A Cloud API notification for a phone number id: inbound messages and/or statuses. */
export function notification(
  phoneNumberId: string,
  value: { messages?: Record<string, unknown>[]; statuses?: Record<string, unknown>[] },
): string {
  return JSON.stringify({
    object: "whatsapp_business_account",
    entry: [
      {
        id: "2000001",
        changes: [
          {
            field: "messages",
            value: {
              messaging_product: "whatsapp",
              metadata: { display_phone_number: "14157770000", phone_number_id: phoneNumberId },
              ...value,
            },
          },
        ],
      },
    ],
  });
}

let wamids = 0;
export const wamid = () => `wamid.TEST${String(++wamids).padStart(6, "0")}${randomBytes(8).toString("hex")}`;

/** An inbound text from `from` (E.164). */
export const inboundText = (phoneNumberId: string, from: string, body: string, id = wamid()) =>
  notification(phoneNumberId, {
    messages: [
      {
        from: from.replace(/^\+/, ""),
        id,
        timestamp: String(Math.floor(Date.now() / 1000)),
        type: "text",
        text: { body },
      },
    ],
  });

/** POSTs a notification to a Meta webhook path, signed with `appSecret` (null: no signature; a string: that header). */
export async function postMeta(
  api: Pick<ApiServer, "url">,
  path: string,
  body: string,
  signWith: { appSecret: string } | { signature: string | null },
): Promise<{ status: number; body: string }> {
  const signature = "appSecret" in signWith ? metaHubSignature(signWith.appSecret, body) : signWith.signature;
  const response = await fetch(`${api.url}${path}`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      ...(signature === null ? {} : { "x-hub-signature-256": signature }),
    },
    body,
  });
  return { status: response.status, body: await response.text() };
}
