import { test } from 'node:test';
import assert from 'node:assert/strict';
import { silentLogger } from '../lib/logger.js';
import { createMetricsRegistry } from '../lib/metrics.js';
import {
  computeDesired,
  type FdbEntry,
  type NeighbourEntry,
  type RemoteNode,
  type RouteEntry,
  type Routing,
} from './domain/desired.js';
import { MASQUERADE_CHAIN, type NatChain } from './domain/masquerade.js';
import { chainWrites, desiredPolicy, filterEntries, type NodeRules } from './domain/network-policy.js';
import type { HostAttachment, PodLinkEntry, PodRouteEntry } from './domain/pod-host.js';
import { createPodLinkDriver } from './drivers/pod-links.js';
import { createPodRouteDriver } from './drivers/pod-routes.js';
import { createFakeKernel, type FakeKernel } from './kernel-table/fake-kernel.js';
import { vxlanStateFor, type VxlanDeviceState } from './kernel/vxlan-device.js';
import { createAgentMetrics } from './metrics.js';
import { createReconciler, type PolicyAccess, type Reconciler } from './reconciler.js';
import type { RoutesSnapshot } from './sources/routes-watch.js';

const spec = {
  name: 'weft.vxlan',
  vni: 4096,
  port: 4789,
  localAddress: '192.0.2.10',
  underlayInterface: 'eth0',
  mtu: 1450,
};

/** A node's kernel: one fake per kind, the device already made (as main.ts does before the first pass). */
function fakeNode(opts: { device?: boolean } = {}) {
  const device = createFakeKernel<VxlanDeviceState>(
    opts.device === false ? [] : [[spec.name, { ...vxlanStateFor(spec), ifindex: 5 }]],
    { held: (_k, v) => ({ ...v, ifindex: 6 }) },
  );
  const neighbours = createFakeKernel<NeighbourEntry>();
  const fdb = createFakeKernel<FdbEntry>();
  const routes = createFakeKernel<RouteEntry>();
  const nat4 = createFakeKernel<NatChain>();
  const nat6 = createFakeKernel<NatChain>();
  const all = { device, neighbours, fdb, routes, nat4, nat6 } as Record<string, FakeKernel<unknown>>;
  const writes = () => Object.entries(all).flatMap(([kind, k]) => k.requests.map((r) => `${kind} ${r}`));
  const reads = () => Object.fromEntries(Object.entries(all).map(([kind, k]) => [kind, k.reads]));
  const clear = () => Object.values(all).forEach((k) => (k.requests.length = 0));
  return { kernel: { device, neighbours, fdb, routes, nat4, nat6 }, all, writes, reads, clear };
}

/** Fake ipset and iptables of one family (batch writes, anchors as iptables-restore leaves them), and the pods' veths. */
function fakePolicy(family: 4 | 6) {
  const ipsets = createFakeKernel<string[]>([], { batch: true });
  const filter = createFakeKernel<string[]>([], {
    batch: true,
    held: (chain, rules, before) => chainWrites([{ chain, rules, held: before }]).held.get(chain)!,
  });
  let vethReads = 0;
  const veths = new Map<string, string>();
  const access: PolicyAccess = {
    ipsets,
    filter,
    veths: async () => (vethReads++, new Map(veths)),
  };
  const dropLine = () => filter.entries.get('WEFT-FROM-POD')?.find((l) => l.endsWith('-j DROP'));
  return {
    family,
    access,
    veths,
    ipsets,
    filter,
    /** Reads back: `ipset save`, `iptables-save`, the veths. */
    reads: () => ipsets.reads + filter.reads + vethReads,
    dropLine,
  };
}

