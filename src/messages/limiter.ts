/**
 * Bounds on provider requests in flight. A job takes permits for the sends
 * it is about to claim *before* claiming them (so a claimed delivery never
 * waits for room, and the claim's grace in claim.ts holds), gives back what
 * it does not use, and each send returns its permit when its answer is in.
 * First come, first served: a job asking for many never jumps one asking
 * for few that came earlier, and never takes more than the whole.
 */

export class Limiter {
  readonly capacity: number;
  #free: number;
  readonly #waiting: { count: number; grant: () => void }[] = [];

  constructor(capacity: number) {
    this.capacity = capacity;
    this.#free = capacity;
  }

  get inFlight(): number {
    return this.capacity - this.#free;
  }

  /** Waits for `count` permits (at most the capacity); returns them as a handle to give back, partly or wholly. */
  async acquire(count: number): Promise<Permits> {
    const wanted = Math.max(0, Math.min(count, this.capacity));
    if (this.#waiting.length === 0 && this.#free >= wanted) {
      this.#free -= wanted;
    } else {
      await new Promise<void>((grant) => this.#waiting.push({ count: wanted, grant }));
    }
    return new Permits(this, wanted);
  }

  /** Runs `work` holding one permit. */
  async run<T>(work: () => Promise<T>): Promise<T> {
    const permit = await this.acquire(1);
    try {
      return await work();
    } finally {
      permit.releaseAll();
    }
  }

  /** @internal */
  give(count: number): void {
    this.#free += count;
    while (this.#waiting.length > 0 && this.#free >= this.#waiting[0]!.count) {
      const next = this.#waiting.shift()!;
      this.#free -= next.count;
      next.grant();
    }
  }
}

export class Permits {
  readonly #limiter: Limiter;
  #held: number;
  constructor(limiter: Limiter, held: number) {
    this.#limiter = limiter;
    this.#held = held;
  }
  get held(): number {
    return this.#held;
  }
  /** Gives back one permit (a send is done), if any is still held. */
  releaseOne(): void {
    if (this.#held === 0) return;
    this.#held--;
    this.#limiter.give(1);
  }
  /** Keeps only `count` of the permits held. */
  keep(count: number): void {
    const extra = this.#held - Math.max(0, count);
    if (extra <= 0) return;
    this.#held -= extra;
    this.#limiter.give(extra);
  }
  releaseAll(): void {
    this.keep(0);
  }
}

/** A limiter per key (a provider account), made on first use. */
export class KeyedLimiter {
  readonly #each: number;
  readonly #limiters = new Map<string, Limiter>();
  constructor(each: number) {
    this.#each = each;
  }
  run<T>(key: string, work: () => Promise<T>): Promise<T> {
    let limiter = this.#limiters.get(key);
    if (!limiter) this.#limiters.set(key, (limiter = new Limiter(this.#each)));
    return limiter.run(work);
  }
}

/**
 * Twilio limits concurrent requests per account (about 100 by default; over
 * it, 429 with 20429): this process never has more in flight on one account.
 */
export const ACCOUNT_IN_FLIGHT = 100;

let sendLimiter = new Limiter(200);
const accountLimiter = new KeyedLimiter(ACCOUNT_IN_FLIGHT);

/** HERALD_SEND_CONCURRENCY: provider requests this process has in flight at most. */
export function setSendConcurrency(capacity: number): void {
  if (sendLimiter.capacity !== capacity) sendLimiter = new Limiter(capacity);
}

export const processSendLimiter = () => sendLimiter;
export const processAccountLimiter = () => accountLimiter;
