import { authenticateDomain } from "../src/providers/domains.ts";
import { rowTask, type RowPayload } from "../src/worker/row-task.ts";
import { providerClients } from "../src/worker/tenant-context.ts";

/** Queued by authenticateEmailDomain (insert trigger on email_domains); see src/providers/domains.ts. */

declare global {
  namespace GraphileWorker {
    interface Tasks {
      email_domains__authenticate: RowPayload;
    }
  }
}

export default rowTask((client, id) => authenticateDomain(client, providerClients(), id));
