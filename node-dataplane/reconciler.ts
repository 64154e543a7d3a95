import { createBackoff } from '../lib/backoff.js';
import type { Logger } from '../lib/logger.js';
import { createMetricsRegistry } from '../lib/metrics.js';
import { computeDesired, driftRepairs, planChanges, planSize, VXLAN_ONLY, type KernelEntry, type KernelState, type Routing } from './domain/desired.js';
import { planMasquerade } from './domain/masquerade.js';
import type { NodeRules } from './domain/network-policy.js';
import type { NatDriver } from './kernel/iptables-nat.js';
import type { PolicyDriver } from './kernel/iptables-policy.js';
import type { OverlayDevices, OverlayDriver } from './kernel/netlink-overlay.js';
import { createAgentMetrics, type AgentMetrics } from './metrics.js';
import { createPolicyProgrammer } from './policy-programmer.js';
import type { RoutesSnapshot } from './sources/routes-watch.js';

/**
 * One loop decides when to reconcile: after a route change (at once), after a kernel event (debounced, so that a
 * burst of notifications costs one pass), after a failure (with backoff) and every resync period. Each pass ensures
 * the VXLAN device, computes desired state, reads the kernel back, plans the difference and applies it. Nothing is
 * written before the first complete snapshot.
 *
 * The agent's own writes come back as kernel events too; those that agree with the target (the desired state the
 * last pass planned towards, `overlay().target`) are dropped by the kernel watch, and any other is drift and causes
 * a pass that reads the kernel back. An empty plan writes nothing, so the loop comes to rest either way.
 */
export type DirtyReason = 'start' | 'routes' | 'pools' | 'policy' | 'pods' | 'kernel' | 'device' | 'underlay' | 'resync' | 'retry' | 'flush';

/**
 * Reasons that concern only the overlay: a route-table change, or a netlink notification about a route, neighbour or
 * FDB entry. A pass for these alone (once a complete pass has run) skips what none of them can have changed: ensuring
 * the device (its link notifications come as 'device'), masquerade (pools come as 'pools') and network policy (rules
 * come as 'policy', new pods as 'pods'); iptables has no notifications, so its drift is found by the periodic resync
 * either way. Those steps spawn iptables-save, ipset and ip: on a busy node they cost tens of milliseconds that would
 * otherwise delay every route change.
 */
const OVERLAY_ONLY: ReadonlySet<DirtyReason> = new Set(['routes', 'kernel']);

/**
 * Reasons that concern only network policy: new rules ('policy') and a pod attached or detached ('pods': its veth
 * enters or leaves the dispatch chains). A pass for these alone (once a complete pass has run) is the policy step
 * only: every CNI ADD and DEL causes one, and ensuring the device and masquerade would spawn `ip` and
 * `iptables-save` for nothing, beside the next pod's ADD.
 */
const POLICY_ONLY: ReadonlySet<DirtyReason> = new Set(['policy', 'pods']);

export interface Reconciler {
  /** Schedules a pass: at once, or within `delayMs` (calls within the window share one pass). */
  markDirty(reason: DirtyReason, delayMs?: number): void;
  /**
   * Resolves after the next pass that starts after this call (for `reason`: 'flush', the default, runs every step;
   * 'pods' only the policy step once a complete pass has run). It resolves whatever the pass's outcome.
   */
  flush(reason?: DirtyReason): Promise<void>;
  /**
   * The overlay device's index as last ensured (null before the first pass), the underlay's, the desired route
   * destinations, and the state the last pass planned towards (null: unknown), which tells the agent's own writes
   * from drift when they come back as notifications.
   */
  overlay(): { ifindex: number | null; underlayIfindex: number | null; routeCidrs: ReadonlySet<string>; target: KernelState | null };
  /** The node's underlay moved (another address, prefix or device): plans from now on use it; a pass follows. */
  setUnderlay(underlay: Routing['underlay'], underlayIfindex: number): void;
  /**
   * Resolves once network policy of the family has been programmed (the dispatch chains and their fail-closed drop
   * are in force), at once when it already was; rejects after `timeoutMs`.
   */
  whenPolicyInForce(family: 4 | 6, timeoutMs: number): Promise<void>;
  stop(): void;
}

