import type pg from "pg";
import type { Logger } from "../logger.ts";
import { withSession } from "../db/session.ts";
import { ROLES } from "../db/urls.ts";
import { inTenant, type WebhookContext } from "./tenant.ts";

/**
 * Provider reports (status callbacks, SendGrid events): acknowledged once
 * journaled, applied in sets (migrations: herald_hidden.provider_reports).
 *
 * A verified request's reports are appended to the journal inside its tenant;
 * the requests of one tenant that arrive while an insert is under way share
 * the next one, so one INSERT and one COMMIT serve many. The provider gets its
 * answer only after that commit: what it was told we have, we have, whatever
 * happens to this process next. Then the applier applies the tenant's waiting
 * reports, a thousand to a transaction (herald_hidden.apply_provider_reports);
 * what a crash leaves waiting, the provider_reports__sweep task applies.
 */

export interface ProviderReport {
  provider: "twilio" | "sendgrid" | "meta";
  delivery_id: string | null;
  provider_message_id: string | null;
  event: string;
  /** What it makes of the delivery (null: nothing, e.g. an open). */
  status: string | null;
  dedupe_key: string;
  error_code: string | null;
  occurred_at: string | null;
  /** An opt-out it carries, and the address (plaintext here, encrypted in the journal). */
  opt_out: "carrier_opt_out" | "bounce" | "email_opt_out" | null;
  channel: "sms" | "whatsapp" | "email" | null;
  address: string | null;
  /** A SendGrid click's link (migration 000012). */
  url?: string | null;
}

const COLUMNS = `provider text, delivery_id uuid, provider_message_id text, event text, status text, dedupe_key text,
                 error_code text, occurred_at timestamptz, opt_out text, channel text, address text, url text`;

const NAMES = COLUMNS.split(",")
  .map((c) => c.trim().split(" ")[0])
  .join(", ");

/** In the order given, so that identities (and received_at) follow it. */
const INSERT_PLAIN = `
  insert into herald_hidden.provider_reports (provider, delivery_id, provider_message_id, event, status, dedupe_key, error_code, occurred_at, url)
  select r.provider, r.delivery_id, r.provider_message_id, r.event, r.status, r.dedupe_key, r.error_code, r.occurred_at, r.url
    from rows from (jsonb_to_recordset($1::jsonb) as (${COLUMNS})) with ordinality as r(${NAMES}, n)
   order by r.n`;

/** With addresses: encrypted under the tenant's current data key (the session holds it). */
const INSERT_WITH_ADDRESSES = `
  insert into herald_hidden.provider_reports (provider, delivery_id, provider_message_id, event, status, dedupe_key, error_code, occurred_at,
                                              opt_out, channel, address_encrypted, key_version, url)
  select r.provider, r.delivery_id, r.provider_message_id, r.event, r.status, r.dedupe_key, r.error_code, r.occurred_at,
         r.opt_out, r.channel,
         case when r.opt_out is not null then herald_hidden.encrypt_pii(r.address, herald_hidden.data_key(k.version)) end,
         case when r.opt_out is not null then k.version end, r.url
    from rows from (jsonb_to_recordset($1::jsonb) as (${COLUMNS})) with ordinality as r(${NAMES}, n),
         (select herald_hidden.current_data_key_version() as version) k
   order by r.n`;

/** Rows per INSERT: a burst of large SendGrid batches is several statements, not one huge one. */
const MAX_ROWS_PER_INSERT = 5000;
/** Reports applied per transaction. */
const APPLY_BATCH = 1000;

/**
 * An apply commits without waiting for its WAL to reach the disk: the
 * acknowledgements' commits (which must wait: the provider is told we have
 * the report) then do not queue behind the appliers' flushes, which cost a
 * disk flush each (~3.5 ms here) and held the callbacks' p99. Nothing is lost
 * by it: an apply that a crash takes back is taken back whole — the journal
 * rows it deleted with it — so they are still waiting, and applying them again
 * does what the lost apply did (each report once, by its dedupe key).
 */
const APPLY_SETTINGS = { synchronous_commit: "off" };

/**
 * Journal inserts of one tenant committing at once. The requests that arrive
 * meanwhile wait for the next; concurrent commits share the disk flush, so a
 * few in flight acknowledge more per flush than one after another.
 */
const INSERTS_IN_FLIGHT = 4;

interface Waiting {
  reports: ProviderReport[];
  resolve: () => void;
  reject: (error: unknown) => void;
}

/** What apply_provider_reports did with one batch. */
export interface ApplyTally {
  taken: number;
  applied: number;
  recorded: number;
  duplicate: number;
  notFound: number;
}

/** Applies the session tenant's waiting reports, one batch per transaction, until none are left; the totals. */
export async function applyWaitingReports(
  transaction: <T>(work: (client: pg.PoolClient) => Promise<T>) => Promise<T>,
  batch = APPLY_BATCH,
): Promise<ApplyTally> {
  const total: ApplyTally = { taken: 0, applied: 0, recorded: 0, duplicate: 0, notFound: 0 };
  for (;;) {
    const { rows } = await transaction((client) =>
      client.query<{
        reports_taken: number;
        reports_applied: number;
        reports_recorded: number;
        reports_duplicate: number;
        reports_not_found: number;
      }>("select * from herald_hidden.apply_provider_reports($1)", [batch]),
    );
    const row = rows[0]!;
    total.taken += row.reports_taken;
    total.applied += row.reports_applied;
    total.recorded += row.reports_recorded;
    total.duplicate += row.reports_duplicate;
    total.notFound += row.reports_not_found;
    // Fewer than asked: the journal is empty, or the rest is another applier's.
    if (row.reports_taken < batch) return total;
  }
}

