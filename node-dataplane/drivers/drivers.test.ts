import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { FdbEntry, NeighbourEntry, RouteEntry } from '../domain/desired.js';
import { MASQUERADE_CHAIN, masqueradeRules, type NatChain } from '../domain/masquerade.js';
import { createDataplane, type Dataplane, type Driver } from '../kernel-table/dataplane.js';
import { createFakeKernel, type FakeKernel } from '../kernel-table/fake-kernel.js';
import { vxlanStateFor, type VxlanDeviceState } from '../kernel/vxlan-device.js';
import {
  chainReferences,
  chainWrites,
  desiredPolicy,
  JUMP_KEY,
  WANTED_JUMP,
  type NodeRules,
  type PodRules,
} from '../domain/network-policy.js';
import { createFdbDriver, FDB } from './fdb.js';
import { createFilterDriver, filterKind } from './filter.js';
import { createIpsetDriver, ipsetKind } from './ipsets.js';
import { createPolicyDrivers } from './policy.js';
import { createNatDriver, natKind } from './nat.js';
import { createNeighbourDriver, NEIGHBOUR } from './neighbours.js';
import { DEPENDENTS, DRIVER_MODULES, ORDER } from './registry.js';
import { createRouteDriver, ROUTE } from './routes.js';
import { createPodLinkDriver, POD_LINK } from './pod-links.js';
import { createPodRouteDriver, POD_ROUTE } from './pod-routes.js';
import {
  desiredPodLinks,
  desiredPodRoutes,
  type HostAttachment,
  type PodLinkEntry,
  type PodRouteEntry,
} from '../domain/pod-host.js';
import { EntryWaiting } from '../kernel-table/dataplane.js';
import { createVxlanDeviceDriver, DEVICE } from './vxlan-device.js';

/**
 * One harness for every driver: the real drivers and the real dependency order over a fake kernel per kind
 * (kernel-table/fake-kernel.ts). A small world of desired entries (a device, two VXLAN peers, a direct route, the nat
 * chain) is loaded into the tables; each case then leaves one entry of its kind out of the kernel (`missing`), adds a
 * stale one, or fails requests, and checks what a user of the node would notice: which requests reach the kernel,
 * what is read back, and what is held back.
 */
const DEV = 'weft.vxlan';
const device = vxlanStateFor({
  name: DEV,
  vni: 4096,
  port: 4789,
  localAddress: '192.0.2.10',
  underlayInterface: 'eth0',
  mtu: 1450,
});
const M1 = '02:57:c6:33:64:0c';
const M2 = '02:57:c6:33:64:0d';
const M9 = '02:57:c6:33:64:63';
const neighbour = (ip: string, mac: string): [string, NeighbourEntry] => [ip, { kind: 'neighbour', key: ip, ip, mac }];
const fdb = (mac: string, dst: string): [string, FdbEntry] => [mac, { kind: 'fdb', key: mac, mac, dst }];
const route = (cidr: string, gateway: string, mode: 'vxlan' | 'direct' = 'vxlan'): [string, RouteEntry] => [
  cidr,
  { kind: 'route', key: cidr, cidr, gateway, mode },
];
const nat = (pools: string[]): [string, NatChain] => [MASQUERADE_CHAIN, { rules: masqueradeRules(pools), jumps: 1 }];

const NAT4 = natKind(4);
/** Two pods on this node (one dual-stack): their host veths and host routes are the pod drivers' desired entries. */
const PODS: [string, HostAttachment][] = [
  ['weft0000000000a', { hostIfname: 'weft0000000000a', addresses: ['10.244.0.10'] }],
  ['weft0000000000b', { hostIfname: 'weft0000000000b', addresses: ['10.244.0.11', 'fd00:10:244::b'] }],
];
const podRoute = (cidr: string, dev: string): [string, PodRouteEntry] => [cidr, { cidr, dev }];

const IPSET4 = ipsetKind(4);
const FILTER4 = filterKind(4);

/** Network policy: one pod whose ingress admits a set's members on TCP 80 (its chains as domain/network-policy.ts renders them). */
const VETH = 'weft00000000001';
const SET_A = 'weft-000000000000000a';
const SET_B = 'weft-000000000000000b';
const policyRules = (set: string): NodeRules => ({
  revision: 1,
  pods: [
    {
      namespace: 'x',
      name: 'a',
      addresses: ['10.244.0.5'],
      ingress: [
        {
          tier: 'networkpolicy',
          action: 'allow',
          peerSet: set,
          protocol: 'TCP',
          ports: { from: 80, to: 80 },
          source: 'NetworkPolicy/x/p ingress[0]',
        },
      ],
      egress: [],
    },
  ],
  sets: new Map([[set, [set === SET_A ? '10.244.1.7/32' : '10.244.2.0/24']]]),
});
const policyTables = (set: string) => {
  const d = desiredPolicy(policyRules(set), new Map([['10.244.0.5', VETH]]));
  d.chains.set(JUMP_KEY, [...WANTED_JUMP]);
  return d;
};
const POLICY = policyTables(SET_A);
/** The pod's ingress entries chain (named by its rules' hash). */
const ENTRIES = [...POLICY.chains.keys()].find((c) => c.startsWith('WEFT-I-'))!;
const ANCHOR = `WEFT-P-${VETH}`;
/**
 * The kernel's rules, as the fakes of ipset and iptables keep them: a chain's rules need the chains they go to and
 * the sets they match; a chain or set in use cannot be deleted; an anchor keeps its old rules until they are deleted.
 */
