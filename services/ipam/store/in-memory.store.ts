import {
  cidrContains,
  cidrSize,
  formatAddress,
  formatCidr,
  parseAddress,
  parseCidr,
  type Family,
} from '../../../lib/net/ip.js';
import type { AllocationTransaction, FastOutcome, IpamStore, PoolRecord } from '../domain/ipam-store.js';
import { ipamErrors, TransientConflict } from '../domain/ipam.errors.js';
import type { AllocationRequest } from '../domain/pool.js';
import type { Allocation, BlockAffinity } from '../domain/types.js';

/**
 * IpamStore in memory, for unit tests of the use cases: the observable contract of the PostgreSQL store (checked by
 * ipam-store.contract.ts against both), none of its mechanics (no counters kept by triggers, no indexes, no claim
 * hint walk: the lowest free block is found by counting up). Calls run one at a time; a transaction that throws
 * leaves nothing behind. Time comes from `now` (a test may move it) and, as in PostgreSQL, stands still within a
 * transaction and moves on between calls.
 */
type Pool = Omit<PoolRecord, 'etag' | 'liveAllocations'> & { version: number; hint: bigint | null };
interface Block {
  id: number;
  poolId: number;
  domainId: number;
  family: Family;
  base: bigint;
  size: bigint;
  cidr: string;
  node: string;
  claimedAt: number;
  nextOffset: bigint;
  liveCount: number;
  releasedAt: number | null;
}
interface Row {
  id: number;
  a: Allocation;
  value: bigint;
  poolId: number;
  blockId: number;
  domainId: number;
  releasedAt: number | null;
}
interface Free {
  value: bigint;
  family: Family;
  domainId: number;
  blockId: number;
  freeSince: number;
  owner: string;
  holdUntil: number | null;
}
interface State {
  ids: number;
  revision: number;
  pools: Pool[];
  blocks: Block[];
  rows: Row[];
  free: Map<string, Free>;
  clusters: Map<string, number>;
  attempts: Map<string, { createdAt: number; fencedAt: number | null }>;
  reservations: { id: number; poolId: number; first: bigint; last: bigint; reason: string; createdAt: number }[];
  events: { revision: number; cidr: string; pool: string; node: string | null }[];
  nodeLabels: Map<string, Record<string, string>>;
  namespaceLabels: Map<string, Record<string, string>>;
}

const DEFAULT_DOMAIN = 1;
const key = (domainId: number, value: bigint) => `${domainId}/${value}`;
const pick = <T>(items: T[], by: (x: T) => bigint | number | string) =>
  [...items].sort((x, y) => (by(x) < by(y) ? -1 : by(x) > by(y) ? 1 : 0));