const remote: RemoteNode = {
  node: 'b',
  underlayAddress: '198.51.100.12',
  vtepMac: '02:57:c6:33:64:0c',
  blockCidrs: ['10.244.1.0/26', '10.244.2.0/26'],
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function setup(
  node: ReturnType<typeof fakeNode>,
  snap: RoutesSnapshot,
  extra: Partial<Parameters<typeof createReconciler>[0]> = {},
) {
  const registry = createMetricsRegistry();
  const metrics = createAgentMetrics(registry);
  const r: Reconciler = createReconciler({
    self: 'a',
    snapshot: () => snap,
    kernel: node.kernel,
    vxlan: () => spec,
    resyncMs: 60_000,
    logger: silentLogger,
    metrics,
    ...extra,
  });
  const value = (series: string) =>
    Number(new RegExp(`^${series.replace(/[{}"]/g, '\\$&')} (\\S+)$`, 'm').exec(registry.render())?.[1] ?? 0);
  return { r, value };
}

test('nothing is written before the first complete snapshot; then the kernel gets the desired state', async () => {
  const k = fakeNode();
  k.kernel.routes.entries.set('10.244.9.0/26', {
    kind: 'route',
    key: '10.244.9.0/26',
    cidr: '10.244.9.0/26',
    gateway: '10.244.9.0',
    mode: 'vxlan',
  });
  const snap: RoutesSnapshot = { nodes: new Map([['b', remote]]), revision: 3, synced: false };
  const { r, value } = setup(k, snap);
  try {
    await r.flush();
    r.markDirty('kernel', 5);
    await sleep(30);
    assert.deepEqual(k.writes(), [], 'a stale route survives until the agent is in sync');
    snap.synced = true;
    await r.flush();
    assert.ok(k.writes().includes('routes remove 10.244.9.0/26'));
    assert.deepEqual([...k.kernel.routes.entries.keys()].sort(), ['10.244.1.0/26', '10.244.2.0/26']);
    assert.equal(value('weft_agent_revision_applied'), 3);
    assert.equal(value('weft_agent_drift_repairs_total{kind="route"}'), 0, 'first adds are not drift');
    const { target, ...overlay } = r.overlay();
    assert.deepEqual(overlay, {
      ifindex: 5,
      underlayIfindex: null,
      routeCidrs: new Set(['10.244.1.0/26', '10.244.2.0/26']),
    });
    assert.deepEqual([...target!.routes.keys()], ['10.244.1.0/26', '10.244.2.0/26'], 'the target: the desired state');
  } finally {
    r.stop();
  }
});

test('restart with 1,000 peers: the first pass reads the kernel back, and deletes or re-adds nothing that is right', async () => {
  const k = fakeNode();
  const nodes = new Map<string, RemoteNode>();
  for (let i = 0; i < 1000; i++) {
    const name = `n${i}`;
    nodes.set(name, {
      node: name,
      underlayAddress: `198.51.${100 + (i >> 8)}.${i & 255}`,
      vtepMac: `02:57:c6:33:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`,
      blockCidrs: [`10.${100 + (i >> 8)}.${i & 255}.0/26`],
    });
  }
  // What the previous agent left: exactly the desired state, as the kernel prints it.
  const before = computeDesired('a', nodes.values());
  for (const [key, e] of before.neighbours) k.kernel.neighbours.entries.set(key, e);
  for (const [key, e] of before.fdb) k.kernel.fdb.entries.set(key, e);
  for (const [key, e] of before.routes) k.kernel.routes.entries.set(key, e);
  const snap: RoutesSnapshot = { nodes, revision: 42, synced: true };
  const { r, value } = setup(k, snap);
  try {
    await r.flush();
    assert.deepEqual(
      k.reads(),
      { device: 1, neighbours: 1, fdb: 1, routes: 1, nat4: 0, nat6: 0 },
      'each kind read back once (the pools are not known yet: nat untouched)',
    );
    assert.deepEqual(k.writes(), [], 'nothing deleted or re-added');
    assert.equal(value('weft_agent_reconcile_passes_total{result="unchanged"}'), 1);
    assert.equal(value('weft_agent_revision_applied'), 42);
    assert.equal(value('weft_agent_desired_entries{kind="route"}'), 1000);
  } finally {
    r.stop();
  }
});

test("the agent's own writes echo back as events, cost at most a few (empty) passes, and the loop comes to rest", async () => {
  const k = fakeNode();
  const snap: RoutesSnapshot = { nodes: new Map([['b', remote]]), revision: 1, synced: true };
  const { r, value } = setup(k, snap);
  for (const f of Object.values(k.all)) f.onChange = () => r.markDirty('kernel', 5);
  try {
    await r.flush();
    await sleep(100);
    const passes =
      value('weft_agent_reconcile_passes_total{result="applied"}') +
      value('weft_agent_reconcile_passes_total{result="unchanged"}');
    assert.equal(value('weft_agent_reconcile_passes_total{result="applied"}'), 1);
    assert.ok(passes <= 3, `a handful of passes, not a loop (${passes})`);
    await sleep(100);
    const later =
      value('weft_agent_reconcile_passes_total{result="applied"}') +
      value('weft_agent_reconcile_passes_total{result="unchanged"}');
    assert.equal(later, passes, 'no pass while nothing changes');
  } finally {
    r.stop();
  }
});

test("an entry removed behind the agent's back is found when its kind is marked for resync, re-added and counted as drift", async () => {
  const k = fakeNode();
  const snap: RoutesSnapshot = { nodes: new Map([['b', remote]]), revision: 1, synced: true };
  const { r, value } = setup(k, snap);
  try {
    await r.flush();
    k.kernel.routes.entries.delete('10.244.2.0/26');
    k.kernel.fdb.entries.clear();
    k.clear();
    const reads = k.reads();
    r.resync(['route', 'fdb']);
    await r.flush();
    assert.deepEqual(k.writes().sort(), ['fdb write 02:57:c6:33:64:0c', 'routes write 10.244.2.0/26']);
    assert.deepEqual(
      k.reads(),
      { ...reads, routes: reads.routes! + 1, fdb: reads.fdb! + 1 },
      'only the kinds marked are read back',
    );
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

test('a failed kernel update is retried with backoff, reading its kind back first, until it succeeds', async () => {
  const k = fakeNode();
  k.kernel.routes.fail('write', '10.244.1.0/26', 2);
  const snap: RoutesSnapshot = { nodes: new Map([['b', remote]]), revision: 7, synced: true };
  const { r, value } = setup(k, snap, { retryMs: 10 });
  try {
    await r.flush();
    assert.equal(value('weft_agent_netlink_failures_total{op="apply"}'), 1);
    assert.ok(k.kernel.routes.entries.has('10.244.2.0/26'), 'the rest goes on');
    assert.equal(value('weft_agent_revision_applied'), 0, 'a partly applied revision is not reported as applied');
    for (let i = 0; i < 50 && value('weft_agent_revision_applied') !== 7; i++) await sleep(10);
    assert.equal(value('weft_agent_revision_applied'), 7);
    assert.equal(k.kernel.routes.reads, 3, 'each retry read the routes back');
    assert.equal(k.kernel.neighbours.reads, 1, 'kinds that did not fail were not read again');
    assert.equal(value('weft_agent_drift_repairs_total{kind="route"}'), 0, 'a retried add is not drift');
  } finally {
    r.stop();
  }
});

test('direct mode refuses a node off the underlay subnet: nothing is written for it, and the refusal shows in the metrics', async () => {
  const k = fakeNode();
  const near = {
    node: 'c',
    underlayAddress: '192.0.2.13',
    vtepMac: '02:57:c0:00:02:0d',
    blockCidrs: ['10.244.3.0/26'],
  };
  const snap: RoutesSnapshot = {
    nodes: new Map([
      ['b', remote],
      ['c', near],
    ]),
    revision: 2,
    synced: true,
  };
  const routing: Routing = { mode: 'direct', underlay: { address: '192.0.2.10', prefixLength: 24 } };
  const { r, value } = setup(k, snap, { routing, underlayIfindex: 2 });
  try {
    await r.flush();
    assert.deepEqual(k.writes(), ['routes write 10.244.3.0/26']);
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

test('what a pass reads back follows what is marked, not why it runs: route changes read nothing, events their kind, pods the policy, the resync everything', async () => {
  const k = fakeNode();
  const p4 = fakePolicy(4);
  const snap: RoutesSnapshot = { nodes: new Map([['b', remote]]), revision: 1, synced: true };
  let rules: { revision: number; pods: []; sets: Map<string, string[]> } | null = null;
  const { r } = setup(k, snap, {
    pools: () => ['10.244.0.0/16'],
    policy: { rules: () => rules, families: { 4: p4.access } },
  });
  const reads = () => ({ ...k.reads(), policy: p4.reads() });
  try {
    await r.flush();
    assert.deepEqual(
      reads(),
      { device: 1, neighbours: 1, fdb: 1, routes: 1, nat4: 1, nat6: 1, policy: 3 },
      'the first pass reads everything back',
    );
    assert.deepEqual(k.kernel.nat4.entries.get(MASQUERADE_CHAIN)?.rules, [
      '-A WEFT-POSTROUTING -d 10.244.0.0/16 -j RETURN',
      '-A WEFT-POSTROUTING -s 10.244.0.0/16 -j MASQUERADE',
    ]);
    let last = reads();
    const expectReads = (what: string, more: Record<string, number>) => {
      const now = reads();
      assert.deepEqual(
        now,
        {
          ...last,
          ...Object.fromEntries(Object.entries(more).map(([kind, n]) => [kind, last[kind as keyof typeof last]! + n])),
        },
        what,
      );
      last = now;
    };
    snap.nodes.set('c', {
      node: 'c',
      underlayAddress: '198.51.100.13',
      vtepMac: '02:57:c6:33:64:0d',
      blockCidrs: ['10.244.3.0/26'],
    });
    await r.flush('routes');
    assert.ok(k.kernel.routes.entries.has('10.244.3.0/26'), 'the route change is applied');
    expectReads('a route change: nothing read back (no ip, iptables-save or ipset spawned)', {});
    r.resync(['route']);
    await r.flush();
    expectReads('a route event: routes only', { routes: 1 });
    rules = { revision: 2, pods: [], sets: new Map() };
    await r.flush('policy');
    expectReads('new rules: applied against what was last written', {});
    await r.flush('pods');
    expectReads('a pod attached or detached: the policy reads back (sets, chains, veths)', { policy: 3 });
    await r.flush('device');
    expectReads('a link event: the device and what lives on it', { device: 1, neighbours: 1, fdb: 1, routes: 1 });
    await r.flush('resync');
    expectReads('the periodic resync: everything', {
      device: 1,
      neighbours: 1,
      fdb: 1,
      routes: 1,
      nat4: 1,
      nat6: 1,
      policy: 3,
    });
  } finally {
    r.stop();
  }
});

test('a VXLAN device deleted by hand is made again and everything on it re-added; while it cannot be made, its entries are held back', async () => {
  const k = fakeNode();
  const snap: RoutesSnapshot = {
    nodes: new Map([
      ['b', remote],
      ['c', { node: 'c', underlayAddress: '192.0.2.13', vtepMac: '02:57:c0:00:02:0d', blockCidrs: ['10.244.3.0/26'] }],
    ]),
    revision: 1,
    synced: true,
  };
  const { r, value } = setup(k, snap, {
    routing: { mode: 'auto', underlay: { address: '192.0.2.10', prefixLength: 24 } },
    underlayIfindex: 2,
    retryMs: 10,
  });
  try {
    await r.flush();
    k.kernel.device.entries.clear();
    k.kernel.neighbours.entries.clear();
    k.kernel.fdb.entries.clear();
    k.kernel.routes.entries.delete('10.244.1.0/26');
    k.kernel.routes.entries.delete('10.244.2.0/26');
    k.clear();
    k.kernel.device.fail('write', spec.name);
    await r.flush('device');
    assert.deepEqual(k.writes(), [], 'nothing written on a device that is not there');
    assert.ok(k.kernel.routes.entries.has('10.244.3.0/26'), 'the direct route does not depend on it');
    assert.equal(value('weft_agent_reconcile_passes_total{result="failed"}'), 1);
    for (let i = 0; i < 50 && k.kernel.routes.entries.size < 3; i++) await sleep(10);
    assert.equal(r.overlay().ifindex, 6, 'the new device');
    assert.deepEqual(k.writes().sort(), [
      'device write weft.vxlan',
      'fdb write 02:57:c6:33:64:0c',
      'neighbours write 10.244.1.0',
      'neighbours write 10.244.2.0',
      'routes write 10.244.1.0/26',
      'routes write 10.244.2.0/26',
    ]);
    assert.equal(value('weft_agent_drift_repairs_total{kind="route"}'), 2);
  } finally {
    r.stop();
  }
});

test('IPv6 policy is programmed beside IPv4; dual-stack attach waits for it; its failure fails the pass only when pods are dual-stack', async () => {
  const snap: RoutesSnapshot = { nodes: new Map(), revision: 1, synced: true };
  const make = (ipv6Required: boolean) => {
    const p4 = fakePolicy(4);
    const p6 = fakePolicy(6);
    p6.filter.fail('write', '*', Infinity, 'ip6tables-restore: table filter does not exist');
    const { r } = setup(fakeNode(), snap, {
      retryMs: 10,
      policy: { rules: () => null, families: { 4: p4.access, 6: p6.access }, ipv6Required },
    });
    return { r, p4, p6 };
  };
  // Not required (IPv4-only pods): IPv4 is programmed and the pass succeeds; IPv6 is not in force.
  const relaxed = make(false);
  try {
    await relaxed.r.flush();
    assert.equal(
      relaxed.p4.dropLine(),
      '-A WEFT-FROM-POD -m comment --comment "weft fail closed: no rules held yet" -j DROP',
    );
    assert.equal(relaxed.p6.dropLine(), undefined);
    await assert.rejects(relaxed.r.whenPolicyInForce(6, 50), /IPv6 policy not programmed within 50 ms/);
    await relaxed.r.whenPolicyInForce(4, 50);
  } finally {
    relaxed.r.stop();
  }
  // Required (dual-stack pods): the pass fails and is retried until ip6tables takes the rules; a waiting attach goes on then.
  const strict = make(true);
  try {
    const waiting = strict.r.whenPolicyInForce(6, 5000);
    strict.r.markDirty('start');
    await sleep(50);
    assert.equal(strict.p6.dropLine(), undefined);
    assert.ok(strict.p6.filter.reads > 1, 'retried, reading ip6tables back');
    strict.p6.filter.clearFailures();
    await waiting;
    assert.ok(strict.p6.dropLine()?.startsWith('-A WEFT-FROM-POD'), 'the same fail-closed dispatch in ip6tables');
  } finally {
    strict.r.stop();
  }
});

test('masquerade: nothing before the pools are known; a failing IPv6 nat table does not fail the pass and is retried at the resync', async () => {
  const k = fakeNode();
  k.kernel.nat6.failReads(1, 'ip6tables-save: table nat does not exist');
  let pools: string[] | null = null;
  const snap: RoutesSnapshot = { nodes: new Map(), revision: 1, synced: true };
  const { r, value } = setup(k, snap, { pools: () => pools });
  try {
    await r.flush();
    assert.deepEqual(
      [k.kernel.nat4.reads, k.kernel.nat6.reads],
      [0, 0],
      'pools unknown: the nat tables are left as they are',
    );
    pools = ['10.244.0.0/16', 'fd00:10:244::/48'];
    await r.flush('pools');
    assert.ok(k.kernel.nat4.entries.has(MASQUERADE_CHAIN));
    assert.equal(k.kernel.nat6.entries.size, 0);
    assert.equal(value('weft_agent_reconcile_passes_total{result="failed"}'), 0, 'IPv6 NAT is optional');
    await r.flush('routes');
    assert.equal(k.kernel.nat6.entries.size, 0, 'it rests until the resync');
    await r.flush('resync');
    assert.deepEqual(k.kernel.nat6.entries.get(MASQUERADE_CHAIN)?.rules, [
      '-A WEFT-POSTROUTING -d fd00:10:244::/48 -j RETURN',
      '-A WEFT-POSTROUTING -s fd00:10:244::/48 -j MASQUERADE',
    ]);
    assert.equal(value('weft_agent_kernel_changes_total{kind="masquerade",op="add"}'), 2);
  } finally {
    r.stop();
  }
});

test('a driver that carries its manager (the pod drivers) needs nothing of the scheduler but the list: its entries follow their input, and the periodic resync reads it back', async () => {
  const k = fakeNode();
  const links = createFakeKernel<PodLinkEntry>([
    ['weft00000000099', { name: 'weft00000000099', proxyArp: true, proxyDelay: 0, gateway6: false }],
  ]);
  const routes = createFakeKernel<PodRouteEntry>();
  let attachments: Map<string, HostAttachment> | null = null;
  const pods = { attachments: () => attachments, attaching: () => false };
  const snap: RoutesSnapshot = { nodes: new Map(), revision: 1, synced: true };
  const { r, value } = setup(k, snap, {
    drivers: [createPodLinkDriver(links, pods), createPodRouteDriver(routes, pods)],
  });
  try {
    await r.flush();
    assert.deepEqual([links.reads, links.requests, routes.requests], [0, [], []], 'attachments unknown: untouched');
    attachments = new Map([['weft0000000000a', { hostIfname: 'weft0000000000a', addresses: ['10.244.0.10'] }]]);
    links.entries.set('weft0000000000a', { name: 'weft0000000000a', proxyArp: false, proxyDelay: 0, gateway6: false });
    await r.flush('attachments');
    assert.deepEqual(links.requests, ['write weft0000000000a', 'remove weft00000000099']);
    assert.deepEqual(routes.requests, ['write 10.244.0.10/32']);
    assert.equal(value('weft_agent_desired_entries{kind="pod-route"}'), 1);
    routes.entries.clear();
    await r.flush('routes');
    assert.equal(routes.entries.size, 0, 'not read back without a mark');
    await r.flush('resync');
    assert.deepEqual([...routes.entries.keys()], ['10.244.0.10/32'], 'the periodic resync found the lost host route');
  } finally {
    r.stop();
  }
});

test('masquerade: pools learnt while a pass runs leave the chain a restarted agent finds alone (never removed for want of desired state)', async () => {
  const k = fakeNode();
  const chain: NatChain = {
    rules: ['-A WEFT-POSTROUTING -d 10.244.0.0/16 -j RETURN', '-A WEFT-POSTROUTING -s 10.244.0.0/16 -j MASQUERADE'],
    jumps: 1,
  };
  k.kernel.nat4.entries.set(MASQUERADE_CHAIN, chain);
  // The pools' first answer arrives after the pass computed its tables and before it reaches the nat phase.
  let asked = 0;
  const snap: RoutesSnapshot = { nodes: new Map(), revision: 1, synced: true };
  const { r } = setup(k, snap, { pools: () => (asked++ === 0 ? null : ['10.244.0.0/16']) });
  try {
    await r.flush();
    await r.flush('pools');
    assert.deepEqual(k.kernel.nat4.requests, [], 'the chain was neither removed nor rewritten');
    assert.deepEqual(k.kernel.nat4.entries.get(MASQUERADE_CHAIN), chain);
  } finally {
    r.stop();
  }
});

test("a restarted agent keeps the policy it finds until its first rule set; then only the rules' changes are written", async () => {
  const snap: RoutesSnapshot = { nodes: new Map(), revision: 1, synced: true };
  const p4 = fakePolicy(4);
  p4.veths.set('10.244.0.5', 'weft00000000001');
  const pod = (port: number) => ({
    namespace: 'x',
    name: 'a',
    addresses: ['10.244.0.5'],
    ingress: [
      {
        tier: 'networkpolicy' as const,
        action: 'allow' as const,
        peerSet: 'weft-000000000000000a',
        protocol: 'TCP' as const,
        ports: { from: port, to: port },
        source: 'NetworkPolicy/x/p ingress[0]',
      },
    ],
    egress: [],
  });
  const before: NodeRules = {
    revision: 3,
    pods: [pod(80)],
    sets: new Map([['weft-000000000000000a', ['10.0.0.1/32']]]),
  };
  const held = desiredPolicy(before, p4.veths);
  for (const [k, v] of filterEntries({ chains: held.chains, jumps: 1, sets: new Map() })) p4.filter.entries.set(k, v);
  for (const [k, v] of held.sets) p4.ipsets.entries.set(k, v);
  let rules: NodeRules | null = null;
  const { r } = setup(fakeNode(), snap, { policy: { rules: () => rules, families: { 4: p4.access } } });
  try {
    await r.flush();
    assert.deepEqual([...p4.filter.batches, ...p4.ipsets.batches], [], 'nothing rewritten, nothing removed');
    await r.whenPolicyInForce(4, 50);
    rules = { ...before, revision: 4, pods: [pod(443)] };
    await r.flush('policy');
    assert.equal(p4.filter.batches.length, 2, 'the new entries chain and the anchor; then the old rule and chain');
    assert.match(p4.filter.batches[0]!, /^update WEFT-I-weft00000000001-[0-9a-f]{4} WEFT-P-weft00000000001$/);
    assert.deepEqual(p4.ipsets.batches, [], 'the set is unchanged');
  } finally {
    r.stop();
  }
});
