import { verifySenderNumber } from "../src/numbers/verify.ts";
import { rowTask, type RowPayload } from "../src/worker/row-task.ts";
import { providerClients } from "../src/worker/tenant-context.ts";

/** Queued when a sender number is registered or re-checked (verifySenderNumber); see src/numbers/verify.ts. */

declare global {
  namespace GraphileWorker {
    interface Tasks {
      sender_numbers__verify: RowPayload;
    }
  }
}

export default rowTask(async (client, id) => void (await verifySenderNumber(client, providerClients(), id)));
