import { test } from 'node:test';
import assert from 'node:assert/strict';
import { silentLogger } from '../lib/logger.js';
import { createMetricsRegistry } from '../lib/metrics.js';
import { emptyState, type KernelEntry, type KernelState, type Routing } from './domain/desired.js';
import type { ApplyResult, OverlayDriver } from './kernel/netlink-overlay.js';
import { createAgentMetrics } from './metrics.js';
import { createReconciler, type Reconciler } from './reconciler.js';
import type { RoutesSnapshot } from './sources/routes-watch.js';

/** An in-memory kernel behind the driver interface; every write echoes back as a kernel event, like netlink's. */
function fakeKernel(opts: { failAdds?: number } = {}) {
  const state: KernelState = emptyState();
  const writes: string[] = [];
  let failAdds = opts.failAdds ?? 0;
  let onWrite: () => void = () => {};
  const table = (s: KernelState, e: KernelEntry) => (e.kind === 'neighbour' ? s.neighbours : e.kind === 'fdb' ? s.fdb : s.routes) as Map<string, KernelEntry>;
  const driver: OverlayDriver = {
    async readActual() {
      return { neighbours: new Map(state.neighbours), fdb: new Map(state.fdb), routes: new Map(state.routes) };
    },
    async apply(_ifindex, plan): Promise<ApplyResult> {
      const out: ApplyResult = { applied: 0, failed: [] };
      for (const phase of plan.phases) {
        for (const e of phase.entries) {
          if (phase.op === 'add' && failAdds > 0) {
            failAdds--;
            out.failed.push({ op: 'add', entry: e, error: 'EBUSY' });
            continue;
          }
          if (phase.op === 'add') table(state, e).set(e.key, e);
          else table(state, e).delete(e.key);
          writes.push(`${phase.op} ${e.kind} ${e.key}`);
          out.applied++;
          onWrite();
        }
      }
      return out;
    },
    async linkIndex() {
      return 5;
    },
    close() {},
  };
  return { state, writes, driver, echo: (fn: () => void) => (onWrite = fn) };
}

const remote = { node: 'b', underlayAddress: '198.51.100.12', vtepMac: '02:57:c6:33:64:0c', blockCidrs: ['10.244.1.0/26', '10.244.2.0/26'] };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function setup(kernel: ReturnType<typeof fakeKernel>, snap: RoutesSnapshot, extra: { retryMs?: number; routing?: Routing; underlayIfindex?: number; trustApplied?: () => boolean } = {}) {
  const registry = createMetricsRegistry();
  const metrics = createAgentMetrics(registry);
  const r: Reconciler = createReconciler({
    self: 'a', snapshot: () => snap, driver: kernel.driver, ensureDevice: async () => 5, resyncMs: 60_000, logger: silentLogger, metrics, ...extra,
  });
  const value = (series: string) => Number(new RegExp(`^${series.replace(/[{}"]/g, '\\$&')} (\\S+)$`, 'm').exec(registry.render())?.[1] ?? NaN);
  return { r, value };
}

test('nothing is written before the first complete snapshot; then the kernel gets the desired state', async () => {
  const k = fakeKernel();
  k.state.routes.set('10.244.9.0/26', { kind: 'route', key: '10.244.9.0/26', cidr: '10.244.9.0/26', gateway: '10.244.9.0', mode: 'vxlan' });
  const snap: RoutesSnapshot = { nodes: new Map([['b', remote]]), revision: 3, synced: false };
  const { r, value } = setup(k, snap);
  try {
    await r.flush();
    r.markDirty('kernel', 5);
    await sleep(30);
    assert.equal(k.writes.length, 0, 'a stale route survives until the agent is in sync');
    snap.synced = true;
    await r.flush();
    assert.ok(k.writes.includes('delete route 10.244.9.0/26'));
    assert.deepEqual([...k.state.routes.keys()].sort(), ['10.244.1.0/26', '10.244.2.0/26']);
    assert.equal(value('weft_agent_revision_applied'), 3);
    assert.equal(value('weft_agent_drift_repairs_total{kind="route"}'), 0, 'first adds are not drift');
    const { target, ...overlay } = r.overlay();
    assert.deepEqual(overlay, { ifindex: 5, underlayIfindex: null, routeCidrs: new Set(['10.244.1.0/26', '10.244.2.0/26']) });
    assert.deepEqual([...target!.routes.keys()], ['10.244.1.0/26', '10.244.2.0/26'], 'the target: what the pass planned towards');
  } finally {
    r.stop();
  }
});

