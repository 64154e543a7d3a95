import { randomUUID } from 'node:crypto';
import { DomainError } from '../../lib/errors.js';
import { agentErrorFromIpam } from './ipam-errors.js';
import { IpamCallError, type PodAddresses, type PodAttachment, type PodNetwork } from './ports.js';
import { afterAnswer, type Shared } from './use-case-deps.js';

/** An attach the RPC adapter has checked (rpc.ts): names, namespace path and MAC are well-formed. */
export interface AttachParams {
  containerId: string;
  netns: string;
  ifname: string;
  podNamespace: string;
  podName: string;
  podUid: string;
  /** Empty: the default pool. */
  pool: string;
  requestedAddresses: readonly string[];
  /** Empty: derived from the address. */
  mac: string;
  /** The network config's name, recorded on the host veth (GC collects only its own network's). */
  network: string;
}

/** The CNI result of an attach (interface 1 is the pod's). */
export interface AttachResult {
  interfaces: { name: string; mac: string; sandbox: string }[];
  ips: { address: string; gateway: string; interface: number }[];
  routes: { dst: string; gw: string }[];
}

/** How long Attach waits for network policy of each of the pod's families to be in force. */
export const POLICY_IN_FORCE_WAIT_MS = 10_000;

/**
 * Attach: refuse an attachment that exists or is being made -> wait until policy is in force for the pod's families
 * -> allocate (every family in one call, naming a fresh attempt) while the kernel makes the pod's interface -> answer;
 * the pod report and a policy pass follow the answer. On any failure after the allocation began, both are undone
 * (the release names the attempt, so a lost Allocate never commits after it), and a failed ADD leaves nothing behind.
 */
