import { syncContentTemplates } from "../src/providers/content-templates.ts";
import { rowTask, type RowPayload } from "../src/worker/row-task.ts";
import { providerClients } from "../src/worker/tenant-context.ts";

/** Queued by `syncContentTemplates`: the Twilio account's approved templates (src/providers/content-templates.ts). */

declare global {
  namespace GraphileWorker {
    interface Tasks {
      provider_accounts__sync_content: RowPayload;
    }
  }
}

export default rowTask(async (client, accountId, helpers) => {
  const outcome = await syncContentTemplates(client, providerClients(), accountId);
  helpers.logger.info(
    `content templates of account ${accountId}: ${"error" in outcome ? `not synced (${outcome.error})` : `${outcome.synced} synced`}`,
  );
});