test('the agent\'s own writes echo back as events, cost one more (empty) pass, and the loop comes to rest', async () => {
  const k = fakeKernel();
  const snap: RoutesSnapshot = { nodes: new Map([['b', remote]]), revision: 1, synced: true };
  const { r, value } = setup(k, snap);
  k.echo(() => r.markDirty('kernel', 5));
  try {
    await r.flush();
    await sleep(100);
    const passes = value('weft_agent_reconcile_passes_total{result="applied"}') + value('weft_agent_reconcile_passes_total{result="unchanged"}');
    assert.equal(value('weft_agent_reconcile_passes_total{result="applied"}'), 1);
    assert.ok(passes <= 3, `a handful of passes, not a loop (${passes})`);
    await sleep(100);
    const later = value('weft_agent_reconcile_passes_total{result="applied"}') + value('weft_agent_reconcile_passes_total{result="unchanged"}');
    assert.equal(later, passes, 'no pass while nothing changes');
  } finally {
    r.stop();
  }
});

test('an entry removed behind the agent\'s back is re-added and counted as a drift repair', async () => {
  const k = fakeKernel();
  const snap: RoutesSnapshot = { nodes: new Map([['b', remote]]), revision: 1, synced: true };
  const { r, value } = setup(k, snap);
  try {
    await r.flush();
    k.state.routes.delete('10.244.2.0/26');
    k.state.fdb.clear();
    k.writes.length = 0;
    await r.flush();
    assert.deepEqual(k.writes.sort(), ['add fdb 02:57:c6:33:64:0c', 'add route 10.244.2.0/26']);
    assert.equal(value('weft_agent_drift_repairs_total{kind="route"}'), 1);
    assert.equal(value('weft_agent_drift_repairs_total{kind="fdb"}'), 1);
    assert.equal(value('weft_agent_drift_repairs_total{kind="neighbour"}'), 0);
    // A withdrawn block is a change of desired state, not drift.
    snap.nodes.set('b', { ...remote, blockCidrs: ['10.244.1.0/26'] });
    await r.flush();
    assert.equal(value('weft_agent_drift_repairs_total{kind="route"}'), 1);
  } finally {
    r.stop();
  }
});

test('a failed kernel update is retried with backoff until it succeeds, and counted', async () => {
  const k = fakeKernel({ failAdds: 2 });
  const snap: RoutesSnapshot = { nodes: new Map([['b', remote]]), revision: 7, synced: true };
  const { r, value } = setup(k, snap, { retryMs: 10 });
  try {
    await r.flush();
    assert.equal(value('weft_agent_netlink_failures_total{op="apply"}'), 2);
    assert.equal(value('weft_agent_revision_applied'), 0, 'a partly applied revision is not reported as applied');
    for (let i = 0; i < 50 && value('weft_agent_revision_applied') !== 7; i++) await sleep(10);
    assert.equal(value('weft_agent_revision_applied'), 7);
    assert.equal(k.state.routes.size + k.state.neighbours.size + k.state.fdb.size, 5);
    assert.equal(value('weft_agent_drift_repairs_total{kind="neighbour"}') + value('weft_agent_drift_repairs_total{kind="route"}'), 0, 'a retried add is not drift');
  } finally {
    r.stop();
  }
});

