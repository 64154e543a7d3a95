import { DomainError } from '../lib/errors.js';
import type { PromiseClient } from '../lib/grpc/client.js';
import type { Handlers } from '../lib/grpc/server.js';
import type { Logger } from '../lib/logger.js';
import { AgentServiceService } from '../gen/weft/agent/v1/agent.js';
import { IpFamily, type IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { status } from '@grpc/grpc-js';
import { attachPod, checkNetnsPath, detachPod, POD_GATEWAY } from './kernel/pod-network.js';

/**
 * The local endpoint the CNI plugin calls. Attach: allocate (idempotent by handle) -> plumb the pod; on any
 * failure, undo both. Detach: remove the interface, then release the handle; both treat "already gone" as done.
 */
export function createCniHandlers(deps: {
  node: string;
  ipam: PromiseClient<typeof IpamServiceService>;
  mtu: number;
  routeProtocol: number;
  logger: Logger;
}): Handlers<typeof AgentServiceService> {
  const invalid = (msg: string) => new DomainError('agent.invalid_request', 'invalid_argument', msg);
  const passThrough = (err: unknown): never => {
    // IPAM's own error (with its status and message) goes back to the plugin unchanged.
    const e = err as { code?: number; details?: string };
    if (typeof e.code === 'number') {
      const kind = e.code === status.RESOURCE_EXHAUSTED ? 'exhausted' : e.code === status.INVALID_ARGUMENT ? 'invalid_argument'
        : e.code === status.UNAVAILABLE || e.code === status.DEADLINE_EXCEEDED ? 'unavailable' : 'failed_precondition';
      throw new DomainError('agent.ipam_error', kind, `IPAM: ${e.details ?? String(err)}`);
    }
    throw err;
  };
  return {
    async attach(req) {
      if (!req.containerId) throw invalid('container id is empty');
      if (!req.ifname || req.ifname.length > 15 || /[\s/]/.test(req.ifname)) throw invalid(`interface name ${JSON.stringify(req.ifname)} must be 1-15 characters without spaces or '/'`);
      try {
        checkNetnsPath(req.netns);
      } catch (err) {
        throw invalid((err as Error).message);
      }
      const handle = `${req.containerId}/${req.ifname}`;
      const log = deps.logger.child({ containerId: req.containerId, handle });
      const res = await deps.ipam
        // IPv4 only until the pod plumbing and the overlay carry IPv6.
        .allocate({ handle, node: deps.node, pool: req.pool, families: [IpFamily.IP_FAMILY_IPV4], podNamespace: req.podNamespace, podName: req.podName, containerId: req.containerId }, { timeoutMs: 20_000 })
        .catch(passThrough);
      const address = res.allocation!.address;
      try {
        const a = await attachPod({ containerId: req.containerId, nsPath: req.netns, ifname: req.ifname, address, mtu: deps.mtu, routeProtocol: deps.routeProtocol });
        log.info('pod attached', { address, hostIfname: a.hostIfname });
        return {
          interfaces: [
            { name: a.hostIfname, mac: a.hostMac, sandbox: '' },
            { name: a.podIfname, mac: a.podMac, sandbox: req.netns },
          ],
          ips: [{ address: `${address}/32`, gateway: POD_GATEWAY, interface: 1 }],
          routes: [{ dst: '0.0.0.0/0', gw: POD_GATEWAY }],
        };
      } catch (err) {
        log.warn('attach failed; releasing the address', { err: (err as Error).message });
        await deps.ipam.release({ handle }, { timeoutMs: 10_000 }).catch((e) => log.error('release after failed attach failed', { err: e }));
        throw new DomainError('agent.attach_failed', 'failed_precondition', `cannot set up the pod interface: ${(err as Error).message}`);
      }
    },
    async detach(req) {
      if (!req.containerId) throw invalid('container id is empty');
      if (!req.ifname) throw invalid('interface name is empty');
      await detachPod({ containerId: req.containerId, ifname: req.ifname });
      const handle = `${req.containerId}/${req.ifname}`;
      const r = await deps.ipam.release({ handle }, { timeoutMs: 10_000 }).catch(passThrough);
      deps.logger.info('pod detached', { handle, released: r.released, address: r.address });
      return {};
    },
  };
}
