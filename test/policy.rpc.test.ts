import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { status } from '@grpc/grpc-js';
import pg from 'pg';
import { createClient, type PromiseClient } from '../lib/grpc/client.js';
import { PolicyServiceService } from '../gen/weft/policy/v1/policy.js';
import { startTestControlPlane, type TestControlPlane } from './support/control-plane.js';

/** The policy service over gRPC on PostgreSQL: namespaces, pods and policies in, verdicts with their deciding rule out. */
let cp: TestControlPlane;
let policy: PromiseClient<typeof PolicyServiceService>;
before(async () => {
  cp = await startTestControlPlane();
  policy = createClient(PolicyServiceService, cp.address, { security: cp.security });
});
after(async () => {
  policy?.close();
  await cp?.stop();
});

const np = (ns: string, name: string, spec: unknown) =>
  JSON.stringify({
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata: { namespace: ns, name },
    spec,
  });
const invalid = (field: RegExp) => (e: { code: number; details: string }) =>
  e.code === status.INVALID_ARGUMENT && field.test(e.details);

test('namespaces, pods and policies in; Explain says which rule decided; a label change, a new policy and a deleted one change the verdict', async () => {
  await policy.upsertNamespace({ name: 'shop', labels: { team: 'shop' } });
  await policy.upsertNamespace({ name: 'ops', labels: { team: 'ops' } });
  await policy.upsertPod({
    pod: {
      namespace: 'shop',
      name: 'web',
      labels: { app: 'web' },
      node: 'node1',
      addresses: ['10.244.0.10'],
      ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
    },
  });
  await policy.upsertPod({
    pod: { namespace: 'shop', name: 'db', labels: { app: 'db' }, node: 'node2', addresses: ['10.244.1.10'], ports: [] },
  });
  await policy.upsertPod({
    pod: {
      namespace: 'ops',
      name: 'probe',
      labels: { app: 'probe' },
      node: 'node3',
      addresses: ['10.244.2.10'],
      ports: [],
    },
  });

  const before = await policy.explain({ from: 'ops/probe', to: 'shop/web', port: 8080, protocol: 'TCP' });
  assert.equal(before.allowed, true);
  assert.equal(before.ingress!.tier, 'default');

  const { applied, revision } = await policy.applyPolicies({
    objectsJson: [
      np('shop', 'web-from-shop', {
        podSelector: { matchLabels: { app: 'web' } },
        ingress: [{ from: [{ podSelector: {} }], ports: [{ port: 'http' }] }],
      }),
    ],
  });
  assert.deepEqual(applied, [{ kind: 'NetworkPolicy', namespace: 'shop', name: 'web-from-shop' }]);
  const denied = await policy.explain({ from: 'ops/probe', to: 'shop/web', port: 8080 });
  assert.equal(denied.allowed, false);
  assert.equal(denied.ingress!.policy, 'NetworkPolicy/shop/web-from-shop');
  assert.ok(denied.revision >= revision);
  const fromShop = await policy.explain({ from: '10.244.1.10', to: '10.244.0.10', port: 8080 });
  assert.deepEqual(
    [fromShop.allowed, fromShop.ingress!.rule],
    [true, 'ingress[0]'],
    'addresses resolve to their pods; the named port resolves on web',
  );
  assert.equal(
    (await policy.explain({ from: 'shop/db', to: 'shop/web', port: 9090 })).allowed,
    false,
    'only the named port',
  );

  // A label change: the probe moves into a namespace the policy admits.
  await policy.applyPolicies({
    objectsJson: [
      np('shop', 'web-from-ops', {
        podSelector: { matchLabels: { app: 'web' } },
        ingress: [
          {
            from: [
              { namespaceSelector: { matchLabels: { team: 'ops' } }, podSelector: { matchLabels: { app: 'probe' } } },
            ],
          },
        ],
      }),
    ],
  });
  assert.equal((await policy.explain({ from: 'ops/probe', to: 'shop/web', port: 8080 })).allowed, true);
  await policy.upsertPod({
    pod: {
      namespace: 'ops',
      name: 'probe',
      labels: { app: 'other' },
      node: 'node3',
      addresses: ['10.244.2.10'],
      ports: [],
    },
  });
  assert.equal(
    (await policy.explain({ from: 'ops/probe', to: 'shop/web', port: 8080 })).allowed,
    false,
    'a label change takes effect',
  );
  await policy.deletePolicy({ policy: { kind: 'NetworkPolicy', namespace: 'shop', name: 'web-from-shop' } });
  await policy.deletePolicy({ policy: { kind: 'NetworkPolicy', namespace: 'shop', name: 'web-from-ops' } });
  assert.equal(
    (await policy.explain({ from: 'ops/probe', to: 'shop/web', port: 8080 })).allowed,
    true,
    'with the policies deleted, nothing selects web',
  );

  // Admin tier over the namespace tier, from the outside too.
  await policy.applyPolicies({
    objectsJson: [
      JSON.stringify({
        kind: 'AdminNetworkPolicy',
        metadata: { name: 'no-outside' },
        spec: {
          priority: 10,
          subject: { namespaces: {} },
          ingress: [{ name: 'deny-docs', action: 'Deny', from: [{ namespaces: { matchLabels: { team: 'ops' } } }] }],
        },
      }),
    ],
  });
  const admin = await policy.explain({ from: 'ops/probe', to: 'shop/db', port: 5432 });
  assert.deepEqual(
    [admin.allowed, admin.ingress!.tier, admin.ingress!.policy, admin.ingress!.rule],
    [false, 'admin', 'AdminNetworkPolicy/no-outside', 'deny-docs'],
  );
  const listed = await policy.listPolicies({});
  assert.deepEqual(
    listed.policies.map((p) => `${p.ref!.kind}/${p.ref!.name}`),
    ['AdminNetworkPolicy/no-outside'],
  );
});

