import { runNumberRequest } from "../src/numbers/requests.ts";
import { rowTask, type RowPayload } from "../src/worker/row-task.ts";
import { providerClients } from "../src/worker/tenant-context.ts";

/** Queued by searchAvailableNumbers, syncSenderNumbers, buySenderNumber, releaseSenderNumber, configureSenderNumberWebhooks; see src/numbers/requests.ts. */

declare global {
  namespace GraphileWorker {
    interface Tasks {
      number_requests__run: RowPayload;
    }
  }
}

export default rowTask((client, id) => runNumberRequest(client, providerClients(), id));