test('direct mode refuses a node off the underlay subnet: nothing is written for it, and the refusal shows in the metrics', async () => {
  const k = fakeKernel();
  const near = { node: 'c', underlayAddress: '192.0.2.13', vtepMac: '02:57:c0:00:02:0d', blockCidrs: ['10.244.3.0/26'] };
  const snap: RoutesSnapshot = { nodes: new Map([['b', remote], ['c', near]]), revision: 2, synced: true };
  const { r, value } = setup(k, snap, { routing: { mode: 'direct', underlay: { address: '192.0.2.10', prefixLength: 24 } }, underlayIfindex: 2 });
  try {
    await r.flush();
    assert.deepEqual(k.writes, ['add route 10.244.3.0/26']);
    assert.deepEqual(r.overlay().underlayIfindex, 2);
    assert.equal(value('weft_agent_peers{mode="refused"}'), 1);
    assert.equal(value('weft_agent_peers{mode="direct"}'), 1);
    assert.equal(value('weft_agent_peers{mode="vxlan"}'), 0);
    assert.equal(value('weft_agent_routing_mode{mode="direct"}'), 1);
    assert.equal(value('weft_agent_routing_mode{mode="auto"}'), 0);
    assert.equal(value('weft_agent_revision_applied'), 2, 'a refused node is not a failure to apply');
  } finally {
    r.stop();
  }
});

test('a route change or an entry\'s notification re-checks the overlay only, new rules or pods the policy only; the device, masquerade and policy are re-checked for their own reasons and at resync', async () => {
  const k = fakeKernel();
  const snap: RoutesSnapshot = { nodes: new Map([['b', remote]]), revision: 1, synced: true };
  const calls: string[] = [];
  const r = createReconciler({
    self: 'a', snapshot: () => snap, driver: k.driver, resyncMs: 60_000, logger: silentLogger,
    ensureDevice: async () => (calls.push('device'), 5),
    masquerade: { pools: () => ['10.244.0.0/16'], driver: { read: async () => (calls.push('nat'), { chainExists: false, rules: [], jumps: 0 }), apply: async () => {} } },
    policy: { rules: () => null, driver: { read: async () => (calls.push('filter'), { chains: new Map(), jumps: 0, sets: new Map() }), podVeths: async () => new Map(), apply: async () => {} } },
  });
  try {
    await r.flush();
    assert.deepEqual(calls, ['device', 'nat', 'filter'], 'the first pass checks everything');
    calls.length = 0;
    snap.nodes.set('c', { node: 'c', underlayAddress: '198.51.100.13', vtepMac: '02:57:c6:33:64:0d', blockCidrs: ['10.244.3.0/26'] });
    r.markDirty('routes');
    r.markDirty('kernel');
    await sleep(20);
    assert.ok(k.state.routes.has('10.244.3.0/26'), 'the route change is applied');
    assert.deepEqual(calls, [], 'without spawning iptables-save, ipset or ip');
    for (const reason of ['device', 'pools', 'underlay', 'resync'] as const) {
      calls.length = 0;
      r.markDirty(reason);
      await sleep(20);
      assert.deepEqual(calls, ['device', 'nat', 'filter'], `${reason}: everything is checked`);
    }
    calls.length = 0;
    r.markDirty('policy');
    await sleep(20);
    assert.deepEqual(calls, ['filter'], 'new policy rules alone: only the policy is checked');
    calls.length = 0;
    r.markDirty('pods');
    await sleep(20);
    assert.deepEqual(calls, ['filter'], 'a pod attached or detached: only the policy is checked');
  } finally {
    r.stop();
  }
});

