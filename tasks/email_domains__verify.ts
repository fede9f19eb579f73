import { verifyDomain } from "../src/providers/domains.ts";
import { rowTask, type RowPayload } from "../src/worker/row-task.ts";
import { providerClients } from "../src/worker/tenant-context.ts";

/** Queued by verifyEmailDomain (update trigger on email_domains.verify_requested_at); see src/providers/domains.ts. */

declare global {
  namespace GraphileWorker {
    interface Tasks {
      email_domains__verify: RowPayload;
    }
  }
}

export default rowTask((client, id) => verifyDomain(client, providerClients(), id));
