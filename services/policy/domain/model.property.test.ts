import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { DomainError } from '../../../lib/errors.js';
import { checkAddressSet, checkPod } from '../../../node-dataplane/domain/stream-validation.js';
import { compileNodePolicy, type PlacedPod } from './compile.js';
import type { World } from './evaluate.js';
import {
  parseIp,
  parsePolicyObject,
  type AdminPolicy,
  type NetworkPolicy,
  type Policy,
  type Protocol,
} from './model.js';

/**
 * Property tests of the policy object parser (what ApplyPolicies and the CLI feed it) and of the compiler behind it:
 * valid NetworkPolicy, AdminNetworkPolicy and BaselineAdminNetworkPolicy objects, then mutated (a field replaced by
 * any JSON value or a hostile string, removed, or an unknown one added), and arbitrary JSON. Each either parses or
 * fails with the domain's `policy.invalid` naming a field path; whatever parses compiles without throwing, and what
 * the compiler sends to the agents passes the agent's stream validation (else the agent would refuse the pod and
 * drop its traffic, fail closed, for a policy the API accepted).
 */
const RUNS = { numRuns: 250, interruptAfterTimeLimit: 2500, includeErrorInReport: true };

// --- Valid objects, from a small vocabulary so that selectors select the pods below. ---
const key = fc.constantFrom('app', 'tier', 'team', 'example.com/role');
const value = fc.constantFrom('web', 'db', 'shop', 'pay');
const selector = fc.record(
  {
    matchLabels: fc.dictionary(key, value, { maxKeys: 2 }),
    matchExpressions: fc.array(
      fc.oneof(
        fc.record({
          key,
          operator: fc.constantFrom('In', 'NotIn'),
          values: fc.array(value, { minLength: 1, maxLength: 2 }),
        }),
        fc.record({ key, operator: fc.constantFrom('Exists', 'DoesNotExist') }),
      ),
      { maxLength: 2 },
    ),
  },
  { requiredKeys: [] },
);
const v4cidr = fc
  .tuple(fc.constantFrom(8, 16, 24, 28, 32), fc.constantFrom('10.244.0.0', '10.244.1.0', '10.0.0.0', '192.0.2.0'))
  .map(([p, a]) => {
    const n = Number(parseIp(a, 'a').value);
    const base = (n & (~0 << (32 - p))) >>> 0;
    return `${[base >>> 24, (base >>> 16) & 255, (base >>> 8) & 255, base & 255].join('.')}/${p}`;
  });
