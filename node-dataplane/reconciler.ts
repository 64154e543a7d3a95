import { createBackoff } from '../lib/backoff.js';
import type { Logger } from '../lib/logger.js';
import { createMetricsRegistry } from '../lib/metrics.js';
import {
  computeDesired,
  VXLAN_ONLY,
  type DesiredState,
  type FdbEntry,
  type NeighbourEntry,
  type RouteEntry,
  type Routing,
} from './domain/desired.js';
import type { NatChain } from './domain/masquerade.js';
import type { NodeRules } from './domain/network-policy.js';
import { createFdbDriver, FDB } from './drivers/fdb.js';
import { createNatDriver, desiredNat, natKind } from './drivers/nat.js';
import { createNeighbourDriver, NEIGHBOUR } from './drivers/neighbours.js';
import { DEPENDENTS, ORDER, OVERLAY_KINDS } from './drivers/registry.js';
import { createInForceWaiters, createPolicyDrivers, policyKinds, type PolicyFamilyDrivers } from './drivers/policy.js';
import { createRouteDriver, ROUTE } from './drivers/routes.js';
import { createVxlanDeviceDriver, DEVICE } from './drivers/vxlan-device.js';
import { createDataplane, type Driver, type KernelAccess } from './kernel-table/dataplane.js';
import { vxlanStateFor, type VxlanDeviceState, type VxlanSpec } from './kernel/vxlan-device.js';
import { createAgentMetrics, type AgentMetrics } from './metrics.js';
import { createPassReporter } from './pass-report.js';
import type { RoutesSnapshot } from './sources/routes-watch.js';

/**
 * The scheduler. Sources update their snapshots and mark dirty; a pass then runs the pure managers over the current
 * inputs (the VXLAN device's spec, `computeDesired` for the overlay, the pools for masquerade, the rules for policy),
 * hands their desired entries to the drivers' tables, and lets the drivers apply what is pending in the one
 * dependency order (kernel-table/dataplane.ts, drivers/registry.ts). A driver reads the kernel back only when its table
 * is marked for resync: at start, every `resyncMs`, after one of its writes failed, and when a kernel notification
 * disagrees with what the agent wants. What a pass does depends only on the inputs and on what the tables hold, never
 * on why it runs. Nothing is written before the first complete route snapshot.
 */
export type DirtyReason =
  | 'start'
  | 'routes'
  | 'pools'
  | 'attachments'
  | 'policy'
  | 'pods'
  | 'kernel'
  | 'device'
  | 'underlay'
  | 'resync'
  | 'retry'
  | 'flush';

/** The kernel access of each kind of entry the dataplane drives (netlink, iproute2 and iptables, or a fake in tests). */
export interface KernelAccesses {
  device: KernelAccess<VxlanDeviceState>;
  neighbours: KernelAccess<NeighbourEntry>;
  fdb: KernelAccess<FdbEntry>;
  routes: KernelAccess<RouteEntry>;
  nat4?: KernelAccess<NatChain>;
  nat6?: KernelAccess<NatChain>;
}

/** Network policy's kernel access of one family: its ipsets, its filter chains, and the local pods' veths. */
export interface PolicyAccess {
  ipsets: KernelAccess<string[]>;
  filter: KernelAccess<string[]>;
  /** Local pod address of the family → its host veth (an input of the policy manager, read when policy is marked). */
  veths(): Promise<Map<string, string>>;
}

/**
 * What may be marked for resync: a kind of the dataplane's, network policy (every family's sets, chains and pod
 * veths), or every table (`tables`).
 */
export type ResyncKind = typeof DEVICE | typeof NEIGHBOUR | typeof FDB | typeof ROUTE | 'nat' | 'policy' | 'tables';

