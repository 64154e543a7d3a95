import { test } from 'node:test';
import assert from 'node:assert/strict';
import { explain, type Endpoint, type Pod, type World } from './evaluate.js';
import { parseIp, parsePolicyObject, type AdminPolicy, type NetworkPolicy, type Protocol } from './model.js';

/**
 * The Kubernetes NetworkPolicy and admin policy semantics, rule by rule, on a small cluster: namespaces x, y, z, each
 * with pods a, b, c (label pod=<name>); every pod names port 80/TCP "http" and 81/UDP "dns".
 */
const NS = ['x', 'y', 'z'];
const pods: Pod[] = NS.flatMap((ns, i) =>
  ['a', 'b', 'c'].map((name, j) => ({
    namespace: ns,
    name,
    labels: { pod: name, ...(name === 'a' ? { tier: 'web' } : {}) },
    addresses: [parseIp(`10.244.${i}.${j + 10}`, 'ip')],
    ports: [
      { name: 'http', port: 80, protocol: 'TCP' as Protocol },
      { name: 'dns', port: 81, protocol: 'UDP' as Protocol },
    ],
  })),
);
const pod = (id: string): Endpoint => {
  const [ns, name] = id.split('/');
  const p = pods.find((q) => q.namespace === ns && q.name === name)!;
  return { kind: 'pod', pod: p, address: p.addresses[0]! };
};
const outside = (ip: string): Endpoint => ({ kind: 'external', address: parseIp(ip, 'ip') });

function world(objects: unknown[]): World {
  const parsed = objects.map((o) => parsePolicyObject(o));
  return {
    namespaces: new Map(NS.map((n) => [n, { ns: n, ...(n === 'x' ? { team: 'shop' } : {}) }])),
    networkPolicies: parsed.filter((p): p is NetworkPolicy => p.kind === 'NetworkPolicy'),
    adminPolicies: parsed.filter((p): p is AdminPolicy => p.kind === 'AdminNetworkPolicy'),
    baseline: (parsed.find((p) => p.kind === 'BaselineAdminNetworkPolicy') as AdminPolicy | undefined) ?? null,
  };
}
const np = (ns: string, name: string, spec: Record<string, unknown>) => ({
  apiVersion: 'networking.k8s.io/v1',
  kind: 'NetworkPolicy',
  metadata: { namespace: ns, name },
  spec,
});
const ok = (w: World, from: string, to: string, port = 80, proto: Protocol = 'TCP') =>
  explain(w, from.includes('/') ? pod(from) : outside(from), to.includes('/') ? pod(to) : outside(to), port, proto)
    .allowed;

test('no policy: everything is allowed', () => {
  const w = world([]);
  assert.ok(ok(w, 'x/a', 'y/b'));
  assert.equal(explain(w, pod('x/a'), pod('y/b'), 80, 'TCP').ingress.tier, 'default');
});

test('default deny once a policy selects a pod for a direction; the other direction is untouched', () => {
  const w = world([np('x', 'deny-in', { podSelector: {}, policyTypes: ['Ingress'] })]);
  assert.ok(!ok(w, 'y/a', 'x/b'));
  assert.ok(!ok(w, 'x/a', 'x/b'), 'pods of the same namespace too');
  assert.ok(ok(w, 'x/a', 'y/b'), 'egress from x is not affected');
  const e = explain(w, pod('y/a'), pod('x/b'), 80, 'TCP');
  assert.equal(e.ingress.policy, 'NetworkPolicy/x/deny-in');
  assert.match(e.ingress.reason, /deny-in selects x\/b for ingress/);
});

