import type { Handlers } from '../../../lib/grpc/server.js';
import type { Identity } from '../../../lib/auth/identity.js';
import { DomainError } from '../../../lib/errors.js';
import { forEachBounded } from '../../../lib/bounded-concurrency.js';
import type { Notifier } from '../../../lib/db/notifier.js';
import { cidrSize, formatAddress, parseAddress, parseCidr, type Family } from '../../../lib/net/ip.js';
import {
  GetUtilizationResponse,
  IpamServiceService,
  IpFamily,
  type AllocateRequest,
  type BatchAllocateResult,
  type Allocation as PbAllocation,
  type Pool as PbPool,
  type Reservation as PbReservation,
  type UsageCounts as PbUsageCounts,
} from '../../../gen/weft/ipam/v1/ipam.js';
import { historyErrors, ipamErrors } from '../domain/ipam.errors.js';
import { chunkBySize, ensureFitsOneMessage, stringFieldBytes } from '../../../lib/grpc/limits.js';
import { decodePageToken, encodePageToken, pageSize } from '../domain/paging.js';
import {
  validateAllocationRequest,
  validateAttemptId,
  validateHandle,
  validateLabels,
  validateNamespaceName,
  validateNodeName,
  validatePoolName,
  validatePoolRules,
  validatePoolSpec,
} from '../domain/pool.js';
import type { Allocation, HistoryQuery, Pool, Reservation, UsageCounts } from '../domain/types.js';
import type { ReleaseScope } from '../domain/ipam-store.js';
import { BLOCKS_CHANNEL, type IpamUseCases } from '../use-cases/ipam.use-cases.js';
import type { Prefix, PrefixesRepository } from '../store/prefixes.repository.js';

/** The gRPC adapter: proto <-> domain conversion and nothing else. Generated types stop here. */
const toPbFamily = (f: Family): IpFamily => (f === 4 ? IpFamily.IP_FAMILY_IPV4 : IpFamily.IP_FAMILY_IPV6);
function fromPbFamily(f: IpFamily): Family {
  if (f === IpFamily.IP_FAMILY_IPV4) return 4;
  if (f === IpFamily.IP_FAMILY_IPV6) return 6;
  throw ipamErrors.invalid('family', `unknown IP family ${f}; use IP_FAMILY_IPV4 or IP_FAMILY_IPV6`);
}
const toPbPool = (p: Pool): PbPool => ({
  name: p.name,
  cidr: p.cidr,
  blockPrefixLength: p.blockPrefixLength,
  createTime: p.createdAt,
  family: toPbFamily(p.family),
  cooldownSeconds: p.cooldownSeconds,
  stickySeconds: p.stickySeconds,
  disabled: p.disabled,
  nodeSelector: p.nodeSelector,
  namespaceSelector: p.namespaceSelector,
  allowedUses: p.allowedUses,
  etag: p.etag,
  liveAllocations: p.liveAllocations,
  maxBlocksPerNode: p.maxBlocksPerNode,
  routingDomain: p.routingDomain,
});
const toPbReservation = (r: Reservation): PbReservation => ({
  name: reservationName(r.pool, r.id),
  pool: r.pool,
  first: r.first,
  last: r.last,
  reason: r.reason,
  createTime: r.createdAt,
});
const toPbAllocation = (a: Allocation): PbAllocation => ({
  ...a,
  family: toPbFamily(a.family),
  allocateTime: a.allocatedAt,
});
const toPbCounts = (c: UsageCounts): PbUsageCounts => ({
  total: c.total.toString(),
  allocated: c.allocated,
  coolingDown: c.coolingDown,
  reserved: c.reserved.toString(),
  free: c.free.toString(),
});

const MAX_PAGE = 1000;
const MAX_BATCH = 1000;
// Items in flight at once: the common ones meet in one group-commit statement (store/fast-allocate.ts).
const BATCH_PARALLELISM = 128;

function toAllocationRequest(req: AllocateRequest) {
  return validateAllocationRequest({
    handle: req.handle,
    node: req.node,
    pool: req.pool || null,
    families: req.families.map(fromPbFamily),
    podNamespace: req.podNamespace,
    podName: req.podName,
    containerId: req.containerId,
    addresses: req.addresses,
    owner: req.owner,
    namespacePool: req.namespacePool || null,
    nodeLabels: req.nodeLabels,
    namespaceLabels: req.namespaceLabels,
    use: req.use,
    cluster: req.cluster || null,
    attemptId: req.attemptId || null,
    podUid: req.podUid,
  });
}

