import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseCidr } from '../../../lib/net/ip.js';
import {
  compileNodePolicy,
  createCompileCache,
  diffNodePolicy,
  entriesAllow,
  podChanges,
  rangesToCidrs,
  setName,
  type CompileCache,
  type NodePolicy,
  type PlacedPod,
} from './compile.js';
import { createClusterCompiler } from './cluster-compile.js';
import { explain, type Endpoint, type World } from './evaluate.js';
import { parseIp, parsePolicyObject, type AdminPolicy, type NetworkPolicy, type Protocol } from './model.js';

/**
 * The compiler against the evaluator: on many random small worlds (namespaces x, y, z; pods a, b, c in each, spread
 * over two nodes; named ports that resolve to different numbers on different pods), the compiled entries of every
 * node must give `explain`'s verdict for every (source, destination, port, protocol), outside addresses included.
 */
const NS = ['x', 'y', 'z'];
const pods: PlacedPod[] = NS.flatMap((ns, i) =>
  ['a', 'b', 'c'].map((name, j) => ({
    namespace: ns,
    name,
    node: (i + j) % 2 === 0 ? 'n1' : 'n2',
    labels: { pod: name, ...(j === 0 ? { tier: 'web' } : {}) },
    addresses: [parseIp(`10.244.${i}.${j + 10}`, 'ip')],
    ports: [
      { name: 'http', port: j === 2 ? 8080 : 80, protocol: 'TCP' as Protocol },
      { name: 'dns', port: 81, protocol: 'UDP' as Protocol },
    ],
  })),
);
const OUTSIDE = ['192.0.2.7', '10.244.9.1', '10.245.0.1'];
const namespaces = new Map(NS.map((n) => [n, { ns: n, ...(n !== 'z' ? { team: n === 'x' ? 'shop' : 'pay' } : {}) }]));

function world(objects: unknown[]): World {
  const parsed = objects.map((o) => parsePolicyObject(o));
  return {
    namespaces,
    networkPolicies: parsed.filter((p): p is NetworkPolicy => p.kind === 'NetworkPolicy'),
    adminPolicies: parsed.filter((p): p is AdminPolicy => p.kind === 'AdminNetworkPolicy'),
    baseline: (parsed.find((p) => p.kind === 'BaselineAdminNetworkPolicy') as AdminPolicy | undefined) ?? null,
  };
}

const inSet = (cidrs: string[], a: { family: 4 | 6; value: bigint }) =>
  cidrs.some((c) => {
    const x = parseCidr(c);
    const shift = BigInt((x.family === 4 ? 32 : 128) - x.prefixLength);
    return x.family === a.family && x.base >> shift === a.value >> shift;
  });

/** Every verdict of the compiled node policies against explain's; returns the first disagreement. */
function disagreement(w: World): string | null {
  const compiled: Record<string, NodePolicy> = {
    n1: compileNodePolicy(w, pods, 'n1'),
    n2: compileNodePolicy(w, pods, 'n2'),
  };
  const endpoints: Endpoint[] = [
    ...pods.map((p): Endpoint => ({ kind: 'pod', pod: p, address: p.addresses[0]! })),
    ...OUTSIDE.map((ip): Endpoint => ({ kind: 'external', address: parseIp(ip, 'ip') })),
  ];
  const side = (e: Endpoint, dir: 'ingress' | 'egress', other: Endpoint, port: number, proto: Protocol) => {
    if (e.kind !== 'pod') return true;
    const node = compiled[(e.pod as PlacedPod).node]!;
    const c = node.pods.find((p) => p.namespace === e.pod.namespace && p.name === e.pod.name)!;
    return entriesAllow(c[dir], node.sets, other.address, proto, port, inSet);
  };
  for (const from of endpoints)
    for (const to of endpoints) {
      if (from === to || (from.kind === 'external' && to.kind === 'external')) continue;
      for (const proto of ['TCP', 'UDP'] as Protocol[])
        for (const port of [80, 81, 82, 8080]) {
          const want = explain(w, from, to, port, proto).allowed;
          const got = side(from, 'egress', to, port, proto) && side(to, 'ingress', from, port, proto);
          if (want !== got) {
            const name = (e: Endpoint) => (e.kind === 'pod' ? `${e.pod.namespace}/${e.pod.name}` : 'outside');
            return `${name(from)} -> ${name(to)} ${port}/${proto}: explain says ${want ? 'allowed' : 'denied'}, compiled ${got ? 'allowed' : 'denied'}`;
          }
        }
    }
  return null;
}

