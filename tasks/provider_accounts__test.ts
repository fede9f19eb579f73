import { assertOwnSender, recordAccountResult } from "../src/providers/send.ts";
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
    `select t.to_address, t.finished_at, a.id as account_id, a.kind, a.twilio_account_sid, a.twilio_api_key_sid, a.updated_at, s.secret,
            (select n.phone_number from herald_public.sender_numbers n
              where n.tenant_id = a.tenant_id and n.provider_account_id = a.id and n.channel = 'sms' order by n.created_at limit 1) as number,
            (select e.from_email::text from herald_public.email_senders e
              where e.tenant_id = a.tenant_id and e.provider_account_id = a.id order by e.created_at limit 1) as email_from,
            (select st.sms_from from herald_public.tenant_settings st where st.tenant_id = a.tenant_id) as sms_from
       from herald_hidden.provider_tests t
       join herald_public.provider_accounts a on a.tenant_id = t.tenant_id and a.id = t.provider_account_id,
            herald_hidden.provider_account_secret(a.id) s
      where t.tenant_id = herald_public.current_tenant_id() and t.id = $1`,
    [testId],
  );
  const test = rows[0];
  if (!test || test.finished_at) return; // gone with its account, or done already
  const account = { id: test.account_id, kind: test.kind, twilio_account_sid: test.twilio_account_sid, twilio_api_key_sid: test.twilio_api_key_sid, updated_at: test.updated_at, secret: test.secret };
  let error: string | null = null;
  try {
    if (test.kind === "twilio") {
      const from = test.number ?? test.sms_from ?? clients.system.twilio.smsFrom;
      if (!from) throw new Error("the account has no sender number, and no sms_from is set");
      await assertOwnSender(client, clients, "sms", from);
      await clients.twilioFor(account).messages.create({ to: test.to_address, from, body: "Herald test message: this account can send." });
    } else {
      const from = test.email_from ?? clients.system.sendgrid.emailFrom;
      if (!from) throw new Error("the account has no email sender, and HERALD_EMAIL_FROM is not set");
      await assertOwnSender(client, clients, "email", from);
      await clients.sendgridFor(account).send({ to: test.to_address, from, subject: "Herald test message", text: "This account can send." });
    }
  } catch (e) {
    error = (e as Error).message;
  }
  await recordAccountResult(client, account.id, error, true);
  await client.query("update herald_hidden.provider_tests set finished_at = now(), error = $2 where tenant_id = herald_public.current_tenant_id() and id = $1", [
    testId,
    error,
  ]);
  helpers.logger.info(`provider test ${testId}: ${error ? "failed" : "sent"}`);
});