const policyKernels = () => {
  let filter: FakeKernel<string[]>;
  const ipsets = createFakeKernel<string[]>([], {
    batch: true,
    refuse: (op, key) =>
      op === 'remove' && [...filter.entries].some(([c, rules]) => chainReferences(c, rules).sets.includes(key))
        ? `ipset: Set ${key} cannot be destroyed: it is in use by a kernel component`
        : null,
  });
  filter = createFakeKernel<string[]>([], {
    batch: true,
    held: (chain, rules, before) => chainWrites([{ chain, rules, held: before }]).held.get(chain)!,
    refuse: (op, key, rules, entries) => {
      if (op === 'remove')
        return [...entries].some(([c, r]) => c !== key && chainReferences(c, r).chains.includes(key))
          ? `iptables-restore: chain ${key} is in use`
          : null;
      const refs = chainReferences(key, rules);
      const chain = refs.chains.find((c) => !entries.has(c) && c !== key);
      if (chain) return `iptables-restore: Chain '${chain}' does not exist`;
      const set = refs.sets.find((x) => !ipsets.entries.has(x));
      return set ? `iptables-restore: Set ${set} doesn't exist` : null;
    },
  });
  return { ipsets, filter };
};

/** The desired world, by kind. */
const WORLD: Record<string, [string, unknown][]> = {
  [DEVICE]: [[DEV, device]],
  [NEIGHBOUR]: [neighbour('10.244.1.0', M1), neighbour('10.244.2.0', M2)],
  [FDB]: [fdb(M1, '198.51.100.12'), fdb(M2, '198.51.100.13')],
  [ROUTE]: [
    route('10.244.1.0/26', '10.244.1.0'),
    route('10.244.2.0/26', '10.244.2.0'),
    route('10.244.3.0/26', '192.0.2.13', 'direct'),
  ],
  [NAT4]: [nat(['10.244.0.0/16'])],
  [POD_LINK]: [...desiredPodLinks(new Map(PODS))],
  [POD_ROUTE]: [...desiredPodRoutes(new Map(PODS))],
  [IPSET4]: [...POLICY.sets],
  [FILTER4]: [...POLICY.chains],
};
/** A peer that left while the agent was away: its entries are stale, and the route uses the neighbour and FDB entry. */
const STALE: Record<string, [string, unknown]> = {
  [NEIGHBOUR]: neighbour('10.244.9.0', M9),
  [FDB]: fdb(M9, '198.51.100.99'),
  [ROUTE]: route('10.244.9.0/26', '10.244.9.0'),
  // A pod veth left by an ADD that crashed (or whose attachment was released), with its host route on it.
  [POD_LINK]: ['weft00000000099', { name: 'weft00000000099', proxyArp: true, proxyDelay: 0, gateway6: false }],
  [POD_ROUTE]: podRoute('10.244.0.99/32', 'weft00000000099'),
  [IPSET4]: ['weft-00000000000000ff', ['10.9.9.9']],
  [FILTER4]: [
    'WEFT-I-weft00000000009-0000',
    ['-A WEFT-I-weft00000000009-0000 -m set --match-set weft-00000000000000ff src -j RETURN'],
  ],
};

interface World {
  dataplane: Dataplane;
  kernels: Record<string, FakeKernel<unknown>>;
  driver: (kind: string) => Driver<unknown>;
  /** The pod drivers' input: the node's attachments (null: not known) and the veths ADDs are making. */
  pods: { attachments: Map<string, HostAttachment> | null; attaching: Set<string> };
}

/** The world's tables, with the kernel holding the world except `missing` and plus `stale` entries. */
function world(
  opts: {
    missing?: [string, string][];
    stale?: string[];
    maxInFlight?: number;
    extra?: Record<string, [string, unknown][]>;
  } = {},
): World {
  const kernels: Record<string, FakeKernel<unknown>> = {};
  for (const [kind, entries] of Object.entries(WORLD)) {
    const held = [...entries, ...(opts.extra?.[kind] ?? [])].filter(
      ([key]) => !opts.missing?.some(([k, key2]) => k === kind && key2 === key),
    );
    if (opts.stale?.includes(kind)) held.push(STALE[kind]!);
    if (kind === IPSET4 || kind === FILTER4) continue;
    kernels[kind] = createFakeKernel<unknown>(
      held,
      kind === DEVICE ? { held: (_k, v) => ({ ...(v as VxlanDeviceState), ifindex: 7 }) } : {},
    );
  }
  const policy = policyKernels();
  for (const kind of [IPSET4, FILTER4]) {
    const k = kind === IPSET4 ? policy.ipsets : policy.filter;
    for (const [key, value] of [...WORLD[kind]!, ...(opts.extra?.[kind] ?? [])])
      if (!opts.missing?.some(([k2, key2]) => k2 === kind && key2 === key)) k.entries.set(key, value as string[]);
    if (opts.stale?.includes(kind)) k.entries.set(...(STALE[kind] as [string, string[]]));
    kernels[kind] = k as FakeKernel<unknown>;
  }
  const drivers: Driver<unknown>[] = [
    createVxlanDeviceDriver(kernels[DEVICE] as FakeKernel<VxlanDeviceState>),
    createNeighbourDriver(kernels[NEIGHBOUR] as FakeKernel<NeighbourEntry>, DEV),
    createFdbDriver(kernels[FDB] as FakeKernel<FdbEntry>, DEV),
    createRouteDriver(kernels[ROUTE] as FakeKernel<RouteEntry>, DEV),
    createNatDriver(kernels[NAT4] as FakeKernel<NatChain>, 4),
    { ...createNatDriver(createFakeKernel<NatChain>(), 6), ready: () => false },
    createIpsetDriver(kernels[IPSET4] as FakeKernel<string[]>, 4),
    createFilterDriver(kernels[FILTER4] as FakeKernel<string[]>, 4),
    { ...createIpsetDriver(createFakeKernel<string[]>(), 6), ready: () => false },
    { ...createFilterDriver(createFakeKernel<string[]>(), 6), ready: () => false },
  ];
  const pods: World['pods'] = { attachments: new Map(PODS), attaching: new Set() };
  const input = { attachments: () => pods.attachments, attaching: (name: string) => pods.attaching.has(name) };
  drivers.push(
    createPodLinkDriver(kernels[POD_LINK] as FakeKernel<PodLinkEntry>, input),
    createPodRouteDriver(kernels[POD_ROUTE] as FakeKernel<PodRouteEntry>, input),
  );
  for (const d of drivers) d.table.replaceDesired(new Map([...(WORLD[d.kind] ?? []), ...(opts.extra?.[d.kind] ?? [])]));
  const dataplane = createDataplane({ drivers, order: ORDER, dependents: DEPENDENTS, maxInFlight: opts.maxInFlight });
  return { dataplane, kernels, driver: (kind) => dataplane.driver(kind), pods };
}