export interface Reconciler {
  /** Schedules a pass: at once, or within `delayMs` (calls within the window share one pass). `pods` re-reads the pods' veths. */
  markDirty(reason: DirtyReason, delayMs?: number): void;
  /** Marks kinds for resync (read back at the next pass) and schedules that pass. */
  resync(kinds: readonly ResyncKind[], delayMs?: number): void;
  /** Resolves after the next pass that starts after this call, whatever its outcome. */
  flush(reason?: DirtyReason): Promise<void>;
  /**
   * The overlay device's index (null while it does not exist), the underlay's, the desired route destinations, and
   * the desired state (null: unknown), which tells the agent's own writes from drift when they come back as notifications.
   */
  overlay(): {
    ifindex: number | null;
    underlayIfindex: number | null;
    routeCidrs: ReadonlySet<string>;
    target: DesiredState | null;
  };
  /** The node's underlay moved (another address, prefix or device): plans from now on use it; everything is read back. */
  setUnderlay(underlay: Routing['underlay'], underlayIfindex: number): void;
  /**
   * Resolves once network policy of the family has been programmed (the dispatch chains and their fail-closed drop
   * are in force), at once when it already was; rejects after `timeoutMs`.
   */
  whenPolicyInForce(family: 4 | 6, timeoutMs: number): Promise<void>;
  stop(): void;
}

type PassResult = 'unsynced' | 'unchanged' | 'applied' | 'failed';

/** What a reason marks for resync (the rest only schedule a pass: their inputs are read by every pass). */
const RESYNC_ON: Partial<Record<DirtyReason, readonly ResyncKind[]>> = {
  pods: ['policy'],
  kernel: [NEIGHBOUR, FDB, ROUTE],
  device: [DEVICE, NEIGHBOUR, FDB, ROUTE],
  underlay: ['tables', 'policy'],
  resync: ['tables', 'policy'],
};

