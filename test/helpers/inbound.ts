import { beforeAll } from "vitest";
import type { ApiServer } from "../../src/api/server.ts";
import { twimlMessages } from "../../src/sandbox/inbound.ts";
import type { TestDb } from "./db.ts";
import { seedTwoTenants, type TenantFixture } from "./fixtures.ts";
import { asRoot, asWorker } from "./messaging.ts";
import { proveSenderNumbers } from "./numbers.ts";
import { contactWith as contactWithPhone, SYSTEM_TWILIO, textIn } from "./webhooks.ts";

/**
 * Two tenants texted on their numbers, for the inbound-SMS suites: each on
 * its own Twilio account, and tenant A also on a number of the system
 * account and a WhatsApp number.
 */

/** A number of A's on the system account (assigned by an operator), signed for with the system's token. */
export const A_SYSTEM_NUMBER = "+14155559900";
export const A_WHATSAPP_NUMBER = "+14155559901";
/** The system's shared sender (HERALD_SMS_FROM's default). */
export const SYSTEM_SENDER = "+15005550006";

/** Herald's default replies, for a tenant that set none of its own. */
export const DEFAULT_STOP =
  "Tenant A: You are unsubscribed and will receive no more messages. Reply START to resubscribe.";
export const DEFAULT_START =
  "Tenant A: You are resubscribed. Msg frequency varies. Msg&data rates may apply. Reply HELP for help, STOP to cancel.";
export const DEFAULT_HELP =
  "Tenant A: account notifications. Msg frequency varies. Msg&data rates may apply. Reply STOP to cancel.";

export interface Consent {
  sms_subscribed: boolean;
  whatsapp_subscribed: boolean;
  suppressed: boolean;
  events: { action: string; source: string; detail: string; channel: string }[];
}

export function useInboundTenants(db: { current: TestDb }, api: { current: ApiServer }) {
  const tenants = {} as { a: TenantFixture; b: TenantFixture };
  /** Each tenant's number on its own Twilio account, and that account's auth token. */
  const numbers = { a: "", b: "" };
  const tokens = { a: "", b: "" };
  beforeAll(async () => {
    Object.assign(tenants, await seedTwoTenants(db.current));
    numbers.a = tenants.a.senderNumber;
    numbers.b = tenants.b.senderNumber;
    tokens.a = tenants.a.providerSecret;
    tokens.b = tenants.b.providerSecret;
    await asRoot(db.current, (c) =>
      c.query(
        "insert into herald_public.sender_numbers (tenant_id, phone_number, channel) values ($1, $2, 'sms'), ($1, $3, 'whatsapp')",
        [tenants.a.id, A_SYSTEM_NUMBER, A_WHATSAPP_NUMBER],
      ),
    );
    await proveSenderNumbers(db.current, { phoneNumbers: [A_SYSTEM_NUMBER, A_WHATSAPP_NUMBER] });
  });

  let phoneCounter = 0;
  /** A phone no earlier test of the file has used. */
  const freshPhone = () => `+1628555${String(1000 + ++phoneCounter).padStart(4, "0")}`;

  /** A phone texts one of A's numbers (by default), signed with the token of the account that owns it. */
  async function text(
    from: string,
    body: string,
    options: { to?: string; token?: string; sid?: string; channel?: "sms" | "whatsapp" } = {},
  ) {
    const to = options.to ?? numbers.a;
    const token =
      options.token ?? (to === numbers.b ? tokens.b : to === numbers.a ? tokens.a : SYSTEM_TWILIO.authToken);
    const result = await textIn(api.current, tenants.a, {
      from,
      body,
      to,
      token,
      sid: options.sid,
      channel: options.channel,
    });
    return { ...result, replies: result.status === 200 ? twimlMessages(result.body) : [] };
  }

  const contactWith = (t: TenantFixture, phone: string, firstName?: string) =>
    contactWithPhone(db.current, t, phone, { firstName });

  /** What the tenant's data says about this contact's consent. */
  const consentOf = (t: TenantFixture, contactId: string) =>
    asWorker(db.current, t, async (c) => {
      const { rows } = await c.query(
        `select c.sms_subscribed, c.whatsapp_subscribed,
                exists (select 1 from herald_public.suppressions s where s.tenant_id = c.tenant_id and s.kind = 'phone' and s.address_hash = c.phone_hash) as suppressed,
                (select coalesce(json_agg(json_build_object('action', e.action, 'source', e.source, 'detail', e.detail, 'channel', e.channel) order by e.created_at), '[]')
                   from herald_public.consent_events e where e.tenant_id = c.tenant_id and e.contact_id = c.id) as events
           from herald_public.contacts c where c.id = $1`,
        [contactId],
      );
      return rows[0] as Consent;
    });

  return { tenants, numbers, tokens, freshPhone, text, contactWith, consentOf };
}
