import type { PromiseClient } from '../../lib/grpc/client.js';
import type { Handlers } from '../../lib/grpc/server.js';
import type { Logger } from '../../lib/logger.js';
import type { AgentServiceService } from '../../gen/weft/agent/v1/agent.js';
import type { IpamServiceService } from '../../gen/weft/ipam/v1/ipam.js';
import type { PodFamily } from '../config.js';
import type { HostPaths } from '../kernel/host-paths.js';
import { checkNetnsPath } from '../kernel/pod-network.js';
import type { PodReporter } from '../pod-reports.js';
import { createIpamPort } from './ipam-client.js';
import type { AttachmentEvents } from './ports.js';
import { createPodKernel } from './pod-kernel.js';
import { createCniRpc } from './rpc.js';
import { createCniUseCases } from './use-cases.js';
import type { PendingReleases } from '../pending-releases.js';

/**
 * The local endpoint the CNI plugin calls: the RPC adapter (rpc.ts) over the use cases (attach.ts, detach.ts,
 * check.ts, status.ts, garbage-collect.ts), wired here to the real ports: IPAM's gRPC client (ipam-client.ts), the
 * kernel (pod-kernel.ts), the policy programmer and the pod reports.
 */
export function createCniHandlers(deps: {
  node: string;
  ipam: PromiseClient<typeof IpamServiceService>;
  /** Where IPAM is, for messages. */
  ipamTarget: string;
  mtu: number;
  routeProtocol: number;
  /** The families every pod gets (WEFT_POD_FAMILIES); default IPv4 only. */
  families?: readonly PodFamily[];
  /**
   * Resolves once network policy of a family is in force on this node (Weft's dispatch and fail-closed drop in
   * iptables or ip6tables), rejects when it is not within the time given: a pod is attached only then, so its traffic
   * is never unpoliced, also on a fresh node whose first pass has not run yet. Without it an IPv4 pod is attached at
   * once (tests of the endpoint alone) and a dual-stack pod is refused.
   */
  policyInForce?: (family: 4 | 6, timeoutMs: number) => Promise<void>;
  logger: Logger;
  /** Tells the policy service which pod is attached where (pod-reports.ts). */
  reports?: PodReporter;
  /**
   * Called when a pod's veth appeared or went (attach, detach, GC): the agent renders the pod's network policy at once.
   * Resolves once a policy pass that started after the call has finished: Detach and GC wait for it (bounded by
   * POLICY_PASS_WAIT_MS), so that when DEL answers, the pod's chain and jumps are gone from the kernel.
   */
  onPodsChanged?: () => Promise<void> | void;
  /** Told how long each step of a successful Attach took, in ms (allocate, host, pod): the agent's metrics. */
  onAttachPhase?: (phase: string, ms: number) => void;
  /** Told how long each step of a Detach took, in ms (link: deleting the veth; release: IPAM's Release; policy: then waiting for the pass that removes the pod's rules). */
  onDetachPhase?: (phase: string, ms: number) => void;
  /** Where the host's network sysctls and sysfs are (WEFT_PROC_SYS_NET, WEFT_SYS_DIR); default /proc/sys/net and /sys. */
  hostPaths?: HostPaths;
  /** Told of every attachment made and ended, and of each ADD's veth while it is made (the pod drivers' input). */
  pods?: AttachmentEvents;
  /** Releases IPAM could not take at DEL, retried until it does (../pending-releases.ts). */
  pendingReleases?: PendingReleases;
}): Handlers<typeof AgentServiceService> {
  const dualStack = deps.families?.includes('ipv6') ?? false;
  const { pods, records } = createPodKernel(deps.hostPaths);
  const useCases = createCniUseCases({
    node: deps.node,
    mtu: deps.mtu,
    routeProtocol: deps.routeProtocol,
    dualStack,
    ipam: createIpamPort({ ipam: deps.ipam, node: deps.node, target: deps.ipamTarget }),
    pods,
    records,
    policy: { inForce: deps.policyInForce, podsChanged: deps.onPodsChanged },
    reports: deps.reports,
    attachments: deps.pods,
    pendingReleases: deps.pendingReleases,
    logger: deps.logger,
    onAttachPhase: deps.onAttachPhase,
    onDetachPhase: deps.onDetachPhase,
  });
  return createCniRpc(useCases, { dualStack, checkNetnsPath });
}
