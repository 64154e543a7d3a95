/**
 * Runs `fn` over `items` with at most `limit` calls outstanding at once (a worker pool of `limit` workers taking the
 * next item in order). Used wherever a burst of work must not open unbounded requests: the overlay driver's netlink
 * requests (the `netlink` package aborts the process near 512 outstanding), a batch Allocate's items, the agent's
 * interface removals during garbage collection.
 *
 * `fn` gets the item and its index. Work that must go on past a failed item catches inside `fn`. When `fn` throws,
 * no further item is started, the calls already running finish, and the first error is thrown.
 */
export async function forEachBounded<T>(
  items: readonly T[],
  limit: number,
  fn: (item: T, index: number) => Promise<void>,
): Promise<void> {
  if (!Number.isInteger(limit) || limit < 1)
    throw new RangeError(`limit must be a whole number of at least 1, not ${limit}`);
  let next = 0;
  let failure: { err: unknown } | null = null;
  const worker = async (): Promise<void> => {
    while (failure === null && next < items.length) {
      const i = next++;
      try {
        await fn(items[i]!, i);
      } catch (err) {
        failure ??= { err };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure !== null) throw (failure as { err: unknown }).err;
}
