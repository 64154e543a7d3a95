import { DomainError } from '../../lib/errors.js';
import type { Handlers } from '../../lib/grpc/server.js';
import type { AgentServiceService } from '../../gen/weft/agent/v1/agent.js';
import type { CniUseCases } from './use-cases.js';

/**
 * The agent's CNI service (proto/weft/agent/v1/agent.proto) over the use cases: each request is checked here, so a
 * malformed one is INVALID_ARGUMENT `agent.invalid_request` saying what to fix before anything is done, then handed
 * on. The use cases' errors are DomainErrors whose kind the server maps to a gRPC status (lib/grpc/errors.ts) and
 * whose code travels in the `weft-error-code` trailer; the plugin turns both into a CNI error code (cni/agent.ts).
 */
export function createCniRpc(
  useCases: CniUseCases,
  opts: {
    /** Pods get IPv6 too; else a requested IPv6 address is refused. */
    dualStack: boolean;
    /** Throws (with a message) when the network namespace path is not one (kernel/pod-network.ts checkNetnsPath). */
    checkNetnsPath: (nsPath: string) => void;
  },
): Handlers<typeof AgentServiceService> {
  return {
    async attach(req) {
      checkAttachment(req.containerId, req.ifname);
      try {
        opts.checkNetnsPath(req.netns);
      } catch (err) {
        throw invalid((err as Error).message);
      }
      if (req.mac && !MAC.test(req.mac)) throw invalid(`MAC ${JSON.stringify(req.mac)} is not a MAC address`);
      // A requested address (CNI_ARGS IP=, runtimeConfig ips) goes to IPAM, which checks it against pools,
      // reservations, holders and nodes (at most one per family).
      const v6 = req.requestedAddresses.filter((a) => a.includes(':'));
      if (v6.length > 0 && !opts.dualStack) {
        throw invalid(
          `requested IPv6 addresses (${v6.join(', ')}) need dual-stack pods: this node's agent gives pods IPv4 only (WEFT_POD_FAMILIES=ipv4)`,
        );
      }
      return useCases.attach(req);
    },

    async detach(req) {
      if (!req.containerId) throw invalid('container id is empty');
      if (!req.ifname) throw invalid('interface name is empty');
      await useCases.detach(req);
      return {};
    },

    async check(req) {
      checkAttachment(req.containerId, req.ifname);
      await useCases.check(req);
      return {};
    },

    async status() {
      return useCases.status();
    },

    async garbageCollect(req) {
      for (const a of req.validAttachments)
        if (!a.containerId || !a.ifname)
          throw invalid(`a valid attachment needs a container id and an interface name, got ${JSON.stringify(a)}`);
      return useCases.garbageCollect(req);
    },
  };
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;
const CONTAINER_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

const invalid = (msg: string) => new DomainError('agent.invalid_request', 'invalid_argument', msg);

function checkAttachment(containerId: string, ifname: string): void {
  if (!containerId) throw invalid('container id is empty');
  if (!CONTAINER_ID.test(containerId)) {
    throw invalid(
      `container id ${JSON.stringify(containerId)} must start with a letter or digit and contain only letters, digits, '_', '.' or '-'`,
    );
  }
  if (!ifname || ifname.length > 15 || /[\s/:]/.test(ifname) || ifname === '.' || ifname === '..') {
    throw invalid(`interface name ${JSON.stringify(ifname)} must be 1-15 characters without spaces, '/' or ':'`);
  }
}
