import type { IpamStore, PoolCatalog, PoolRecord } from '../domain/ipam-store.js';
import { ipamErrors } from '../domain/ipam.errors.js';

/** How long a replica uses the pools it read before reading them again. */
export const POOL_CACHE_MS = 1000;

/**
 * Pools change rarely: a replica reads them at most every POOL_CACHE_MS (and at once after its own changes), so
 * the allocation path does not pay a round trip for them. Another replica's pool change applies within that time; a
 * pool named by a caller that is not cached is read again at once (one just created through another replica).
 * One read at a time serves every caller (under load, hundreds of requests a second used to each start their own
 * when the cache expired), and it starts a little before expiry, so callers rarely wait for it.
 */
export function createPoolCatalogCache(
  store: Pick<IpamStore, 'readPoolCatalog'>,
  opts: { onBackgroundError?: (what: string, err: unknown) => void; now?: () => number } = {},
) {
  const now = opts.now ?? Date.now;
  type Cached = PoolCatalog & { at: number };
  let cache: Cached | null = null;
  // Raised by this replica's own pool changes: a read begun before one is neither joined nor kept after it.
  let generation = 0;
  let loading: { generation: number; promise: Promise<Cached> } | null = null;

  /** `fresh`: a read that starts now (one in flight may predate what the caller needs to see). */
  function load(fresh = false): Promise<Cached> {
    if (!fresh && loading && loading.generation === generation) return loading.promise;
    const started = generation;
    const at = now();
    const promise = store
      .readPoolCatalog()
      .then((c) => {
        const read = { ...c, at };
        if (started === generation) cache = read;
        return read;
      })
      .finally(() => {
        if (loading?.promise === promise) loading = null;
      });
    loading = { generation: started, promise };
    return promise;
  }

  return {
    /** Drops what this replica read: its own change must show in its next allocation. */
    invalidate(): void {
      cache = null;
      generation++;
    },
    /**
     * The pools of the caller's routing domain (its cluster's, else the default one). `fresh`: read now (a pool the
     * caller names is not among those cached: another replica may have just created it).
     */
    async poolsFor(cluster: string | null, fresh = false): Promise<PoolRecord[]> {
      const age = cache && !fresh ? now() - cache.at : Infinity;
      const cached = age < POOL_CACHE_MS ? cache : null;
      if (cached && age >= POOL_CACHE_MS * 0.75) load().catch((err) => opts.onBackgroundError?.('reading pools', err));
      let c = cached ?? (await load(fresh));
      // A cluster registered since the cache was read is looked up again before it is called unknown.
      if (cached && !c.domainOf.has(cluster ?? '')) c = await load(true);
      const domain = c.domainOf.get(cluster ?? '');
      if (domain === undefined) throw ipamErrors.clusterNotFound(cluster ?? '');
      return c.pools.filter((p) => p.routingDomainId === domain);
    },
  };
}

export type PoolCatalogCache = ReturnType<typeof createPoolCatalogCache>;