test('policyTypes defaulting: a policy with egress rules and no policyTypes affects ingress and egress; ingress: [] denies, [{}] allows', () => {
  const w = world([
    np('x', 'eg', {
      podSelector: { matchLabels: { pod: 'a' } },
      egress: [{ to: [{ namespaceSelector: { matchLabels: { ns: 'y' } } }] }],
    }),
  ]);
  assert.ok(!ok(w, 'y/a', 'x/a'), 'ingress defaulted in: nothing admits it');
  assert.ok(ok(w, 'x/a', 'y/c'), 'egress to y allowed');
  assert.ok(!ok(w, 'x/a', 'z/c'), 'egress elsewhere denied');
  assert.ok(ok(w, 'x/b', 'z/c'), 'x/b is not selected');
  const emptyEgress = world([np('x', 'e0', { podSelector: {}, egress: [] })]);
  assert.ok(ok(emptyEgress, 'x/a', 'y/a'), 'egress: [] without policyTypes does not affect egress');
  assert.ok(!ok(emptyEgress, 'y/a', 'x/a'), 'but ingress is affected');
  const allowAll = world([np('x', 'all', { podSelector: {}, ingress: [{}] })]);
  assert.ok(ok(allowAll, 'z/c', 'x/a', 9999, 'UDP'), 'an empty rule admits every peer and port');
  assert.ok(ok(allowAll, '192.0.2.7', 'x/a'), 'and the outside');
});

test("podSelector and namespaceSelector are ANDed within one peer, peers are ORed; podSelector alone means the policy's namespace", () => {
  const and = world([
    np('x', 'p', {
      podSelector: {},
      ingress: [
        { from: [{ namespaceSelector: { matchLabels: { ns: 'y' } }, podSelector: { matchLabels: { pod: 'b' } } }] },
      ],
    }),
  ]);
  assert.deepEqual(
    ['y/a', 'y/b', 'z/b', 'x/b'].map((f) => ok(and, f, 'x/a')),
    [false, true, false, false],
  );
  const or = world([
    np('x', 'p', {
      podSelector: {},
      ingress: [
        { from: [{ namespaceSelector: { matchLabels: { ns: 'y' } } }, { podSelector: { matchLabels: { pod: 'b' } } }] },
      ],
    }),
  ]);
  assert.deepEqual(
    ['y/a', 'y/b', 'z/b', 'x/b', 'x/c'].map((f) => ok(or, f, 'x/a')),
    [true, true, false, true, false],
  );
  const allNs = world([np('x', 'p', { podSelector: {}, ingress: [{ from: [{ namespaceSelector: {} }] }] })]);
  assert.ok(
    ok(allNs, 'z/c', 'x/a') && !ok(allNs, '192.0.2.7', 'x/a'),
    'namespaceSelector: {} is every pod of every namespace, not the outside',
  );
  const ownNs = world([np('x', 'p', { podSelector: {}, ingress: [{ from: [{ podSelector: {} }] }] })]);
  assert.ok(
    ok(ownNs, 'x/c', 'x/a') && !ok(ownNs, 'y/c', 'x/a'),
    "podSelector: {} is every pod of the policy's namespace",
  );
});

test('matchExpressions: In, NotIn, Exists, DoesNotExist', () => {
  const sel = (expr: unknown) =>
    world([
      np('x', 'p', {
        podSelector: {},
        ingress: [{ from: [{ namespaceSelector: {}, podSelector: { matchExpressions: [expr] } }] }],
      }),
    ]);
  assert.deepEqual(
    ['y/a', 'y/b', 'y/c'].map((f) => ok(sel({ key: 'pod', operator: 'In', values: ['a', 'c'] }), f, 'x/a')),
    [true, false, true],
  );
  assert.deepEqual(
    ['y/a', 'y/b', 'y/c'].map((f) => ok(sel({ key: 'pod', operator: 'NotIn', values: ['a', 'c'] }), f, 'x/a')),
    [false, true, false],
  );
  assert.deepEqual(
    ['y/a', 'y/b'].map((f) => ok(sel({ key: 'tier', operator: 'Exists' }), f, 'x/b')),
    [true, false],
  );
  assert.deepEqual(
    ['y/a', 'y/b'].map((f) => ok(sel({ key: 'tier', operator: 'DoesNotExist' }), f, 'x/b')),
    [false, true],
  );
});