export function createReconciler(deps: {
  self: string;
  snapshot: () => RoutesSnapshot;
  kernel: KernelAccesses;
  /** The VXLAN device as it should be (its name never changes; the rest may follow the underlay). */
  vxlan: () => VxlanSpec;
  /** The routing mode and this node's underlay (default: every node through VXLAN). */
  routing?: Routing;
  /** The underlay device's index, where direct routes live (default: none, 0). */
  underlayIfindex?: number;
  /** The cluster's pools, for masquerade (null until known: the nat chains are left as they are). */
  pools?: () => string[] | null;
  /** Network policy: the node's rules (null until the first rule set: every local pod is dropped) and its kernel per family. */
  policy?: {
    rules: () => NodeRules | null;
    families: { 4: PolicyAccess; 6?: PolicyAccess };
    /** Pods are dual-stack: an IPv6 failure fails the pass like an IPv4 one. Otherwise it is logged once and retried at the next resync. */
    ipv6Required?: boolean;
    vxlanDevice?: string;
  };
  resyncMs: number;
  logger: Logger;
  metrics?: AgentMetrics;
  /** Least retry delay after a failure; grows with jitter (lib/backoff.ts) up to the resync period (default 250 ms). */
  retryMs?: number;
  /** Requests in flight per phase (default 64; the netlink package aborts near 512). */
  maxInFlight?: number;
  /**
   * Table drivers that carry their own manager (`Driver.desired`), such as the pod veths and host routes: they need
   * nothing else here (made from drivers/registry.ts; resynced with every table).
   */
  drivers?: readonly Driver<unknown>[];
}): Reconciler {
  const metrics = deps.metrics ?? createAgentMetrics(createMetricsRegistry());
  const deviceName = deps.vxlan().name;
  const device = createVxlanDeviceDriver(deps.kernel.device);
  const absent: KernelAccess<NatChain> = { read: async () => new Map(), write: async () => {}, remove: async () => {} };
  /**
   * Whether this pass computed the nat tables' desired entries (the pools were known when it began). Readiness
   * follows it, not the pools themselves: pools learnt in the middle of a pass would let the nat phase run against an
   * empty desired state and remove the chain a restarted agent found.
   */
  let natDesired = false;
  const nat = ([4, 6] as const).map((family) => ({
    ...createNatDriver(deps.kernel[`nat${family}`] ?? absent, family),
    ready: () => !!deps.kernel[`nat${family}`] && natDesired,
  }));
  /** Per family: its drivers, and the pods' veths (null: never read; `stale`: to be read again). */
  type PolicyFamily = PolicyFamilyDrivers & { access: PolicyAccess; veths: Map<string, string> | null; stale: boolean };
  const policy: PolicyFamily[] = [];
  for (const family of [4, 6] as const) {
    const access = deps.policy?.families[family];
    if (!access) continue;
    const p: PolicyFamily = {
      ...createPolicyDrivers({
        family,
        ipsets: access.ipsets,
        filter: access.filter,
        vxlanDevice: deps.policy!.vxlanDevice ?? deviceName,
        optional: family === 6 && !deps.policy!.ipv6Required,
        ready: () => p.veths !== null,
      }),
      access,
      veths: null,
      stale: true,
    };
    policy.push(p);
  }
  const drivers = [
    device,
    createNeighbourDriver(deps.kernel.neighbours, deviceName),
    createFdbDriver(deps.kernel.fdb, deviceName),
    createRouteDriver(deps.kernel.routes, deviceName),
    ...nat,
    ...policy.flatMap((p) => [p.ipsets, p.filter]),
    ...(deps.drivers ?? []),
  ];
  const kinds = new Set(drivers.map((d) => d.kind));
  const dataplane = createDataplane({
    drivers,
    order: ORDER.filter((p) => kinds.has(p.kind)),
    dependents: DEPENDENTS,
    maxInFlight: deps.maxInFlight,
  });
  const tableOf = <V>(kind: string) => dataplane.driver<V>(kind).table;

  // Scheduling.
  let dirty = true;
  let reasons = new Set<DirtyReason>(['start']);
  let running = false;
  let stopped = false;
  let waiters: (() => void)[] = [];
  let resyncTimer: NodeJS.Timeout | null = null;
  let debounceTimer: NodeJS.Timeout | null = null;
  let retryTimer: NodeJS.Timeout | null = null;
  const retryBackoff = createBackoff({
    baseMs: deps.retryMs ?? 250,
    capMs: Math.max(deps.resyncMs, deps.retryMs ?? 250),
  });

  // Inputs the scheduler holds for the managers, and what the watch asks about.
  let routing = deps.routing ?? VXLAN_ONLY;
  let underlayIfindex = deps.underlayIfindex ?? 0;
  let target: DesiredState | null = null;
  let routeCidrs: ReadonlySet<string> = new Set();
  for (const mode of ['vxlan', 'direct', 'auto']) metrics.routingMode.set(mode === routing.mode ? 1 : 0, { mode });

  const reporter = createPassReporter({
    logger: deps.logger,
    metrics,
    optional: drivers.filter((d) => d.optional).map((d) => d.kind),
    masquerade: nat.map((d) => d.kind),
    pools: () => deps.pools?.() ?? null,
  });

  const inForce = createInForceWaiters();

  function markForResync(kinds: readonly ResyncKind[]): void {
    for (const kind of kinds) {
      if (kind === 'policy') {
        // The pods' veths are read again too (pods came or went).
        for (const p of policy) p.stale = true;
        dataplane.markForResync(policy.flatMap((p) => policyKinds(p.family)));
      } else if (kind === 'tables') dataplane.markForResync();
      else if (kind === 'nat') dataplane.markForResync(nat.map((d) => d.kind));
      else dataplane.markForResync([kind]);
    }
  }

  /**
   * Network policy's manager input: the local pods' veths of each family, read when policy was marked for resync or
   * when the rules name a pod address of the family that has no veth yet (read side by side).
   */
  async function readVeths(rules: NodeRules | null): Promise<void> {
    const missing = (p: PolicyFamily) =>
      rules?.pods.some((pod) => pod.addresses.some((a) => a.includes(':') === (p.family === 6) && !p.veths!.has(a))) ??
      false;
    // A failed read keeps the veths last read (none: the family's tables wait), and is retried.
    await Promise.all(
      policy.map(async (p) => {
        if (p.veths && !p.stale && !missing(p)) return;
        p.veths = await p.access.veths();
        p.stale = false;
      }),
    );
  }

  /** The managers: desired entries for every table from the current inputs (pure computations). */
  function computeTables(snap: RoutesSnapshot, rules: NodeRules | null): void {
    const spec = deps.vxlan();
    tableOf<VxlanDeviceState>(DEVICE).replaceDesired(new Map([[spec.name, vxlanStateFor(spec)]]));
    const desired = computeDesired(deps.self, snap.nodes.values(), routing);
    tableOf<NeighbourEntry>(NEIGHBOUR).replaceDesired(desired.neighbours);
    tableOf<FdbEntry>(FDB).replaceDesired(desired.fdb);
    tableOf<RouteEntry>(ROUTE).replaceDesired(desired.routes);
    target = desired;
    routeCidrs = new Set(desired.routes.keys());
    const pools = deps.pools?.() ?? null;
    natDesired = pools !== null;
    if (pools) for (const d of nat) d.table.replaceDesired(desiredNat(pools, d.kind === natKind(6) ? 6 : 4));
    for (const p of policy) if (p.veths) p.compute(rules, p.veths);

    reporter.desired(desired);
  }

  async function pass(why: DirtyReason[]): Promise<PassResult> {
    const snap = deps.snapshot();
    if (!snap.synced) return 'unsynced';
    const rules = deps.policy?.rules() ?? null;
    let vethsFailed = false;
    // The kernel's read-backs run while the pods' veths are read and the managers compute (policy's, once its veths
    // are known).
    dataplane.prefetch();
    await readVeths(rules).catch((err: unknown) => {
      vethsFailed = true;
      deps.logger.error("cannot read the pods' veths; retrying", { err: (err as Error).message });
    });
    dataplane.prefetch();
    computeTables(snap, rules);
    const t0 = performance.now();
    const applied = await dataplane.apply();
    const seconds = (performance.now() - t0) / 1000;
    if (applied.changes.length > 0) metrics.applyDuration.record(seconds);
    const failed = reporter.applied(applied, why, seconds);
    for (const d of deps.drivers ?? []) metrics.desiredEntries.set(d.table.desired.size, { kind: d.kind });
    if (dataplane.pending([DEVICE, ...OVERLAY_KINDS]) === 0) metrics.revisionApplied.set(snap.revision);
    for (const p of policy) if (p.inForce()) inForce.notify(p.family);
    if (failed || vethsFailed) return 'failed';
    return applied.changes.length > 0 ? 'applied' : 'unchanged';
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
        } catch (err) {
          deps.logger.error('reconcile pass failed; retrying', { err, why });
          markForResync(RESYNC_ON.resync!);
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
    markForResync(RESYNC_ON[reason] ?? []);
    schedule(reason, delayMs);
  }

  function schedule(reason: DirtyReason, delayMs: number): void {
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
    resync(kinds, delayMs = 0) {
      if (stopped) return;
      markForResync(kinds);
      schedule('kernel', delayMs);
    },
    flush(reason = 'flush') {
      return new Promise<void>((r) => {
        waiters.push(r);
        markDirty(reason);
      });
    },
    overlay: () => ({
      ifindex: device.ifindex(),
      underlayIfindex: deps.underlayIfindex === undefined ? null : underlayIfindex,
      routeCidrs,
      target,
    }),
    setUnderlay(underlay, index) {
      routing = { ...routing, underlay };
      underlayIfindex = index;
      target = null;
      markDirty('underlay');
    },
    whenPolicyInForce(family, timeoutMs) {
      return policy.length > 0
        ? inForce.whenInForce(family, timeoutMs)
        : Promise.reject(new Error('network policy is not programmed by this agent'));
    },
    stop() {
      stopped = true;
      for (const t of [resyncTimer, debounceTimer, retryTimer]) if (t) clearTimeout(t);
      for (const w of waiters) w();
      waiters = [];
    },
  };
}