test('an invalid policy is refused whole with the path of the bad field, and nothing is applied', async () => {
  const good = np('shop', 'fine', { podSelector: {}, ingress: [{}] });
  const bad = np('shop', 'broken', {
    podSelector: {},
    ingress: [{ from: [{ ipBlock: { cidr: '10.0.0.0/8', except: ['11.0.0.0/16'] } }] }],
  });
  await assert.rejects(
    policy.applyPolicies({ objectsJson: [good, bad] }),
    invalid(
      /^objects_json\[1\] \(NetworkPolicy broken\): spec\.ingress\[0\]\.from\[0\]\.ipBlock\.except\[0\]: must lie strictly inside 10\.0\.0\.0\/8/,
    ),
  );
  assert.ok(
    !(await policy.listPolicies({ namespace: 'shop' })).policies.some((p) => p.ref!.name === 'fine'),
    'the valid one was not applied either',
  );
  await assert.rejects(
    policy.applyPolicies({ objectsJson: ['{not json'] }),
    invalid(/^objects_json\[0\]: is not JSON/),
  );
  await assert.rejects(policy.applyPolicies({ objectsJson: [] }), invalid(/objects_json: is empty/));
  await assert.rejects(
    policy.upsertPod({
      pod: { namespace: 'shop', name: 'x', labels: {}, node: 'n', addresses: ['10.0.0.300'], ports: [] },
    }),
    invalid(/^pod\.addresses\[0\]: /),
  );
  await assert.rejects(
    policy.explain({ from: 'shop/nope', to: 'shop/web', port: 80 }),
    (e: { code: number }) => e.code === status.NOT_FOUND,
  );
  await assert.rejects(
    policy.explain({ from: 'shop/db', to: 'shop/web', port: 0 }),
    invalid(/^port: 0 is not a port number/),
  );
  await assert.rejects(
    policy.explain({ from: 'shop/db', to: 'shop/web', port: 80, protocol: 'ICMP' }),
    invalid(/^protocol: /),
  );
});