test('ipBlock with except matches outside addresses and pod addresses alike', () => {
  const w = world([
    np('x', 'p', {
      podSelector: {},
      ingress: [
        {
          from: [
            { ipBlock: { cidr: '10.244.1.0/24', except: ['10.244.1.11/32'] } },
            { ipBlock: { cidr: '192.0.2.0/24' } },
          ],
        },
      ],
    }),
  ]);
  assert.deepEqual(
    ['y/a', 'y/b', 'y/c', 'z/a', '192.0.2.9', '198.51.100.9'].map((f) => ok(w, f, 'x/a')),
    [true, false, true, false, true, false],
  );
});

test('ports: protocol, number, endPort range, and named ports resolved on the destination pod', () => {
  const w = world([
    np('x', 'p', {
      podSelector: {},
      ingress: [{ ports: [{ port: 'http' }, { protocol: 'UDP', port: 1000, endPort: 1010 }, { protocol: 'SCTP' }] }],
    }),
  ]);
  assert.ok(ok(w, 'y/a', 'x/a', 80, 'TCP'), 'named http is 80/TCP on x/a');
  assert.ok(!ok(w, 'y/a', 'x/a', 80, 'UDP'), 'a name carries its protocol');
  assert.ok(ok(w, 'y/a', 'x/a', 1005, 'UDP') && !ok(w, 'y/a', 'x/a', 1011, 'UDP') && !ok(w, 'y/a', 'x/a', 1005, 'TCP'));
  assert.ok(ok(w, 'y/a', 'x/a', 4242, 'SCTP'), 'a protocol without a port is every port');
  // Egress with a named port: resolved on the destination, so it matches pods that name it and nothing outside.
  const eg = world([
    np('y', 'e', { podSelector: {}, policyTypes: ['Egress'], egress: [{ ports: [{ protocol: 'UDP', port: 'dns' }] }] }),
  ]);
  assert.ok(
    ok(eg, 'y/a', 'x/b', 81, 'UDP') && !ok(eg, 'y/a', 'x/b', 80, 'UDP') && !ok(eg, 'y/a', '192.0.2.53', 81, 'UDP'),
  );
});

test('admin tier: Deny and Allow override namespace policies, Pass defers to them, lower priority numbers first; the baseline applies only where no namespace policy selects', () => {
  const anp = (name: string, priority: number, rules: unknown[]) => ({
    apiVersion: 'policy.networking.k8s.io/v1alpha1',
    kind: 'AdminNetworkPolicy',
    metadata: { name },
    spec: { priority, subject: { namespaces: { matchLabels: { ns: 'x' } } }, ingress: rules },
  });
  const allowAllX = np('x', 'all', { podSelector: {}, ingress: [{}] });
  const deny = world([
    allowAllX,
    anp('deny-z', 10, [{ name: 'no-z', action: 'Deny', from: [{ namespaces: { matchLabels: { ns: 'z' } } }] }]),
  ]);
  assert.ok(!ok(deny, 'z/a', 'x/a') && ok(deny, 'y/a', 'x/a'));
  assert.equal(
    explain(deny, pod('z/a'), pod('x/a'), 80, 'TCP').ingress.reason,
    'denied by ingress rule no-z of admin policy deny-z (priority 10)',
  );
  const denyX = np('x', 'none', { podSelector: {}, ingress: [] });
  const allow = world([
    denyX,
    anp('allow-y', 5, [
      {
        name: 'y-web',
        action: 'Allow',
        from: [
          { pods: { namespaceSelector: { matchLabels: { ns: 'y' } }, podSelector: { matchLabels: { tier: 'web' } } } },
        ],
        ports: [{ portNumber: { protocol: 'TCP', port: 80 } }],
      },
    ]),
  ]);
  assert.deepEqual(
    [ok(allow, 'y/a', 'x/b', 80), ok(allow, 'y/a', 'x/b', 81), ok(allow, 'y/b', 'x/b', 80)],
    [true, false, false],
  );
  const pass = world([
    denyX,
    anp('pass-y', 1, [{ name: 'pass', action: 'Pass', from: [{ namespaces: { matchLabels: { ns: 'y' } } }] }]),
    anp('allow-all', 2, [{ name: 'all', action: 'Allow', from: [{ namespaces: {} }] }]),
  ]);
  assert.ok(!ok(pass, 'y/a', 'x/a'), 'Pass skips the later admin Allow: the namespace policy denies');
  assert.ok(ok(pass, 'z/a', 'x/a'), 'z is not passed: the priority-2 Allow decides');
  const baseline = (action: string) => ({
    apiVersion: 'policy.networking.k8s.io/v1alpha1',
    kind: 'BaselineAdminNetworkPolicy',
    metadata: { name: 'default' },
    spec: {
      subject: { namespaces: {} },
      ingress: [{ name: 'base', action, from: [{ namespaces: { matchLabels: { ns: 'z' } } }] }],
    },
  });
  const base = world([baseline('Deny'), np('y', 'all-y', { podSelector: {}, ingress: [{}] })]);
  assert.ok(!ok(base, 'z/a', 'x/a'), 'no namespace policy selects x/a: the baseline denies');
  assert.ok(ok(base, 'z/a', 'y/a'), 'a namespace policy selects y/a and allows: the baseline is not reached');
  assert.equal(explain(base, pod('z/a'), pod('x/a'), 80, 'TCP').ingress.tier, 'baseline');
});

