import { rowTask, type RowPayload } from "../src/worker/row-task.ts";

/**
 * `cancelMessage`: every delivery of the message not yet handed to a provider
 * is canceled, in one statement. One already `sending` finishes; one that a
 * job is deciding on right now waits for this (or this for it) on the row lock.
 */

declare global {
  namespace GraphileWorker {
    interface Tasks {
      message__cancel: RowPayload;
    }
  }
}

export default rowTask(async (client, messageId, helpers) => {
  const { rowCount } = await client.query(
    `update herald_public.deliveries set status = 'canceled', reason = 'message canceled', hold_reason = null, completed_at = now()
      where tenant_id = herald_public.current_tenant_id() and message_id = $1 and status = 'queued'`,
    [messageId],
  );
  helpers.logger.info(`message ${messageId} canceled: ${rowCount} deliveries`);
});
