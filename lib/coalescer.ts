/**
 * Group commit for requests that are cheaper together: a request submitted while `maxInFlight` batches are already
 * running waits and joins the next batch, so a busy server sends one statement for many callers and an idle one
 * sends each request at once (no added latency when there is nothing to wait for).
 */
export interface Coalescer<I, O> {
  submit(item: I): Promise<O>;
}

export function createCoalescer<I, O>(run: (items: I[]) => Promise<O[]>, opts: { maxInFlight: number; maxBatch: number }): Coalescer<I, O> {
  let queue: { item: I; resolve: (o: O) => void; reject: (e: unknown) => void }[] = [];
  let inFlight = 0;

  function pump(): void {
    while (inFlight < opts.maxInFlight && queue.length > 0) {
      const batch = queue.slice(0, opts.maxBatch);
      queue = queue.slice(batch.length);
      inFlight++;
      run(batch.map((b) => b.item)).then(
        (out) => batch.forEach((b, i) => b.resolve(out[i]!)),
        (err) => batch.forEach((b) => b.reject(err)),
      ).finally(() => {
        inFlight--;
        pump();
      });
    }
  }

  return {
    submit(item) {
      return new Promise<O>((resolve, reject) => {
        queue.push({ item, resolve, reject });
        pump();
      });
    },
  };
}