/** A request that fails until `clearFailures` (a batch driver tries it in its batch, then alone). */
const failInPass = (w: World, kind: string, op: 'write' | 'remove', key: string) =>
  w.kernels[kind]!.fail(op, key, Infinity);

const requests = (w: World) =>
  Object.fromEntries(
    Object.entries(w.kernels)
      .filter(([, k]) => k.requests.length > 0)
      .map(([kind, k]) => [kind, k.requests]),
  );

test('every kind of the dependency order has its driver in this harness, and the same cases below', () => {
  const w = world();
  for (const kind of new Set(ORDER.map((p) => p.kind))) {
    assert.doesNotThrow(() => w.driver(kind), kind);
    // The IPv6 kinds (nat6, ipset6, filter6) are in the harness but never ready: their IPv4 twins have the cases.
    if (w.driver(kind).ready?.() !== false)
      assert.ok(CASES.some((c) => c.kind === kind) && WORLD[kind], `${kind} has cases`);
  }
});

test("an entry refers only to its own kind and to the kinds its driver's placement names", () => {
  const w = world();
  const placements = new Map(DRIVER_MODULES.flatMap((m) => m.placements).map((p) => [p.kind, p]));
  const lookup = (kind: string, key: string) => w.driver(kind).table.desired.get(key);
  for (const kind of new Set(ORDER.map((p) => p.kind))) {
    const d = w.driver(kind);
    const p = placements.get(kind)!;
    const named = new Set([kind, ...(p.dependsOn ?? []), ...(p.livesOn ?? [])]);
    for (const [key, value] of d.table.desired)
      for (const ref of [...(d.dependsOn?.(key, value, lookup) ?? []), ...(d.needs?.(key, value) ?? [])])
        assert.ok(named.has(ref.slice(0, ref.indexOf('/'))), `${kind}/${key} refers to ${ref}`);
  }
});

test('restart: the first apply reads every kind back and writes nothing that is already right; the next reads nothing', async () => {
  const w = world();
  const r = await w.dataplane.apply();
  assert.deepEqual(r.reads.sort(), [DEVICE, FDB, NAT4, NEIGHBOUR, ROUTE, POD_LINK, POD_ROUTE, IPSET4, FILTER4].sort());
  assert.deepEqual(requests(w), {}, 'nothing deleted or re-added');
  assert.deepEqual(
    { changes: r.changes, failed: r.failed, held: r.held, drift: r.drift },
    { changes: [], failed: [], held: [], drift: [] },
  );
  const again = await w.dataplane.apply();
  assert.deepEqual(again.reads, [], 'not marked for resync: nothing read');
  assert.ok(Object.values(w.kernels).every((k) => k.reads === 1));
});

/** Each driver, by the same cases. `missing`: one of its world entries the kernel lacks; `stale`: whether it has stale entries. */
const CASES: { kind: string; missing: string; stale: boolean }[] = [
  { kind: DEVICE, missing: DEV, stale: false },
  { kind: NEIGHBOUR, missing: '10.244.2.0', stale: true },
  { kind: FDB, missing: M2, stale: true },
  { kind: ROUTE, missing: '10.244.2.0/26', stale: true },
  { kind: NAT4, missing: MASQUERADE_CHAIN, stale: false },
  { kind: POD_LINK, missing: 'weft0000000000b', stale: true },
  { kind: POD_ROUTE, missing: 'fd00:10:244::b/128', stale: true },
  { kind: IPSET4, missing: SET_A, stale: true },
  { kind: FILTER4, missing: ENTRIES, stale: true },
];

