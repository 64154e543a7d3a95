import { randomUUID } from 'node:crypto';
import { DomainError } from '../lib/errors.js';
import type { PromiseClient } from '../lib/grpc/client.js';
import type { Handlers } from '../lib/grpc/server.js';
import type { Logger } from '../lib/logger.js';
import { AgentServiceService } from '../gen/weft/agent/v1/agent.js';
import { IpFamily, type IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { status } from '@grpc/grpc-js';
import { errorCodeOf } from '../lib/grpc/status.js';
import { createBackoff } from '../lib/backoff.js';
import { forEachBounded } from '../lib/bounded-concurrency.js';
import { findAttachmentDifference } from './domain/attachment-check.js';
import { planGarbageCollection } from './domain/garbage-collection.js';
import { DEFAULT_HOST_PATHS, type HostPaths } from './kernel/host-paths.js';
import { deleteLink } from './kernel/links.js';
import type { PendingReleases } from './pending-releases.js';
import type { PodReporter } from './pod-reports.js';
import {
  attachPod,
  checkNetnsPath,
  containerAttachments,
  detachPod,
  hostIfnameFor,
  hostLinkExists,
  listVeths,
  observeAttachment,
  POD_GATEWAY,
  POD_GATEWAY6,
  type PodAddresses,
} from './kernel/pod-network.js';
import type { PodFamily } from './config.js';

/**
 * The local endpoint the CNI plugin calls.
 *
 * - Attach: refuse an attachment that already exists -> allocate (idempotent by handle) -> plumb the pod; on any
 *   failure after the allocation, undo both, so a failed ADD leaves nothing behind.
 * - Detach: remove the interface and release the handle (both treat "already gone" as done), then wait for the
 *   policy pass that removes the pod's rules (bounded) before answering.
 * - Check: read back the allocation and the kernel state, compare (domain/attachment-check.ts).
 * - Status: can the agent reach IPAM right now.
 * - GarbageCollect: release and remove what belongs to no valid attachment (domain/garbage-collection.ts).
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
  /**
   * Releases IPAM could not take at DEL (pending-releases.ts): with it, a DEL while IPAM is unreachable removes the
   * interface, records the release and succeeds; without it, such a DEL fails "try again later".
   */
  pendingReleases?: PendingReleases;
}): Handlers<typeof AgentServiceService> {
  const paths = deps.hostPaths ?? DEFAULT_HOST_PATHS;
  /**
   * Work that follows an Attach or Detach but that its caller does not wait for (the policy report, the reconciler's
   * policy pass), run once the answer is on its way: the answer is written in the microtasks that follow the
   * handler's return, and a setImmediate callback runs after them. Started inside the handler, the pass's first
   * spawn (a fork, which blocks the event loop) and the policy service's gRPC call held the answer back.
   */
  const afterAnswer = (fn: () => void) => void setImmediate(fn);
  /** Veth deletions of Detach calls running now: an Attach waits for them before giving its pod an address. */
  const linkDeletions = new Set<Promise<unknown>>();
  /** Attach calls running now, by handle, with their host interface: GC never touches them. */
  const inFlight = new Map<string, string>();
  /**
   * Attach calls running now, by handle, settling when each ends (whatever its outcome). A Detach of that handle
   * waits for it: a DEL that ran beside its ADD would find nothing to remove, answer, and leave the ADD to attach the
   * pod afterwards with an address nobody will ever release.
   */
  const addsRunning = new Map<string, Promise<void>>();
  /**
   * Allocation attempts whose undoing Release did not get through (IPAM unreachable, or the fence timed out behind
   * the very Allocate it fences), by handle. They are retried in the background and named by the handle's next DEL:
   * a Release by handle alone does not stop an Allocate that commits after it.
   */
  const unfenced = new Map<string, Set<string>>();
  const fenceAttempt = async (handle: string, attemptId: string): Promise<boolean> => {
    try {
      await deps.ipam.release({ handle, attemptId }, { timeoutMs: 10_000 });
      const left = unfenced.get(handle);
      left?.delete(attemptId);
      if (left?.size === 0) unfenced.delete(handle);
      return true;
    } catch {
      return false;
    }
  };
  /** Keeps trying to fence an attempt, with jittered backoff, for about two minutes (then DEL still names it). */
  const fenceInBackground = (handle: string, attemptId: string, log: Logger) => {
    unfenced.set(handle, (unfenced.get(handle) ?? new Set()).add(attemptId));
    const retry = createBackoff({ baseMs: 500, capMs: 15_000 });
    const deadline = Date.now() + 120_000;
    const again = () =>
      setTimeout(() => {
        if (!unfenced.get(handle)?.has(attemptId)) return;
        void fenceAttempt(handle, attemptId).then((ok) => {
          if (ok) log.info("a failed attach's allocation attempt is fenced", { attemptId });
          else if (Date.now() < deadline) again();
          else
            log.error("cannot fence a failed attach's allocation attempt; the runtime's DEL names it", { attemptId });
        });
      }, retry.next()).unref();
    again();
  };
  const dualStack = deps.families?.includes('ipv6') ?? false;
  const ipamFamilies = dualStack ? [IpFamily.IP_FAMILY_IPV4, IpFamily.IP_FAMILY_IPV6] : [IpFamily.IP_FAMILY_IPV4];

  /** Runs the policy pass for a veth that went and waits for it, at most POLICY_PASS_WAIT_MS; true when it finished. */
  const policyPassAfterRemoval = async (what: string): Promise<boolean> => {
    if (!deps.onPodsChanged) return true;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((r) => (timer = setTimeout(() => r('late'), POLICY_PASS_WAIT_MS)));
    try {
      const done = await Promise.race([Promise.resolve(deps.onPodsChanged()).then(() => 'done' as const), late]);
      if (done === 'late')
        deps.logger.warn(
          "the policy pass that removes a detached pod's rules did not finish in time; answering anyway",
          { what, waitedMs: POLICY_PASS_WAIT_MS },
        );
      return done === 'done';
    } finally {
      clearTimeout(timer);
    }
  };
  const invalid = (msg: string) => new DomainError('agent.invalid_request', 'invalid_argument', msg);
  const ipamKind = (code: number) =>
    code === status.RESOURCE_EXHAUSTED
      ? 'exhausted'
      : code === status.INVALID_ARGUMENT
        ? 'invalid_argument'
        : code === status.UNAVAILABLE || code === status.DEADLINE_EXCEEDED
          ? 'unavailable'
          : 'failed_precondition';
  /**
   * IPAM's own error (with its status and message) goes back to the plugin, with its kind chosen for what the
   * runtime should do: a pool the network config names that IPAM does not have is the config's fault (the plugin's
   * code 7), a requested address still cooling down frees at the time IPAM's message gives (code 11, try again).
   */
  const passThrough = (err: unknown, configPool = ''): never => {
    const e = err as { code?: number; details?: string };
    if (typeof e.code !== 'number') throw err;
    const message = `IPAM: ${e.details ?? String(err)}`;
    switch (errorCodeOf(err)) {
      case 'ipam.pool_not_found':
        throw new DomainError(
          'agent.unknown_pool',
          'invalid_argument',
          configPool
            ? `the network config names pool ${JSON.stringify(configPool)}, which IPAM does not have (${message}); name an existing pool, or leave "pool" out for the default`
            : message,
        );
      case 'ipam.address_cooling_down':
        throw new DomainError('agent.address_cooling_down', 'unavailable', message);
    }
    switch (e.code) {
      case status.UNAVAILABLE:
      case status.DEADLINE_EXCEEDED:
        throw new DomainError(
          'agent.ipam_unavailable',
          'unavailable',
          `IPAM at ${deps.ipamTarget} is unavailable now (${e.details ?? String(err)}); try again later`,
        );
      default:
        throw new DomainError('agent.ipam_error', ipamKind(e.code), message);
    }
  };
  /**
   * A DEL's release that IPAM could not take because it cannot be reached: recorded with the handle's unfenced
   * attempts and retried in the background (pending-releases.ts), so the DEL succeeds. Any other failure, or no
   * record to keep it in, fails the DEL as IPAM's error.
   */
  const deferRelease = async (handle: string, err: unknown): Promise<{ released: boolean; address: string }> => {
    const code = (err as { code?: unknown }).code;
    const unreachable =
      code === 'agent.ipam_unavailable' || code === status.UNAVAILABLE || code === status.DEADLINE_EXCEEDED;
    if (!deps.pendingReleases || !unreachable) return passThrough(err);
    await deps.pendingReleases.add(handle, [...(unfenced.get(handle) ?? [])]);
    unfenced.delete(handle);
    deps.logger.warn(
      'IPAM cannot be reached: the pod is detached, its release recorded and retried until IPAM takes it',
      {
        handle,
        err: (err as Error).message,
      },
    );
    return { released: false, address: '' };
  };
  const checkAttachment = (containerId: string, ifname: string) => {
    if (!containerId) throw invalid('container id is empty');
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(containerId)) {
      throw invalid(
        `container id ${JSON.stringify(containerId)} must start with a letter or digit and contain only letters, digits, '_', '.' or '-'`,
      );
    }
    if (!ifname || ifname.length > 15 || /[\s/:]/.test(ifname) || ifname === '.' || ifname === '..') {
      throw invalid(`interface name ${JSON.stringify(ifname)} must be 1-15 characters without spaces, '/' or ':'`);
    }
  };
  /**
   * Tells the policy service what each container holds now, from IPAM: all addresses of its attachments on this node
   * (a pod with two interfaces is one pod with both addresses), or detached when it holds none. Used when a container
   * has or had more than one interface; a failed listing is logged (the agent's restart re-reports everything).
   */
  const reportContainers = async (containerIds: readonly string[]) => {
    if (!deps.reports || containerIds.length === 0) return;
    try {
      const held = (await nodeAllocations()).filter((a) => a.containerId && a.handle.startsWith(`${a.containerId}/`));
      for (const id of containerIds) {
        const mine = held.filter((a) => a.containerId === id);
        if (mine.length === 0) deps.reports.detached(id);
        else
          deps.reports.attached({
            podNamespace: mine[0]!.podNamespace,
            podName: mine[0]!.podName,
            containerId: id,
            addresses: mine.map((a) => a.address),
          });
      }
    } catch (err) {
      deps.logger.warn('reporting containers to policy failed', { containerIds, err: (err as Error).message });
    }
  };
  /** Every live allocation of this node, following page tokens. */
  const nodeAllocations = async () => {
    const out = [];
    let pageToken = '';
    do {
      const page = await deps.ipam
        .listAllocations({ pool: '', node: deps.node, pageSize: 5000, pageToken }, { timeoutMs: 10_000 })
        .catch(passThrough);
      out.push(...page.allocations);
      pageToken = page.nextPageToken;
    } while (pageToken);
    return out;
  };

  return {
    async attach(req) {
      checkAttachment(req.containerId, req.ifname);
      try {
        checkNetnsPath(req.netns);
      } catch (err) {
        throw invalid((err as Error).message);
      }
      if (req.mac && !/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(req.mac))
        throw invalid(`MAC ${JSON.stringify(req.mac)} is not a MAC address`);
      // A requested address (CNI_ARGS IP=, runtimeConfig ips) goes to IPAM, which checks it against pools,
      // reservations, holders and nodes (at most one per family).
      const v6 = req.requestedAddresses.filter((a) => a.includes(':'));
      if (v6.length > 0 && !dualStack) {
        throw invalid(
          `requested IPv6 addresses (${v6.join(', ')}) need dual-stack pods: this node's agent gives pods IPv4 only (WEFT_POD_FAMILIES=ipv4)`,
        );
      }
      const handle = `${req.containerId}/${req.ifname}`;
      const hostIfname = hostIfnameFor(req.containerId, req.ifname);
      if (inFlight.has(handle)) {
        throw new DomainError(
          'agent.attach_in_progress',
          'conflict',
          `an ADD for container ${req.containerId} interface ${req.ifname} is already running`,
        );
      }
      const log = deps.logger.child({ containerId: req.containerId, handle });
      // Names this ADD's allocation: the releases below name it too, so an Allocate whose answer was lost cannot commit
      // after the release that undoes it (IPAM fences the attempt; see services/ipam/DESIGN.md, "Allocation attempts").
      const attemptId = randomUUID();
      inFlight.set(handle, hostIfname);
      let addEnded!: () => void;
      addsRunning.set(handle, new Promise<void>((resolve) => (addEnded = resolve)));
      try {
        // What exists for this handle is a live attachment (the runtime must DEL before it ADDs again): touching it,
        // or releasing its address on a later failure, would break a running pod.
        if (await hostLinkExists(req.containerId, req.ifname, paths)) {
          throw new DomainError(
            'agent.already_attached',
            'already_exists',
            `container ${req.containerId} already has interface ${req.ifname} attached (host interface ${hostIfname}); DEL it before adding it again`,
          );
        }
        const release = async (why: string) => {
          await deps.ipam
            .release({ handle, attemptId }, { timeoutMs: 10_000 })
            .then((r) =>
              log.info('released after a failed attach', { why, attemptId, released: r.released, address: r.address }),
            )
            .catch((e) => {
              log.error(
                "release after a failed attach failed; retrying in the background, and the runtime's DEL names the attempt",
                { why, err: (e as Error).message },
              );
              fenceInBackground(handle, attemptId, log);
            });
        };
        // The allocation and the pod's interface are made at once (kernel/pod-network.ts): only the last kernel step
        // waits for IPAM's answer. attachPod undoes its own work when either fails, and only once the allocation
        // has settled, so a release below always comes after the allocation it undoes.
        // A pod's traffic must never be unpoliced: it is attached only once the kernel holds Weft's dispatch and its
        // fail-closed drop for each of its families (a fresh agent programs them at its first pass).
        for (const family of dualStack ? ([4, 6] as const) : ([4] as const)) {
          const inForce =
            deps.policyInForce?.(family, 10_000) ??
            (family === 4 ? Promise.resolve() : Promise.reject(new Error('no IPv6 policy programmer')));
          await inForce.catch((err: Error) => {
            throw new DomainError(
              `agent.ipv${family}_policy_not_ready`,
              'unavailable',
              `IPv${family} network policy is not in force on node ${deps.node} yet, so no pod is attached (${err.message}); try again later`,
            );
          });
        }
        // This handle's earlier DEL left its release to be taken: IPAM's Allocate, idempotent by handle, would hand
        // back that very allocation, which the pending release would then free under the new pod.
        if (deps.pendingReleases?.has(handle))
          await deps.pendingReleases.settle(handle).catch((err: Error) => {
            throw new DomainError(
              'agent.ipam_unavailable',
              'unavailable',
              `the release of ${handle} by an earlier DEL is not yet taken by IPAM at ${deps.ipamTarget} (${err.message}); try again later`,
            );
          });
        const t0 = performance.now();
        let allocationError: { err: unknown } | undefined;
        const allocation = deps.ipam
          .allocate(
            // Every family in one call: IPAM gives a dual-stack pod both addresses or neither.
            {
              handle,
              node: deps.node,
              pool: req.pool,
              families: ipamFamilies,
              addresses: [...req.requestedAddresses],
              podNamespace: req.podNamespace,
              podName: req.podName,
              podUid: req.podUid,
              containerId: req.containerId,
              attemptId,
            },
            { timeoutMs: 20_000 },
          )
          .then(
            async (res): Promise<PodAddresses> => {
              deps.onAttachPhase?.('allocate', performance.now() - t0);
              const ipv4 = res.allocations.find((a) => a.family === IpFamily.IP_FAMILY_IPV4)?.address;
              const ipv6 = res.allocations.find((a) => a.family === IpFamily.IP_FAMILY_IPV6)?.address;
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
              const code = (err as { code?: number }).code;
              if (code === status.DEADLINE_EXCEEDED || code === status.UNAVAILABLE || code === status.CANCELLED)
                await release('allocate did not answer');
              throw err;
            },
          );
        // A Detach running now may have released this very address while its veth is still being deleted.
        const settledAddress = allocation.then(async (a) => {
          if (linkDeletions.size > 0) await Promise.allSettled([...linkDeletions]);
          return a;
        });
        // The container's first Weft interface holds the pod's default route; a later one (net1 after eth0) has its
        // routes in a table of its own, for traffic from its addresses (kernel/pod-network.ts). Each records its
        // network on its host veth, for GC.
        const siblings = containerAttachments(req.containerId, paths);
        const record = { network: req.network, containerId: req.containerId, defaultRoute: !siblings.defaultRoute };
        try {
          const a = await attachPod({
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
            paths,
          });
          const address = a.address;
          log.info('pod attached', {
            address,
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
                addresses: a.address6 ? [address, a.address6] : [address],
              });
            void deps.onPodsChanged?.();
          });
          return {
            interfaces: [
              { name: a.hostIfname, mac: a.hostMac, sandbox: '' },
              { name: a.podIfname, mac: a.podMac, sandbox: req.netns },
            ],
            ips: [
              { address: `${address}/32`, gateway: POD_GATEWAY, interface: 1 },
              ...(a.address6 ? [{ address: `${a.address6}/128`, gateway: POD_GATEWAY6, interface: 1 }] : []),
            ],
            // The result's routes are the main table's: a second interface adds none there.
            routes: record.defaultRoute
              ? [{ dst: '0.0.0.0/0', gw: POD_GATEWAY }, ...(a.address6 ? [{ dst: '::/0', gw: POD_GATEWAY6 }] : [])]
              : [],
          };
        } catch (err) {
          if (allocationError && err === allocationError.err) return passThrough(err, req.pool);
          log.warn('attach failed; releasing the address', { err: (err as Error).message });
          await release('attach failed');
          throw new DomainError(
            'agent.attach_failed',
            'failed_precondition',
            `cannot set up the pod interface: ${(err as Error).message}`,
          );
        }
      } finally {
        inFlight.delete(handle);
        addsRunning.delete(handle);
        addEnded();
      }
    },

    async detach(req) {
      if (!req.containerId) throw invalid('container id is empty');
      if (!req.ifname) throw invalid('interface name is empty');
      const handle = `${req.containerId}/${req.ifname}`;
      // An ADD of this handle still running (the runtime gave up on it and cleans up) finishes first, so that what it
      // made is what this DEL removes. It ends within its own deadlines (IPAM's Allocate: 20 s).
      const running = addsRunning.get(handle);
      if (running) {
        deps.logger.info('DEL waits for the ADD of the same interface that is still running', { handle });
        await running;
      }
      // The veth and the address go at once: deleting a veth returns only after the kernel's RCU grace periods
      // (about 20 ms here), longer than IPAM's Release. An Attach given the address meanwhile waits for the deletion
      // (linkDeletions), so an address is never on two veths. The Release is asked first: the deletion's child
      // process is spawned with a fork, which holds the event loop for a moment.
      const t0 = performance.now();
      // Attempts of failed ADDs not yet fenced are fenced first: one of them may still commit after this release.
      const attempts = [...(unfenced.get(handle) ?? [])];
      const fenced =
        attempts.length === 0
          ? Promise.resolve(true)
          : Promise.all(attempts.map((a) => fenceAttempt(handle, a))).then((oks) => oks.every(Boolean));
      const release = fenced
        .then((ok) => {
          if (!ok)
            throw new DomainError(
              'agent.ipam_unavailable',
              'unavailable',
              `cannot fence the allocation attempts of an earlier failed ADD of ${handle} (IPAM unreachable); try DEL again later`,
            );
          return deps.ipam.release({ handle }, { timeoutMs: 10_000 });
        })
        .then(
          (r) => {
            deps.onDetachPhase?.('release', performance.now() - t0);
            return r;
          },
          (err: unknown) => deferRelease(handle, err),
        );
      const link = detachPod({ containerId: req.containerId, ifname: req.ifname, nsPath: req.netns, paths }).then(() =>
        deps.onDetachPhase?.('link', performance.now() - t0),
      );
      linkDeletions.add(link);
      void link.catch(() => {}).finally(() => linkDeletions.delete(link));
      let removed = false;
      try {
        const [, r] = await Promise.all([link, release]);
        deps.logger.info('pod detached', { handle, released: r.released, address: r.address });
        // The pod's chain and its jumps go before DEL answers: the pass starts once the veth is gone.
        removed = true;
        const t1 = performance.now();
        if (await policyPassAfterRemoval(handle)) deps.onDetachPhase?.('policy', performance.now() - t1);
        // The container's other interfaces keep it attached, with the addresses they hold.
        const others = containerAttachments(req.containerId, paths).count;
        afterAnswer(() =>
          others > 0 ? void reportContainers([req.containerId]) : deps.reports?.detached(req.containerId),
        );
        return {};
      } finally {
        // After a failure the policy pass still follows whatever of the veth is left.
        if (!removed)
          void Promise.allSettled([link, release]).then(() => afterAnswer(() => void deps.onPodsChanged?.()));
      }
    },

    async check(req) {
      checkAttachment(req.containerId, req.ifname);
      const handle = `${req.containerId}/${req.ifname}`;
      const hostIfname = hostIfnameFor(req.containerId, req.ifname);
      const [allocations, observed] = await Promise.all([
        nodeAllocations(),
        observeAttachment({ nsPath: req.netns, ifname: req.ifname, hostIfname, paths }),
      ]);
      // What IPAM holds for the handle is what ADD made: its IPv4 address, and its IPv6 one for a dual-stack pod.
      const held = allocations.filter((a) => a.handle === handle);
      const held4 = held.find((a) => a.family !== IpFamily.IP_FAMILY_IPV6);
      const held6 = held.find((a) => a.family === IpFamily.IP_FAMILY_IPV6);
      const difference = findAttachmentDifference(
        {
          handle,
          node: deps.node,
          netns: req.netns,
          ifname: req.ifname,
          hostIfname,
          gateway: POD_GATEWAY,
          gateway6: POD_GATEWAY6,
          routeProtocol: deps.routeProtocol,
          reportedAddresses: req.reportedAddresses,
          reportedMac: req.reportedMac,
        },
        {
          ...observed,
          allocation: held4 ? { address: held4.address, ...(held6 ? { address6: held6.address } : {}) } : null,
        },
      );
      if (difference) throw new DomainError('agent.check_failed', 'failed_precondition', difference);
      return {};
    },

    async status() {
      try {
        await deps.ipam.listPools({}, { timeoutMs: 5000 });
        return { ipamReachable: true, detail: '' };
      } catch (err) {
        const e = err as { details?: string; message?: string };
        return {
          ipamReachable: false,
          detail: `the agent cannot reach IPAM at ${deps.ipamTarget}: ${e.details || e.message || String(err)}`,
        };
      }
    },

    async garbageCollect(req) {
      const valid = req.validAttachments.map((a) => {
        if (!a.containerId || !a.ifname)
          throw invalid(`a valid attachment needs a container id and an interface name, got ${JSON.stringify(a)}`);
        return a;
      });
      const failures: string[] = [];
      let vethsListed = true;
      let allocationsListed = true;
      const [allocations, hostLinks] = await Promise.all([
        nodeAllocations().catch((err: Error) => {
          allocationsListed = false;
          failures.push(
            `listing node ${deps.node}'s allocations failed, so no address was released (nor any interface that does not record its network): ${err.message}`,
          );
          return [];
        }),
        listVeths().catch((err: Error) => {
          vethsListed = false;
          failures.push(
            `listing the node's veth devices failed, so no interface was removed or address released: ${err.message}`,
          );
          return [];
        }),
      ]);
      // Without the veths, which network an attachment belongs to is unknown: nothing is released.
      const plan = planGarbageCollection({
        network: req.network,
        hostIfnameOf: (handle) => {
          const slash = handle.indexOf('/');
          return hostIfnameFor(handle.slice(0, slash), handle.slice(slash + 1));
        },
        validHandles: new Set(valid.map((a) => `${a.containerId}/${a.ifname}`)),
        validHostIfnames: new Set(valid.map((a) => hostIfnameFor(a.containerId, a.ifname))),
        inFlightHandles: new Set(inFlight.keys()),
        inFlightHostIfnames: new Set(inFlight.values()),
        allocations: vethsListed
          ? allocations.map((a) => ({ handle: a.handle, containerId: a.containerId, address: a.address }))
          : [],
        allocationsKnown: allocationsListed,
        hostLinks,
      });
      const removedInterfaces: string[] = [];
      await forEachBounded(plan.removeLinks, 8, async (name) => {
        if ([...inFlight.values()].includes(name)) return;
        try {
          await deleteLink(name);
          removedInterfaces.push(name);
        } catch (err) {
          failures.push(`removing interface ${name} failed: ${(err as Error).message}`);
        }
      });
      const released: { handle: string; address: string }[] = [];
      // A dual-stack handle has two rows; one release (by handle) frees both.
      const releasing = new Set<string>();
      await forEachBounded(plan.release, 8, async (a) => {
        if (inFlight.has(a.handle) || releasing.has(a.handle)) return;
        releasing.add(a.handle);
        try {
          const r = await deps.ipam.release({ handle: a.handle }, { timeoutMs: 10_000 });
          if (r.released) released.push({ handle: a.handle, address: r.address });
        } catch (err) {
          const e = err as { details?: string; message?: string };
          failures.push(`releasing ${a.address} (handle ${a.handle}) failed: ${e.details || e.message}`);
        }
      });
      if (removedInterfaces.length > 0) await policyPassAfterRemoval('garbage collection');
      // Each container that lost an attachment is reported with what it still holds (detached when nothing).
      if (releasing.size > 0)
        void reportContainers([
          ...new Set(plan.release.filter((a) => releasing.has(a.handle)).map((a) => a.containerId)),
        ]);
      deps.logger.info('garbage collected', {
        network: req.network,
        valid: valid.length,
        released: released.length,
        removedInterfaces: removedInterfaces.length,
        failures,
      });
      return { released, removedInterfaces: removedInterfaces.sort(), failures };
    },
  };
}

/** How long Detach and GC wait for the policy pass that removes a gone pod's rules before they answer anyway. */
const POLICY_PASS_WAIT_MS = 5000;