/** A seeded generator (mulberry32), so that a failure names a world that can be replayed. */
function rng(seed: number) {
  let s = seed >>> 0;
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)]!;
  return { next, pick };
}

const SELECTORS = [
  {},
  { matchLabels: { pod: 'a' } },
  { matchLabels: { tier: 'web' } },
  { matchExpressions: [{ key: 'pod', operator: 'NotIn', values: ['b'] }] },
];
const NS_SELECTORS = [
  {},
  { matchLabels: { team: 'pay' } },
  { matchLabels: { ns: 'x' } },
  { matchExpressions: [{ key: 'team', operator: 'Exists' }] },
];
const NP_PEERS = [
  ...SELECTORS.map((s) => ({ podSelector: s })),
  ...NS_SELECTORS.map((s) => ({ namespaceSelector: s })),
  { namespaceSelector: { matchLabels: { team: 'pay' } }, podSelector: { matchLabels: { pod: 'c' } } },
  { ipBlock: { cidr: '10.244.0.0/16', except: ['10.244.1.0/24'] } },
  { ipBlock: { cidr: '10.244.0.0/22', except: ['10.244.0.10/32', '10.244.2.0/25'] } },
  { ipBlock: { cidr: '192.0.2.0/24' } },
];
const NP_PORTS = [
  { port: 80 },
  { port: 'http' },
  { protocol: 'UDP', port: 'dns' },
  { protocol: 'UDP' },
  { port: 80, endPort: 8080 },
  { port: 81, protocol: 'UDP' },
];
const ADMIN_PEERS = [
  { namespaces: {} },
  { namespaces: { matchLabels: { team: 'shop' } } },
  { pods: { namespaceSelector: {}, podSelector: { matchLabels: { pod: 'b' } } } },
];
const ADMIN_PORTS = [
  { portNumber: { protocol: 'TCP', port: 80 } },
  { namedPort: 'http' },
  { portRange: { protocol: 'TCP', start: 81, end: 8080 } },
  { namedPort: 'dns' },
];

function randomObjects(seed: number): unknown[] {
  const r = rng(seed);
  const some = <T>(xs: readonly T[], max: number): T[] =>
    Array.from({ length: Math.floor(r.next() * (max + 1)) }, () => r.pick(xs));
  const npRule = (key: 'from' | 'to') => {
    const rule: Record<string, unknown> = {};
    if (r.next() < 0.7) rule[key] = some(NP_PEERS, 2);
    if (r.next() < 0.6) rule.ports = some(NP_PORTS, 2);
    return rule;
  };
  const objects: unknown[] = [];
  const count = 1 + Math.floor(r.next() * 3);
  for (let i = 0; i < count; i++) {
    const spec: Record<string, unknown> = { podSelector: r.pick(SELECTORS) };
    if (r.next() < 0.8) spec.ingress = some([0, 1, 2], 2).map(() => npRule('from'));
    if (r.next() < 0.5) spec.egress = some([0, 1, 2], 2).map(() => npRule('to'));
    if (r.next() < 0.5) spec.policyTypes = r.pick([['Ingress'], ['Egress'], ['Ingress', 'Egress']]);
    objects.push({ kind: 'NetworkPolicy', metadata: { namespace: r.pick(NS), name: `np${i}` }, spec });
  }
  const adminRules = (key: 'from' | 'to', actions: string[]) =>
    some([0, 1, 2], 3).map((_, i) => {
      const rule: Record<string, unknown> = {
        name: `r${i}`,
        action: r.pick(actions),
        [key]: [
          r.pick<unknown>(
            key === 'to' && r.next() < 0.3 ? [{ networks: ['10.244.0.0/23', '192.0.2.0/28'] }] : ADMIN_PEERS,
          ),
        ],
      };
      if (r.next() < 0.6) rule.ports = some(ADMIN_PORTS, 2);
      return rule;
    });
  if (r.next() < 0.5) {
    objects.push({
      kind: 'AdminNetworkPolicy',
      metadata: { name: 'anp' },
      spec: {
        priority: Math.floor(r.next() * 3),
        subject: r.pick(ADMIN_PEERS),
        ingress: adminRules('from', ['Allow', 'Deny', 'Pass']),
        egress: adminRules('to', ['Allow', 'Deny', 'Pass']),
      },
    });
  }
  if (r.next() < 0.4) {
    objects.push({
      kind: 'BaselineAdminNetworkPolicy',
      metadata: { name: 'default' },
      spec: {
        subject: r.pick(ADMIN_PEERS),
        ingress: adminRules('from', ['Allow', 'Deny']),
        egress: adminRules('to', ['Allow', 'Deny']),
      },
    });
  }
  return objects;
}

