import { inTenant, type WebhookContext } from "./tenant.ts";

/**
 * Inbound messages are stored before Twilio gets its answer (the answer may
 * confirm an opt-out), so each costs a transaction. Under load, the messages
 * of one tenant that arrive while its transactions are under way wait for the
 * next one and share it (herald_hidden.receive_inbound_batch): one round of
 * BEGIN, settings and COMMIT serves many, and nobody waits longer than one
 * transaction. A lone message goes at once, in a transaction of its own.
 */

/** receive_inbound's arguments, as the batch function reads them. */
export interface InboundMessage {
  channel: "sms" | "whatsapp";
  to_number: string;
  from_phone: string | null;
  body: string;
  provider_message_id: string;
  media_count: number;
  keyword: string | null;
  keyword_word: string | null;
}

export interface InboundOutcome {
  inbound_message_id: string | null;
  contact_id: string | null;
  duplicate: boolean | null;
  keyword: string | null;
  reply: string | null;
  /** The SQLSTATE this message alone failed with (NTFND: the number is not this tenant's); null when it was received. */
  error_code: string | null;
}

/** Deadlock, serialization failure: two transactions of one tenant met on a row; the message is not at fault. */
const RETRYABLE = new Set(["40P01", "40001"]);

interface Waiting {
  message: InboundMessage;
  resolve: (outcome: InboundOutcome) => void;
  reject: (error: unknown) => void;
}

/** Messages per batch (receive_inbound_batch takes up to 500). */
const MAX_BATCH = 200;

export class InboundBatches {
  readonly #tenants = new Map<string, { waiting: Waiting[]; running: number }>();
  readonly #ctx: WebhookContext;
  /** Transactions under way per tenant: one collects while another commits, and a busy tenant cannot take the whole pool. */
  readonly #parallel: number;
  readonly #maxBatch: number;
  /** Who the audit log names as the writer (`twilio`, `meta`). */
  readonly #provider: string;

  constructor(ctx: WebhookContext, options: { parallel?: number; maxBatch?: number; provider?: string } = {}) {
    this.#ctx = ctx;
    this.#provider = options.provider ?? "twilio";
    this.#parallel = options.parallel ?? 2;
    this.#maxBatch = Math.min(options.maxBatch ?? MAX_BATCH, MAX_BATCH);
  }

  /** Received, or failed on its own (`error_code`); a deadlock with a parallel transaction is tried again. */
  async receive(tenantId: string, message: InboundMessage): Promise<InboundOutcome> {
    for (let attempt = 1; ; attempt++) {
      const outcome = await this.#enqueue(tenantId, message);
      if (!RETRYABLE.has(outcome.error_code ?? "") || attempt === 3) return outcome;
    }
  }

  #enqueue(tenantId: string, message: InboundMessage): Promise<InboundOutcome> {
    return new Promise((resolve, reject) => {
      let state = this.#tenants.get(tenantId);
      if (!state) this.#tenants.set(tenantId, (state = { waiting: [], running: 0 }));
      state.waiting.push({ message, resolve, reject });
      this.#drain(tenantId, state);
    });
  }

  #drain(tenantId: string, state: { waiting: Waiting[]; running: number }) {
    while (state.running < this.#parallel && state.waiting.length > 0) {
      const batch = state.waiting.splice(0, this.#maxBatch);
      state.running++;
      void this.#run(tenantId, batch).finally(() => {
        state.running--;
        if (state.running === 0 && state.waiting.length === 0) this.#tenants.delete(tenantId);
        else this.#drain(tenantId, state);
      });
    }
  }

  async #run(tenantId: string, batch: Waiting[]) {
    try {
      const { rows } = await inTenant(
        this.#ctx,
        tenantId,
        (client) =>
          client.query<InboundOutcome & { ordinal: number }>(
            "select ordinal, inbound_message_id, contact_id, duplicate, keyword, reply, error_code from herald_hidden.receive_inbound_batch($1)",
            [JSON.stringify(batch.map((w) => w.message))],
          ),
        this.#provider,
      );
      const byOrdinal = new Map(rows.map((row) => [row.ordinal, row]));
      batch.forEach((waiting, i) => {
        const row = byOrdinal.get(i);
        if (row) waiting.resolve(row);
        else waiting.reject(new Error("receive_inbound_batch returned no row for a message"));
      });
    } catch (error) {
      // The transaction itself failed. A message the function could not even
      // read must not take the others with it: each is tried again on its own.
      if (batch.length === 1) batch[0]!.reject(error);
      else for (const waiting of batch) await this.#run(tenantId, [waiting]);
    }
  }
}
