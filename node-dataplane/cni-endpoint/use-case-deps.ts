import type { Logger } from '../../lib/logger.js';
import type { PendingReleases } from '../pending-releases.js';
import type { InProgress } from './in-progress.js';
import type {
  AttachmentEvents,
  AttachmentRecords,
  IpamPort,
  NodeAllocation,
  PodNetwork,
  PodReports,
  PolicyPort,
} from './ports.js';
import { agentErrorFromIpam } from './ipam-errors.js';

/** What every use case of the endpoint is built from: the node's settings and the ports (ports.ts). */
export interface CniUseCaseDeps {
  node: string;
  mtu: number;
  routeProtocol: number;
  /** Pods get IPv6 too (WEFT_POD_FAMILIES=ipv4,ipv6); else IPv4 only. */
  dualStack: boolean;
  ipam: IpamPort;
  pods: PodNetwork;
  records: AttachmentRecords;
  policy: PolicyPort;
  /** Tells the policy service which pod is attached where (pod-reports.ts). */
  reports?: PodReports;
  /** Told of every attachment made and ended, and of each ADD's veth while it is made. */
  attachments?: AttachmentEvents;
  logger: Logger;
  /** Told how long each step of a successful Attach took, in ms (allocate, host, pod): the agent's metrics. */
  onAttachPhase?: (phase: string, ms: number) => void;
  /** Told how long each step of a Detach took, in ms (link, release, then policy). */
  onDetachPhase?: (phase: string, ms: number) => void;
  /**
   * Releases IPAM could not take at DEL (../pending-releases.ts): with it, a DEL while IPAM is unreachable removes the
   * interface, records the release and succeeds; without it, such a DEL fails "try again later".
   */
  pendingReleases?: PendingReleases;
  /** A new allocation attempt id; a random UUID unless a test fixes it. */
  newAttemptId?: () => string;
}

/** How long Detach and GC wait for the policy pass that removes a gone pod's rules before they answer anyway. */
export const POLICY_PASS_WAIT_MS = 5000;

/**
 * Work that follows an Attach or Detach but that its caller does not wait for (the policy report, the reconciler's
 * policy pass), run once the answer is on its way: the answer is written in the microtasks that follow the
 * handler's return, and a setImmediate callback runs after them. Started inside the handler, the pass's first
 * spawn (a fork, which blocks the event loop) and the policy service's gRPC call held the answer back.
 */
export const afterAnswer = (fn: () => void) => void setImmediate(fn);

/** The helpers the use cases share, over one set of deps and calls in progress. */
export interface Shared {
  deps: CniUseCaseDeps;
  running: InProgress;
  /** Every live allocation of this node; IPAM's failure as the agent's (ipam-errors.ts). */
  nodeAllocations(): Promise<NodeAllocation[]>;
  /** Runs the policy pass for a veth that went and waits for it, at most POLICY_PASS_WAIT_MS; true when it finished. */
  policyPassAfterRemoval(what: string): Promise<boolean>;
  /**
   * Tells the policy service what each container holds now, from IPAM: all addresses of its attachments on this node
   * (a pod with two interfaces is one pod with both addresses), or detached when it holds none. Used when a container
   * has or had more than one interface; a failed listing is logged (the agent's restart re-reports everything).
   */
  reportContainers(containerIds: readonly string[]): Promise<void>;
}

export function createShared(deps: CniUseCaseDeps, running: InProgress): Shared {
  const nodeAllocations = () =>
    deps.ipam.nodeAllocations().catch((err) => agentErrorFromIpam(err, '', deps.ipam.target));
  return {
    deps,
    running,
    nodeAllocations,
    async policyPassAfterRemoval(what) {
      if (!deps.policy.podsChanged) return true;
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<'late'>((r) => (timer = setTimeout(() => r('late'), POLICY_PASS_WAIT_MS)));
      try {
        const done = await Promise.race([Promise.resolve(deps.policy.podsChanged()).then(() => 'done' as const), late]);
        if (done === 'late')
          deps.logger.warn(
            "the policy pass that removes a detached pod's rules did not finish in time; answering anyway",
            { what, waitedMs: POLICY_PASS_WAIT_MS },
          );
        return done === 'done';
      } finally {
        clearTimeout(timer);
      }
    },
    async reportContainers(containerIds) {
      const reports = deps.reports;
      if (!reports || containerIds.length === 0) return;
      try {
        const held = (await nodeAllocations()).filter((a) => a.containerId && a.handle.startsWith(`${a.containerId}/`));
        for (const id of containerIds) {
          const mine = held.filter((a) => a.containerId === id);
          if (mine.length === 0) reports.detached(id);
          else
            reports.attached({
              podNamespace: mine[0]!.podNamespace,
              podName: mine[0]!.podName,
              containerId: id,
              addresses: mine.map((a) => a.address),
            });
        }
      } catch (err) {
        deps.logger.warn('reporting containers to policy failed', { containerIds, err: (err as Error).message });
      }
    },
  };
}
