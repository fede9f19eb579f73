import type pg from "pg";
import type { Config } from "../../config.ts";
import { asAdmin } from "../../db/session.ts";
import type { Logger } from "../../logger.ts";
import { createSandbox, SANDBOX_SYSTEM_TWILIO, type Sandbox } from "../../sandbox/sandbox.ts";
import { persistentEventKeys } from "../../sandbox/event-key.ts";

/**
 * Without provider credentials, the sandbox stands in for Twilio and SendGrid
 * on Herald's own port (`/sandbox`). Development only: in production a
 * missing credential must fail loudly, not be answered by a stand-in (whose
 * endpoints would be public). Undefined when there is no stand-in.
 */
export function sandboxStandIn(config: Config, pool: pg.Pool, logger: Logger): Sandbox | undefined {
  const credentialsMissing = !(config.twilio && config.sendgrid);
  if (!config.development) {
    if (credentialsMissing) {
      logger.warn(
        "production without TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN or SENDGRID_API_KEY: system sends through that provider will fail",
      );
    }
    return undefined;
  }
  if (!credentialsMissing) return undefined;
  const sandbox = createSandbox({
    describeAccount: (provider, account) => describeSandboxAccount(pool, provider, account),
    // It calls back as the real services would: Herald's own webhooks, at its public URL.
    sendgridEventUrl: config.sendgrid ? undefined : `${config.publicUrl}/webhooks/sendgrid/events`,
    eventKeys: config.sendgrid ? undefined : persistentEventKeys(),
    inboundUrl: config.twilio ? undefined : `${config.publicUrl}/webhooks/twilio/sms`,
    resolveNumber: (number, channel) => sandboxAccountOfNumber(pool, number, channel),
    resolveMetaWebhook: (phoneNumberId) => sandboxMetaWebhook(pool, config.publicUrl, phoneNumberId),
  });
  sandbox.whatsapp.setBaseUrl(`${config.publicUrl}/sandbox`);
  logger.warn(
    { sandbox: "/sandbox" },
    "no Twilio/SendGrid credentials (TWILIO_ACCOUNT_SID, SENDGRID_API_KEY): the local sandbox stands in for both; nothing is delivered",
  );
  return sandbox;
}

/** For the sandbox page: which tenant (slug) an account belongs to, as an operator sees it. */
async function describeSandboxAccount(
  pool: pg.Pool,
  provider: "twilio" | "sendgrid" | "meta",
  account: string,
): Promise<string | undefined> {
  const slugs = await asAdmin(pool, async (client) =>
    (
      await client.query<{ slug: string }>(
        `select distinct t.slug::text from herald_public.provider_accounts a join herald_public.tenants t on t.id = a.tenant_id
          where a.kind = $1 and (a.twilio_account_sid = $2 or (a.kind = 'sendgrid' and '…' || a.secret_hint = $2)
                                 or a.meta_phone_number_id = $2)`,
        [provider, account],
      )
    ).rows.map((r) => r.slug),
  );
  return slugs.length > 0 ? `tenant ${slugs.join(" or ")}` : undefined;
}

/** For the sandbox's "text in" form: the Twilio account a tenant's number is on (the system's when none). */
async function sandboxAccountOfNumber(pool: pg.Pool, number: string, channel: string): Promise<string | undefined> {
  return asAdmin(pool, async (client) => {
    const { rows } = await client.query<{ sid: string | null }>(
      `select a.twilio_account_sid as sid from herald_public.sender_numbers n
         left join herald_public.provider_accounts a on a.tenant_id = n.tenant_id and a.id = n.provider_account_id
        where n.phone_number = $1 and n.channel = $2`,
      [number, channel],
    );
    return rows[0] ? (rows[0].sid ?? SANDBOX_SYSTEM_TWILIO.accountSid) : undefined;
  });
}

/** For the sandbox's Meta: the webhook URL of the (first) Meta account with this phone number id. */
async function sandboxMetaWebhook(
  pool: pg.Pool,
  publicUrl: string,
  phoneNumberId: string,
): Promise<string | undefined> {
  return asAdmin(pool, async (client) => {
    const { rows } = await client.query<{ id: string }>(
      "select id from herald_public.provider_accounts where kind = 'meta' and meta_phone_number_id = $1 order by created_at limit 1",
      [phoneNumberId],
    );
    return rows[0] && `${publicUrl}/webhooks/meta/${rows[0].id}`;
  });
}