const cidr = fc.oneof(v4cidr, fc.constantFrom('fd00::/8', 'fd00:10:244::/48', '0.0.0.0/0', '::/0'));
const ipBlock = cidr.chain((c) =>
  fc.record(
    { cidr: fc.constant(c), except: fc.constant(c.startsWith('10.0.0.0/8') ? ['10.244.0.0/16'] : []) },
    { requiredKeys: ['cidr'] },
  ),
);
const peer = fc.oneof(
  fc.record({ podSelector: selector }),
  fc.record({ namespaceSelector: selector }),
  fc.record({ podSelector: selector, namespaceSelector: selector }),
  fc.record({ ipBlock }),
);
const protocol = fc.constantFrom('TCP', 'UDP', 'SCTP');
const npPort = fc.oneof(
  fc.record({ protocol, port: fc.integer({ min: 1, max: 65535 }) }, { requiredKeys: [] }),
  fc.record({ protocol, port: fc.constantFrom('http', 'dns') }, { requiredKeys: ['port'] }),
  fc
    .tuple(protocol, fc.integer({ min: 1, max: 65535 }), fc.nat(100))
    .map(([p, a, d]) => ({ protocol: p, port: a, endPort: Math.min(65535, a + d) })),
);
const name = fc.stringMatching(/^[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?$/);
const networkPolicy = fc.record({
  apiVersion: fc.constant('networking.k8s.io/v1'),
  kind: fc.constant('NetworkPolicy'),
  metadata: fc.record({ name, namespace: fc.constantFrom('x', 'y') }, { requiredKeys: ['name'] }),
  spec: fc.record(
    {
      podSelector: selector,
      policyTypes: fc.subarray(['Ingress', 'Egress']),
      ingress: fc.array(
        fc.record(
          { from: fc.array(peer, { maxLength: 2 }), ports: fc.array(npPort, { maxLength: 2 }) },
          { requiredKeys: [] },
        ),
        { maxLength: 2 },
      ),
      egress: fc.array(
        fc.record(
          { to: fc.array(peer, { maxLength: 2 }), ports: fc.array(npPort, { maxLength: 2 }) },
          { requiredKeys: [] },
        ),
        { maxLength: 2 },
      ),
    },
    { requiredKeys: ['podSelector'] },
  ),
});
const adminSubject = fc.oneof(
  fc.record({ namespaces: selector }),
  fc.record({ pods: fc.record({ namespaceSelector: selector, podSelector: selector }) }),
);
const adminPorts = fc.array(
  fc.oneof(
    fc.record({ portNumber: fc.record({ protocol, port: fc.integer({ min: 1, max: 65535 }) }) }),
    fc
      .tuple(protocol, fc.integer({ min: 1, max: 65000 }), fc.nat(500))
      .map(([p, s, d]) => ({ portRange: { protocol: p, start: s, end: s + d } })),
    fc.record({ namedPort: fc.constantFrom('http', 'dns') }),
  ),
  { maxLength: 2 },
);
const adminRule = (peersKey: 'from' | 'to', actions: string[]) =>
  fc.record(
    {
      name: fc.oneof(name, fc.string({ maxLength: 20 })),
      action: fc.constantFrom(...actions),
      [peersKey]: fc.array(
        peersKey === 'to'
          ? fc.oneof(adminSubject, fc.record({ networks: fc.array(cidr, { minLength: 1, maxLength: 2 }) }))
          : adminSubject,
        { minLength: 1, maxLength: 2 },
      ),
      ports: adminPorts,
    },
    { requiredKeys: ['action', peersKey] },
  );
const adminPolicy = fc.oneof(
  fc.record({
    apiVersion: fc.constant('policy.networking.k8s.io/v1alpha1'),
    kind: fc.constant('AdminNetworkPolicy'),
    metadata: fc.record({ name }),
    spec: fc.record(
      {
        priority: fc.integer({ min: 0, max: 1000 }),
        subject: adminSubject,
        ingress: fc.array(adminRule('from', ['Allow', 'Deny', 'Pass']), { maxLength: 2 }),
        egress: fc.array(adminRule('to', ['Allow', 'Deny', 'Pass']), { maxLength: 2 }),
      },
      { requiredKeys: ['priority', 'subject'] },
    ),
  }),
  fc.record({
    apiVersion: fc.constant('policy.networking.k8s.io/v1alpha1'),
    kind: fc.constant('BaselineAdminNetworkPolicy'),
    metadata: fc.constant({ name: 'default' }),
    spec: fc.record(
      {
        subject: adminSubject,
        ingress: fc.array(adminRule('from', ['Allow', 'Deny']), { maxLength: 2 }),
        egress: fc.array(adminRule('to', ['Allow', 'Deny']), { maxLength: 2 }),
      },
      { requiredKeys: ['subject'] },
    ),
  }),
);
const validObject = fc.oneof(networkPolicy, adminPolicy);

// --- Mutations: replace, remove or add at a random path. ---
const hostileString = fc.constantFrom(
  '',
  ' ',
  'TCP -j ACCEPT',
  'a\nb',
  '10.0.0.0/8 -j ACCEPT',
  '__proto__',
  'constructor',
  'x'.repeat(300),
  '\u0000',
  '-1',
  '65536',
  '1e3',
);
const replacement = fc.oneof(
  fc.jsonValue({ maxDepth: 2 }),
  hostileString,
  fc.constantFrom({ toString: 1 }, { valueOf: 1, toString: 1 }, [], {}, null, -1, 0, 1.5, Infinity),
);
type Mutation = { at: number; kind: 'replace' | 'remove' | 'add'; with: unknown; key: string };
const mutation: fc.Arbitrary<Mutation> = fc.record({
  at: fc.nat(),
  kind: fc.constantFrom('replace', 'replace', 'remove', 'add'),
  with: replacement,
  key: fc.oneof(fc.constantFrom('name', 'ports', 'cidr', 'except', 'values'), fc.string({ maxLength: 6 })),
});

function paths(v: unknown, at: (string | number)[] = [], out: (string | number)[][] = []): (string | number)[][] {
  out.push(at);
  if (Array.isArray(v)) v.forEach((x, i) => paths(x, [...at, i], out));
  else if (typeof v === 'object' && v !== null) for (const [k, x] of Object.entries(v)) paths(x, [...at, k], out);
  return out;
}

function mutate(obj: unknown, ms: Mutation[]): unknown {
  let root = structuredClone(obj) as Record<string, unknown>;
  for (const m0 of ms) {
    // Constants are shared between runs: each insertion gets its own copy (no cycles, no leaks between runs).
    const m = { ...m0, with: m0.with === undefined ? undefined : structuredClone(m0.with) };
    const all = paths(root);
    const path = all[m.at % all.length]!;
    if (path.length === 0) {
      if (m.kind === 'replace') root = m.with as Record<string, unknown>;
      if (typeof root !== 'object' || root === null) return root;
      continue;
    }
    const parent = path.slice(0, -1).reduce<any>((o, k) => o[k], root);
    const last = path[path.length - 1]!;
    if (m.kind === 'replace') parent[last] = m.with;
    else if (m.kind === 'remove') {
      if (Array.isArray(parent)) parent.splice(last as number, 1);
      else delete parent[last];
    } else if (typeof parent[last] === 'object' && parent[last] !== null && !Array.isArray(parent[last]))
      Object.defineProperty(parent[last], m.key, {
        value: m.with,
        enumerable: true,
        writable: true,
        configurable: true,
      });
    else parent[last] = m.with;
  }
  return root;
}

const mutated = fc
  .tuple(validObject, fc.array(mutation, { minLength: 1, maxLength: 3 }))
  .map(([o, ms]) => mutate(o, ms));

/** Parses, or checks that the error is policy.invalid naming a field path ("spec.ingress[0].from[1].ipBlock.cidr: …"). */
function parseOrInvalid(o: unknown): Policy | null {
  try {
    return parsePolicyObject(o, 'x');
  } catch (err) {
    if (!(err instanceof DomainError)) throw new Error(`threw ${String(err)} instead of a DomainError`, { cause: err });
    assert.equal(err.code, 'policy.invalid');
    assert.equal(err.kind, 'invalid_argument');
    // Unknown keys are named as given (they may hold spaces), so only the path's root and the separator are checked.
    assert.match(
      err.message,
      /^(object|kind|apiVersion|metadata|spec)([.[].*)?: ./s,
      'the message starts with the field path',
    );
    return null;
  }
}

// --- A small world to compile against: two namespaces, pods on two nodes, named ports. ---
const namespaces = new Map([
  ['x', { team: 'shop' }],
  ['y', { team: 'pay' }],
]);
const pods: PlacedPod[] = ['x', 'y'].flatMap((ns, i) =>
  ['a', 'b'].map((n, j) => ({
    namespace: ns,
    name: n,
    node: j === 0 ? 'n1' : 'n2',
    labels: { app: j === 0 ? 'web' : 'db', tier: 'web', 'example.com/role': 'pay' },
    addresses: [parseIp(`10.244.${i}.${j + 2}`, 'a'), parseIp(`fd00:10:244::${i}:${j + 2}`, 'a')],
    ports: [
      { name: 'http', port: 80 + j, protocol: 'TCP' as Protocol },
      { name: 'dns', port: 53, protocol: 'UDP' as Protocol },
    ],
  })),
);

function worldOf(policies: Policy[]): World {
  return {
    namespaces,
    networkPolicies: policies.filter((p): p is NetworkPolicy => p.kind === 'NetworkPolicy'),
    adminPolicies: policies.filter((p): p is AdminPolicy => p.kind === 'AdminNetworkPolicy'),
    baseline: (policies.find((p) => p.kind === 'BaselineAdminNetworkPolicy') as AdminPolicy | undefined) ?? null,
  };
}

/** Compiles for both nodes and checks that the agent would take every pod and set as sent (WatchNodePolicy's shape). */
function compileAndCheckAsAgent(policies: Policy[]): void {
  for (const node of ['n1', 'n2']) {
    const compiled = compileNodePolicy(worldOf(policies), pods, node);
    const held = new Set<string>();
    for (const [setName, cidrs] of compiled.sets) {
      const c = checkAddressSet({ name: setName, cidrs });
      assert.equal(c.refused, undefined, `the agent refuses set ${setName}: ${c.refused}`);
      held.add(setName);
    }
    for (const p of compiled.pods) {
      const entries = (es: typeof p.ingress) =>
        es.map((e) => ({
          tier: e.tier,
          action: e.action,
          peerSet: e.peerSet ?? '',
          protocol: e.protocol ?? '',
          portFrom: e.ports?.from ?? 0,
          portTo: e.ports?.to ?? 0,
          source: e.source,
        }));
      const c = checkPod(
        {
          namespace: p.namespace,
          name: p.name,
          addresses: p.addresses,
          ingress: entries(p.ingress),
          egress: entries(p.egress),
        },
        (n) => held.has(n),
      );
      assert.equal(
        c.refused,
        undefined,
        `the agent refuses pod ${p.namespace}/${p.name}, dropping its traffic: ${c.refused}`,
      );
    }
  }
}

test('valid policy objects parse, compile, and compile to what the agent accepts', () => {
  fc.assert(
    fc.property(fc.array(validObject, { minLength: 1, maxLength: 3 }), (objects) => {
      const parsed = objects.map((o) => parseOrInvalid(o));
      const ok = parsed.filter((p): p is Policy => p !== null);
      // A name that is not Kubernetes' or a rule the generator cannot rule out may refuse a few; most must parse.
      compileAndCheckAsAgent(ok);
    }),
    RUNS,
  );
});

test('mutated policy objects: parsed (then compiled, agent-safe) or policy.invalid naming the field; never another error', () => {
  let accepted = 0;
  let refused = 0;
  fc.assert(
    fc.property(fc.array(mutated, { minLength: 1, maxLength: 2 }), (objects) => {
      const ok: Policy[] = [];
      for (const o of objects) {
        const p = parseOrInvalid(o);
        if (p) ok.push(p);
        else refused++;
      }
      accepted += ok.length;
      compileAndCheckAsAgent(ok);
    }),
    { ...RUNS, numRuns: 600 },
  );
  assert.ok(
    accepted > 0 && refused > 0,
    `accepted ${accepted}, refused ${refused}: the mutations do not reach both sides`,
  );
});

test('arbitrary JSON values: policy.invalid naming a field, never another error', () => {
  fc.assert(
    fc.property(
      fc.oneof(
        fc.jsonValue(),
        fc.record({
          kind: fc.constantFrom('NetworkPolicy', 'AdminNetworkPolicy', 'BaselineAdminNetworkPolicy'),
          metadata: fc.jsonValue(),
          spec: fc.jsonValue(),
        }),
      ),
      (v) => {
        const p = parseOrInvalid(v);
        if (p) compileAndCheckAsAgent([p]);
      },
    ),
    RUNS,
  );
});

test('values nested deeper than JSON.stringify can print, anywhere in an object: policy.invalid, never a RangeError', () => {
  // As ApplyPolicies gets them: JSON text, parsed. One value of a valid object becomes [[[…]]] thousands deep.
  fc.assert(
    fc.property(validObject, fc.nat(), fc.integer({ min: 3000, max: 20000 }), (o, at, depth) => {
      const all = paths(o).filter((p) => p.length > 0);
      const path = all[at % all.length]!;
      const copy = structuredClone(o) as Record<string, unknown>;
      const parent = path.slice(0, -1).reduce<any>((x, k) => x[k], copy);
      parent[path[path.length - 1]!] = '@@deep@@';
      const text = JSON.stringify(copy).replace('"@@deep@@"', '['.repeat(depth) + ']'.repeat(depth));
      const p = parseOrInvalid(JSON.parse(text));
      if (p) compileAndCheckAsAgent([p]);
    }),
    { numRuns: 60, interruptAfterTimeLimit: 2500, includeErrorInReport: true },
  );
});

test('admin rule names (found by the properties above): a string of at most 100 printable characters', () => {
  const banp = (name: unknown) => ({
    kind: 'BaselineAdminNetworkPolicy',
    metadata: { name: 'default' },
    spec: { subject: { namespaces: {} }, ingress: [{ name, action: 'Deny', from: [{ namespaces: {} }] }] },
  });
  assert.equal((parsePolicyObject(banp('deny-all')) as AdminPolicy).ingress[0]!.name, 'deny-all');
  for (const bad of [{ toString: 1 }, 7, 'a\n-A FORWARD -j ACCEPT', 'x'.repeat(101)]) {
    assert.throws(
      () => parsePolicyObject(banp(bad)),
      (err: unknown) =>
        err instanceof DomainError &&
        /^spec\.ingress\[0\]\.name: .* must be a string of at most 100 printable characters/.test(err.message),
      String(JSON.stringify(bad)),
    );
  }
});