for (const c of CASES) {
  test(`${c.kind}: resync writes only the missing entry and removes only the stale one`, async () => {
    const w = world({ missing: [[c.kind, c.missing]], stale: c.stale ? [c.kind] : [] });
    const r = await w.dataplane.apply();
    const expected = [`write ${c.missing}`, ...(c.stale ? [`remove ${STALE[c.kind]![0]}`] : [])].sort();
    assert.deepEqual(w.kernels[c.kind]!.requests.slice().sort(), expected);
    for (const [kind, k] of Object.entries(w.kernels))
      if (kind !== c.kind) assert.deepEqual(k.requests, [], `${kind} untouched`);
    assert.deepEqual(r.failed, []);
    assert.equal(w.dataplane.pending(), 0);
    // Without a mark, the next apply trusts the table: no read, no request.
    w.kernels[c.kind]!.requests.length = 0;
    const reads = w.kernels[c.kind]!.reads;
    await w.dataplane.apply();
    assert.equal(w.kernels[c.kind]!.reads, reads);
    assert.deepEqual(w.kernels[c.kind]!.requests, []);
  });

  test(`${c.kind}: an entry removed behind the agent's back is found at the next resync, reported as drift and re-added`, async () => {
    const w = world();
    await w.dataplane.apply();
    w.kernels[c.kind]!.entries.delete(c.missing);
    await w.dataplane.apply();
    assert.deepEqual(w.kernels[c.kind]!.requests, [], 'not seen without a resync');
    w.dataplane.markForResync([c.kind]);
    const r = await w.dataplane.apply();
    assert.deepEqual(r.drift, [{ kind: c.kind, key: c.missing }]);
    assert.deepEqual(w.kernels[c.kind]!.requests, [`write ${c.missing}`]);
  });

  test(`${c.kind}: a failed write stays pending, the rest goes on, and the retry reads back first`, async () => {
    const w = world({
      missing: [
        [c.kind, c.missing],
        [ROUTE, '10.244.3.0/26'],
      ],
      stale: c.stale ? [c.kind] : [],
    });
    w.kernels[c.kind]!.fail('write', c.missing);
    const r = await w.dataplane.apply();
    assert.deepEqual(
      r.failed.map((f) => `${f.op} ${f.kind} ${f.key}`),
      [`update ${c.kind} ${c.missing}`],
    );
    assert.ok(
      w.kernels[ROUTE]!.requests.includes('write 10.244.3.0/26'),
      'an independent entry of another kind is written',
    );
    if (c.stale)
      assert.ok(
        w.kernels[c.kind]!.requests.includes(`remove ${STALE[c.kind]![0]}`) || r.held.some((h) => h.kind === c.kind),
        'its stale entry is removed, unless something still uses it',
      );
    assert.equal(w.driver(c.kind).table.needsResync, true, 'marked for resync');
    assert.ok(w.driver(c.kind).table.pendingUpdates.has(c.missing));
    const reads = w.kernels[c.kind]!.reads;
    await w.dataplane.apply();
    assert.equal(w.kernels[c.kind]!.reads, reads + 1, 'the retry reads the kind back');
    assert.ok(w.kernels[c.kind]!.entries.has(c.missing));
    assert.equal(w.dataplane.pending(), 0);
  });

  test(`${c.kind}: a failed read holds its changes back and is retried`, async () => {
    const w = world({ missing: [[c.kind, c.missing]] });
    w.kernels[c.kind]!.failReads(1);
    const r = await w.dataplane.apply();
    assert.deepEqual(
      r.readFailures.map((f) => f.kind),
      [c.kind],
    );
    assert.deepEqual(w.kernels[c.kind]!.requests, [], 'nothing written on a cache that was not read');
    await w.dataplane.apply();
    assert.deepEqual(w.kernels[c.kind]!.requests, [`write ${c.missing}`]);
  });

  test(`${c.kind}: dependency holds`, async () => {
    const w = world({ missing: [[c.kind, c.missing]] });
    const d = w.driver(c.kind);
    const deps =
      d.dependsOn?.(c.missing, d.table.desired.get(c.missing), (kind, key) => w.driver(kind).table.desired.get(key)) ??
      [];
    const dependents = Object.entries(WORLD)
      .filter(([kind, entries]) => {
        const other = w.driver(kind);
        return entries.some(([key, value]) =>
          other
            .dependsOn?.(key, value, (k, kk) => w.driver(k).table.desired.get(kk))
            .includes(`${c.kind}/${c.missing}`),
        );
      })
      .map(([kind]) => kind);
    if (deps.length === 0 && dependents.length === 0) {
      // Independent (the nat chain): its failure holds nothing back elsewhere.
      w.kernels[c.kind]!.fail('write', c.missing);
      const r = await w.dataplane.apply();
      assert.deepEqual(r.held, []);
      return;
    }
    // What it depends on, failing: it is held back (no request), and written once that is in place.
    for (const ref of deps) {
      const [kind, key] = [ref.slice(0, ref.indexOf('/')), ref.slice(ref.indexOf('/') + 1)];
      const h = world({
        missing: [
          [c.kind, c.missing],
          [kind, key],
        ],
      });
      failInPass(h, kind, 'write', key);
      const r = await h.dataplane.apply();
      assert.deepEqual(h.kernels[c.kind]!.requests, [], `${c.kind} ${c.missing} is not written while ${ref} failed`);
      assert.ok(
        r.held.some((x) => x.kind === c.kind && x.key === c.missing),
        `reported held on ${ref}`,
      );
      h.kernels[kind]!.clearFailures();
      await h.dataplane.apply();
      assert.deepEqual(h.kernels[c.kind]!.requests, [`write ${c.missing}`], `written once ${ref} is in place`);
    }
    // Entries that depend on it, while it failed: held back too (a route never points at a next hop that is not there).
    if (dependents.length > 0) {
      const missing: [string, string][] = [[c.kind, c.missing]];
      for (const kind of dependents) {
        for (const [key, value] of WORLD[kind]!) {
          if (
            w
              .driver(kind)
              .dependsOn?.(key, value, (k, kk) => w.driver(k).table.desired.get(kk))
              .includes(`${c.kind}/${c.missing}`)
          )
            missing.push([kind, key]);
        }
      }
      const h = world({ missing });
      failInPass(h, c.kind, 'write', c.missing);
      const r = await h.dataplane.apply();
      for (const [kind, key] of missing.slice(1)) {
        assert.ok(
          !h.kernels[kind]!.requests.includes(`write ${key}`),
          `${kind} ${key} held while ${c.kind} ${c.missing} failed`,
        );
        assert.ok(r.held.some((x) => x.kind === kind && x.key === key));
      }
      h.kernels[c.kind]!.clearFailures();
      await h.dataplane.apply();
      assert.equal(h.dataplane.pending(), 0, 'all in place after the retry');
    }
  });
}