test('compiled rules agree with explain on every connection of 300 random worlds', () => {
  for (let seed = 1; seed <= 300; seed++) {
    const objects = randomObjects(seed);
    const d = disagreement(world(objects));
    assert.equal(d, null, `world ${seed}: ${d}\n${JSON.stringify(objects, null, 1)}`);
  }
});

test('hand-picked worlds: default deny, named ports per destination, pass to the NetworkPolicy tier, baseline', () => {
  const cases: unknown[][] = [
    [],
    [{ kind: 'NetworkPolicy', metadata: { namespace: 'x', name: 'deny' }, spec: { podSelector: {} } }],
    [
      {
        kind: 'NetworkPolicy',
        metadata: { namespace: 'x', name: 'eg' },
        spec: { podSelector: {}, policyTypes: ['Egress'], egress: [{ ports: [{ port: 'http' }] }] },
      },
    ],
    [
      {
        kind: 'AdminNetworkPolicy',
        metadata: { name: 'p' },
        spec: {
          priority: 1,
          subject: { namespaces: {} },
          ingress: [
            { name: 'pass-y', action: 'Pass', from: [{ namespaces: { matchLabels: { ns: 'y' } } }] },
            { name: 'deny-all', action: 'Deny', from: [{ namespaces: {} }] },
          ],
        },
      },
      {
        kind: 'NetworkPolicy',
        metadata: { namespace: 'x', name: 'allow-y' },
        spec: {
          podSelector: {},
          ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'y' } } }], ports: [{ port: 80 }] }],
        },
      },
    ],
    [
      {
        kind: 'BaselineAdminNetworkPolicy',
        metadata: { name: 'default' },
        spec: {
          subject: { namespaces: {} },
          ingress: [{ action: 'Deny', from: [{ namespaces: { matchLabels: { ns: 'z' } } }] }],
        },
      },
    ],
  ];
  for (const c of cases) assert.equal(disagreement(world(c)), null, JSON.stringify(c));
});

test('address sets: except blocks are cut out exactly; the same content keeps the same name', () => {
  const r = (c: string) => {
    const x = parseCidr(c);
    return { family: x.family, start: x.base, end: x.base + (1n << BigInt(32 - x.prefixLength)) - 1n };
  };
  assert.deepEqual(rangesToCidrs([r('10.0.0.0/30'), r('10.0.0.4/30')]), ['10.0.0.0/29']);
  assert.deepEqual(rangesToCidrs([r('10.0.0.1/32'), r('10.0.0.2/31')]), ['10.0.0.1/32', '10.0.0.2/31']);
  const w = world([
    {
      kind: 'NetworkPolicy',
      metadata: { namespace: 'x', name: 'b' },
      spec: { podSelector: {}, ingress: [{ from: [{ ipBlock: { cidr: '10.0.0.0/8', except: ['10.1.0.0/16'] } }] }] },
    },
  ]);
  const c = compileNodePolicy(w, pods, 'n1');
  const [set] = [...c.sets.values()];
  assert.deepEqual(set, [
    '10.0.0.0/16',
    '10.2.0.0/15',
    '10.4.0.0/14',
    '10.8.0.0/13',
    '10.16.0.0/12',
    '10.32.0.0/11',
    '10.64.0.0/10',
    '10.128.0.0/9',
  ]);
  assert.equal(setName(set!), [...c.sets.keys()][0]);
  assert.deepEqual(compileNodePolicy(w, pods, 'n1'), c, 'deterministic');
  assert.ok(setName(set!).length <= 31);
});