/** Stable resource names of reservations: "pools/<pool>/reservations/<id>". */
const reservationName = (pool: string, id: number) => `pools/${pool}/reservations/${id}`;
function parseReservationName(name: string): { pool: string; id: number } {
  const m = /^pools\/([a-z0-9-]+)\/reservations\/(\d+)$/.exec(name);
  if (!m)
    throw ipamErrors.invalid(
      'name',
      `reservation name ${JSON.stringify(name)} must look like "pools/<pool>/reservations/<id>"`,
    );
  return { pool: m[1]!, id: Number(m[2]) };
}

export interface IpamRpcDeps {
  /** The use cases (use-cases/ipam.use-cases.ts). */
  repo: IpamUseCases;
  prefixes: PrefixesRepository;
  notifier: Notifier;
  /** How often a watch re-reads even without a notification. */
  pollMs?: number;
  /** Live allocations a node identity may hold (WEFT_LIMIT_NODE_ALLOCATIONS); 0: no limit. Other callers are not limited. */
  maxNodeAllocations?: number;
}

const prefixName = (p: Prefix) => `aggregates/${p.aggregate}/prefixes/${p.id}`;
const toPbPrefix = (p: Prefix) => ({
  name: prefixName(p),
  aggregate: p.aggregate,
  cluster: p.cluster,
  purpose: p.purpose,
  cidr: p.cidr,
  createTime: p.createdAt,
});

