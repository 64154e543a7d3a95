import type { Handlers } from '../../../lib/grpc/server.js';
import type { Notifier } from '../../../lib/db/notifier.js';
import { IpamServiceService, type Allocation as PbAllocation, type Pool as PbPool } from '../../../gen/weft/ipam/v1/ipam.js';
import { validateAllocationRequest, validateHandle, validateNodeName, validatePoolName, validatePoolSpec } from '../domain/pool.js';
import type { Allocation, Pool } from '../domain/types.js';
import { BLOCKS_CHANNEL, type IpamRepository } from '../store/ipam.repository.js';

/** The gRPC adapter: proto <-> domain conversion and nothing else. Generated types stop here. */
const toPbPool = (p: Pool): PbPool => ({ name: p.name, cidr: p.cidr, blockPrefixLength: p.blockPrefixLength, createTime: p.createdAt });
const toPbAllocation = (a: Allocation): PbAllocation => ({ ...a, allocateTime: a.allocatedAt });

export interface IpamRpcDeps {
  repo: IpamRepository;
  notifier: Notifier;
  /** How often a watch re-reads even without a notification. */
  pollMs?: number;
}

export function createIpamHandlers({ repo, notifier, pollMs = 2000 }: IpamRpcDeps): Handlers<typeof IpamServiceService> {
  return {
    async createPool(req) {
      const spec = validatePoolSpec({ name: req.name, cidr: req.cidr, blockPrefixLength: req.blockPrefixLength });
      return { pool: toPbPool(await repo.createPool(spec)) };
    },
    async listPools() {
      return { pools: (await repo.listPools()).map(toPbPool) };
    },
    async allocate(req) {
      const valid = validateAllocationRequest({
        handle: req.handle, node: req.node, pool: req.pool || null,
        podNamespace: req.podNamespace, podName: req.podName, containerId: req.containerId,
      });
      return { allocation: toPbAllocation(await repo.allocate(valid)) };
    },
    async release(req) {
      return repo.release(validateHandle(req.handle));
    },
    async listAllocations(req) {
      const filter = { pool: req.pool ? validatePoolName(req.pool) : undefined, node: req.node ? validateNodeName(req.node) : undefined };
      return { allocations: (await repo.listAllocations(filter)).map(toPbAllocation) };
    },
    async *watchBlockAffinities(_req, { signal }) {
      const snap = await repo.affinitySnapshot();
      let revision = snap.revision;
      yield snap;
      while (!signal.aborted) {
        await notifier.wait(BLOCKS_CHANNEL, pollMs, signal);
        if (signal.aborted) return;
        for (const change of await repo.affinityChangesSince(revision)) {
          revision = change.revision;
          yield change;
        }
      }
    },
  };
}
