import type pg from "pg";
import { isValidPhoneNumber } from "libphonenumber-js/max";
import type { ProviderClients } from "../providers/clients.ts";
import { claimRun } from "./claim.ts";
import { dispatch, requestsFor } from "./dispatch.ts";
import { Limiter, type Limiter as ProcessLimiter } from "./limiter.ts";
import { recordOutcomes, type Recorded } from "./record.ts";
import type { Hold } from "./settle.ts";

/**
 * A run of deliveries (one delivery__send job), each a state machine:
 *
 *   queued ──claim──▶ sending ──accepted──▶ sent ──(callbacks)──▶ delivered | failed | undelivered
 *     │            │ └─refused, permanent──▶ failed
 *     │            │ └─429, refused for now──▶ queued (retry later, with backoff)
 *     │            └─timeout, 5xx, crash──▶ unknown ──reconcile──▶ sent | queued (certainly not accepted)
 *     └─ skipped (unsubscribed, suppressed, no address, …) | canceled | held back (quiet hours, pacing, monthly cap)
 *
 * in three steps, so that no transaction or pooled connection is held while
 * a provider answers:
 *  1. claim (claim.ts): one transaction, set-based — checks, pacing slots,
 *     the cap, the claim (`sending`, by this process, at one instant);
 *  2. dispatch (dispatch.ts): the provider calls, concurrently, each at its
 *     slot, holding no connection;
 *  3. record (record.ts): one transaction, the answers in a few statements.
 * The claim (`sending`, claimed_by a live registered process, recently) is
 * what keeps two runs off one delivery: another run leaves it alone, and
 * takes it over (reconciling) only once that process is gone or the claim's
 * grace has passed. Permits for the run's requests are taken from the
 * process's limiter before the claim, so a claimed delivery never waits for
 * room, only for its pacing slot.
 */

export interface RunContext {
  tenantId: string;
  clients: ProviderClients;
  /** Owner connections (pacing, the worker registry). */
  pacingPool: pg.Pool;
  processId: string;
  /** HERALD_SEND_CONCURRENCY: the process's provider requests in flight. */
  limiter: ProcessLimiter;
  /** One transaction as herald_worker in the tenant; the connection is released at its end. */
  session: <T>(work: (client: pg.PoolClient) => Promise<T>) => Promise<T>;
}

export interface RunResult {
  /** Deliveries to look at again later (each needs a job then). */
  later: Hold[];
  failed: Recorded["failed"];
  retried: Recorded["retried"];
}

export async function runDeliveries(ids: string[], ctx: RunContext): Promise<RunResult> {
  const permits = await ctx.limiter.acquire(ids.length);
  try {
    const claim = await ctx.session((client) => claimRun(client, ids, ctx));
    const requests = requestsFor(claim);
    permits.keep(requests);
    if (requests === 0 && claim.reconciles.length === 0) return { later: claim.later, failed: [], retried: [] };
    // The run's requests share its permits; each one done gives one back to the process once fewer remain than are held.
    let remaining = requests;
    const local = new Limiter(Math.max(1, permits.held));
    const dispatched = await dispatch(claim, ctx, local, () => {
      remaining--;
      if (remaining < permits.held) permits.releaseOne();
    });
    const recorded = await ctx.session((client) => recordOutcomes(client, claim, dispatched, ctx.processId));
    return { later: [...claim.later, ...recorded.later], failed: recorded.failed, retried: recorded.retried };
  } finally {
    permits.releaseAll();
  }
}

/**
 * Loads, at a worker's start, what the first sends would otherwise load in
 * the middle of a run (the phone-number metadata, the Twilio SDK's API
 * modules): a send held up for it would arrive late, and close to the next.
 */
export function warmUpSending(clients: ProviderClients): void {
  isValidPhoneNumber("+14155550100");
  void clients.twilioFor("system").messages;
}