export function createIpamHandlers({
  repo,
  prefixes,
  notifier,
  pollMs = 2000,
  maxNodeAllocations = 0,
}: IpamRpcDeps): Handlers<typeof IpamServiceService> {
  /**
   * For a node caller under a limit: takes one of its remaining allocation slots for a request, or refuses it with
   * ipam.node_allocation_limit. The node's live count is read once per call (one index range of its blocks); at the
   * limit, a retry of a handle the node already holds still passes (it allocates nothing new). Checked before the
   * allocation, not inside its transaction: concurrent calls of one node can pass it by at most their number.
   */
  function allocationGate(identity: Identity) {
    if (identity.kind !== 'node' || maxNodeAllocations <= 0) return null;
    let live: Promise<number> | null = null;
    let taken = 0;
    return async (handle: string) => {
      live ??= repo.liveAllocationsOfNode(identity.name);
      const n = await live;
      if (n + taken < maxNodeAllocations) {
        taken++;
        return;
      }
      if ((await repo.holderOfHandle(handle))?.node === identity.name) return;
      throw ipamErrors.nodeAllocationLimit(identity.name, n + taken, maxNodeAllocations);
    };
  }

  /**
   * What the caller's release may free, enforced in the release's own statement (the authorization check ran before
   * it, in another): a node only its own allocations, a token without the admin scope only in its release pools.
   */
  function releaseScopeOf(identity: Identity): ReleaseScope {
    if (identity.kind === 'node') return { node: identity.name };
    if (identity.kind === 'token' && !identity.scopes.includes('admin')) {
      return {
        pools: identity.scopes.filter((s) => s.startsWith('ipam:release:')).map((s) => s.slice('ipam:release:'.length)),
      };
    }
    return {};
  }

  return {
    async createRoutingDomain(req) {
      const d = await prefixes.createRoutingDomain(validatePoolName(req.name));
      return { routingDomain: { name: d.name, createTime: d.createdAt } };
    },
    async listRoutingDomains() {
      return {
        routingDomains: (await prefixes.listRoutingDomains()).map((d) => ({ name: d.name, createTime: d.createdAt })),
      };
    },
    async registerCluster(req) {
      const c = await prefixes.registerCluster(
        validatePoolName(req.name),
        req.routingDomain ? validatePoolName(req.routingDomain) : 'default',
      );
      return { cluster: { name: c.name, routingDomain: c.routingDomain, createTime: c.createdAt } };
    },
    async listClusters() {
      return {
        clusters: (await prefixes.listClusters()).map((c) => ({
          name: c.name,
          routingDomain: c.routingDomain,
          createTime: c.createdAt,
        })),
      };
    },
    async createAggregate(req) {
      const a = await prefixes.createAggregate(
        validatePoolName(req.name),
        req.routingDomain ? validatePoolName(req.routingDomain) : 'default',
        parseCidr(req.cidr, 'aggregate CIDR'),
      );
      return { aggregate: { name: a.name, routingDomain: a.routingDomain, cidr: a.cidr, createTime: a.createdAt } };
    },
    async listAggregates() {
      return {
        aggregates: (await prefixes.listAggregates()).map((a) => ({
          name: a.name,
          routingDomain: a.routingDomain,
          cidr: a.cidr,
          createTime: a.createdAt,
        })),
      };
    },
    async allocatePrefix(req) {
      const purpose = req.purpose || 'pods';
      if (!/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(purpose))
        throw ipamErrors.invalid(
          'purpose',
          `purpose ${JSON.stringify(purpose)} must be a lowercase name, e.g. "pods" or "services"`,
        );
      if (!Number.isInteger(req.prefixLength) || req.prefixLength < 1 || req.prefixLength > 128)
        throw ipamErrors.invalid('prefix_length', `prefix length ${req.prefixLength} must be 1-128`);
      const p = await prefixes.allocatePrefix(
        validatePoolName(req.cluster),
        validatePoolName(req.aggregate),
        req.prefixLength,
        purpose,
      );
      return { prefix: toPbPrefix(p) };
    },
    async releasePrefix(req) {
      const m = /^aggregates\/([a-z0-9-]+)\/prefixes\/(\d+)$/.exec(req.name);
      if (!m)
        throw ipamErrors.invalid(
          'name',
          `prefix name ${JSON.stringify(req.name)} must look like "aggregates/<aggregate>/prefixes/<id>"`,
        );
      return { released: await prefixes.releasePrefix(m[1]!, Number(m[2])) };
    },
    async listPrefixes(req) {
      return {
        prefixes: (await prefixes.listPrefixes({ cluster: req.cluster || null, aggregate: req.aggregate || null })).map(
          toPbPrefix,
        ),
      };
    },
    async createPool(req) {
      const spec = validatePoolSpec({
        name: req.name,
        cidr: req.cidr,
        blockPrefixLength: req.blockPrefixLength,
        cooldownSeconds: req.cooldownSeconds,
        stickySeconds: req.stickySeconds,
        disabled: req.disabled,
        nodeSelector: req.nodeSelector,
        namespaceSelector: req.namespaceSelector,
        allowedUses: req.allowedUses,
        maxBlocksPerNode: req.maxBlocksPerNode,
        routingDomain: req.routingDomain,
      });
      return { pool: toPbPool(await repo.createPool(spec)) };
    },
    async updatePool(req) {
      const name = validatePoolName(req.name);
      if (!req.etag) throw ipamErrors.invalid('etag', 'etag is empty; read the pool (ListPools) and pass its etag');
      const changes = validatePoolRules({
        cooldownSeconds: req.cooldownSeconds,
        stickySeconds: req.stickySeconds,
        disabled: req.disabled,
        nodeSelector: req.nodeSelector,
        namespaceSelector: req.namespaceSelector,
        allowedUses: req.setAllowedUses ? req.allowedUses : undefined,
        maxBlocksPerNode: req.maxBlocksPerNode,
      });
      return { pool: toPbPool(await repo.updatePool(name, req.etag, changes)) };
    },
    async createReservation(req) {
      const pool = validatePoolName(req.pool);
      let first: string;
      let last: string;
      if (req.cidr && !req.first && !req.last) {
        const c = parseCidr(req.cidr, 'reservation CIDR');
        first = formatAddress(c.family, c.base);
        last = formatAddress(c.family, c.base + cidrSize(c.family, c.prefixLength) - 1n);
      } else if (!req.cidr && req.first && req.last) {
        const f = parseAddress(req.first, 'first');
        const l = parseAddress(req.last, 'last');
        if (f.family !== l.family || f.value > l.value)
          throw ipamErrors.invalid(
            'reservation',
            `first ${req.first} and last ${req.last} must be one family, first <= last`,
          );
        first = formatAddress(f.family, f.value);
        last = formatAddress(l.family, l.value);
      } else throw ipamErrors.invalid('reservation', 'give either cidr, or first and last');
      if (req.reason.length > 1024) throw ipamErrors.invalid('reason', 'reason is over 1024 characters');
      return { reservation: toPbReservation(await repo.createReservation(pool, first, last, req.reason)) };
    },
    async listReservations(req) {
      const page = await repo.listReservations(req.pool ? validatePoolName(req.pool) : null, {
        after: decodePageToken('reservations', req.pageToken),
        limit: pageSize(req.pageSize, 1000, 5000),
      });
      return {
        reservations: page.items.map(toPbReservation),
        nextPageToken: page.next ? encodePageToken('reservations', page.next) : '',
      };
    },
    async deleteReservation(req) {
      const { pool, id } = parseReservationName(req.name);
      return { deleted: await repo.deleteReservation(pool, id) };
    },
    async listPools(req) {
      const page = await repo.listPools({
        after: decodePageToken('pools', req.pageToken),
        limit: pageSize(req.pageSize, 100, 1000),
      });
      return { pools: page.items.map(toPbPool), nextPageToken: page.next ? encodePageToken('pools', page.next) : '' };
    },
    async allocate(req, ctx) {
      const request = toAllocationRequest(req);
      await allocationGate(ctx.identity)?.(request.handle);
      const allocations = (await repo.allocate(request)).map(toPbAllocation);
      return { allocation: allocations[0], allocations };
    },
    async batchAllocate(req, ctx) {
      const gate = allocationGate(ctx.identity);
      if (req.requests.length > MAX_BATCH)
        throw ipamErrors.invalid('requests', `a batch holds at most ${MAX_BATCH} requests, not ${req.requests.length}`);
      // Each item succeeds or fails on its own; many run at once and the common ones share a statement.
      const results: BatchAllocateResult[] = new Array(req.requests.length);
      await forEachBounded(req.requests, BATCH_PARALLELISM, async (item, i) => {
        try {
          const request = toAllocationRequest(item);
          await gate?.(request.handle);
          results[i] = {
            allocations: (await repo.allocate(request)).map(toPbAllocation),
            errorCode: '',
            errorMessage: '',
          };
        } catch (err) {
          if (!(err instanceof DomainError)) throw err;
          results[i] = { allocations: [], errorCode: err.code, errorMessage: err.message };
        }
      });
      return { results };
    },
    async release(req, ctx) {
      const released = await repo.release(
        validateHandle(req.handle),
        validateAttemptId(req.attemptId),
        releaseScopeOf(ctx.identity),
      );
      return {
        released: released.length > 0,
        address: released[0]?.address ?? '',
        addresses: released.map((a) => a.address),
      };
    },
    async listAllocations(req) {
      const filter = {
        pool: req.pool ? validatePoolName(req.pool) : undefined,
        node: req.node ? validateNodeName(req.node) : undefined,
      };
      const page = await repo.listAllocations(filter, {
        after: decodePageToken('allocations', req.pageToken),
        limit: pageSize(req.pageSize, 1000, 5000),
      });
      return {
        allocations: page.items.map(toPbAllocation),
        nextPageToken: page.next ? encodePageToken('allocations', page.next) : '',
      };
    },
    async garbageCollect(req) {
      const node = validateNodeName(req.node);
      const valid = req.validHandles.map(validateHandle);
      const released = (await repo.garbageCollect(node, valid, req.allocatedBefore)).map(toPbAllocation);
      // A gone node's blocks, emptied above, go back to their pools now rather than after the sweeper's grace.
      const releasedBlocks = req.releaseBlocks ? await repo.releaseNodeBlocks(node) : [];
      return { released, releasedBlocks };
    },
    async setNodeLabels(req) {
      await repo.setNodeLabels(validateNodeName(req.node), validateLabels(req.labels));
      return {};
    },
    async setNamespaceLabels(req) {
      await repo.setNamespaceLabels(
        req.cluster ? validatePoolName(req.cluster) : null,
        validateNamespaceName(req.namespace),
        validateLabels(req.labels),
      );
      return {};
    },
    async listAllocationHistory(req) {
      const limit = pageSize(req.pageSize, MAX_PAGE, MAX_PAGE);
      const after = decodePageToken('history', req.pageToken);
      const forms = [req.address, req.podName, req.node, req.handle].filter((x) => x !== '').length;
      if (forms !== 1 || (req.podNamespace && !req.podName)) throw historyErrors.badQuery();
      let q: HistoryQuery;
      if (req.address) {
        const { family, value } = parseAddress(req.address);
        q = {
          kind: 'address',
          address: formatAddress(family, value),
          at: req.at ?? new Date(),
          routingDomain: req.routingDomain ? validatePoolName(req.routingDomain) : null,
          limit,
        };
      } else if (req.podName) q = { kind: 'pod', podNamespace: req.podNamespace, podName: req.podName, limit };
      else if (req.node)
        q = {
          kind: 'node',
          node: validateNodeName(req.node),
          from: req.at ?? null,
          until: req.until ?? new Date(),
          limit,
        };
      else q = { kind: 'handle', handle: validateHandle(req.handle), limit };
      const page = await repo.history(q, after);
      return {
        entries: page.items.map((e) => ({
          allocation: toPbAllocation(e.allocation),
          releaseTime: e.releasedAt ?? undefined,
        })),
        nextPageToken: page.next ? encodePageToken('history', page.next) : '',
      };
    },
    async checkConsistency() {
      return repo.checkConsistency();
    },
    async getUtilization(req) {
      const pool = req.pool ? validatePoolName(req.pool) : null;
      // page_size 0: the whole answer (as before paging), or an error saying to page, never a short one.
      const size = pageSize(req.pageSize, 0, 5000);
      const key = decodePageToken('utilization', req.pageToken);
      if (
        key &&
        !(
          key.length === 3 &&
          typeof key[0] === 'string' &&
          (key[1] === 0 || key[1] === 1) &&
          typeof key[2] === 'string'
        )
      )
        throw ipamErrors.invalid(
          'page_token',
          'page_token is not one this list (utilization) gave out; start again with an empty page_token',
        );
      const after = key as [string, 0 | 1, string] | null;
      const page = await repo.utilization(
        pool,
        req.includeBlocks,
        size || after ? { after, limit: size || 1000 } : null,
      );
      const response: GetUtilizationResponse = {
        pools: page.pools.map((p) => ({
          pool: p.pool,
          cidr: p.cidr,
          counts: toPbCounts(p.counts),
          blocks: p.blocks.map((b) => ({ cidr: b.cidr, node: b.node, counts: toPbCounts(b.counts) })),
          nodes: p.nodes.map((n) => ({ node: n.node, counts: toPbCounts(n.counts) })),
        })),
        nextPageToken: page.next ? encodePageToken('utilization', page.next) : '',
      };
      if (!size)
        ensureFitsOneMessage(
          'ipam.utilization_too_large',
          GetUtilizationResponse.encode(response).finish().length,
          "the pools' usage rows",
        );
      return response;
    },
    async *watchBlockAffinities(req, { signal }) {
      // Subscribed before each read (as the routes watch does), so that a change committed while the stream reads or
      // sends is not slept through until the next poll.
      let woken = notifier.wait(BLOCKS_CHANNEL, pollMs, signal);
      const snap = await repo.affinitySnapshot();
      let revision = snap.revision;
      if (!req.acceptChunks) yield { ...snap, more: false };
      else {
        // The snapshot of every cluster's blocks (100,000 blocks are about 8 MB) in chunks of CHUNK_BYTES.
        const parts = chunkBySize(
          snap.upserts,
          (b) => stringFieldBytes(b.cidr) + stringFieldBytes(b.pool) + stringFieldBytes(b.node) + 4,
        );
        for (let i = 0; i < parts.length; i++) yield { ...snap, upserts: parts[i]!, more: i < parts.length - 1 };
      }
      while (!signal.aborted) {
        await woken;
        if (signal.aborted) return;
        woken = notifier.wait(BLOCKS_CHANNEL, pollMs, signal);
        for (const change of await repo.affinityChangesSince(revision)) {
          revision = change.revision;
          yield { ...change, more: false };
        }
      }
    },
  };
}
