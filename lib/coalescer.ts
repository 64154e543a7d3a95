/**
 * Group commit for requests that are cheaper together: a request submitted while `maxInFlight` batches are already
 * running waits and joins the next batch, so a busy server sends one statement for many callers and an idle one
 * sends each request at once (no added latency when there is nothing to wait for).
 *
 * The wait is bounded: at most `maxQueued` requests wait; one more is refused at once with `overloaded()` (so a
 * database that stops answering meets a fixed queue, not one that grows with every caller). When a batch fails with
 * an error that `failsQueued` accepts (the database cannot serve now), the requests still waiting fail with it too,
 * instead of each waiting out its own timeout behind it.
 */
export interface Coalescer<I, O> {
  submit(item: I): Promise<O>;
  /** Requests waiting for a batch (not those running). */
  queued(): number;
}

export interface CoalescerOptions {
  maxInFlight: number;
  maxBatch: number;
  maxQueued: number;
  /** The error a request gets when `maxQueued` requests are already waiting. */
  overloaded: (queued: number) => Error;
  /** Whether a batch's error also fails every waiting request. */
  failsQueued?: (err: unknown) => boolean;
}

export function createCoalescer<I, O>(run: (items: I[]) => Promise<O[]>, opts: CoalescerOptions): Coalescer<I, O> {
  let queue: { item: I; resolve: (o: O) => void; reject: (e: unknown) => void }[] = [];
  let inFlight = 0;

  function pump(): void {
    while (inFlight < opts.maxInFlight && queue.length > 0) {
      const batch = queue.slice(0, opts.maxBatch);
      queue = queue.slice(batch.length);
      inFlight++;
      run(batch.map((b) => b.item))
        .then(
          (out) => batch.forEach((b, i) => b.resolve(out[i]!)),
          (err) => {
            batch.forEach((b) => b.reject(err));
            if (opts.failsQueued?.(err)) {
              const waiting = queue;
              queue = [];
              waiting.forEach((b) => b.reject(err));
            }
          },
        )
        .finally(() => {
          inFlight--;
          pump();
        });
    }
  }

  return {
    submit(item) {
      if (queue.length >= opts.maxQueued) return Promise.reject(opts.overloaded(queue.length));
      return new Promise<O>((resolve, reject) => {
        queue.push({ item, resolve, reject });
        pump();
      });
    },
    queued: () => queue.length,
  };
}