test("WatchNodePolicy: the node's compiled rules at once, again within a bound when a policy or a label changes, nothing for other nodes' changes", async () => {
  await policy.upsertNamespace({ name: 'wa', labels: { team: 'wa' } });
  await policy.upsertNamespace({ name: 'wb', labels: { team: 'wb' } });
  await policy.upsertPod({
    pod: {
      namespace: 'wa',
      name: 'api',
      labels: { app: 'api' },
      node: 'wnode1',
      addresses: ['10.244.7.10'],
      ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
    },
  });
  await policy.upsertPod({
    pod: {
      namespace: 'wb',
      name: 'cli',
      labels: { app: 'cli' },
      node: 'wnode2',
      addresses: ['10.244.8.10'],
      ports: [],
    },
  });
  const stop = new AbortController();
  const stream = policy
    .watchNodePolicy({ node: 'wnode1', sinceRevision: 0 }, { signal: stop.signal })
    [Symbol.asyncIterator]();
  const next = async () => {
    for (;;) {
      const r = await stream.next();
      assert.ok(!r.done);
      if (!r.value.bookmark) return r.value;
    }
  };
  try {
    const first = await next();
    // (The cluster-wide admin policies of the tests above also apply to it.)
    const npEntries = (p: (typeof first.pods)[number]) => p.ingress.filter((e) => e.tier === 'networkpolicy');
    assert.deepEqual(
      first.pods.map((p) => `${p.namespace}/${p.name} ${p.addresses.join(',')} ${npEntries(p).length}`),
      ['wa/api 10.244.7.10 0'],
      "only wnode1's pod, with no NetworkPolicy rules",
    );
    const t0 = performance.now();
    await policy.applyPolicies({
      objectsJson: [
        np('wa', 'api-from-wb', {
          podSelector: { matchLabels: { app: 'api' } },
          ingress: [{ from: [{ namespaceSelector: { matchLabels: { team: 'wb' } } }], ports: [{ port: 'http' }] }],
        }),
      ],
    });
    const second = await next();
    const ms = Math.round(performance.now() - t0);
    console.log(`# WatchNodePolicy: a policy reached the watching node ${ms} ms after ApplyPolicies returned`);
    assert.ok(ms < 3000, `${ms} ms`);
    const [api] = second.pods;
    assert.deepEqual(
      npEntries(api!).map((e) => [e.tier, e.action, e.protocol, e.portFrom, e.portTo]),
      [
        ['networkpolicy', 'allow', 'TCP', 8080, 8080],
        ['networkpolicy', 'deny', '', 0, 0],
      ],
    );
    const set = second.sets.find((s) => s.name === npEntries(api!)[0]!.peerSet);
    assert.deepEqual(
      set?.cidrs,
      ['10.244.8.10/32'],
      "the named port resolved on the pod, the peer namespace as its pods' addresses",
    );
    assert.ok(second.revision >= first.revision);
    // A label change elsewhere that moves a pod into the peer set changes the set (and its name).
    await policy.upsertPod({
      pod: { namespace: 'wb', name: 'cli2', labels: {}, node: 'wnode2', addresses: ['10.244.8.11'], ports: [] },
    });
    const third = await next();
    const set3 = third.sets.find((s) => s.name === npEntries(third.pods[0]!)[0]!.peerSet);
    assert.deepEqual(set3?.cidrs, ['10.244.8.10/31']);
    assert.notEqual(set3!.name, set!.name);
    await assert.rejects(
      policy.watchNodePolicy({ node: '', sinceRevision: 0 })[Symbol.asyncIterator]().next(),
      invalid(/^node: /),
    );
  } finally {
    stop.abort();
    await stream.return?.(undefined).catch(() => {});
  }
});

test('WatchNodePolicy with accept_deltas: complete first, then only the pods and sets that changed, and what went', async () => {
  await policy.upsertNamespace({ name: 'da', labels: { team: 'da' } });
  for (const name of ['p1', 'p2', 'p3']) {
    await policy.upsertPod({
      pod: {
        namespace: 'da',
        name,
        labels: { app: name },
        node: 'dnode',
        addresses: [`10.244.9.${name.slice(1)}`],
        ports: [],
      },
    });
  }
  await policy.applyPolicies({
    objectsJson: [
      np('da', 'p1-from-p2', {
        podSelector: { matchLabels: { app: 'p1' } },
        ingress: [{ from: [{ podSelector: { matchLabels: { app: 'p2' } } }] }],
      }),
    ],
  });
  const stop = new AbortController();
  const stream = policy
    .watchNodePolicy({ node: 'dnode', sinceRevision: 0, acceptDeltas: true }, { signal: stop.signal })
    [Symbol.asyncIterator]();
  const next = async () => {
    for (;;) {
      const r = await stream.next();
      assert.ok(!r.done);
      if (!r.value.bookmark) return r.value;
    }
  };
  const npEntries = (p: { ingress: { tier: string; peerSet: string }[] }) =>
    p.ingress.filter((e) => e.tier === 'networkpolicy');
  try {
    const first = await next();
    assert.equal(first.delta, false, 'the first message is complete');
    assert.deepEqual(
      first.pods.map((p) => p.name),
      ['p1', 'p2', 'p3'],
    );
    const oldSet = npEntries(first.pods[0]!)[0]!.peerSet;
    // p3 takes p2's label: p1's peer set changes (a new set), p3's own rules do not.
    await policy.upsertPod({
      pod: { namespace: 'da', name: 'p3', labels: { app: 'p2' }, node: 'dnode', addresses: ['10.244.9.3'], ports: [] },
    });
    const second = await next();
    assert.equal(second.delta, true);
    assert.deepEqual(
      second.pods.map((p) => p.name),
      ['p1'],
      'only the pod whose rules changed',
    );
    const newSet = npEntries(second.pods[0]!)[0]!.peerSet;
    assert.deepEqual(
      second.sets.map((s) => [s.name, s.cidrs]),
      [[newSet, ['10.244.9.2/31']]],
      'only the new set',
    );
    assert.deepEqual(second.removedSets, [oldSet], 'and the set no entry names any more');
    await policy.deletePod({ namespace: 'da', name: 'p2' });
    const third = await next();
    assert.equal(third.delta, true);
    assert.deepEqual(
      third.removedPods.filter((p) => p === 'da/p2'),
      ['da/p2'],
      'a deleted pod is named',
    );
  } finally {
    stop.abort();
    await stream.return?.(undefined).catch(() => {});
  }
});

