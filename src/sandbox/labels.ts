import type { SandboxMessage } from "./core.ts";
import { SANDBOX_SYSTEM_SENDGRID_KEY } from "./sendgrid.ts";
import { SANDBOX_SYSTEM_TWILIO } from "./twilio.ts";

/**
 * How the sandbox page names accounts. Messages are grouped by the provider
 * account that sent them: a tenant's own account (named by its tenant), or
 * Herald's system account, which every tenant without an account of its own
 * sends through. The system account's credentials are the sandbox's fixed,
 * documented ones, so the page shows them whole; a tenant's SendGrid key only
 * by its last four characters.
 */

export const SYSTEM_ACCOUNT_HEADING = "Herald's system account (tenants without a provider account of their own)";

export const isSystemAccount = (m: Pick<SandboxMessage, "provider" | "account">) =>
  m.provider === "twilio" ? m.account === SANDBOX_SYSTEM_TWILIO.accountSid : m.account === SANDBOX_SYSTEM_SENDGRID_KEY;

/** The heading a message is listed under. */
export async function groupHeading(
  m: Pick<SandboxMessage, "provider" | "account">,
  describe?: (provider: SandboxMessage["provider"], account: string) => Promise<string | undefined>,
): Promise<string> {
  if (isSystemAccount(m)) return SYSTEM_ACCOUNT_HEADING;
  const owner = await describe?.(m.provider, m.account).catch(() => undefined);
  const provider = { twilio: "Twilio", sendgrid: "SendGrid", meta: "Meta WhatsApp" }[m.provider];
  return owner ? `${provider} account of ${owner}` : `${provider} account ${m.account} (no tenant has it)`;
}
