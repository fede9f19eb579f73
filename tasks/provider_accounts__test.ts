import { emailIdentity } from "../src/providers/email-identity.ts";
import { withoutAddresses } from "../src/providers/errors.ts";
import { metaSender, sendViaMeta } from "../src/providers/meta.ts";
import { accountById, assertOwnSender, recordAccountResult, tenantSettings } from "../src/providers/routing.ts";
import { rowTask, type RowPayload } from "../src/worker/row-task.ts";
import { providerClients } from "../src/worker/tenant-context.ts";

/**
 * `testProviderAccount`: one message through exactly that account (no
 * fallback: the point is to learn whether this account works), then the
 * provider's answer, or success, on the account and on the test row.
 */

declare global {
  namespace GraphileWorker {
    interface Tasks {
      provider_accounts__test: RowPayload;
    }
  }
}

export default rowTask(async (client, testId, helpers) => {
  const clients = providerClients();
  const { rows } = await client.query(
    // The address is stored encrypted under the tenant's data key; the job's session holds it.
    `select herald_hidden.decrypt_pii(p.to_address_encrypted, p.key_version) as to_address, p.finished_at, p.provider_account_id, t.status = 'suspended' as suspended
       from herald_hidden.provider_tests p join herald_public.tenants t on t.id = p.tenant_id
      where p.tenant_id = herald_public.current_tenant_id() and p.id = $1`,
    [testId],
  );
  const test = rows[0];
  if (!test || test.finished_at || !test.to_address) return; // gone with its account, or done already
  const account = await accountById(client, test.provider_account_id);
  if (!account) return;
  const finishTest = (error: string | null) =>
    // The outcome is kept; the address, no longer needed, is not.
    client.query(
      `update herald_hidden.provider_tests set finished_at = now(), error = $2, to_address_encrypted = null, key_version = null
        where tenant_id = herald_public.current_tenant_id() and id = $1`,
      [testId, error],
    );
  // A suspended tenant sends nothing, tests included (this one may have been queued before); the account is not at fault.
  if (test.suspended) {
    await finishTest("the tenant is suspended: nothing was sent");
    return;
  }
  let error: string | null = null;
  try {
    if (account.kind === "meta") {
      // A WhatsApp text through the Graph API, from the account's WhatsApp number (src/providers/meta.ts).
      const whatsapp = (await accountById(client, account.id, "whatsapp"))!;
      await sendViaMeta(clients.system.metaGraph, metaSender(whatsapp, whatsapp.default_number ?? "(none)"), {
        to: test.to_address,
        body: "Herald test message: this account can send.",
      });
    } else if (account.kind === "twilio") {
      const from = account.default_number ?? (await tenantSettings(client)).sms_from ?? clients.system.twilio.smsFrom;
      if (!from) throw new Error("the account has no sender number, and no sms_from is set");
      await assertOwnSender(client, clients, "sms", from);
      await clients
        .twilioFor(account)
        .messages.create({ to: test.to_address, from, body: "Herald test message: this account can send." });
    } else {
      // From the account's verified sender, as its email goes (never the system address: src/providers/email-identity.ts).
      const identity = await emailIdentity(client, clients, {}, account, false);
      if ("refusal" in identity) throw new Error(identity.refusal);
      const from = identity.from!;
      await assertOwnSender(client, clients, "email", from);
      await clients.sendgridFor(account).send({
        to: test.to_address,
        from: identity.fromName ? { email: from, name: identity.fromName } : from,
        ...(identity.replyTo ? { replyTo: identity.replyTo } : {}),
        subject: "Herald test message",
        text: "This account can send.",
      });
    }
  } catch (e) {
    error = withoutAddresses((e as Error).message);
  }
  await recordAccountResult(client, account.id, error, true);
  await finishTest(error);
  helpers.logger.info(`provider test ${testId}: ${error ? "failed" : "sent"}`);
});