/** Labels a namespace can take: as the selectors above tell them apart, and one no selector reads (`env`). */
const NS_LABELS = (n: string): Record<string, string>[] => [
  { ns: n },
  { ns: n, team: 'pay' },
  { ns: n, team: 'shop' },
  { ns: n, team: 'shop', env: 'prod' },
  { ns: n, env: 'prod' },
];
type ViewKind = 'pod' | 'namespace' | 'policy' | 'several';

/**
 * A random sequence of views as the service sees them: each step one change (a pod's labels, ports, address or
 * node; a namespace's labels; a pod added or deleted; a policy of any tier added, replaced or deleted), or now and
 * then several at once (as a read after several NOTIFYs sees them). Each policy and pod object keeps its identity
 * while unchanged, as the service's parse cache keeps it. `kind` says what the step to this view changed.
 */
function* randomViews(seed: number, steps: number): Generator<{ w: World; placed: PlacedPod[]; kind: ViewKind }> {
  const r = rng(seed * 7919);
  let policies = randomObjects(seed).map((o) => parsePolicyObject(o));
  let placed = pods.map((p) => ({ ...p }));
  let nsLabels = new Map<string, Record<string, string>>(namespaces);
  let kind: ViewKind = 'pod';
  for (let step = 0; step < steps; step++) {
    yield {
      w: {
        namespaces: nsLabels,
        networkPolicies: policies.filter((p): p is NetworkPolicy => p.kind === 'NetworkPolicy'),
        adminPolicies: policies.filter((p): p is AdminPolicy => p.kind === 'AdminNetworkPolicy'),
        baseline: (policies.find((p) => p.kind === 'BaselineAdminNetworkPolicy') as AdminPolicy | undefined) ?? null,
      },
      placed,
      kind,
    };
    const several = r.next() < 0.15;
    const kinds = new Set<ViewKind>();
    for (let k = several ? 3 : 1; k > 0; k--) kinds.add(randomChange(step, k));
    kind = several ? 'several' : [...kinds][0]!;
  }
  function randomChange(step: number, k: number): ViewKind {
    const i = Math.floor(r.next() * placed.length);
    const change = Math.floor(r.next() * 9);
    const withPod = (q: PlacedPod) => (placed = placed.map((p, j) => (j === i ? q : p)));
    const p = placed[i]!;
    if (change === 0) withPod({ ...p, labels: { ...p.labels, pod: r.pick(['a', 'b', 'c']) } });
    else if (change === 1)
      withPod({ ...p, labels: p.labels.tier ? { pod: p.labels.pod! } : { ...p.labels, tier: 'web' } });
    else if (change === 2)
      withPod({
        ...p,
        ports: p.ports.map((q) => (q.name === 'http' ? { ...q, port: q.port === 80 ? 8080 : 80 } : q)),
      });
    else if (change === 3) withPod({ ...p, addresses: [parseIp(`10.244.${3 + Math.floor(r.next() * 2)}.${i}`, 'ip')] });
    else if (change === 4) {
      const ns = r.pick(NS);
      const labels = r.pick(NS_LABELS(ns));
      nsLabels = new Map([...nsLabels].map(([n, l]) => [n, n === ns ? labels : l]));
      return 'namespace';
    } else if (change === 5)
      placed =
        placed.length > 5 && r.next() < 0.5
          ? placed.filter((_, j) => j !== i)
          : [...placed, { ...p, name: `${p.name}${step}-${k}`, addresses: [parseIp(`10.244.${5 + k}.${step}`, 'ip')] }];
    else if (change === 6 && policies.length > 0) {
      policies = policies.filter((_, j) => j !== Math.floor(r.next() * policies.length));
      return 'policy';
    } else if (change === 7) {
      // A policy of any tier (NetworkPolicy, AdminNetworkPolicy, the baseline) added or replaced.
      const fresh = randomObjects(seed * 31 + step * 3 + k).map((o) => parsePolicyObject(o));
      const add = r.pick(fresh);
      if (add)
        policies = [
          ...policies.filter(
            (q) =>
              q.kind !== add.kind ||
              q.name !== add.name ||
              ('namespace' in q ? q.namespace : '') !== ('namespace' in add ? add.namespace : ''),
          ),
          add,
        ];
      return 'policy';
    } else withPod({ ...p, node: r.pick(NODES) });
    return 'pod';
  }
}
const NODES = ['n1', 'n2', 'n3'];