/** Deadlock, serialization failure: met a sender on a delivery row; the batch is not at fault. */
const RETRYABLE = new Set(["40P01", "40001"]);

export class ProviderReports {
  readonly #ctx: WebhookContext;
  readonly #logger: Logger;
  readonly #tenants = new Map<string, { waiting: Waiting[]; running: number }>();
  /** Per tenant: an apply under way, and whether reports came in since it started. */
  readonly #applying = new Map<string, { again: boolean }>();
  #appliersRunning = 0;
  readonly #applyQueue: string[] = [];
  /** Tenants applied at once: the rest wait their turn (the pool serves the requests too). */
  readonly #maxAppliers: number;
  #closed = false;

  constructor(ctx: WebhookContext, logger: Logger, options: { maxAppliers?: number } = {}) {
    this.#ctx = ctx;
    this.#logger = logger;
    this.#maxAppliers = options.maxAppliers ?? 2;
  }

  /**
   * Resolves once `reports` are committed to the tenant's journal (then the
   * provider may be told so); rejects if they are not (the provider retries).
   */
  async acknowledge(tenantId: string, reports: ProviderReport[]): Promise<void> {
    if (reports.length === 0) return;
    await new Promise<void>((resolve, reject) => {
      let state = this.#tenants.get(tenantId);
      if (!state) this.#tenants.set(tenantId, (state = { waiting: [], running: 0 }));
      state.waiting.push({ reports, resolve, reject });
      this.#drain(tenantId, state);
    });
    this.apply(tenantId);
  }

  #drain(tenantId: string, state: { waiting: Waiting[]; running: number }) {
    // Inserts collect while others commit.
    while (state.running < INSERTS_IN_FLIGHT && state.waiting.length > 0) {
      const batch: Waiting[] = [];
      let rows = 0;
      while (
        state.waiting.length > 0 &&
        (batch.length === 0 || rows + state.waiting[0]!.reports.length <= MAX_ROWS_PER_INSERT)
      ) {
        const next = state.waiting.shift()!;
        batch.push(next);
        rows += next.reports.length;
      }
      state.running++;
      void this.#insert(tenantId, batch).finally(() => {
        state.running--;
        if (state.running === 0 && state.waiting.length === 0) this.#tenants.delete(tenantId);
        else this.#drain(tenantId, state);
      });
    }
  }

  async #insert(tenantId: string, batch: Waiting[]) {
    const reports = batch.flatMap((w) => w.reports);
    const withAddresses = reports.some((r) => r.opt_out !== null);
    try {
      const insert = (client: pg.PoolClient) =>
        client.query(withAddresses ? INSERT_WITH_ADDRESSES : INSERT_PLAIN, [JSON.stringify(reports)]);
      // The tenant's keys only when an address must be encrypted: unwrapping them costs a round trip.
      if (withAddresses) await inTenant(this.#ctx, tenantId, insert, "provider");
      else await withSession(this.#ctx.pool, { role: ROLES.worker, tenantId }, insert);
      for (const waiting of batch) waiting.resolve();
    } catch (error) {
      // One request's reports must not fail the others': each goes again on its own.
      if (batch.length === 1) batch[0]!.reject(error);
      else for (const waiting of batch) await this.#insert(tenantId, [waiting]);
    }
  }

  /** Applies the tenant's waiting reports soon (in this process, in the background). */
  apply(tenantId: string): void {
    if (this.#closed) return;
    const current = this.#applying.get(tenantId);
    if (current) {
      current.again = true;
      return;
    }
    this.#applying.set(tenantId, { again: false });
    this.#applyQueue.push(tenantId);
    this.#startAppliers();
  }

  #startAppliers() {
    while (this.#appliersRunning < this.#maxAppliers && this.#applyQueue.length > 0) {
      const tenantId = this.#applyQueue.shift()!;
      this.#appliersRunning++;
      void this.#applyTenant(tenantId).finally(() => {
        this.#appliersRunning--;
        const state = this.#applying.get(tenantId);
        if (state?.again && !this.#closed) {
          state.again = false;
          this.#applyQueue.push(tenantId);
        } else {
          this.#applying.delete(tenantId);
        }
        this.#startAppliers();
      });
    }
  }

  async #applyTenant(tenantId: string) {
    for (let attempt = 1; attempt <= 3; attempt++) {
      try {
        const tally = await applyWaitingReports((work) =>
          inTenant(this.#ctx, tenantId, work, "provider", APPLY_SETTINGS),
        );
        this.#logger.debug({ tenant: tenantId, ...tally }, "provider reports applied");
        return;
      } catch (error) {
        const code = (error as { code?: string }).code ?? "";
        if (RETRYABLE.has(code) && attempt < 3 && !this.#closed) continue;
        // Left in the journal: the next report of the tenant, or the sweep, applies them.
        this.#logger.warn(
          { tenant: tenantId, err: { message: (error as Error).message, code } },
          "could not apply provider reports yet",
        );
        return;
      }
    }
  }

  /** No new applies (the server is closing); what is waiting stays in the journal. */
  close(): void {
    this.#closed = true;
  }
}