test("AttachPod and DetachPod: an agent's reports keep the controller's labels, select a pod no controller described, and never touch a newer sandbox", async () => {
  await policy.upsertNamespace({ name: 'att', labels: { team: 'att' } });
  await policy.applyPolicies({ objectsJson: [np('att', 'deny-all', { podSelector: {}, policyTypes: ['Ingress'] })] });

  // A pod no controller described yet is selected by its namespace's policies from its attachment on.
  const first = await policy.attachPod({
    namespace: 'att',
    name: 'fresh',
    node: 'node1',
    containerId: 'c1',
    addresses: ['10.244.7.1'],
    resync: false,
  });
  assert.equal(first.known, false, 'the pod was unknown before');
  const deny = await policy.explain({ from: '10.244.7.9', to: 'att/fresh', port: 80 });
  assert.deepEqual([deny.allowed, deny.ingress!.policy], [false, 'NetworkPolicy/att/deny-all']);

  // The controller's labels and ports are kept by a later attachment; a re-attachment replaces addresses and node.
  await policy.upsertPod({
    pod: {
      namespace: 'att',
      name: 'web',
      labels: { app: 'web' },
      node: '',
      addresses: [],
      ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
    },
  });
  const known = await policy.attachPod({
    namespace: 'att',
    name: 'web',
    node: 'node2',
    containerId: 's1',
    addresses: ['10.244.7.2'],
    resync: false,
  });
  assert.equal(known.known, true);
  await policy.applyPolicies({
    objectsJson: [
      np('att', 'web-http', { podSelector: { matchLabels: { app: 'web' } }, ingress: [{ ports: [{ port: 'http' }] }] }),
    ],
  });
  assert.equal(
    (await policy.explain({ from: '10.244.7.9', to: '10.244.7.2', port: 8080 })).allowed,
    true,
    'labels and the named port survive the attachment',
  );

  // An unchanged re-report takes no revision; a resync report never replaces a newer sandbox.
  const again = await policy.attachPod({
    namespace: 'att',
    name: 'web',
    node: 'node2',
    containerId: 's1',
    addresses: ['10.244.7.2'],
    resync: true,
  });
  assert.equal(again.revision, known.revision, 'nothing changed, no new revision');
  await policy.attachPod({
    namespace: 'att',
    name: 'web',
    node: 'node3',
    containerId: 's2',
    addresses: ['10.244.7.3'],
    resync: false,
  });
  await policy.attachPod({
    namespace: 'att',
    name: 'web',
    node: 'node2',
    containerId: 's1',
    addresses: ['10.244.7.2'],
    resync: true,
  });
  assert.equal((await policy.explain({ from: '10.244.7.9', to: 'att/web', port: 8080 })).allowed, true);
  const oldAddress = await policy.explain({ from: '10.244.7.9', to: '10.244.7.2', port: 1 });
  assert.equal(
    oldAddress.ingress!.tier,
    'default',
    "the old sandbox's address belongs to no pod: the resync report did not win",
  );

  // A late detach of the old sandbox changes nothing; the current sandbox's detach clears the described pod and
  // deletes the undescribed one.
  assert.deepEqual(await policy.detachPod({ containerId: 's1' }), {
    namespace: '',
    name: '',
    deleted: false,
    revision: 0,
  });
  assert.equal(
    (await policy.explain({ from: '10.244.7.9', to: 'att/web', port: 8080 })).allowed,
    true,
    'still attached under s2',
  );
  const gone = await policy.detachPod({ containerId: 's2' });
  assert.deepEqual([gone.namespace, gone.name, gone.deleted], ['att', 'web', false]);
  await assert.rejects(
    policy.explain({ from: '10.244.7.9', to: 'att/web', port: 8080 }),
    (e: { code: number }) => e.code === status.FAILED_PRECONDITION,
    'web is kept (described) without an address',
  );
  const fresh = await policy.detachPod({ containerId: 'c1' });
  assert.deepEqual([fresh.name, fresh.deleted], ['fresh', true]);
  await assert.rejects(
    policy.explain({ from: '10.244.7.9', to: 'att/fresh', port: 80 }),
    (e: { code: number }) => e.code === status.NOT_FOUND,
  );

  // Bad reports are refused with the field to fix.
  await assert.rejects(
    policy.attachPod({
      namespace: 'att',
      name: 'x',
      node: '',
      containerId: 'c9',
      addresses: ['10.244.7.9'],
      resync: false,
    }),
    invalid(/^node: /),
  );
  await assert.rejects(
    policy.attachPod({
      namespace: 'att',
      name: 'x',
      node: 'n',
      containerId: 'c9',
      addresses: ['10.244.7.300'],
      resync: false,
    }),
    invalid(/^addresses\[0\]: /),
  );
  await assert.rejects(
    policy.attachPod({
      namespace: 'Att',
      name: 'x',
      node: 'n',
      containerId: 'c9',
      addresses: ['10.244.7.9'],
      resync: false,
    }),
    invalid(/^namespace: /),
  );
  await assert.rejects(policy.detachPod({ containerId: '' }), invalid(/^container_id: /));
});