/** What the previous message left, with the delta applied: must be the new compilation. */
function assertDeltaApplies(before: NodePolicy, got: NodePolicy, what: string) {
  const d = diffNodePolicy(before, got);
  const held = new Map(before.pods.map((p) => [`${p.namespace}/${p.name}`, p]));
  const sets = new Map(before.sets);
  for (const id of d?.removedPods ?? []) held.delete(id);
  for (const p of d?.pods ?? []) held.set(`${p.namespace}/${p.name}`, p);
  for (const n of d?.removedSets ?? []) sets.delete(n);
  for (const [n, c] of d?.sets ?? []) sets.set(n, c);
  const byId = (a: { namespace: string; name: string }, b: { namespace: string; name: string }) =>
    `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`);
  assert.deepEqual([...held.values()].sort(byId), [...got.pods].sort(byId), `delta, ${what}`);
  assert.deepEqual(new Map([...sets].sort()), new Map([...got.sets].sort()));
  if (d === null) assert.deepEqual(got, before, 'no delta: nothing changed');
}

test('compiling with a cache gives what compiling from scratch gives, over 200 random sequences of changes', () => {
  for (let seed = 1; seed <= 200; seed++) {
    const caches: Record<string, CompileCache> = Object.fromEntries(NODES.map((n) => [n, createCompileCache()]));
    let reused = 0;
    const prev: Record<string, NodePolicy | null> = {};
    let step = 0;
    for (const { w, placed } of randomViews(seed, 12)) {
      for (const node of NODES) {
        const got = compileNodePolicy(w, placed, node, caches[node]);
        assert.deepEqual(got, compileNodePolicy(w, placed, node), `sequence ${seed}, step ${step}, ${node}`);
        reused += got.pods.filter((p) => prev[node]?.pods.includes(p)).length;
        const before = prev[node];
        if (before) assertDeltaApplies(before, got, `sequence ${seed}, step ${step}, ${node}`);
        prev[node] = got;
      }
      step++;
    }
    assert.ok(reused > 0, `sequence ${seed}: some compiled pods are reused`);
  }
});

test('one compilation per view for every node (ClusterCompiler) gives what compiling each from scratch gives, and compiles again only the nodes a change concerns', () => {
  let skipped = 0;
  const skippedBy: Record<ViewKind, number> = { pod: 0, namespace: 0, policy: 0, several: 0 };
  const views: Record<ViewKind, number> = { pod: 0, namespace: 0, policy: 0, several: 0 };
  for (let seed = 1; seed <= 200; seed++) {
    const cluster = createClusterCompiler();
    const prev: Record<string, NodePolicy | null> = {};
    let step = 0;
    for (const { w, placed, kind } of randomViews(seed, 12)) {
      if (step > 0) views[kind]++;
      const concerned = new Set(cluster.advance(w, placed));
      for (const node of NODES) {
        const got = cluster.compile(node);
        const what = `sequence ${seed}, step ${step}, ${node}`;
        assert.deepEqual(got, compileNodePolicy(w, placed, node), what);
        const before = prev[node];
        if (before) {
          // A node the change did not concern keeps its result, the same object (its streams are not woken).
          if (!concerned.has(node)) {
            assert.equal(got, before, `not concerned, yet changed: ${what}`);
            skipped++;
            skippedBy[kind]++;
          }
          assertDeltaApplies(before, got, what);
        }
        prev[node] = got;
      }
      step++;
    }
  }
  assert.ok(skipped > 500, `only ${skipped} node compilations were skipped`);
  // A namespace's labels or a policy (of any tier) changed: the nodes it does not concern are not compiled again
  // either (about a third of the views are such changes; 3 nodes each).
  assert.ok(views.namespace > 100 && views.policy > 150 && views.several > 200, JSON.stringify(views));
  assert.ok(
    skippedBy.namespace > views.namespace * 1.5 && skippedBy.policy > views.policy,
    `skipped ${JSON.stringify(skippedBy)} of ${JSON.stringify(views)} views`,
  );
});