export function createAttach({ deps, running, reportContainers }: Shared) {
  const { dualStack } = deps;
  const newAttemptId = deps.newAttemptId ?? randomUUID;
  return async function attach(req: AttachParams): Promise<AttachResult> {
    const handle = `${req.containerId}/${req.ifname}`;
    const hostIfname = deps.pods.hostIfname(req.containerId, req.ifname);
    if (running.attaching.has(handle)) {
      throw new DomainError(
        'agent.attach_in_progress',
        'conflict',
        `an ADD for container ${req.containerId} interface ${req.ifname} is already running`,
      );
    }
    const log = deps.logger.child({ containerId: req.containerId, handle });
    // Names this ADD's allocation: the releases below name it too, so an Allocate whose answer was lost cannot commit
    // after the release that undoes it (IPAM fences the attempt; see services/ipam/DESIGN.md, "Allocation attempts").
    const attemptId = newAttemptId();
    running.attaching.set(handle, hostIfname);
    deps.attachments?.attaching(hostIfname);
    let addEnded!: () => void;
    running.addsRunning.set(handle, new Promise<void>((resolve) => (addEnded = resolve)));
    try {
      // What exists for this handle is a live attachment (the runtime must DEL before it ADDs again): touching it,
      // or releasing its address on a later failure, would break a running pod.
      if (await deps.pods.hostLinkExists(req.containerId, req.ifname)) {
        throw new DomainError(
          'agent.already_attached',
          'already_exists',
          `container ${req.containerId} already has interface ${req.ifname} attached (host interface ${hostIfname}); DEL it before adding it again`,
        );
      }
      const release = async (why: string) => {
        await deps.ipam
          .release(handle, attemptId)
          .then((r) =>
            log.info('released after a failed attach', { why, attemptId, released: r.released, address: r.address }),
          )
          .catch((e) => {
            log.error(
              "release after a failed attach failed; retrying in the background, and the runtime's DEL names the attempt",
              { why, err: (e as Error).message },
            );
            running.fences.fenceInBackground(handle, attemptId, log);
          });
      };
      // A pod's traffic must never be unpoliced: it is attached only once the kernel holds Weft's dispatch and its
      // fail-closed drop for each of its families (a fresh agent programs them at its first pass).
      for (const family of dualStack ? ([4, 6] as const) : ([4] as const)) {
        const inForce =
          deps.policy.inForce?.(family, POLICY_IN_FORCE_WAIT_MS) ??
          (family === 4 ? Promise.resolve() : Promise.reject(new Error('no IPv6 policy programmer')));
        await inForce.catch((err: Error) => {
          throw new DomainError(
            `agent.ipv${family}_policy_not_ready`,
            'unavailable',
            `IPv${family} network policy is not in force on node ${deps.node} yet, so no pod is attached (${err.message}); try again later`,
          );
        });
      }
      // The allocation and the pod's interface are made at once (kernel/pod-network.ts): only the last kernel step
      // waits for IPAM's answer. The kernel port undoes its own work when either fails, and only once the allocation
      // has settled, so a release below always comes after the allocation it undoes.
      // This handle's earlier DEL left its release to be taken: IPAM's Allocate, idempotent by handle, would hand back
      // that very allocation, which the pending release would then free under the new pod.
      if (deps.pendingReleases?.has(handle))
        await deps.pendingReleases.settle(handle).catch((err: Error) => {
          throw new DomainError(
            'agent.ipam_unavailable',
            'unavailable',
            `the release of ${handle} by an earlier DEL is not yet taken by IPAM at ${deps.ipam.target} (${err.message}); try again later`,
          );
        });
      const t0 = performance.now();
      let allocationError: { err: unknown } | undefined;
      const allocation = deps.ipam
        .allocate({
          handle,
          pool: req.pool,
          families: dualStack ? [4, 6] : [4],
          addresses: [...req.requestedAddresses],
          podNamespace: req.podNamespace,
          podName: req.podName,
          podUid: req.podUid,
          containerId: req.containerId,
          attemptId,
        })
        .then(
          async ({ ipv4, ipv6 }): Promise<PodAddresses> => {
            deps.onAttachPhase?.('allocate', performance.now() - t0);
            // A named pool has one family (IPAM ignores families then): a pod must not come up with half its stack.
            const missing = [...(ipv4 ? [] : ['IPv4']), ...(dualStack && !ipv6 ? ['IPv6'] : [])];
            if (missing.length > 0 || (ipv6 && !dualStack)) {
              await release('IPAM did not give the families asked for');
              const err = new DomainError(
                'agent.families_mismatch',
                'invalid_argument',
                missing.length > 0
                  ? `IPAM gave no ${missing.join(' or ')} address for ${handle}${req.pool ? ` (the network config names pool ${req.pool}, which has one family; a dual-stack pod needs a pool of each, so leave "pool" out)` : ''}: this node's pods get ${dualStack ? 'IPv4 and IPv6 (WEFT_POD_FAMILIES=ipv4,ipv6)' : 'IPv4'}`
                  : `IPAM gave an IPv6 address to ${handle}, but this node's pods get IPv4 only`,
              );
              // Passed through as it is (after the rollback), like IPAM's own refusals.
              allocationError = { err };
              throw err;
            }
            return ipv6 ? { ipv4: ipv4!, ipv6 } : { ipv4: ipv4! };
          },
          async (err: unknown) => {
            allocationError = { err };
            // IPAM may have committed an allocation whose answer was lost, or may still commit it: release by handle
            // (nothing live uses it), naming the attempt, so that it is freed if it committed and never commits if not.
            if (err instanceof IpamCallError && err.unanswered) await release('allocate did not answer');
            throw err;
          },
        );
      // A Detach running now may have released this very address while its veth is still being deleted.
      const settledAddress = allocation.then(async (a) => {
        if (running.linkDeletions.size > 0) await Promise.allSettled([...running.linkDeletions]);
        return a;
      });
      // The container's first Weft interface holds the pod's default route; a later one (net1 after eth0) has its
      // routes in a table of its own, for traffic from its addresses (kernel/pod-network.ts). Each records its
      // network on its host veth, for GC.
      const siblings = deps.records.ofContainer(req.containerId);
      const record = { network: req.network, containerId: req.containerId, defaultRoute: !siblings.defaultRoute };
      try {
        const a = await deps.pods.attach({
          containerId: req.containerId,
          nsPath: req.netns,
          ifname: req.ifname,
          address: settledAddress,
          mtu: deps.mtu,
          routeProtocol: deps.routeProtocol,
          mac: req.mac,
          ipv6: dualStack,
          record,
          onPhase: deps.onAttachPhase,
        });
        deps.attachments?.attached({
          hostIfname: a.hostIfname,
          addresses: a.address6 ? [a.address, a.address6] : [a.address],
        });
        log.info('pod attached', {
          address: a.address,
          ...(a.address6 ? { address6: a.address6 } : {}),
          hostIfname: a.hostIfname,
        });
        afterAnswer(() => {
          // A container with other interfaces is reported with all its addresses (what IPAM holds for it).
          if (siblings.count > 0) void reportContainers([req.containerId]);
          else
            deps.reports?.attached({
              podNamespace: req.podNamespace,
              podName: req.podName,
              containerId: req.containerId,
              addresses: a.address6 ? [a.address, a.address6] : [a.address],
            });
          void deps.policy.podsChanged?.();
        });
        return resultOf(a, req.netns, record.defaultRoute, deps.pods);
      } catch (err) {
        if (allocationError && err === allocationError.err) return agentErrorFromIpam(err, req.pool, deps.ipam.target);
        log.warn('attach failed; releasing the address', { err: (err as Error).message });
        await release('attach failed');
        throw new DomainError(
          'agent.attach_failed',
          'failed_precondition',
          `cannot set up the pod interface: ${(err as Error).message}`,
        );
      }
    } finally {
      running.attaching.delete(handle);
      deps.attachments?.attachEnded(hostIfname);
      running.addsRunning.delete(handle);
      addEnded();
    }
  };
}

/** The host end and the pod end, the pod's addresses with their gateway, and the main table's routes (none for a second interface). */
function resultOf(
  a: PodAttachment,
  netns: string,
  defaultRoute: boolean,
  { gateway, gateway6 }: Pick<PodNetwork, 'gateway' | 'gateway6'>,
): AttachResult {
  return {
    interfaces: [
      { name: a.hostIfname, mac: a.hostMac, sandbox: '' },
      { name: a.podIfname, mac: a.podMac, sandbox: netns },
    ],
    ips: [
      { address: `${a.address}/32`, gateway, interface: 1 },
      ...(a.address6 ? [{ address: `${a.address6}/128`, gateway: gateway6, interface: 1 }] : []),
    ],
    routes: defaultRoute
      ? [{ dst: '0.0.0.0/0', gw: gateway }, ...(a.address6 ? [{ dst: '::/0', gw: gateway6 }] : [])]
      : [],
  };
}