/** Reads a node's compiled rules once (the first, complete message of a WatchNodePolicy stream). */
async function compiledOn(node: string) {
  const stop = new AbortController();
  const stream = policy.watchNodePolicy({ node, sinceRevision: 0 }, { signal: stop.signal })[Symbol.asyncIterator]();
  try {
    for (;;) {
      const r = await stream.next();
      assert.ok(!r.done);
      if (!r.value.bookmark) return r.value;
    }
  } finally {
    stop.abort();
    await stream.return?.(undefined).catch(() => {});
  }
}

const listAllPods = async (namespace: string, pageSize: number) => {
  const pods: Awaited<ReturnType<typeof policy.listPods>>['pods'] = [];
  let pageToken = '';
  let pages = 0;
  do {
    const page = await policy.listPods({ namespace, pageSize, pageToken });
    assert.ok(page.pods.length <= pageSize, `a page holds at most page_size pods, not ${page.pods.length}`);
    pods.push(...page.pods);
    pageToken = page.nextPageToken;
    pages++;
  } while (pageToken);
  return { pods, pages };
};

test("UpsertPod with keep_attachment (a controller) after AttachPod: labels and ports set, the attachment's node and addresses kept, the rules select the pod", async () => {
  await policy.upsertNamespace({ name: 'kc', labels: {} });
  await policy.applyPolicies({
    objectsJson: [
      np('kc', 'web-from-client', {
        podSelector: { matchLabels: { app: 'web' } },
        ingress: [{ from: [{ podSelector: { matchLabels: { app: 'client' } } }], ports: [{ port: 'http' }] }],
      }),
    ],
  });
  await policy.attachPod({
    namespace: 'kc',
    name: 'web',
    node: 'kcnode1',
    containerId: 'kc-s1',
    addresses: ['10.244.20.1'],
    resync: false,
  });
  await policy.attachPod({
    namespace: 'kc',
    name: 'client',
    node: 'kcnode2',
    containerId: 'kc-s2',
    addresses: ['10.244.20.2'],
    resync: false,
  });
  const npEntries = (p: { ingress: { tier: string; action: string; peerSet: string; portFrom: number }[] }) =>
    p.ingress.filter((e) => e.tier === 'networkpolicy');
  const undescribed = await compiledOn('kcnode1');
  assert.deepEqual(
    undescribed.pods.map((p) => [p.name, p.addresses, npEntries(p).length]),
    [['web', ['10.244.20.1'], 0]],
    'without labels no policy selects web',
  );

  // The controller knows labels, named ports and spec.nodeName (here a stale one), not the addresses.
  const web = await policy.upsertPod({
    pod: {
      namespace: 'kc',
      name: 'web',
      labels: { app: 'web' },
      node: 'kcnode9',
      addresses: [],
      ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
    },
    keepAttachment: true,
  });
  await policy.upsertPod({
    pod: { namespace: 'kc', name: 'client', labels: { app: 'client' }, node: 'kcnode2', addresses: [], ports: [] },
    keepAttachment: true,
  });
  const described = await compiledOn('kcnode1');
  const [w] = described.pods;
  assert.deepEqual(
    [w?.name, w?.addresses],
    ['web', ['10.244.20.1']],
    "web stays on its attachment's node with its address",
  );
  assert.deepEqual(
    npEntries(w!).map((e) => [e.action, e.portFrom]),
    [
      ['allow', 8080],
      ['deny', 0],
    ],
    'the policy selects web by its label, the named port resolved',
  );
  assert.deepEqual(
    described.sets.find((s) => s.name === npEntries(w!)[0]!.peerSet)?.cidrs,
    ['10.244.20.2/32'],
    'the peer set holds client by its label and attached address',
  );
  const allowed = await policy.explain({ from: '10.244.20.2', to: '10.244.20.1', port: 8080 });
  assert.deepEqual([allowed.allowed, allowed.ingress!.policy], [true, 'NetworkPolicy/kc/web-from-client']);
  assert.ok(allowed.revision >= web.revision);

  const { pods } = await listAllPods('kc', 10);
  assert.deepEqual(
    pods.map((p) => [p.name, p.node, p.addresses, p.described, p.containerId, p.labels, p.ports.map((x) => x.name)]),
    [
      ['client', 'kcnode2', ['10.244.20.2'], true, 'kc-s2', { app: 'client' }, []],
      ['web', 'kcnode1', ['10.244.20.1'], true, 'kc-s1', { app: 'web' }, ['http']],
    ],
  );

  await assert.rejects(
    policy.upsertPod({
      pod: { namespace: 'kc', name: 'web', labels: {}, node: 'kcnode1', addresses: ['10.244.20.1'], ports: [] },
      keepAttachment: true,
    }),
    invalid(/^pod\.addresses: must be empty with keep_attachment/),
  );
  // Without keep_attachment, UpsertPod still replaces node and addresses.
  await policy.upsertPod({
    pod: {
      namespace: 'kc',
      name: 'client',
      labels: { app: 'client' },
      node: 'kcnode3',
      addresses: ['10.244.20.3'],
      ports: [],
    },
  });
  const replaced = (await listAllPods('kc', 10)).pods.find((p) => p.name === 'client');
  assert.deepEqual([replaced?.node, replaced?.addresses], ['kcnode3', ['10.244.20.3']]);
});