test('ipBlock 0.0.0.0/0 and ::/0 become their two /1 halves, which ipset hash:net accepts (it refuses a /0)', () => {
  const every = (family: 4 | 6) => ({ family, start: 0n, end: (1n << BigInt(family === 4 ? 32 : 128)) - 1n });
  assert.deepEqual(rangesToCidrs([every(4)]), ['0.0.0.0/1', '128.0.0.0/1']);
  assert.deepEqual(rangesToCidrs([every(6)]), ['::/1', '8000::/1']);
  const w = world([
    {
      kind: 'NetworkPolicy',
      metadata: { namespace: 'x', name: 'out' },
      spec: { podSelector: {}, policyTypes: ['Egress'], egress: [{ to: [{ ipBlock: { cidr: '0.0.0.0/0' } }] }] },
    },
  ]);
  assert.deepEqual([...compileNodePolicy(w, pods, 'n1').sets.values()], [['0.0.0.0/1', '128.0.0.0/1']]);
});

test('podChanges: the pod objects added and gone between two views, never missing one even out of order', () => {
  const [a, b, c] = pods;
  const b2 = { ...b! };
  const d = { ...c!, name: 'd' };
  assert.deepEqual(podChanges([a!, b!, c!], [a!, b!, c!]), { added: [], removed: [] });
  assert.deepEqual(podChanges([a!, b!, c!], [a!, b2, c!, d]), { added: [b2, d], removed: [b!] });
  assert.deepEqual(podChanges([a!, b!, c!], [a!, c!]), { added: [], removed: [b!] });
  // Out of name order: more is reported (a pod gone and added again), nothing is missed.
  const r = podChanges([c!, a!, b!], [a!, b2, c!]);
  assert.ok(r.added.includes(b2) && r.removed.includes(b!));
  assert.ok(!r.added.includes(b!) && !r.removed.includes(b2));
});

test('a policy or namespace change compiles again only the nodes hosting its subjects or naming a set it moves', () => {
  // Each namespace's pods on a node of their own: x on n1, y on n2, z on n3.
  const placed = pods.map((p) => ({ ...p, node: `n${NS.indexOf(p.namespace) + 1}` }));
  const np = (namespace: string, name: string, spec: object) =>
    parsePolicyObject({ kind: 'NetworkPolicy', metadata: { namespace, name }, spec }) as NetworkPolicy;
  const fromShop = np('y', 'from-shop', {
    podSelector: {},
    ingress: [{ from: [{ namespaceSelector: { matchLabels: { team: 'shop' } } }] }],
  });
  let w: World = { namespaces, networkPolicies: [fromShop], adminPolicies: [], baseline: null };
  const cluster = createClusterCompiler();
  const step = (next: Partial<World>) => {
    w = { ...w, ...next };
    const concerned = cluster.advance(w, placed).sort();
    for (const node of NODES) assert.deepEqual(cluster.compile(node), compileNodePolicy(w, placed, node), node);
    return concerned;
  };
  const labels = (ns: string, l: Record<string, string>) =>
    new Map([...w.namespaces].map(([n, v]) => [n, n === ns ? l : v]));
  cluster.advance(w, placed);
  for (const node of NODES) cluster.compile(node);
  const deny = np('x', 'deny', { podSelector: {} });
  assert.deepEqual(step({ networkPolicies: [fromShop, deny] }), ['n1'], 'a NetworkPolicy in x: the node of its pods');
  assert.deepEqual(step({ networkPolicies: [fromShop] }), ['n1'], 'and removed');
  assert.deepEqual(step({ namespaces: labels('z', { ns: 'z', env: 'prod' }) }), [], 'a label no selector reads');
  assert.deepEqual(step({ namespaces: labels('z', { ns: 'z', team: 'shop' }) }), ['n2'], "z joins y's set");
  const anp = parsePolicyObject({
    kind: 'AdminNetworkPolicy',
    metadata: { name: 'pay' },
    spec: {
      priority: 1,
      subject: { namespaces: { matchLabels: { team: 'pay' } } },
      ingress: [{ name: 'deny-x', action: 'Deny', from: [{ namespaces: { matchLabels: { ns: 'x' } } }] }],
    },
  }) as AdminPolicy;
  assert.deepEqual(step({ adminPolicies: [anp] }), ['n2'], 'an admin policy whose subject is y (team=pay)');
  assert.deepEqual(
    step({ namespaces: labels('z', { ns: 'z', team: 'pay' }) }),
    ['n2', 'n3'],
    "z leaves y's set and becomes the admin policy's subject",
  );
  assert.deepEqual(step({ adminPolicies: [], baseline: { ...anp, kind: 'BaselineAdminNetworkPolicy' } }), ['n2', 'n3']);
});