test('an invalid policy is refused whole, with the path of the bad field', () => {
  const bad = (spec: unknown, field: RegExp) =>
    assert.throws(
      () => parsePolicyObject(np('x', 'p', spec as Record<string, unknown>)),
      (e: Error) => field.test(e.message),
    );
  bad(
    { podSelector: {}, ingress: [{ from: [{ ipBlock: { cidr: '10.0.0.0/33' } }] }] },
    /^spec\.ingress\[0\]\.from\[0\]\.ipBlock\.cidr: /,
  );
  bad(
    { podSelector: {}, ingress: [{ from: [{ ipBlock: { cidr: '10.0.0.0/8', except: ['11.0.0.0/16'] } }] }] },
    /^spec\.ingress\[0\]\.from\[0\]\.ipBlock\.except\[0\]: must lie strictly inside/,
  );
  bad(
    { podSelector: {}, ingress: [{ ports: [{ port: 'http', endPort: 90 }] }] },
    /^spec\.ingress\[0\]\.ports\[0\]\.endPort: needs a numeric port/,
  );
  bad({ podSelector: {}, ingress: [{ ports: [{ port: 100, endPort: 90 }] }] }, /endPort: 90 is below port 100/);
  bad(
    { podSelector: {}, ingress: [{ ports: [{ protocol: 'ICMP' }] }] },
    /ports\[0\]\.protocol: "ICMP" is not one of TCP, UDP, SCTP/,
  );
  bad(
    { podSelector: { matchExpressions: [{ key: 'a', operator: 'In', values: [] }] } },
    /^spec\.podSelector\.matchExpressions\[0\]\.values: must not be empty/,
  );
  bad({ podSelector: {}, ingress: [{ from: [{}] }] }, /^spec\.ingress\[0\]\.from\[0\]: a peer needs/);
  bad({ podSelector: {}, policyTypes: ['Sideways'] }, /^spec\.policyTypes\[0\]/);
  bad({ ingress: [] }, /^spec\.podSelector: is required/);
  bad({ podSelector: {}, ingres: [] }, /^spec\.ingres: is not a field here/);
  assert.throws(
    () =>
      parsePolicyObject({
        kind: 'AdminNetworkPolicy',
        metadata: { name: 'a' },
        spec: { priority: 1001, subject: { namespaces: {} } },
      }),
    (e: Error) => /^spec\.priority: /.test(e.message),
  );
  assert.throws(
    () => parsePolicyObject({ kind: 'Service', metadata: { name: 'a' } }),
    (e: Error) => /^kind: "Service" is not/.test(e.message),
  );
});