test('UpsertPod with keep_attachment before AttachPod: the pod waits on its node without addresses, the attachment adds them and keeps the labels', async () => {
  await policy.upsertNamespace({ name: 'kd', labels: {} });
  await policy.applyPolicies({
    objectsJson: [np('kd', 'deny-web', { podSelector: { matchLabels: { app: 'web' } }, policyTypes: ['Ingress'] })],
  });
  await policy.upsertPod({
    pod: { namespace: 'kd', name: 'web', labels: { app: 'web' }, node: 'kdnode1', addresses: [], ports: [] },
    keepAttachment: true,
  });
  const [waiting] = (await listAllPods('kd', 10)).pods;
  assert.deepEqual(
    [waiting?.node, waiting?.addresses, waiting?.described, waiting?.containerId],
    ['kdnode1', [], true, ''],
  );
  assert.deepEqual(
    (await compiledOn('kdnode1')).pods.map((p) => [p.name, p.addresses]),
    [['web', []]],
    'reported on the node, no address yet',
  );
  await assert.rejects(
    policy.explain({ from: '10.244.21.9', to: 'kd/web', port: 80 }),
    (e: { code: number }) => e.code === status.FAILED_PRECONDITION,
  );

  const attached = await policy.attachPod({
    namespace: 'kd',
    name: 'web',
    node: 'kdnode1',
    containerId: 'kd-s1',
    addresses: ['10.244.21.1'],
    resync: false,
  });
  assert.equal(attached.known, true);
  const denied = await policy.explain({ from: '10.244.21.9', to: '10.244.21.1', port: 80 });
  assert.deepEqual(
    [denied.allowed, denied.ingress!.policy],
    [false, 'NetworkPolicy/kd/deny-web'],
    "the address is web's, with the controller's labels",
  );

  // The controller re-describes with a changed label: the address stays, the policy no longer selects it.
  await policy.upsertPod({
    pod: { namespace: 'kd', name: 'web', labels: { app: 'other' }, node: 'kdnode1', addresses: [], ports: [] },
    keepAttachment: true,
  });
  const relabelled = await policy.explain({ from: '10.244.21.9', to: '10.244.21.1', port: 80 });
  assert.deepEqual([relabelled.allowed, relabelled.ingress!.tier], [true, 'default']);
  // A detached pod (no sandbox) takes the node the controller gives again.
  await policy.detachPod({ containerId: 'kd-s1' });
  await policy.upsertPod({
    pod: { namespace: 'kd', name: 'web', labels: { app: 'other' }, node: 'kdnode2', addresses: [], ports: [] },
    keepAttachment: true,
  });
  const [moved] = (await listAllPods('kd', 10)).pods;
  assert.deepEqual([moved?.node, moved?.addresses, moved?.containerId], ['kdnode2', [], '']);
});