test('delete order: a stale route goes first, and while its delete fails the neighbour and FDB entry it uses stay', async () => {
  const w = world({ stale: [NEIGHBOUR, FDB, ROUTE] });
  w.kernels[ROUTE]!.fail('remove', STALE[ROUTE]![0]);
  const r = await w.dataplane.apply();
  assert.deepEqual(w.kernels[NEIGHBOUR]!.requests, []);
  assert.deepEqual(w.kernels[FDB]!.requests, []);
  assert.deepEqual(r.held.map((h) => `${h.op} ${h.kind} ${h.key} on ${h.on}`).sort(), [
    `delete ${FDB} ${M9} on ${ROUTE}/10.244.9.0/26`,
    `delete ${NEIGHBOUR} 10.244.9.0 on ${ROUTE}/10.244.9.0/26`,
  ]);
  await w.dataplane.apply();
  assert.deepEqual(
    [w.kernels[ROUTE]!.requests, w.kernels[NEIGHBOUR]!.requests, w.kernels[FDB]!.requests],
    [['remove 10.244.9.0/26'], ['remove 10.244.9.0'], [`remove ${M9}`]],
  );
});

test('add order: neighbour and FDB before the route; a node switching mode has its route replaced in place, before its VXLAN entries go or after they come', async () => {
  const log: string[] = [];
  const w = world({
    missing: [
      [NEIGHBOUR, '10.244.2.0'],
      [FDB, M2],
      [ROUTE, '10.244.2.0/26'],
    ],
  });
  for (const [kind, k] of Object.entries(w.kernels)) k.onChange = (op, key) => log.push(`${op} ${kind} ${key}`);
  await w.dataplane.apply();
  assert.deepEqual(log, [`write ${NEIGHBOUR} 10.244.2.0`, `write ${FDB} ${M2}`, `write ${ROUTE} 10.244.2.0/26`]);
  log.length = 0;
  w.driver(ROUTE).table.setDesired('10.244.2.0/26', route('10.244.2.0/26', '192.0.2.13', 'direct')[1]);
  w.driver(NEIGHBOUR).table.deleteDesired('10.244.2.0');
  w.driver(FDB).table.deleteDesired(M2);
  await w.dataplane.apply();
  assert.deepEqual(log, [`write ${ROUTE} 10.244.2.0/26`, `remove ${FDB} ${M2}`, `remove ${NEIGHBOUR} 10.244.2.0`]);
  // And back to VXLAN: the route is replaced in place (no delete) once its neighbour and FDB entry are there.
  log.length = 0;
  w.driver(ROUTE).table.setDesired('10.244.2.0/26', route('10.244.2.0/26', '10.244.2.0')[1]);
  w.driver(NEIGHBOUR).table.setDesired(...neighbour('10.244.2.0', M2));
  w.driver(FDB).table.setDesired(...fdb(M2, '198.51.100.13'));
  await w.dataplane.apply();
  assert.deepEqual(log, [`write ${NEIGHBOUR} 10.244.2.0`, `write ${FDB} ${M2}`, `write ${ROUTE} 10.244.2.0/26`]);
});

test('a device re-made (rebuilt to its spec) makes everything on it be read back, and what it lost is re-added', async () => {
  const w = world();
  await w.dataplane.apply();
  // The device is deleted by hand: its entries go with it.
  w.kernels[DEVICE]!.entries.clear();
  w.kernels[NEIGHBOUR]!.entries.clear();
  w.kernels[FDB]!.entries.clear();
  for (const [cidr, e] of [...w.kernels[ROUTE]!.entries])
    if ((e as RouteEntry).mode === 'vxlan') w.kernels[ROUTE]!.entries.delete(cidr);
  w.dataplane.markForResync([DEVICE]);
  const r = await w.dataplane.apply();
  assert.deepEqual(w.kernels[DEVICE]!.requests, [`write ${DEV}`]);
  assert.deepEqual(
    r.reads.sort(),
    [DEVICE, FDB, NEIGHBOUR, ROUTE].sort(),
    'the entries on the device are read back because it was re-made',
  );
  assert.equal(w.dataplane.pending(), 0);
  assert.equal(w.kernels[NEIGHBOUR]!.entries.size + w.kernels[FDB]!.entries.size + w.kernels[ROUTE]!.entries.size, 7);
});

test('at most maxInFlight requests are outstanding in a phase', async () => {
  const many: [string, unknown][] = Array.from({ length: 600 }, (_, i) =>
    route(`10.${100 + (i >> 8)}.${i & 255}.0/24`, '192.0.2.13', 'direct'),
  );
  const w = world({
    maxInFlight: 16,
    extra: { [ROUTE]: many },
    missing: many.map(([k]) => [ROUTE, k] as [string, string]),
  });
  await w.dataplane.apply();
  assert.equal(w.kernels[ROUTE]!.requests.length, 600);
  assert.ok(
    w.kernels[ROUTE]!.maxInFlight <= 16 && w.kernels[ROUTE]!.maxInFlight > 1,
    `in flight: ${w.kernels[ROUTE]!.maxInFlight}`,
  );
  const big = world({
    maxInFlight: 10_000,
    extra: { [ROUTE]: many },
    missing: many.map(([k]) => [ROUTE, k] as [string, string]),
  });
  await big.dataplane.apply();
  assert.ok(big.kernels[ROUTE]!.maxInFlight <= 256, "capped well below the netlink package's 512");
});

