/**
 * A first-come-first-served lane for large operations: at most `slots` run at
 * once in this process, whoever asks. Building a large response takes the
 * API process's one thread in long synchronous stretches (and PostgreSQL's
 * CPU for its nested subqueries), so large operations take turns, while
 * small ones, the vast majority, never queue here.
 */
export class Lane {
  #free: number;
  readonly #waiting: Array<() => void> = [];

  constructor(slots: number) {
    this.#free = slots;
  }

  /** Resolves to a release function, or to undefined if no slot came free within `waitMs`. */
  acquire(waitMs: number): Promise<(() => void) | undefined> {
    const release = () => {
      const next = this.#waiting.shift();
      if (next) next();
      else this.#free += 1;
    };
    if (this.#free > 0) {
      this.#free -= 1;
      return Promise.resolve(once(release));
    }
    return new Promise((resolve) => {
      const turn = () => {
        clearTimeout(timer);
        resolve(once(release));
      };
      const timer = setTimeout(() => {
        this.#waiting.splice(this.#waiting.indexOf(turn), 1);
        resolve(undefined);
      }, waitMs);
      this.#waiting.push(turn);
    });
  }
}

function once(fn: () => void): () => void {
  let done = false;
  return () => {
    if (!done) {
      done = true;
      fn();
    }
  };
}