test('UpsertPod with keep_attachment re-sent unchanged takes no revision and wakes no watcher', async () => {
  const listener = new pg.Client({ connectionString: cp.databaseUrl });
  await listener.connect();
  let notifications = 0;
  listener.on('notification', () => notifications++);
  await listener.query('LISTEN policy_changes');
  const settle = () => new Promise((r) => setTimeout(r, 300));
  /** NOTIFYs seen while `f` runs and a moment after (they arrive asynchronously, so earlier ones are let in first). */
  const notifiesDuring = async (f: () => Promise<unknown>) => {
    await settle();
    const before = notifications;
    await f();
    await settle();
    return notifications - before;
  };
  try {
    await policy.upsertNamespace({ name: 'ke', labels: {} });
    await policy.attachPod({
      namespace: 'ke',
      name: 'web',
      node: 'kenode1',
      containerId: 'ke-s1',
      addresses: ['10.244.22.1'],
      resync: false,
    });
    const pod = {
      namespace: 'ke',
      name: 'web',
      labels: { app: 'web', tier: 'front' },
      node: 'kenode1',
      addresses: [],
      ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
    };
    let first = { revision: 0 };
    assert.equal(
      await notifiesDuring(async () => {
        first = await policy.upsertPod({ pod, keepAttachment: true });
      }),
      1,
      'describing an attached pod is a change (the listener is live)',
    );
    let again = { revision: 0 };
    // The same labels in another order, and a stale node: still nothing to change.
    assert.equal(
      await notifiesDuring(async () => {
        again = await policy.upsertPod({
          pod: { ...pod, labels: { tier: 'front', app: 'web' }, node: 'kenode7' },
          keepAttachment: true,
        });
      }),
      0,
      'no watcher is woken',
    );
    assert.equal(again.revision, first.revision, "no new revision; the pod's current one");
    let changed = { revision: 0 };
    assert.equal(
      await notifiesDuring(async () => {
        changed = await policy.upsertPod({ pod: { ...pod, ports: [] }, keepAttachment: true });
      }),
      1,
    );
    assert.ok(changed.revision > first.revision, 'a changed port is a new revision');
  } finally {
    await listener.end();
  }
});

test('ListNamespaces and ListPods page: every one exactly once over several pages, one namespace or all, and a token they did not give out is refused', async () => {
  const nsNames = Array.from({ length: 23 }, (_, i) => `lp-${String(i).padStart(2, '0')}`);
  for (const name of nsNames) await policy.upsertNamespace({ name, labels: { page: name } });
  const seen: string[] = [];
  let pageToken = '';
  let pages = 0;
  do {
    const page = await policy.listNamespaces({ pageSize: 10, pageToken });
    assert.ok(page.namespaces.length <= 10);
    seen.push(...page.namespaces.map((n) => n.name));
    for (const n of page.namespaces) if (nsNames.includes(n.name)) assert.deepEqual(n.labels, { page: n.name });
    pageToken = page.nextPageToken;
    pages++;
  } while (pageToken);
  assert.ok(pages >= 3, `${pages} pages`);
  assert.equal(new Set(seen).size, seen.length, 'no namespace twice');
  assert.deepEqual(
    seen.filter((n) => nsNames.includes(n)),
    nsNames,
    'every namespace, by name',
  );

  for (let i = 0; i < 17; i++) {
    await policy.upsertPod({
      pod: {
        namespace: 'lp-01',
        name: `p${String(i).padStart(2, '0')}`,
        labels: {},
        node: 'lpnode',
        addresses: [],
        ports: [],
      },
      keepAttachment: true,
    });
  }
  for (let i = 0; i < 4; i++) {
    await policy.attachPod({
      namespace: 'lp-02',
      name: `q${i}`,
      node: 'lpnode',
      containerId: `lp-c${i}`,
      addresses: [`10.244.23.${i + 1}`],
      resync: false,
    });
  }
  const one = await listAllPods('lp-01', 5);
  assert.equal(one.pages, 4);
  assert.deepEqual(
    one.pods.map((p) => p.name),
    Array.from({ length: 17 }, (_, i) => `p${String(i).padStart(2, '0')}`),
    "the namespace's pods, each once, by name",
  );
  const two = await listAllPods('lp-02', 1000);
  assert.deepEqual(
    two.pods.map((p) => [p.name, p.described, p.containerId, p.addresses]),
    [0, 1, 2, 3].map((i) => [`q${i}`, false, `lp-c${i}`, [`10.244.23.${i + 1}`]]),
    'attached, not described',
  );
  const all = await listAllPods('', 6);
  const keys = all.pods.map((p) => `${p.namespace}/${p.name}`);
  assert.equal(new Set(keys).size, keys.length, 'no pod twice');
  assert.deepEqual(
    keys.filter((k) => k.startsWith('lp-')),
    [...one.pods, ...two.pods].map((p) => `${p.namespace}/${p.name}`),
    "every namespace's pods",
  );
  assert.equal(
    (await policy.listPods({ namespace: 'lp-01', pageSize: 0, pageToken: '' })).pods.length,
    17,
    'page_size 0: a default page (500)',
  );

  const podToken = (await policy.listPods({ namespace: 'lp-01', pageSize: 5, pageToken: '' })).nextPageToken;
  const nsToken = (await policy.listNamespaces({ pageSize: 5, pageToken: '' })).nextPageToken;
  await assert.rejects(
    policy.listPods({ namespace: '', pageSize: 5, pageToken: 'bm9wZQ' }),
    invalid(/page_token is not one this list \(pods\) gave out/),
  );
  await assert.rejects(
    policy.listPods({ namespace: 'lp-02', pageSize: 5, pageToken: podToken }),
    invalid(/page_token is not one this list \(pods of lp-02\) gave out/),
    "another namespace's token",
  );
  await assert.rejects(
    policy.listPods({ namespace: '', pageSize: 5, pageToken: nsToken }),
    invalid(/page_token/),
    "the namespace list's token",
  );
  await assert.rejects(
    policy.listNamespaces({ pageSize: 5, pageToken: podToken }),
    invalid(/page_token is not one this list \(namespaces\) gave out/),
  );
  await assert.rejects(
    policy.listNamespaces({ pageSize: 1001, pageToken: '' }),
    invalid(/page_size 1001 is over 1000/),
  );
  await assert.rejects(policy.listPods({ namespace: 'LP', pageSize: 5, pageToken: '' }), invalid(/^namespace: /));
});