type PassResult = 'unsynced' | 'unchanged' | 'applied' | 'failed';

export function createReconciler(deps: {
  self: string;
  snapshot: () => RoutesSnapshot;
  driver: OverlayDriver;
  ensureDevice: () => Promise<number>;
  /** The routing mode and this node's underlay (default: every node through VXLAN). */
  routing?: Routing;
  /** The underlay device's index, where direct routes live (default: none, 0). */
  underlayIfindex?: number;
  /** Masquerade of pod traffic leaving the cluster's pools: the pools (null until known: nothing is written) and the nat-table driver. */
  masquerade?: { pools: () => string[] | null; driver: NatDriver; driver6?: NatDriver };
  /** Network policy: the node's rules (null until the first rule set: every local pod is dropped) and the ipset/filter driver. */
  /** `vxlanDevice`: Weft's VXLAN device, whose traffic the pod dispatch chains let through (default weft.vxlan). */
  policy?: {
    rules: () => NodeRules | null; driver: PolicyDriver; vxlanDevice?: string;
    /** The same rules for IPv6 (ip6tables and inet6 sets), programmed beside IPv4's. */
    driver6?: PolicyDriver;
    /** Pods are dual-stack: an IPv6 failure fails the pass like an IPv4 one. Otherwise it is logged once and the pass goes on. */
    ipv6Required?: boolean;
  };
  resyncMs: number;
  logger: Logger;
  metrics?: AgentMetrics;
  /** Least retry delay after a failure; grows with jitter (lib/backoff.ts) up to the resync period (default 250 ms). */
  retryMs?: number;
  /**
   * Whether kernel notifications are followed right now (every change to Weft's entries that the agent did not make
   * reaches it as a 'kernel' or 'device' reason). When true, a pass caused by route-table changes alone plans against
   * what the previous pass left (`expected`) instead of reading the kernel back (default: false, always read back).
   */
  trustApplied?: () => boolean;
}): Reconciler {
  const metrics = deps.metrics ?? createAgentMetrics(createMetricsRegistry());
  let dirty = true;
  let reasons = new Set<DirtyReason>(['start']);
  let running = false;
  let stopped = false;
  let waiters: (() => void)[] = [];
  let resyncTimer: NodeJS.Timeout | null = null;
  let debounceTimer: NodeJS.Timeout | null = null;
  let retryTimer: NodeJS.Timeout | null = null;
  const retryBackoff = createBackoff({ baseMs: deps.retryMs ?? 250, capMs: Math.max(deps.resyncMs, deps.retryMs ?? 250) });
  let ifindex: number | null = null;
  let routeCidrs: ReadonlySet<string> = new Set();
  /** The desired state of the last pass that planned (null: unknown). */
  let target: KernelState | null = null;
  /** Whether a pass has run every step (device, masquerade, policy, overlay) without failing since the last failure. */
  let completed = false;
  /** What the kernel held at the end of the previous pass (null: unknown), for counting drift repairs. */
  let expected: KernelState | null = null;
  let routing = deps.routing ?? VXLAN_ONLY;
  let underlayIfindex = deps.underlayIfindex ?? 0;
  for (const mode of ['vxlan', 'direct', 'auto']) metrics.routingMode.set(mode === routing.mode ? 1 : 0, { mode });
  /** The refused nodes last logged, so that a refusal is logged when it starts or changes, not at every pass. */
  let refusedLogged = '';
  /** The last full pass (device, masquerade, policy, overlay) succeeded: a pass for new policy rules alone may skip the rest. */
  let lastPassComplete = false;

  const countByKind = (entries: KernelEntry[]) => {
    const out: Record<string, number> = {};
    for (const e of entries) out[e.kind] = (out[e.kind] ?? 0) + 1;
    return out;
  };

  let nat6Failure = '';
  /** Makes Weft's nat chains (IPv4 and IPv6) match the pools; an IPv4 failure fails the pass (retried with backoff). */
  async function reconcileMasquerade(): Promise<void> {
    const pools = deps.masquerade?.pools();
    if (!deps.masquerade || !pools) return;
    for (const [family, driver] of [[4, deps.masquerade.driver], [6, deps.masquerade.driver6]] as const) {
      if (!driver) continue;
      try {
        const input = planMasquerade(pools, await driver.read(), undefined, family);
        if (input === null) continue;
        await driver.apply(input);
        metrics.kernelChanges.add(1, { op: 'add', kind: 'masquerade' });
        deps.logger.info('masquerade rules written', { family, pools });
        nat6Failure = family === 6 ? '' : nat6Failure;
      } catch (err) {
        // IPv4 masquerade failing fails the pass; ip6tables failing (a node without IPv6 NAT) must not stop the rest.
        if (family === 4) throw err;
        const msg = (err as Error).message;
        if (msg !== nat6Failure) deps.logger.warn('cannot program IPv6 masquerade (ip6tables nat)', { err: msg });
        nat6Failure = msg;
      }
    }
  }

  const policyProgrammer = deps.policy ? createPolicyProgrammer(deps.policy.driver, deps.policy.vxlanDevice) : null;
  const policyProgrammer6 = deps.policy?.driver6 ? createPolicyProgrammer(deps.policy.driver6, deps.policy.vxlanDevice, 6) : null;
  /** Families whose policy has been programmed at least once, and who waits for that. */
  const policyInForce = new Set<4 | 6>();
  let inForceWaiters: { family: 4 | 6; resolve: () => void }[] = [];
  let policy6Failure = '';
  /**
   * Makes Weft's filter chains and ipsets match the node's rules; a failure fails the pass (retried with backoff).
   * Runs after the route snapshot is held, like everything else. Before the first rule set a fresh node drops its
   * pods, and a restarted agent keeps the rules it finds (pods that appeared meanwhile are dropped by the dispatch
   * chains' last rule, as is a pod the rules do not mention yet). A pass that only follows new rules trusts what it
   * last applied (no read-back; see policy-programmer.ts).
   */
  async function reconcilePolicy(why: DirtyReason[]): Promise<boolean> {
    if (!deps.policy || !policyProgrammer) return false;
    const rules = deps.policy.rules();
    const programFamily = async (programmer: typeof policyProgrammer, family: 4 | 6) => {
      const { plan, veths, readBack } = await programmer.program(rules, { readBack: why.some((r) => r !== 'policy') });
      if (!policyInForce.has(family)) {
        policyInForce.add(family);
        for (const w of inForceWaiters.filter((x) => x.family === family)) w.resolve();
        inForceWaiters = inForceWaiters.filter((x) => x.family !== family);
      }
      if (plan.changed.length === 0) return false;
      metrics.kernelChanges.add(1, { op: 'add', kind: 'policy' });
      deps.logger.info('policy rules written', { family, revision: rules?.revision ?? null, failClosed: rules === null, pods: veths, readBack, changed: plan.changed.slice(0, 20), count: plan.changed.length });
      return true;
    };
    // The families are separate tables and separately named sets: they are programmed side by side, and both have
    // finished before the pass goes on (a failed one must not still be writing when the retry starts).
    const [v4, v6] = await Promise.allSettled([
      programFamily(policyProgrammer, 4),
      policyProgrammer6 ? programFamily(policyProgrammer6, 6) : Promise.resolve(false),
    ]);
    if (v4.status === 'rejected') throw v4.reason;
    if (v6.status === 'rejected') {
      // Dual-stack pods need IPv6 policy: failing, the pass is retried. Otherwise (no pod has IPv6) it is logged once.
      if (deps.policy.ipv6Required) throw v6.reason;
      const msg = (v6.reason as Error).message;
      if (msg !== policy6Failure) deps.logger.warn('cannot program IPv6 network policy (ip6tables); pods are IPv4 only here', { err: msg });
      policy6Failure = msg;
      return v4.value;
    }
    policy6Failure = '';
    return v4.value || v6.value;
  }

  async function pass(why: DirtyReason[]): Promise<PassResult> {
    const snap = deps.snapshot();
    if (!snap.synced) return 'unsynced';
    if (why.every((r) => POLICY_ONLY.has(r)) && lastPassComplete && completed) {
      // Only the policy rules or the node's pods changed since a complete pass: the overlay and masquerade have
      // nothing new to do (kernel drift comes with its own reason, or at the resync). New pods read back the veths
      // and the filter table; new rules alone trust what was last applied.
      return (await reconcilePolicy(why)) ? 'applied' : 'unchanged';
    }
    const overlayOnly = completed && ifindex !== null && why.every((r) => OVERLAY_ONLY.has(r));
    if (!overlayOnly) {
      lastPassComplete = false;
      ifindex = await deps.ensureDevice();
      await reconcileMasquerade();
      await reconcilePolicy(why);
    }
    const devices: OverlayDevices = { vxlan: ifindex!, underlay: underlayIfindex };
    const desired = computeDesired(deps.self, snap.nodes.values(), routing);
    routeCidrs = new Set(desired.routes.keys());
    target = desired;
    for (const mode of ['vxlan', 'direct', 'refused'] as const) metrics.peers.set(desired.peers.filter((p) => p.mode === mode).length, { mode });
    const refused = desired.peers.filter((p) => p.mode === 'refused');
    const refusedKey = refused.map((p) => `${p.node}@${p.underlayAddress}`).join(',');
    if (refusedKey !== refusedLogged) {
      if (refused.length > 0) deps.logger.error('refusing nodes that direct routing cannot reach; their pods are unreachable from here', { count: refused.length, nodes: refused.slice(0, 10).map((p) => p.reason) });
      else deps.logger.info('no node refused any more');
      refusedLogged = refusedKey;
    }
    metrics.desiredEntries.set(desired.neighbours.size, { kind: 'neighbour' });
    metrics.desiredEntries.set(desired.fdb.size, { kind: 'fdb' });
    metrics.desiredEntries.set(desired.routes.size, { kind: 'route' });
    let actual: KernelState;
    // Route-table changes alone, after a pass that left the kernel as planned, with notifications followed: what the
    // kernel holds is what that pass left, since any other change to Weft's entries since then would have come as a
    // notification that disagrees with the target, and so as reason 'kernel' (which reads back). No read-back.
    const trusted = overlayOnly && expected !== null && lastPassComplete && why.every((r) => r === 'routes') && deps.trustApplied?.() === true;
    if (trusted) {
      actual = expected!;
    } else {
      try {
        actual = await deps.driver.readActual(devices);
      } catch (err) {
        metrics.netlinkFailures.add(1, { op: 'read' });
        throw err;
      }
    }
    metrics.overlayReads.add(1, { source: trusted ? 'trusted' : 'kernel' });
    const plan = planChanges(desired, actual);
    if (planSize(plan) === 0) {
      lastPassComplete = true;
      expected = desired;
      metrics.revisionApplied.set(snap.revision);
      return 'unchanged';
    }
    const drift = driftRepairs(plan, expected);
    for (const [kind, n] of Object.entries(countByKind(drift))) metrics.driftRepairs.add(n, { kind });
    if (drift.length > 0) deps.logger.warn('repairing drift: entries Weft had programmed are gone or changed', { count: drift.length, byKind: countByKind(drift), sample: drift.slice(0, 5).map((e) => `${e.kind} ${e.key}`) });
    const t0 = performance.now();
    const { applied, failed } = await deps.driver.apply(devices, plan);
    const seconds = (performance.now() - t0) / 1000;
    metrics.applyDuration.record(seconds);
    const failedKeys = new Set(failed.map((f) => `${f.op} ${f.entry.kind} ${f.entry.key}`));
    for (const phase of plan.phases) {
      for (const [kind, n] of Object.entries(countByKind(phase.entries.filter((e) => !failedKeys.has(`${phase.op} ${e.kind} ${e.key}`))))) {
        metrics.kernelChanges.add(n, { op: phase.op, kind });
      }
    }
    deps.logger.info('applied', { revision: snap.revision, applied, failed: failed.length, ms: Math.round(seconds * 1000), why });
    if (failed.length > 0) {
      metrics.netlinkFailures.add(failed.length, { op: 'apply' });
      // What the kernel holds now: the desired state less the additions that failed.
      expected = { neighbours: new Map(desired.neighbours), fdb: new Map(desired.fdb), routes: new Map(desired.routes) };
      for (const f of failed) {
        if (f.op !== 'add') continue;
        (f.entry.kind === 'neighbour' ? expected.neighbours : f.entry.kind === 'fdb' ? expected.fdb : expected.routes).delete(f.entry.key);
      }
      return 'failed';
    }
    expected = desired;
    metrics.revisionApplied.set(snap.revision);
    lastPassComplete = true;
    return 'applied';
  }

  function retryLater(): void {
    if (retryTimer || stopped) return;
    const delay = retryBackoff.next();
    retryTimer = setTimeout(() => {
      retryTimer = null;
      markDirty('retry');
    }, delay);
    retryTimer.unref();
  }

  async function loop(): Promise<void> {
    if (running || stopped) return;
    running = true;
    try {
      while (dirty && !stopped) {
        dirty = false;
        const why = [...reasons];
        reasons = new Set();
        const done = waiters;
        waiters = [];
        const t0 = performance.now();
        let result: PassResult;
        try {
          result = await pass(why);
          if (result === 'failed') completed = false;
          else if (result !== 'unsynced') completed = true;
        } catch (err) {
          completed = false;
          deps.logger.error('reconcile pass failed; retrying', { err, why });
          result = 'failed';
        }
        metrics.passes.add(1, { result });
        if (result !== 'unsynced') metrics.passDuration.record((performance.now() - t0) / 1000);
        if (result === 'failed') retryLater();
        else if (result !== 'unsynced') retryBackoff.reset();
        for (const w of done) w();
      }
    } finally {
      running = false;
    }
    scheduleResync();
  }

  function scheduleResync(): void {
    if (resyncTimer) clearTimeout(resyncTimer);
    if (stopped) return;
    resyncTimer = setTimeout(() => markDirty('resync'), deps.resyncMs);
  }

  function markDirty(reason: DirtyReason, delayMs = 0): void {
    if (stopped) return;
    reasons.add(reason);
    if (delayMs > 0) {
      if (debounceTimer) return;
      debounceTimer = setTimeout(() => {
        debounceTimer = null;
        dirty = true;
        void loop();
      }, delayMs);
      return;
    }
    dirty = true;
    void loop();
  }

  return {
    markDirty,
    flush(reason = 'flush') {
      return new Promise<void>((r) => {
        waiters.push(r);
        markDirty(reason);
      });
    },
    overlay: () => ({ ifindex, underlayIfindex: deps.underlayIfindex === undefined ? null : underlayIfindex, routeCidrs, target }),
    setUnderlay(underlay, index) {
      routing = { ...routing, underlay };
      underlayIfindex = index;
      target = null;
      // What the kernel held is no longer comparable entry by entry (direct routes may move to VXLAN and back).
      expected = null;
      markDirty('underlay');
    },
    whenPolicyInForce(family, timeoutMs) {
      if (policyInForce.has(family)) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const waiter = { family, resolve: () => { clearTimeout(timer); resolve(); } };
        const timer = setTimeout(() => {
          inForceWaiters = inForceWaiters.filter((w) => w !== waiter);
          reject(new Error(`IPv${family} policy not programmed within ${timeoutMs} ms`));
        }, timeoutMs);
        inForceWaiters.push(waiter);
      });
    },
    stop() {
      stopped = true;
      for (const t of [resyncTimer, debounceTimer, retryTimer]) if (t) clearTimeout(t);
      for (const w of waiters) w();
      waiters = [];
    },
  };
}
