import { syncMessagingService } from "../src/services/sync.ts";
import { rowTask, type RowPayload } from "../src/worker/row-task.ts";
import { providerClients } from "../src/worker/tenant-context.ts";

/** Queued when a Messaging Service is added and by syncMessagingService: its pool numbers from Twilio (src/services/sync.ts). */

declare global {
  namespace GraphileWorker {
    interface Tasks {
      messaging_services__sync: RowPayload;
    }
  }
}

export default rowTask(async (client, id, helpers) => {
  const outcome = await syncMessagingService(client, providerClients(), id);
  if (outcome) helpers.logger.info(`messaging service ${id}: pool synced (${JSON.stringify(outcome)})`);
});
