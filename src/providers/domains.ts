import type pg from "pg";
import type { ProviderClients, TenantAccount } from "./clients.ts";
import { accountById } from "./routing.ts";

/**
 * SendGrid domain authentication for a tenant, inside a worker job's tenant
 * context: ask for the DNS records (authenticate), later have SendGrid check
 * them (verify). Outcomes land on the email_domains row; a provider error is
 * recorded there, not thrown, since retrying would not change SendGrid's answer.
 */

interface DomainRow {
  domain: string;
  sendgrid_domain_id: string | null;
  account: TenantAccount;
}

async function loadDomain(client: pg.ClientBase, domainId: string): Promise<DomainRow | undefined> {
  const { rows } = await client.query(
    `select domain::text, sendgrid_domain_id, provider_account_id from herald_public.email_domains
      where tenant_id = herald_public.current_tenant_id() and id = $1`,
    [domainId],
  );
  const account = rows[0] && (await accountById(client, rows[0].provider_account_id));
  return account && { domain: rows[0].domain, sendgrid_domain_id: rows[0].sendgrid_domain_id, account };
}

const errorText = (error: unknown) => {
  const body = (error as { response?: { body?: { errors?: { message?: string }[] } } }).response?.body;
  return body?.errors?.map((e) => e.message).join("; ") || (error as Error).message;
};

async function record(client: pg.ClientBase, domainId: string, changes: Record<string, unknown>) {
  const columns = Object.keys(changes);
  await client.query(
    `update herald_public.email_domains set ${columns.map((c, i) => `${c} = $${i + 2}`).join(", ")}, last_checked_at = now()
      where tenant_id = herald_public.current_tenant_id() and id = $1`,
    [domainId, ...Object.values(changes)],
  );
}

export async function authenticateDomain(
  client: pg.ClientBase,
  clients: ProviderClients,
  domainId: string,
): Promise<void> {
  const row = await loadDomain(client, domainId);
  if (!row) return;
  if (row.account.kind !== "sendgrid") {
    // Never hand another provider's credential to SendGrid.
    await record(client, domainId, { status: "failed", last_error: "the domain's account is not a SendGrid account" });
    return;
  }
  try {
    const [, body] = await clients.sendgridApiFor(row.account).request({
      method: "POST",
      url: "/v3/whitelabel/domains",
      body: { domain: row.domain, automatic_security: true },
    });
    const dns = (
      body as { id: number; dns: Record<string, { type: string; host: string; data: string; valid: boolean }> }
    ).dns;
    await record(client, domainId, {
      sendgrid_domain_id: (body as { id: number }).id,
      dns_records: JSON.stringify(
        Object.values(dns).map(({ type, host, data, valid }) => ({ type, host, data, valid })),
      ),
      status: "pending",
      last_error: null,
    });
  } catch (error) {
    await record(client, domainId, { status: "failed", last_error: errorText(error).slice(0, 2000) });
  }
}

export async function verifyDomain(client: pg.ClientBase, clients: ProviderClients, domainId: string): Promise<void> {
  const row = await loadDomain(client, domainId);
  if (!row || row.account.kind !== "sendgrid") return;
  if (!row.sendgrid_domain_id) {
    await record(client, domainId, {
      last_error: "SendGrid has not named the DNS records yet; authenticate the domain first",
    });
    return;
  }
  try {
    const [, body] = await clients.sendgridApiFor(row.account).request({
      method: "POST",
      url: `/v3/whitelabel/domains/${row.sendgrid_domain_id}/validate`,
    });
    const result = body as {
      valid: boolean;
      validation_results: Record<string, { valid: boolean; reason: string | null }>;
    };
    const reasons = Object.values(result.validation_results)
      .map((r) => r.reason)
      .filter(Boolean);
    await record(client, domainId, {
      status: result.valid ? "verified" : "pending",
      last_error: result.valid ? null : [...new Set(reasons)].join("; "),
    });
  } catch (error) {
    await record(client, domainId, { last_error: errorText(error).slice(0, 2000) });
  }
}
