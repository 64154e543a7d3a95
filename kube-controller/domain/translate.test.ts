import { test } from 'node:test';
import assert from 'node:assert/strict';
import { describePod, networkAvailablePatch, podMayHoldAddress, policyObjectJson } from './translate.js';

test('a pod is described by its labels, node and named ports; a host-network pod is not a policy pod', () => {
  const pod = {
    metadata: { namespace: 'shop', name: 'web-0', uid: 'u1', labels: { app: 'web' } },
    spec: {
      nodeName: 'n1',
      containers: [
        { ports: [{ name: 'http', containerPort: 8080 }, { containerPort: 9000 }] },
        {
          ports: [
            { name: 'http', containerPort: 1 },
            { name: 'dns', containerPort: 53, protocol: 'udp' },
          ],
        },
      ],
      initContainers: [
        { restartPolicy: 'Always', ports: [{ name: 'proxy', containerPort: 15001 }] },
        { ports: [{ name: 'setup', containerPort: 1 }] },
      ],
    },
  };
  assert.deepEqual(describePod(pod), {
    namespace: 'shop',
    name: 'web-0',
    uid: 'u1',
    node: 'n1',
    labels: { app: 'web' },
    ports: [
      { name: 'http', port: 8080, protocol: 'TCP' },
      { name: 'dns', port: 53, protocol: 'UDP' },
      { name: 'proxy', port: 15001, protocol: 'TCP' },
    ],
  });
  assert.equal(describePod({ ...pod, spec: { ...pod.spec, hostNetwork: true } }), null);
  assert.equal(podMayHoldAddress({ ...pod, status: { phase: 'Running' } }), true);
  assert.equal(podMayHoldAddress({ ...pod, status: { phase: 'Succeeded' } }), false);
});

test('a policy keeps only what decides traffic: a status or annotation change is the same object', () => {
  const np = {
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata: { name: 'p', namespace: 'shop', resourceVersion: '7', annotations: { a: 'b' } },
    spec: { podSelector: {} },
    status: { x: 1 },
  };
  const json = policyObjectJson('NetworkPolicy', np);
  assert.deepEqual(JSON.parse(json), {
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata: { name: 'p', namespace: 'shop' },
    spec: { podSelector: {} },
  });
  assert.equal(policyObjectJson('NetworkPolicy', { ...np, metadata: { ...np.metadata, resourceVersion: '8' } }), json);
  assert.deepEqual(
    JSON.parse(policyObjectJson('AdminNetworkPolicy', { metadata: { name: 'a' }, spec: { priority: 3 } })).metadata,
    { name: 'a' },
  );
});

test('NetworkUnavailable is patched False once, and left alone when it already says so', () => {
  const now = new Date('2026-12-07T01:02:03.456Z');
  const patch = networkAvailablePatch(
    {
      metadata: { name: 'n1' },
      status: { conditions: [{ type: 'NetworkUnavailable', status: 'True', reason: 'NoRouteCreated' }] },
    },
    now,
  ) as { status: { conditions: { status: string; reason: string; lastTransitionTime: string }[] } };
  assert.equal(patch.status.conditions[0]!.status, 'False');
  assert.equal(patch.status.conditions[0]!.reason, 'WeftIsUp');
  assert.equal(patch.status.conditions[0]!.lastTransitionTime, '2026-12-07T01:02:03Z');
  assert.equal(
    networkAvailablePatch(
      { status: { conditions: [{ type: 'NetworkUnavailable', status: 'False', reason: 'WeftIsUp' }] } },
      now,
    ),
    null,
  );
});
