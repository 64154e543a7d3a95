import { status } from '@grpc/grpc-js';
import type { ErrorKind } from '../../lib/errors.js';
import type { PromiseClient } from '../../lib/grpc/client.js';
import { errorCodeOf } from '../../lib/grpc/status.js';
import { IpFamily, type IpamServiceService } from '../../gen/weft/ipam/v1/ipam.js';
import { IpamCallError, type IpamPort, type NodeAllocation } from './ports.js';

/** How long the endpoint waits for each IPAM call. */
export const IPAM_TIMEOUTS = { allocateMs: 20_000, releaseMs: 10_000, listMs: 10_000, pingMs: 5000 } as const;

/**
 * The endpoint's IPAM port over IPAM's gRPC client: requests and answers converted to plain values, and a gRPC
 * failure turned into an IpamCallError (its kind for the runtime, IPAM's error code and message). Anything that is not
 * a gRPC failure is thrown as it is.
 */
export function createIpamPort(deps: {
  ipam: PromiseClient<typeof IpamServiceService>;
  node: string;
  target: string;
}): IpamPort {
  const { ipam, node } = deps;
  return {
    target: deps.target,
    async allocate(req) {
      const res = await ipam
        .allocate(
          {
            handle: req.handle,
            node,
            pool: req.pool,
            families: req.families.map((f) => (f === 6 ? IpFamily.IP_FAMILY_IPV6 : IpFamily.IP_FAMILY_IPV4)),
            addresses: [...req.addresses],
            podNamespace: req.podNamespace,
            podName: req.podName,
            podUid: req.podUid,
            containerId: req.containerId,
            attemptId: req.attemptId,
          },
          { timeoutMs: IPAM_TIMEOUTS.allocateMs },
        )
        .catch(ipamCallError);
      const ipv4 = res.allocations.find((a) => a.family === IpFamily.IP_FAMILY_IPV4)?.address;
      const ipv6 = res.allocations.find((a) => a.family === IpFamily.IP_FAMILY_IPV6)?.address;
      return { ...(ipv4 !== undefined ? { ipv4 } : {}), ...(ipv6 !== undefined ? { ipv6 } : {}) };
    },
    async release(handle, attemptId) {
      const r = await ipam
        .release(attemptId === undefined ? { handle } : { handle, attemptId }, { timeoutMs: IPAM_TIMEOUTS.releaseMs })
        .catch(ipamCallError);
      return { released: r.released, address: r.address };
    },
    async nodeAllocations() {
      const out: NodeAllocation[] = [];
      let pageToken = '';
      do {
        const page = await ipam
          .listAllocations({ pool: '', node, pageSize: 5000, pageToken }, { timeoutMs: IPAM_TIMEOUTS.listMs })
          .catch(ipamCallError);
        for (const a of page.allocations)
          out.push({
            handle: a.handle,
            containerId: a.containerId,
            podNamespace: a.podNamespace,
            podName: a.podName,
            address: a.address,
            family: a.family === IpFamily.IP_FAMILY_IPV6 ? 6 : 4,
          });
        pageToken = page.nextPageToken;
      } while (pageToken);
      return out;
    },
    async ping() {
      await ipam.listPools({}, { timeoutMs: IPAM_TIMEOUTS.pingMs }).catch(ipamCallError);
    },
  };
}

/** What the runtime should make of an IPAM status. */
function kindOf(code: number): ErrorKind {
  switch (code) {
    case status.RESOURCE_EXHAUSTED:
      return 'exhausted';
    case status.INVALID_ARGUMENT:
      return 'invalid_argument';
    case status.UNAVAILABLE:
    case status.DEADLINE_EXCEEDED:
      return 'unavailable';
    default:
      return 'failed_precondition';
  }
}

function ipamCallError(err: unknown): never {
  const e = err as { code?: unknown; details?: string; message?: string };
  if (typeof e?.code !== 'number') throw err;
  throw new IpamCallError(
    kindOf(e.code),
    errorCodeOf(err),
    e.details ?? String(err),
    e.code === status.DEADLINE_EXCEEDED || e.code === status.UNAVAILABLE || e.code === status.CANCELLED,
    e.message ?? String(err),
  );
}