export function createInMemoryIpamStore(opts: { now?: () => number } = {}): IpamStore & { state(): State } {
  let s: State = {
    ids: 0,
    revision: 0,
    pools: [],
    blocks: [],
    rows: [],
    free: new Map(),
    clusters: new Map(),
    attempts: new Map(),
    reservations: [],
    events: [],
    nodeLabels: new Map(),
    namespaceLabels: new Map(),
  };
  let last = 0;
  let t = 0;
  let queue: Promise<unknown> = Promise.resolve();
  /** One call at a time, at a time of its own; a throw restores the state as it was before the call. */
  function run<T>(fn: () => T | Promise<T>): Promise<T> {
    const result = queue.then(async () => {
      t = last = Math.max((opts.now ?? Date.now)(), last + 1);
      const before = structuredClone(s);
      try {
        return await fn();
      } catch (err) {
        s = before;
        throw err;
      }
    });
    queue = result.catch(() => {});
    return result;
  }

  const poolOf = (id: number) => s.pools.find((p) => p.id === id)!;
  const record = (p: Pool): PoolRecord => ({
    ...p,
    etag: `"${p.id}.${p.version}"`,
    liveAllocations: s.rows.filter((r) => r.poolId === p.id && r.releasedAt === null).length,
  });
  const liveBlocks = () => s.blocks.filter((b) => b.releasedAt === null);
  const live = () => s.rows.filter((r) => r.releasedAt === null);
  const resting = (f: Free, cooldown: number) =>
    f.freeSince > t - cooldown * 1000 || (f.holdUntil !== null && f.holdUntil > t);
  const reservationAt = (poolId: number, v: bigint) =>
    pick(
      s.reservations.filter((r) => r.poolId === poolId && r.first <= v && r.last >= v),
      (r) => -r.last,
    )[0];
  const addr = (text: string) => parseAddress(text).value;

  function insert(pool: PoolRecord, blockId: number, value: bigint, req: AllocationRequest): Allocation {
    const family = pool.family;
    if (
      live().some((r) => r.domainId === pool.routingDomainId && r.value === value) ||
      live().some((r) => r.a.handle === req.handle && r.a.family === family)
    )
      throw new TransientConflict(new Error('duplicate key value violates unique constraint'));
    const block = s.blocks.find((b) => b.id === blockId)!;
    s.free.delete(key(pool.routingDomainId, value));
    block.liveCount++;
    const a: Allocation = {
      handle: req.handle,
      address: formatAddress(family, value),
      family,
      pool: pool.name,
      blockCidr: block.cidr,
      node: req.node,
      podNamespace: req.podNamespace,
      podName: req.podName,
      containerId: req.containerId,
      owner: req.owner,
      cluster: req.cluster ?? '',
      routingDomain: pool.routingDomain,
      podUid: req.podUid,
      allocatedAt: new Date(t),
    };
    s.rows.push({ id: ++s.ids, a, value, poolId: pool.id, blockId, domainId: pool.routingDomainId, releasedAt: null });
    return { ...a };
  }

  function claimAt(pool: PoolRecord, base: bigint, node: string): Block {
    const size = cidrSize(pool.family, pool.blockPrefixLength);
    const cidr = formatCidr({ family: pool.family, base, prefixLength: pool.blockPrefixLength });
    const b: Block = {
      id: ++s.ids,
      poolId: pool.id,
      domainId: pool.routingDomainId,
      family: pool.family,
      base,
      size,
      cidr,
      node,
      claimedAt: t,
      nextOffset: 0n,
      liveCount: 0,
      releasedAt: null,
    };
    s.blocks.push(b);
    // Resting addresses of an earlier claim of the block rest on in this one.
    for (const f of s.free.values())
      if (f.domainId === b.domainId && f.family === b.family && f.value >= base && f.value < base + size)
        f.blockId = b.id;
    s.revision++;
    s.events.push({ revision: s.revision, cidr, pool: pool.name, node });
    return b;
  }

  function attempt(handle: string, attemptId: string): number | null {
    const k = `${handle}\u0000${attemptId}`;
    const a = s.attempts.get(k) ?? { createdAt: t, fencedAt: null };
    s.attempts.set(k, a);
    return a.fencedAt;
  }

  const tx: AllocationTransaction = {
    enterAttempt: async (handle, attemptId) => {
      const fenced = attempt(handle, attemptId);
      return fenced === null ? null : new Date(fenced);
    },
    liveOfHandle: async (handle) =>
      pick(
        live().filter((r) => r.a.handle === handle),
        (r) => r.a.family,
      ).map((r) => ({ ...r.a })),
    async allocateFromNodeBlocks(pool, req) {
      const mine = liveBlocks().filter((b) => b.node === req.node && b.poolId === pool.id);
      for (const b of mine) {
        while (b.nextOffset < b.size) {
          const v = b.base + b.nextOffset++;
          const r = reservationAt(pool.id, v);
          if (r) {
            b.nextOffset = r.last - b.base + 1n < b.size ? r.last - b.base + 1n : b.size;
            continue;
          }
          const f = s.free.get(key(pool.routingDomainId, v));
          if (
            live().some((x) => x.domainId === pool.routingDomainId && x.value === v) ||
            (f && resting(f, pool.cooldownSeconds))
          )
            continue;
          return insert(pool, b.id, v, req);
        }
      }
      const ids = new Set(mine.map((b) => b.id));
      const rested = pick(
        [...s.free.values()].filter((f) => ids.has(f.blockId) && !resting(f, pool.cooldownSeconds)),
        (f) => f.freeSince,
      )[0];
      return rested ? insert(pool, rested.blockId, rested.value, req) : null;
    },
    async allocateHeld(pools, req) {
      const ids = new Set(pools.map((p) => p.id));
      const held = pick(
        [...s.free.values()].filter((f) => {
          const b = s.blocks.find((x) => x.id === f.blockId)!;
          return (
            f.owner === req.owner &&
            f.holdUntil !== null &&
            f.holdUntil > t &&
            b.node === req.node &&
            b.releasedAt === null &&
            ids.has(b.poolId)
          );
        }),
        (f) => -f.freeSince,
      )[0];
      if (!held) return null;
      return insert(
        pools.find((p) => p.id === s.blocks.find((b) => b.id === held.blockId)!.poolId)!,
        held.blockId,
        held.value,
        req,
      );
    },
    lockClaims: async () => {},
    async claimBlock(pool, node) {
      if (
        pool.maxBlocksPerNode > 0 &&
        liveBlocks().filter((b) => b.node === node && b.poolId === pool.id).length >= pool.maxBlocksPerNode
      )
        return false;
      const cidr = parseCidr(pool.cidr);
      const size = cidrSize(pool.family, pool.blockPrefixLength);
      const taken = new Set(
        liveBlocks()
          .filter((b) => b.domainId === pool.routingDomainId)
          .map((b) => b.base),
      );
      for (let i = 0n; i < cidrSize(cidr.family, cidr.prefixLength) / size; i++) {
        if (taken.has(cidr.base + i * size)) continue;
        poolOf(pool.id).hint = i;
        claimAt(pool, cidr.base + i * size, node);
        return true;
      }
      return false;
    },
    async nodeBlockUsage(pool, node) {
      const mine = liveBlocks().filter((b) => b.node === node && b.poolId === pool.id);
      return {
        blocks: mine.length,
        live: BigInt(mine.reduce((n, b) => n + b.liveCount, 0)),
        roomy: mine.filter((b) => b.nextOffset * 4n < b.size * 3n).length,
      };
    },
    blocksBelowClaimHint: async (pool) => poolOf(pool.id).hint ?? 0n,
    poolContaining: async (domainId, address) => {
      const { family, value } = parseAddress(address);
      return (
        s.pools.find((p) => p.routingDomainId === domainId && cidrContains(parseCidr(p.cidr), family, value))?.id ??
        null
      );
    },
    reservationCovering: async (poolId, address) => {
      const r = s.reservations.find((x) => x.poolId === poolId && x.first <= addr(address) && x.last >= addr(address));
      const family = parseAddress(address).family;
      return r ? { first: formatAddress(family, r.first), last: formatAddress(family, r.last) } : null;
    },
    liveHolder: async (domainId, address) =>
      live().find((r) => r.domainId === domainId && r.value === addr(address))?.a.handle ?? null,
    async resting(pool, address, owner) {
      const f = s.free.get(key(pool.routingDomainId, addr(address)));
      if (!f) return null;
      const until = Math.max(
        f.freeSince + pool.cooldownSeconds * 1000,
        f.owner !== owner && f.holdUntil !== null ? f.holdUntil : -Infinity,
      );
      return { owner: f.owner, until: new Date(until) };
    },
    async lockBlockAt(domainId, address) {
      const { family, value } = parseAddress(address);
      const b = liveBlocks().find(
        (x) => x.domainId === domainId && x.family === family && value >= x.base && value < x.base + x.size,
      );
      return b ? { id: b.id, node: b.node } : null;
    },
    async claimBlockAt(pool, address, node) {
      const size = cidrSize(pool.family, pool.blockPrefixLength);
      return claimAt(pool, addr(address) - (addr(address) % size), node).id;
    },
    takeAddress: async (pool, blockId, address, req) => insert(pool, blockId, addr(address), req),
  };

  function releaseWhere(match: (r: Row) => boolean): Allocation[] {
    const out = pick(live().filter(match), (r) => r.a.family);
    for (const r of out) {
      r.releasedAt = t;
      const pool = poolOf(r.poolId);
      s.free.set(key(r.domainId, r.value), {
        value: r.value,
        family: r.a.family,
        domainId: r.domainId,
        blockId: r.blockId,
        freeSince: t,
        owner: r.a.owner,
        holdUntil: r.a.owner ? t + pool.stickySeconds * 1000 : null,
      });
      s.blocks.find((b) => b.id === r.blockId)!.liveCount--;
    }
    return out.map((r) => ({ ...r.a }));
  }

  function releaseBlocks(match: (b: Block) => boolean): BlockAffinity[] {
    const out = liveBlocks().filter((b) => b.liveCount === 0 && !live().some((r) => r.blockId === b.id) && match(b));
    for (const b of out) {
      b.releasedAt = t;
      const pool = poolOf(b.poolId);
      const index = (b.base - parseCidr(pool.cidr).base) / b.size;
      if (pool.hint !== null && index < pool.hint) pool.hint = index;
      for (const [k, f] of s.free) if (f.blockId === b.id && !resting(f, pool.cooldownSeconds)) s.free.delete(k);
      s.revision++;
      s.events.push({ revision: s.revision, cidr: b.cidr, pool: pool.name, node: null });
    }
    return out.map((b) => ({ cidr: b.cidr, pool: poolOf(b.poolId).name, node: b.node }));
  }

  return {
    state: () => s,
    createPool: (spec) =>
      run(() => {
        if (spec.routingDomain !== 'default') throw ipamErrors.routingDomainNotFound(spec.routingDomain);
        const cidr = formatCidr(spec.cidr);
        const other = s.pools.find(
          (p) =>
            p.routingDomainId === DEFAULT_DOMAIN &&
            p.family === spec.cidr.family &&
            overlaps(parseCidr(p.cidr), spec.cidr),
        );
        if (other)
          throw ipamErrors.poolOverlaps(cidr, `${other.name} (${other.cidr}) in routing domain ${spec.routingDomain}`);
        if (s.pools.some((p) => p.name === spec.name)) throw ipamErrors.poolExists(spec.name);
        const { cidr: _c, routingDomain: _d, ...rules } = spec;
        const p: Pool = {
          ...rules,
          id: ++s.ids,
          cidr,
          family: spec.cidr.family,
          routingDomainId: DEFAULT_DOMAIN,
          routingDomain: 'default',
          version: 1,
          hint: null,
          createdAt: new Date(t),
        };
        s.pools = pick([...s.pools, p], (x) => x.name);
        return publicPool(record(p));
      }),
    listPools: (page) =>
      run(() => {
        const after = page.after ? String(page.after[0]) : null;
        const all = s.pools.filter((p) => after === null || p.name > after).map((p) => publicPool(record(p)));
        const items = all.slice(0, page.limit);
        return { items, next: all.length > page.limit ? [items.at(-1)!.name] : null };
      }),
    updatePool: (name, etag, changes) =>
      run(() => {
        const p = s.pools.find((x) => x.name === name);
        if (!p) throw ipamErrors.poolNotFound(name);
        if (`"${p.id}.${p.version}"` !== etag) throw ipamErrors.staleEtag(`pool ${name}`);
        Object.assign(p, Object.fromEntries(Object.entries(changes).filter(([, v]) => v !== undefined)), {
          version: p.version + 1,
        });
        return publicPool(record(p));
      }),
    readPoolCatalog: () =>
      run(() => ({
        pools: s.pools.map((p) => ({ ...record(p), liveAllocations: 0 })),
        domainOf: new Map([...s.clusters, ['', DEFAULT_DOMAIN]]),
      })),
    createReservation: (poolName, first, last, reason) =>
      run(() => {
        const pool = s.pools.find((p) => p.name === poolName);
        if (!pool) throw ipamErrors.poolNotFound(poolName);
        const cidr = parseCidr(pool.cidr);
        const [f, l] = [parseAddress(first), parseAddress(last)];
        if (!cidrContains(cidr, f.family, f.value) || !cidrContains(cidr, l.family, l.value) || f.value > l.value)
          throw ipamErrors.invalid(
            'reservation',
            `range ${first}..${last} must be ordered and inside pool ${poolName} (${pool.cidr})`,
          );
        const held = live()
          .filter(
            (r) =>
              r.domainId === pool.routingDomainId &&
              r.a.family === f.family &&
              r.value >= f.value &&
              r.value <= l.value,
          )
          .slice(0, 5);
        if (held.length > 0)
          throw ipamErrors.reservedInUse(
            `${first}..${last}`,
            held.map((h) => `${h.a.address} (${h.a.handle})`),
          );
        for (const [k, x] of s.free)
          if (x.domainId === pool.routingDomainId && x.family === f.family && x.value >= f.value && x.value <= l.value)
            s.free.delete(k);
        const r = { id: ++s.ids, poolId: pool.id, first: f.value, last: l.value, reason, createdAt: t };
        s.reservations.push(r);
        return { id: r.id, pool: poolName, first, last, reason, createdAt: new Date(t) };
      }),
    listReservations: (poolName, page) =>
      run(() => {
        const all = pick(
          s.reservations
            .map((r) => ({ r, pool: poolOf(r.poolId) }))
            .filter(({ pool }) => poolName === null || pool.name === poolName),
          ({ pool, r }) => `${pool.name}\u0000${String(r.id).padStart(12, '0')}`,
        )
          .filter(
            ({ pool, r }) =>
              !page.after ||
              pool.name > String(page.after[0]) ||
              (pool.name === String(page.after[0]) && r.id > Number(page.after[1])),
          )
          .map(({ r, pool }) => ({
            id: r.id,
            pool: pool.name,
            first: formatAddress(pool.family, r.first),
            last: formatAddress(pool.family, r.last),
            reason: r.reason,
            createdAt: new Date(r.createdAt),
          }));
        const items = all.slice(0, page.limit);
        return { items, next: all.length > page.limit ? [items.at(-1)!.pool, items.at(-1)!.id] : null };
      }),
    deleteReservation: (poolName, id) =>
      run(() => {
        const before = s.reservations.length;
        s.reservations = s.reservations.filter((r) => !(r.id === id && poolOf(r.poolId).name === poolName));
        return s.reservations.length < before;
      }),
    setNodeLabels: (node, labels) =>
      run(() => {
        if (Object.keys(labels).length === 0) s.nodeLabels.delete(node);
        else s.nodeLabels.set(node, { ...labels });
      }),
    setNamespaceLabels: (cluster, namespace, labels) =>
      run(() => {
        if (cluster && !s.clusters.has(cluster)) throw ipamErrors.clusterNotFound(cluster);
        const k = `${cluster ?? ''}\u0000${namespace}`;
        if (Object.keys(labels).length === 0) s.namespaceLabels.delete(k);
        else s.namespaceLabels.set(k, { ...labels });
      }),
    storedLabels: (q) =>
      run(() => ({
        node: q.node === null ? null : (s.nodeLabels.get(q.node) ?? null),
        namespace: q.namespace === null ? null : (s.namespaceLabels.get(`${q.cluster}\u0000${q.namespace}`) ?? null),
      })),
    transaction: (fn) => run(() => fn(tx)),
    allocateFast: (pool, req) =>
      run((): FastOutcome => {
        if (req.attemptId) {
          const fenced = attempt(req.handle, req.attemptId);
          if (fenced !== null) return { kind: 'fenced', at: new Date(fenced) };
        }
        const existing = live().find((r) => r.a.handle === req.handle && r.a.family === pool.family);
        if (existing) return { kind: 'existing', allocation: { ...existing.a } };
        const b = liveBlocks().find((x) => x.node === req.node && x.poolId === pool.id && x.nextOffset < x.size);
        if (!b) return { kind: 'none' };
        const v = b.base + b.nextOffset++;
        const f = s.free.get(key(pool.routingDomainId, v));
        if (
          reservationAt(pool.id, v) ||
          live().some((x) => x.domainId === pool.routingDomainId && x.value === v) ||
          (f && resting(f, pool.cooldownSeconds))
        )
          return { kind: 'skipped' };
        return { kind: 'new', allocation: insert(pool, b.id, v, { ...req, owner: '' }), room: b.size - b.nextOffset };
      }),
    fenceAttempt: (handle, attemptId) =>
      run(() => {
        const k = `${handle}\u0000${attemptId}`;
        const a = s.attempts.get(k) ?? { createdAt: t, fencedAt: null };
        s.attempts.set(k, { ...a, fencedAt: a.fencedAt ?? t });
      }),
    releaseHandle: (handle, only = {}) =>
      run(() =>
        releaseWhere(
          (r) =>
            r.a.handle === handle &&
            (only.node === undefined || r.a.node === only.node) &&
            (only.pools === undefined || only.pools.includes(r.a.pool)),
        ),
      ),
    releaseInvalidHandles: (node, valid, before) =>
      run(() =>
        releaseWhere((r) => r.a.node === node && !valid.includes(r.a.handle) && (!before || r.a.allocatedAt < before)),
      ),
    releaseNodeAllocationsBefore: (node, before) =>
      run(() => releaseWhere((r) => r.a.node === node && r.a.allocatedAt < before)),
    listAllocations: (filter, page) =>
      run(() => {
        const all = pick(
          live().filter(
            (r) => (!filter.pool || r.a.pool === filter.pool) && (!filter.node || r.a.node === filter.node),
          ),
          (r) => (r.a.family === 4 ? r.value : r.value + (1n << 200n)),
        )
          .filter(
            (r) =>
              !page.after ||
              r.a.family > Number(page.after[0]) ||
              (r.a.family === Number(page.after[0]) && r.value > addr(String(page.after[1]))),
          )
          .map((r) => ({ ...r.a }));
        const items = all.slice(0, page.limit);
        return { items, next: all.length > page.limit ? [items.at(-1)!.family, items.at(-1)!.address] : null };
      }),
    holderOfHandle: (handle) =>
      run(() => {
        const mine = pick(
          live().filter((r) => r.a.handle === handle),
          (r) => r.a.family,
        );
        return mine.length === 0 ? null : { node: mine[0]!.a.node, pools: [...new Set(mine.map((r) => r.a.pool))] };
      }),
    liveAllocationsOfNode: (node) =>
      run(() =>
        liveBlocks()
          .filter((b) => b.node === node)
          .reduce((n, b) => n + b.liveCount, 0),
      ),
    affinitySnapshot: () =>
      run(() => ({
        revision: s.revision,
        reset: true,
        deletes: [],
        upserts: pick(liveBlocks(), (b) => (b.family === 4 ? b.base : b.base + (1n << 200n))).map((b) => ({
          cidr: b.cidr,
          pool: poolOf(b.poolId).name,
          node: b.node,
        })),
      })),
    affinityChangesSince: (revision) =>
      run(() =>
        s.events
          .filter((e) => e.revision > revision)
          .slice(0, 10000)
          .map((e) => {
            const block = { cidr: e.cidr, pool: e.pool, node: e.node ?? '' };
            return {
              revision: e.revision,
              reset: false,
              upserts: e.node ? [block] : [],
              deletes: e.node ? [] : [e.cidr],
            };
          }),
      ),
    releaseEmptyBlocks: (grace) =>
      run(() =>
        releaseBlocks(
          (b) =>
            b.claimedAt < t - grace * 1000 &&
            ![...s.free.values()].some(
              (f) =>
                f.blockId === b.id &&
                (f.freeSince > t - Math.max(grace, poolOf(b.poolId).cooldownSeconds) * 1000 ||
                  (f.holdUntil !== null && f.holdUntil > t)),
            ),
        ),
      ),
    releaseNodeBlocks: (node) => run(() => releaseBlocks((b) => b.node === node)),
    pruneAttempts: (retention) =>
      run(() => {
        let n = 0;
        for (const [k, a] of s.attempts) {
          if (
            (a.fencedAt === null && a.createdAt < t - 600_000) ||
            (a.fencedAt !== null && a.fencedAt < t - retention * 1000)
          ) {
            s.attempts.delete(k);
            n++;
          }
        }
        return n;
      }),
    nodesHoldingAddresses: () => run(() => [...new Set(liveBlocks().map((b) => b.node))].sort()),
  };

  function publicPool(p: PoolRecord) {
    const { id: _i, routingDomainId: _r, version: _v, hint: _h, ...out } = p as PoolRecord & Partial<Pool>;
    return out;
  }
}

function overlaps(
  a: { family: Family; base: bigint; prefixLength: number },
  b: { family: Family; base: bigint; prefixLength: number },
): boolean {
  return cidrContains(a, b.family, b.base) || cidrContains(b, a.family, a.base);
}