test('IPv6 policy is programmed beside IPv4; dual-stack attach waits for it; its failure fails the pass only when pods are dual-stack', async () => {
  const snap: RoutesSnapshot = { nodes: new Map(), revision: 1, synced: true };
  const written: string[] = [];
  let fail6: Error | null = new Error('ip6tables-restore: table filter does not exist');
  const driver = (family: 4 | 6) => ({
    read: async () => ({ chains: new Map(), jumps: 0, sets: new Map() }),
    podVeths: async () => new Map<string, string>(),
    apply: async (plan: { filter: string | null }) => {
      if (family === 6 && fail6) throw fail6;
      if (plan.filter) written.push(`${family}: ${plan.filter.split('\n').find((l) => l.includes('-j DROP'))}`);
    },
  });
  const make = (ipv6Required: boolean) => createReconciler({
    self: 'a', snapshot: () => snap, driver: fakeKernel().driver, ensureDevice: async () => 5, resyncMs: 60_000, logger: silentLogger, retryMs: 10,
    policy: { rules: () => null, driver: driver(4), driver6: driver(6), ipv6Required },
  });
  // Not required (IPv4-only pods): IPv4 is programmed and the pass succeeds; IPv6 is not in force.
  const relaxed = make(false);
  try {
    await relaxed.flush();
    assert.deepEqual(written, ['4: -A WEFT-FROM-POD -m comment --comment "weft fail closed: no rules held yet" -j DROP']);
    await assert.rejects(relaxed.whenPolicyInForce(6, 50), /IPv6 policy not programmed within 50 ms/);
    await relaxed.whenPolicyInForce(4, 50);
  } finally {
    relaxed.stop();
  }
  // Required (dual-stack pods): the pass fails and is retried until ip6tables takes the rules; a waiting attach goes on then.
  written.length = 0;
  const strict = make(true);
  try {
    const waiting = strict.whenPolicyInForce(6, 5000);
    strict.markDirty('start');
    await sleep(50);
    assert.deepEqual(written.filter((w) => w.startsWith('6')), []);
    fail6 = null;
    await waiting;
    assert.ok(written.some((w) => w.startsWith('6: -A WEFT-FROM-POD') && w.endsWith('-j DROP')), 'the same fail-closed dispatch in ip6tables');
  } finally {
    strict.stop();
  }
});

test('with notifications followed, a route change plans against what the last pass left (no read-back); drift still reads back and is repaired', async () => {
  const k = fakeKernel();
  let reads = 0;
  const readActual = k.driver.readActual.bind(k.driver);
  k.driver.readActual = async (d) => {
    reads++;
    return readActual(d);
  };
  let watching = true;
  const snap: RoutesSnapshot = { nodes: new Map([['b', remote]]), revision: 1, synced: true };
  const { r, value } = setup(k, snap, { trustApplied: () => watching });
  try {
    await r.flush();
    assert.equal(reads, 1, 'the first pass reads the kernel back');
    // A new block: planned against the previous pass's result, applied without reading back.
    snap.nodes.set('c', { node: 'c', underlayAddress: '198.51.100.13', vtepMac: '02:57:c6:33:64:0d', blockCidrs: ['10.244.3.0/26'] });
    snap.revision = 2;
    r.markDirty('routes');
    await sleep(10);
    assert.equal(reads, 1, 'no read-back for a route change');
    assert.ok(k.state.routes.has('10.244.3.0/26') && k.state.fdb.has('02:57:c6:33:64:0d'));
    assert.equal(value('weft_agent_revision_applied'), 2);
    assert.equal(value('weft_agent_overlay_reads_total{source="trusted"}'), 1);
    // Drift (a route deleted by hand) arrives as a kernel event: that pass reads back and repairs it.
    k.state.routes.delete('10.244.1.0/26');
    r.markDirty('kernel', 5);
    await sleep(30);
    assert.equal(reads, 2);
    assert.ok(k.state.routes.has('10.244.1.0/26'), 'the hand-deleted route is back');
    assert.equal(value('weft_agent_drift_repairs_total{kind="route"}'), 1);
    // A route change while drift is pending (the debounce has not fired) reads back too: its reasons include it.
    k.state.routes.delete('10.244.2.0/26');
    r.markDirty('kernel', 50);
    snap.nodes.delete('c');
    snap.revision = 3;
    r.markDirty('routes');
    await sleep(10);
    assert.ok(k.state.routes.has('10.244.2.0/26') && !k.state.routes.has('10.244.3.0/26'));
    assert.equal(reads, 3);
    await sleep(60);
    // Without notifications (the subscription failed) every pass reads back.
    watching = false;
    snap.nodes.set('c', { node: 'c', underlayAddress: '198.51.100.13', vtepMac: '02:57:c6:33:64:0d', blockCidrs: ['10.244.3.0/26'] });
    const before = reads;
    r.markDirty('routes');
    await sleep(10);
    assert.equal(reads, before + 1);
  } finally {
    r.stop();
  }
});