test('pod drivers without the attachments (IPAM not asked yet, or unreachable) neither read nor write: nothing is torn down', async () => {
  const w = world({ missing: [[POD_ROUTE, '10.244.0.10/32']], stale: [POD_LINK, POD_ROUTE] });
  w.pods.attachments = null;
  const r = await w.dataplane.apply();
  assert.ok(!r.reads.includes(POD_LINK) && !r.reads.includes(POD_ROUTE), 'not read');
  assert.deepEqual([w.kernels[POD_LINK]!.requests, w.kernels[POD_ROUTE]!.requests], [[], []]);
  assert.ok(w.kernels[POD_LINK]!.entries.has('weft00000000099'), 'the stale veth is still there');
  w.pods.attachments = new Map(PODS);
  await w.dataplane.apply();
  assert.deepEqual(w.kernels[POD_ROUTE]!.requests.sort(), ['remove 10.244.0.99/32', 'write 10.244.0.10/32']);
  assert.deepEqual(w.kernels[POD_LINK]!.requests, ['remove weft00000000099']);
});

test('a veth an ADD is making is never removed: it waits (no failure, no resync) until the ADD ends, and goes only if the ADD left no attachment', async () => {
  const w = world({ stale: [POD_LINK, POD_ROUTE] });
  w.pods.attaching.add('weft00000000099');
  const r = await w.dataplane.apply();
  assert.deepEqual(w.kernels[POD_LINK]!.requests, [], 'not removed');
  assert.deepEqual(w.kernels[POD_ROUTE]!.requests, [], 'its host route not removed either');
  assert.deepEqual(
    r.waiting.map((x) => `${x.op} ${x.kind} ${x.key}`),
    [`delete ${POD_ROUTE} 10.244.0.99/32`],
  );
  assert.deepEqual(
    r.held.map((h) => `${h.op} ${h.kind} ${h.key} on ${h.on}${h.waiting ? ' (waiting)' : ''}`),
    [`delete ${POD_LINK} weft00000000099 on ${POD_ROUTE}/10.244.0.99/32 (waiting)`],
    'the veth is held behind its route, as waiting',
  );
  assert.deepEqual(r.failed, []);
  assert.equal(w.driver(POD_LINK).table.needsResync, false, 'waiting is not a failure: nothing to read back');
  // The ADD succeeds: the veth is an attachment now, and stays.
  const ok = world({ stale: [POD_LINK, POD_ROUTE] });
  ok.pods.attaching.add('weft00000000099');
  await ok.dataplane.apply();
  ok.pods.attaching.delete('weft00000000099');
  ok.pods.attachments!.set('weft00000000099', { hostIfname: 'weft00000000099', addresses: ['10.244.0.99'] });
  await ok.dataplane.apply();
  assert.deepEqual([ok.kernels[POD_LINK]!.requests, ok.kernels[POD_ROUTE]!.requests], [[], []]);
  // The ADD fails (its own rollback would remove the veth; here it is left): once it ended, the veth goes.
  w.pods.attaching.delete('weft00000000099');
  await w.dataplane.apply();
  assert.deepEqual(w.kernels[POD_ROUTE]!.requests, ['remove 10.244.0.99/32']);
  assert.deepEqual(w.kernels[POD_LINK]!.requests, ['remove weft00000000099']);
});

test('a veth that became an attachment while the apply ran (an ADD that just ended) is not removed', async () => {
  const w = world({ stale: [POD_LINK, POD_ROUTE] });
  // The stale route's removal is where the ADD ends: the veth is an attachment by the time its removal comes up.
  w.kernels[POD_ROUTE]!.onChange = (op, key) => {
    if (op === 'remove' && key === '10.244.0.99/32')
      w.pods.attachments!.set('weft00000000099', { hostIfname: 'weft00000000099', addresses: ['10.244.0.98'] });
  };
  const r = await w.dataplane.apply();
  assert.deepEqual(w.kernels[POD_LINK]!.requests, []);
  assert.ok(w.kernels[POD_LINK]!.entries.has('weft00000000099'));
  assert.deepEqual(r.failed, []);
  await w.dataplane.apply();
  assert.deepEqual(w.kernels[POD_ROUTE]!.requests, ['remove 10.244.0.99/32', 'write 10.244.0.98/32']);
  assert.deepEqual(w.kernels[POD_LINK]!.requests, [], 'its settings were right: nothing written');
});

test('a desired veth that does not exist waits for the runtime: its host routes are held as waiting, and the pass is no failure', async () => {
  const w = world({
    missing: [
      [POD_LINK, 'weft0000000000b'],
      [POD_ROUTE, '10.244.0.11/32'],
      [POD_ROUTE, 'fd00:10:244::b/128'],
    ],
  });
  const absent = new EntryWaiting('pod veth weft0000000000b does not exist');
  w.kernels[POD_LINK]!.fail('write', 'weft0000000000b', 2, absent);
  const r = await w.dataplane.apply();
  assert.deepEqual(r.failed, []);
  assert.deepEqual(
    r.waiting.map((x) => x.key),
    ['weft0000000000b'],
  );
  assert.deepEqual(r.held.map((h) => [h.key, h.on, h.waiting]).sort(), [
    ['10.244.0.11/32', `${POD_LINK}/weft0000000000b`, true],
    ['fd00:10:244::b/128', `${POD_LINK}/weft0000000000b`, true],
  ]);
  assert.deepEqual(w.kernels[POD_ROUTE]!.requests, []);
  assert.equal(w.driver(POD_LINK).table.needsResync, false);
  // Each apply tries again (no read back); once the runtime made it, the veth's settings and its routes are written.
  await w.dataplane.apply();
  assert.deepEqual(w.kernels[POD_ROUTE]!.requests, []);
  const reads = w.kernels[POD_LINK]!.reads;
  await w.dataplane.apply();
  assert.equal(w.kernels[POD_LINK]!.reads, reads);
  assert.deepEqual(w.kernels[POD_LINK]!.requests, ['write weft0000000000b']);
  assert.deepEqual(w.kernels[POD_ROUTE]!.requests.sort(), ['write 10.244.0.11/32', 'write fd00:10:244::b/128']);
  assert.equal(w.dataplane.pending(), 0);
});

