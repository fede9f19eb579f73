import type pg from "pg";
import type { ProviderClients } from "./clients.ts";
import { withoutAddresses } from "./errors.ts";
import { accountById, recordAccountResult } from "./routing.ts";

/**
 * A tenant's approved templates at Twilio (the Content API's
 * ContentAndApprovals list: each template with its WhatsApp approval), kept on
 * its provider account (`provider_accounts.content_templates`), where
 * `templates.approvalStatus` reads a template's status by its contentSid.
 * Queued by `syncContentTemplates` (migration 000012).
 */

/** Templates kept per account: a page of the list, more than an account has in practice. */
export const CONTENT_TEMPLATES_MAX = 1000;

export interface ContentTemplate {
  sid: string;
  friendlyName: string;
  language: string;
  /** The text of its text (or first) type, with Twilio's placeholders `{{1}}`. */
  body: string | null;
  variables: Record<string, string>;
  approvalStatus: string;
}

interface ListedContent {
  sid: string;
  friendlyName?: string;
  language?: string;
  variables?: unknown;
  types?: Record<string, { body?: unknown }>;
  approvalRequests?: { status?: unknown; whatsapp?: { status?: unknown } };
}

const text = (value: unknown, max: number) => (typeof value === "string" ? value.slice(0, max) : "");

/** One listed template as Herald keeps it (bounded strings, a status word). */
export function keptTemplate(c: ListedContent): ContentTemplate {
  const types = c.types ?? {};
  const first = types["twilio/text"] ?? Object.values(types)[0];
  const approval = c.approvalRequests?.status ?? c.approvalRequests?.whatsapp?.status;
  const variables =
    c.variables && typeof c.variables === "object" && !Array.isArray(c.variables)
      ? Object.fromEntries(
          Object.entries(c.variables as Record<string, unknown>)
            .slice(0, 50)
            .map(([k, v]) => [k.slice(0, 40), text(v, 200)]),
        )
      : {};
  return {
    sid: c.sid,
    friendlyName: text(c.friendlyName, 200),
    language: text(c.language, 20),
    body: first && typeof first.body === "string" ? first.body.slice(0, 1600) : null,
    variables,
    approvalStatus: /^[a-z_]{1,40}$/.test(String(approval ?? "")) ? String(approval) : "unsubmitted",
  };
}

/** Lists the account's templates and keeps them on it; a provider's refusal is kept as the account's last error. */
export async function syncContentTemplates(
  client: pg.ClientBase,
  clients: ProviderClients,
  accountId: string,
): Promise<{ synced: number } | { error: string }> {
  const account = await accountById(client, accountId, "whatsapp");
  if (!account || account.kind !== "twilio") return { error: "no such Twilio account" };
  let listed: ListedContent[];
  try {
    listed = (await clients
      .twilioFor(account)
      .content.v1.contentAndApprovals.list({ limit: CONTENT_TEMPLATES_MAX, pageSize: 500 })) as ListedContent[];
  } catch (e) {
    const error = withoutAddresses((e as Error).message);
    await recordAccountResult(client, account.id, error);
    return { error };
  }
  const kept = listed.filter((c) => /^HX[0-9a-f]{32}$/.test(c.sid)).map(keptTemplate);
  await client.query(
    `update herald_public.provider_accounts set content_templates = $2::jsonb, content_synced_at = now()
      where tenant_id = herald_public.current_tenant_id() and id = $1`,
    [account.id, JSON.stringify(kept)],
  );
  return { synced: kept.length };
}
