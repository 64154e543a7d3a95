/**
 * One kind of kernel object, as the agent keeps it (the role of Felix's `DeltaTracker`): the desired entries by
 * stable key, a cache of what the kernel holds, and what is pending between them (updates: desired entries the
 * kernel lacks or holds otherwise; deletes: cached entries nobody wants). Pure and synchronous: a driver reads the
 * kernel back into the cache only when the table is marked for resync, and tells the table which writes succeeded.
 *
 * Pending changes are kept incrementally, so a change of one desired entry costs one comparison, however large the
 * table. The pending sets are a function of (desired, cache) alone, never of the order the changes came in.
 */
export interface KernelTable<V> {
  readonly desired: ReadonlyMap<string, V>;
  /** What the kernel holds, as last read back or written. */
  readonly cache: ReadonlyMap<string, V>;
  readonly pendingUpdates: ReadonlyMap<string, V>;
  /** Cached entries to delete, with the value the kernel holds (what a delete request names). */
  readonly pendingDeletes: ReadonlyMap<string, V>;
  /** Whether the cache may be wrong: the next apply reads the kernel back first. True for a new table. */
  readonly needsResync: boolean;
  setDesired(key: string, value: V): void;
  deleteDesired(key: string): void;
  /** Makes the desired entries exactly these (unchanged ones cost a comparison, nothing more). */
  replaceDesired(entries: ReadonlyMap<string, V>): void;
  markForResync(): void;
  /** A read-back begins: the flag is cleared now, so that a mark arriving during the read is kept for the next one. */
  beginResync(): void;
  /**
   * The kernel's entries, read back: the cache becomes exactly these. Returns the drift: entries the cache held as
   * desired that the kernel no longer holds so (someone deleted or changed them).
   */
  replaceCache(actual: ReadonlyMap<string, V>): { key: string; value: V }[];
  /** An update was written; `held` is the value as the kernel now holds it, when it differs from the desired one. */
  updated(key: string, held?: V): void;
  /** A delete was done (or found the entry gone). */
  deleted(key: string): void;
}

export function createKernelTable<V>(equal: (a: V, b: V) => boolean = sameFields): KernelTable<V> {
  const desired = new Map<string, V>();
  let cache = new Map<string, V>();
  const pendingUpdates = new Map<string, V>();
  const pendingDeletes = new Map<string, V>();
  let needsResync = true;

  /** Recomputes what is pending for one key from (desired, cache). */
  const refresh = (key: string) => {
    const want = desired.get(key);
    const held = cache.get(key);
    if (want !== undefined && (held === undefined || !equal(want, held))) pendingUpdates.set(key, want);
    else pendingUpdates.delete(key);
    if (want === undefined && held !== undefined) pendingDeletes.set(key, held);
    else pendingDeletes.delete(key);
  };

  const table: KernelTable<V> = {
    desired,
    get cache() {
      return cache;
    },
    pendingUpdates,
    pendingDeletes,
    get needsResync() {
      return needsResync;
    },
    setDesired(key, value) {
      desired.set(key, value);
      refresh(key);
    },
    deleteDesired(key) {
      if (!desired.delete(key)) return;
      refresh(key);
    },
    replaceDesired(entries) {
      for (const key of [...desired.keys()]) if (!entries.has(key)) table.deleteDesired(key);
      for (const [key, value] of entries) {
        const now = desired.get(key);
        if (now === undefined || !equal(now, value)) table.setDesired(key, value);
      }
    },
    markForResync() {
      needsResync = true;
    },
    beginResync() {
      needsResync = false;
    },
    replaceCache(actual) {
      const drift: { key: string; value: V }[] = [];
      for (const [key, held] of cache) {
        const want = desired.get(key);
        const now = actual.get(key);
        if (want !== undefined && equal(want, held) && (now === undefined || !equal(now, want)))
          drift.push({ key, value: want });
      }
      cache = new Map(actual);
      pendingUpdates.clear();
      pendingDeletes.clear();
      for (const key of desired.keys()) refresh(key);
      for (const key of cache.keys()) if (!desired.has(key)) refresh(key);
      return drift;
    },
    updated(key, held) {
      const want = desired.get(key);
      const value = held ?? want;
      if (value === undefined) return;
      cache.set(key, value);
      refresh(key);
    },
    deleted(key) {
      cache.delete(key);
      refresh(key);
    },
  };
  return table;
}

/** Field by field, whatever order the fields were written in (values are plain JSON-like objects). */
export function sameFields<V>(a: V, b: V): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  return JSON.stringify(a, Object.keys(a).sort()) === JSON.stringify(b, Object.keys(b).sort());
}
