import {
  LATENCY_BUCKETS_SECONDS,
  type Counter,
  type Gauge,
  type Histogram,
  type MetricsRegistry,
} from '../lib/metrics.js';

/**
 * The agent's metrics (Prometheus names; served at WEFT_METRICS_LISTEN). Labels have small fixed value sets:
 * result (unsynced, unchanged, applied, failed), op (add, delete; read, apply, watch), kind (neighbour, fdb, route;
 * masquerade: Weft's nat chain rewritten).
 */
export interface AgentMetrics {
  /** 1 once the agent holds a complete route snapshot. */
  synced: Gauge;
  /** Route-table revision the kernel last fully matched. */
  revisionApplied: Gauge;
  /** Reconcile passes by result. */
  passes: Counter;
  /** Duration of whole passes (ensure device, read back, plan, apply). */
  passDuration: Histogram;
  /** Duration of applying a non-empty plan. */
  applyDuration: Histogram;
  /** Kernel entries written or removed, by op and kind. */
  kernelChanges: Counter;
  /** Entries re-added that the kernel held after the previous pass, by kind. */
  driftRepairs: Counter;
  /** Failed netlink operations: op=read (read back), apply (one entry), watch (notifications lost). */
  netlinkFailures: Counter;
  /** Kernel notifications that concerned the overlay and marked the reconciler dirty. */
  kernelEvents: Counter;
  /** Kernel notifications that were the agent's own writes coming back (they agree with its target): no pass. */
  kernelEchoes: Counter;
  /** Overlay passes by how they knew the kernel's state: read back over netlink, or trusted from the previous pass. */
  overlayReads: Counter;
  /** Entries of the desired state, by kind. */
  desiredEntries: Gauge;
  /** Remote nodes with blocks, by how they are reached: vxlan, direct, or refused (direct mode, off the subnet). */
  peers: Gauge;
  /** 1 for the agent's routing mode (vxlan, direct or auto), 0 for the others. */
  routingMode: Gauge;
  /** Releases of detached pods that IPAM could not take at DEL, still being retried (pending-releases.ts). */
  pendingReleases: Gauge;
  /** Time the agent spends on each CNI plugin call (Attach, Detach, …), by rpc and result (ok, error). */
  cniCallDuration: Histogram;
  /** Time of each step of a successful Attach (allocate, host, pod; they may overlap), by phase. */
  attachPhaseDuration: Histogram;
  detachPhaseDuration: Histogram;
}

export function createAgentMetrics(r: MetricsRegistry): AgentMetrics {
  const m: AgentMetrics = {
    synced: r.gauge('weft_agent_synced', 'Whether the agent holds a complete route snapshot (1) or not yet (0).'),
    revisionApplied: r.gauge('weft_agent_revision_applied', 'Route-table revision that the kernel last fully matched.'),
    passes: r.counter(
      'weft_agent_reconcile_passes_total',
      'Reconcile passes, by result (unsynced, unchanged, applied, failed).',
    ),
    passDuration: r.histogram(
      'weft_agent_reconcile_duration_seconds',
      'Duration of reconcile passes: ensure the device, read back, plan, apply.',
      LATENCY_BUCKETS_SECONDS,
    ),
    applyDuration: r.histogram(
      'weft_agent_apply_duration_seconds',
      'Duration of applying a non-empty plan to the kernel.',
      LATENCY_BUCKETS_SECONDS,
    ),
    kernelChanges: r.counter('weft_agent_kernel_changes_total', 'Kernel entries added or deleted, by op and kind.'),
    driftRepairs: r.counter(
      'weft_agent_drift_repairs_total',
      'Entries re-added that the kernel held after the previous pass (drift repaired), by kind.',
    ),
    netlinkFailures: r.counter(
      'weft_agent_netlink_failures_total',
      'Failed netlink operations, by op (read, apply, watch).',
    ),
    kernelEvents: r.counter(
      'weft_agent_kernel_events_total',
      'Kernel notifications that concerned the overlay and disagreed with what the agent wants (drift), by kind.',
    ),
    kernelEchoes: r.counter(
      'weft_agent_kernel_echoes_total',
      "Kernel notifications that were the agent's own writes coming back (no pass), by kind.",
    ),
    overlayReads: r.counter(
      'weft_agent_overlay_reads_total',
      'Overlay passes by how they knew what the kernel holds (source: kernel = read back over netlink, trusted = what the previous pass left).',
    ),
    desiredEntries: r.gauge('weft_agent_desired_entries', 'Entries of the desired overlay state, by kind.'),
    peers: r.gauge(
      'weft_agent_peers',
      "Remote nodes with blocks, by mode: vxlan, direct, or refused (direct routing mode, node off this node's underlay subnet: unreachable).",
    ),
    routingMode: r.gauge(
      'weft_agent_routing_mode',
      "The agent's routing mode (WEFT_ROUTING_MODE): 1 for the mode in use.",
    ),
    pendingReleases: r.gauge(
      'weft_agent_pending_releases',
      'Addresses of pods detached while IPAM was unreachable whose release IPAM has not taken yet (retried in the background).',
    ),
    cniCallDuration: r.histogram(
      'weft_agent_cni_call_duration_seconds',
      'Time the agent spends on a CNI plugin call (its handler, from request to answer), by rpc and result (ok, error).',
      LATENCY_BUCKETS_SECONDS,
    ),
    attachPhaseDuration: r.histogram(
      'weft_agent_attach_phase_duration_seconds',
      "Time of each step of a successful CNI Attach, by phase: allocate (IPAM), host (veth and host route), pod (the pod's namespace). Steps may overlap.",
      LATENCY_BUCKETS_SECONDS,
    ),
    detachPhaseDuration: r.histogram(
      'weft_agent_detach_phase_duration_seconds',
      "Time of each step of a successful CNI Detach, by phase: link (deleting the pod's veth), release (IPAM), policy (then waiting for the pass that removes its rules).",
      LATENCY_BUCKETS_SECONDS,
    ),
  };
  m.synced.set(0);
  m.revisionApplied.set(0);
  for (const kind of ['neighbour', 'fdb', 'route']) {
    m.driftRepairs.add(0, { kind });
    m.desiredEntries.set(0, { kind });
  }
  for (const op of ['read', 'apply', 'watch']) m.netlinkFailures.add(0, { op });
  for (const mode of ['vxlan', 'direct', 'refused']) m.peers.set(0, { mode });
  return m;
}

/** The CNI plugin's handlers, each timed into cniCallDuration (rpc = the handler's name: attach, detach, …). */
export function timeCniHandlers<H extends object>(handlers: H, histogram: Histogram): H {
  const out: Record<string, unknown> = {};
  for (const [rpc, handler] of Object.entries(handlers) as [string, (...args: unknown[]) => Promise<unknown>][]) {
    out[rpc] = async (...args: unknown[]) => {
      const t0 = performance.now();
      let result = 'error';
      try {
        const res = await handler(...args);
        result = 'ok';
        return res;
      } finally {
        histogram.record((performance.now() - t0) / 1000, { rpc, result });
      }
    };
  }
  return out as H;
}