test('a detached pod: its host routes go before its veth, and nothing else is touched', async () => {
  const w = world();
  await w.dataplane.apply();
  const log: string[] = [];
  for (const kind of [POD_LINK, POD_ROUTE]) w.kernels[kind]!.onChange = (op, key) => log.push(`${op} ${kind} ${key}`);
  w.pods.attachments!.delete('weft0000000000b');
  await w.dataplane.apply();
  assert.deepEqual(log.slice(0, 2).sort(), [
    `remove ${POD_ROUTE} 10.244.0.11/32`,
    `remove ${POD_ROUTE} fd00:10:244::b/128`,
  ]);
  assert.deepEqual(log.slice(2), [`remove ${POD_LINK} weft0000000000b`]);
  for (const [kind, k] of Object.entries(w.kernels))
    if (kind !== POD_LINK && kind !== POD_ROUTE) assert.deepEqual(k.requests, [], `${kind} untouched`);
});

/** Loads a node's policy tables into the world's ipset and filter drivers. */
const desirePolicy = (w: World, d: ReturnType<typeof policyTables>) => {
  w.driver(IPSET4).table.replaceDesired(d.sets);
  w.driver(FILTER4).table.replaceDesired(d.chains);
};

test('policy: a pod moved to another set: the set first, the new rules in force in one batch, then the old rule and chain in one, then the old set', async () => {
  const w = world();
  await w.dataplane.apply();
  const next = policyTables(SET_B);
  const entries = [...next.chains.keys()].find((c) => c.startsWith('WEFT-I-'))!;
  desirePolicy(w, next);
  const r = await w.dataplane.apply();
  assert.deepEqual({ failed: r.failed, held: r.held }, { failed: [], held: [] }, 'the kernel refused nothing');
  assert.deepEqual(w.kernels[IPSET4]!.batches, [`update ${SET_B}`, `delete ${SET_A}`]);
  assert.deepEqual(
    w.kernels[FILTER4]!.batches,
    [`update ${entries} ${ANCHOR}`, `delete ${ANCHOR}+ ${ENTRIES}`],
    'the anchor goes to the new chain first; its old rule and the old chain go in the removal batch',
  );
  assert.deepEqual(new Map(w.kernels[FILTER4]!.entries), next.chains);
  assert.deepEqual(new Map(w.kernels[IPSET4]!.entries), next.sets);
  assert.equal(w.dataplane.pending(), 0);
});

test('policy: one set the kernel refuses holds back only the chains that match it; the other pods are in force', async () => {
  const w = world();
  await w.dataplane.apply();
  // A second pod on another set.
  const two = desiredPolicy(
    {
      ...policyRules(SET_A),
      pods: [...policyRules(SET_A).pods, { ...policyRules(SET_B).pods[0]!, name: 'b', addresses: ['10.244.0.6'] }],
      sets: new Map([...policyRules(SET_A).sets, ...policyRules(SET_B).sets]),
    },
    new Map([
      ['10.244.0.5', VETH],
      ['10.244.0.6', 'weft00000000002'],
    ]),
  );
  two.chains.set(JUMP_KEY, [...WANTED_JUMP]);
  const bEntries = [...two.chains.keys()].find((c) => c.startsWith('WEFT-I-weft00000000002'))!;
  w.kernels[IPSET4]!.fail('write', SET_B, Infinity, 'ipset: Hash is full, cannot add more elements');
  desirePolicy(w, two);
  const r = await w.dataplane.apply();
  assert.deepEqual(
    r.failed.map((f) => `${f.kind} ${f.key}`),
    [`${IPSET4} ${SET_B}`],
  );
  assert.deepEqual(
    r.held.map((h) => `${h.kind} ${h.key} on ${h.on}`),
    [
      `${FILTER4} ${bEntries} on ${IPSET4}/${SET_B}`,
      `${FILTER4} WEFT-P-weft00000000002 on ${FILTER4}/${bEntries}`,
      `${FILTER4} WEFT-FROM-POD on ${FILTER4}/WEFT-P-weft00000000002`,
      `${FILTER4} WEFT-TO-POD on ${FILTER4}/WEFT-P-weft00000000002`,
    ],
    "pod b's chains wait; the dispatch chains (already without b) keep b on the fail-closed drop",
  );
  assert.deepEqual(w.kernels[FILTER4]!.entries.get('WEFT-FROM-POD'), POLICY.chains.get('WEFT-FROM-POD'));
  assert.deepEqual(w.kernels[FILTER4]!.entries.get(ANCHOR), two.chains.get(ANCHOR), 'pod a keeps its rules in force');
  w.kernels[IPSET4]!.clearFailures();
  await w.dataplane.apply();
  assert.equal(w.dataplane.pending(), 0, 'the retry (reading both kinds back) puts b in force');
  assert.deepEqual(new Map(w.kernels[FILTER4]!.entries), two.chains);
});