test('300 nodes watching: a change reaches every stream from one shared read of the policy tables, not one read per stream', async () => {
  const nodes = 300;
  await policy.upsertNamespace({ name: 'fan', labels: {} });
  for (let i = 0; i < nodes; i += 50) {
    await Promise.all(
      Array.from({ length: 50 }, (_, j) =>
        policy.upsertPod({
          pod: {
            namespace: 'fan',
            name: `p${i + j}`,
            labels: { app: 'fan' },
            node: `fan-node${i + j}`,
            addresses: [`10.244.${100 + Math.floor((i + j) / 250)}.${(i + j) % 250}`],
            ports: [],
          },
        }),
      ),
    );
  }
  const owner = new pg.Client({ connectionString: cp.databaseUrl });
  await owner.connect();
  // Each snapshot scans policy.policies once; the statistics count scans of every session (flushed within a second).
  const scans = async () => {
    await new Promise((r) => setTimeout(r, 1500));
    await owner.query('SELECT pg_stat_clear_snapshot()');
    const { rows } = await owner.query(
      `SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) AS n FROM pg_stat_user_tables WHERE schemaname = 'policy' AND relname = 'policies'`,
    );
    return Number(rows[0].n);
  };
  const stop = new AbortController();
  const streams = Array.from({ length: nodes }, (_, i) =>
    policy
      .watchNodePolicy({ node: `fan-node${i}`, sinceRevision: 0, acceptDeltas: true }, { signal: stop.signal })
      [Symbol.asyncIterator](),
  );
  const nextRules = async (s: (typeof streams)[number]) => {
    for (;;) {
      const r = await s.next();
      assert.ok(!r.done);
      if (!r.value.bookmark) return r.value;
    }
  };
  try {
    await Promise.all(streams.map(nextRules));
    const before = await scans();
    // A policy that selects every pod of the namespace changes every node's rules.
    await policy.applyPolicies({
      objectsJson: [
        np('fan', 'only-fan', {
          podSelector: { matchLabels: { app: 'fan' } },
          ingress: [{ from: [{ podSelector: { matchLabels: { app: 'fan' } } }] }],
        }),
      ],
    });
    const changed = await Promise.all(streams.map(nextRules));
    assert.ok(
      changed.every((m) => m.delta !== undefined || m.pods.length > 0),
      'every stream got the change',
    );
    const reads = (await scans()) - before;
    assert.ok(
      reads <= 20,
      `${reads} reads of the policy tables for one change to ${nodes} streams (one per stream before they were shared)`,
    );
  } finally {
    stop.abort();
    await Promise.all(streams.map((s) => s.return?.(undefined).catch(() => {})));
    await owner.end();
  }
});