test('policy: a set is destroyed only after the last chain matching it is gone; while that removal fails, the set stays', async () => {
  const w = world();
  await w.dataplane.apply();
  desirePolicy(w, policyTables(SET_B));
  w.kernels[FILTER4]!.fail('remove', ENTRIES, Infinity, 'iptables-restore: line 3 failed');
  const r = await w.dataplane.apply();
  assert.deepEqual(
    r.failed.map((f) => `${f.op} ${f.kind} ${f.key}`),
    [`delete ${FILTER4} ${ENTRIES}`],
  );
  assert.ok(
    r.held.some((h) => h.kind === IPSET4 && h.key === SET_A && h.on === `${FILTER4}/${ENTRIES}`),
    'the old set is held while the old chain matching it is there',
  );
  assert.ok(w.kernels[IPSET4]!.entries.has(SET_A));
  assert.deepEqual(
    w.kernels[FILTER4]!.batches.slice(1),
    [`delete ${ANCHOR}+ ${ENTRIES}`, `delete ${ANCHOR}+`, `delete ${ENTRIES}`],
    'the failed removal batch is split: the anchor finished alone, the chain failed alone',
  );
  w.kernels[FILTER4]!.clearFailures();
  const again = await w.dataplane.apply();
  assert.ok(again.reads.includes(FILTER4), 'the retry reads the filter table back first');
  assert.ok(!w.kernels[FILTER4]!.entries.has(ENTRIES));
  assert.ok(!w.kernels[IPSET4]!.entries.has(SET_A), 'then the set is destroyed');
  assert.equal(w.dataplane.pending(), 0);
});

test('policy: on a fresh node, a pod whose set the kernel refuses is left out of the dispatch chains; the rest is in force', async () => {
  const w = world({
    missing: [[IPSET4, SET_A], ...[...POLICY.chains.keys()].map((c): [string, string] => [FILTER4, c])],
  });
  w.kernels[IPSET4]!.fail('write', SET_A, Infinity, 'ipset: Hash is full, cannot add more elements');
  const r = await w.dataplane.apply();
  assert.deepEqual(
    r.held.map((h) => `${h.key} on ${h.on}`),
    [
      `${ENTRIES} on ${IPSET4}/${SET_A}`,
      `${ANCHOR} on ${FILTER4}/${ENTRIES}`,
      `WEFT-FROM-POD on ${FILTER4}/${ANCHOR} (written without it)`,
      `WEFT-TO-POD on ${FILTER4}/${ANCHOR} (written without it)`,
    ],
  );
  const k = w.kernels[FILTER4]!.entries;
  assert.deepEqual(
    (k.get('WEFT-FROM-POD') as string[] | undefined)?.map((l) => l.split(' -j ')[1] ?? l.split(' -g ')[1]),
    ['RETURN', 'DROP'],
    'the VXLAN device returns, the pod meets the drop',
  );
  assert.ok(k.has('WEFT-FORWARD') && k.has(JUMP_KEY), "Weft's chain and jump are in force: nothing fails open");
  w.kernels[IPSET4]!.clearFailures();
  await w.dataplane.apply();
  assert.deepEqual(new Map(k), POLICY.chains, 'the retry puts the pod in');
  assert.equal(w.dataplane.pending(), 0);
});

test("policy manager: a few pods' new rules, rendered alone, give the tables what rendering the whole node gives", async () => {
  const SET_Z = 'weft-00000000000000cc';
  const SET_6 = 'weft-00000000000000dd';
  const sets = new Map([
    [SET_A, ['10.244.1.7/32']],
    [SET_B, ['192.0.2.0/24']],
    [SET_Z, ['10.244.7.0/24']],
    [SET_6, ['fd00::/64']],
  ]);
  const tcp = (set: string, port: number) => ({
    tier: 'networkpolicy' as const,
    action: 'allow' as const,
    peerSet: set,
    protocol: 'TCP' as const,
    ports: { from: port, to: port },
    source: 'NetworkPolicy/x/p ingress[0]',
  });
  const pod = (i: number, ingress: PodRules['ingress'], egress: PodRules['egress'] = []): PodRules => ({
    namespace: 'x',
    name: `p${i}`,
    addresses: [`10.244.3.${i}`],
    ingress,
    egress,
  });
  const veths = new Map(
    Array.from({ length: 6 }, (_, i) => [`10.244.3.${i}`, `weft${i.toString(16).padStart(11, '0')}`]),
  );
  const r1: NodeRules = {
    revision: 1,
    sets,
    pods: [
      pod(0, [tcp(SET_A, 80)]),
      pod(1, [tcp(SET_A, 80)]),
      pod(2, [tcp(SET_B, 81)]),
      pod(3, []),
      pod(4, [], [tcp(SET_A, 53)]),
      pod(5, [tcp(SET_A, 80)]),
    ],
  };
  // p1 out of every policy; p2 to a new set (SET_B no longer named by anyone); p3 from none to entries; p4's egress to
  // an IPv6-only set (no IPv4 rule); SET_A stays, named by p0 and p5.
  const r2: NodeRules = {
    revision: 2,
    sets: new Map([...sets].filter(([n]) => n !== SET_B)),
    pods: [
      r1.pods[0]!,
      pod(1, []),
      pod(2, [tcp(SET_Z, 81)]),
      pod(3, [tcp(SET_A, 80)]),
      pod(4, [], [tcp(SET_6, 53)]),
      r1.pods[5]!,
    ],
  };
  const manager = () => createPolicyDrivers({ family: 4, ipsets: createFakeKernel(), filter: createFakeKernel() });
  const step = manager();
  step.compute(r1, veths);
  const setDesired = step.filter.table.setDesired.bind(step.filter.table);
  let written = 0;
  step.filter.table.setDesired = (k, v) => (written++, setDesired(k, v));
  step.compute(r2, veths);
  assert.ok(written <= 12, `only the changed pods' chains are set (${written})`);
  const whole = manager();
  whole.compute(r2, veths);
  assert.deepEqual(new Map([...step.filter.table.desired].sort()), new Map([...whole.filter.table.desired].sort()));
  assert.deepEqual(new Map([...step.ipsets.table.desired].sort()), new Map([...whole.ipsets.table.desired].sort()));
  assert.ok(!step.ipsets.table.desired.has(SET_B), 'a set no pod names any more is no longer desired');
});
