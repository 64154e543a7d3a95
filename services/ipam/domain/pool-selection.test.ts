import { test } from 'node:test';
import assert from 'node:assert/strict';
import { selectPools, type PoolRule } from './pool-selection.js';

const pool = (name: string, extra: Partial<PoolRule> = {}): PoolRule => ({
  name,
  family: 4,
  disabled: false,
  nodeSelector: '',
  namespaceSelector: '',
  allowedUses: ['workload'],
  ...extra,
});
const ctx = {
  pool: null,
  namespacePool: null,
  nodeLabels: { zone: 'a' },
  namespaceLabels: { team: 'shop' },
  use: 'workload',
};

test('selector pools come before catch-all pools; non-matching, disabled and other-use pools are left out', () => {
  const pools = [
    pool('default'),
    pool('zone-a', { nodeSelector: 'zone=a' }),
    pool('zone-b', { nodeSelector: 'zone=b' }),
    pool('shop', { namespaceSelector: 'team=shop' }),
    pool('off', { disabled: true }),
    pool('lb', { allowedUses: ['loadbalancer'] }),
  ];
  assert.deepEqual(
    selectPools(pools, ctx).map((p) => p.name),
    ['shop', 'zone-a', 'default'],
  );
  assert.deepEqual(
    selectPools(pools, { ...ctx, use: 'loadbalancer' }).map((p) => p.name),
    ['lb'],
  );
});

test("a pod's pool beats its namespace's; both must still select the node", () => {
  const pools = [pool('default'), pool('fast', { nodeSelector: 'zone=a' }), pool('gpu', { nodeSelector: 'gpu' })];
  assert.deepEqual(
    selectPools(pools, { ...ctx, pool: 'fast', namespacePool: 'default' }).map((p) => p.name),
    ['fast'],
  );
  assert.deepEqual(
    selectPools(pools, { ...ctx, namespacePool: 'default' }).map((p) => p.name),
    ['default'],
  );
  assert.throws(() => selectPools(pools, { ...ctx, pool: 'gpu' }), /does not select this node/);
  assert.throws(() => selectPools([pool('off', { disabled: true })], { ...ctx, pool: 'off' }), /disabled/);
  assert.throws(() => selectPools(pools, { ...ctx, pool: 'nope' }), /no pool named/);
});

test('when pools exist but none selects the node (or the namespace), the refusal names the labels and selectors', () => {
  const pools = [
    pool('zone-b', { nodeSelector: 'zone=b' }),
    pool('other-team', { nodeSelector: 'zone=a', namespaceSelector: 'team=web' }),
  ];
  assert.throws(
    () => selectPools(pools.slice(0, 1), { ...ctx, node: 'n1' }),
    (e: Error & { code?: string }) =>
      e.code === 'ipam.node_not_selected' && /node n1.*"zone":"a".*zone-b \(zone=b\)/.test(e.message),
  );
  assert.throws(
    () => selectPools(pools, { ...ctx, namespace: 'shop' }),
    (e: Error & { code?: string }) =>
      e.code === 'ipam.namespace_not_selected' && /"shop".*other-team \(team=web\)/.test(e.message),
  );
  // Only pools the pod could use at all count: none there, none refused here (the caller says "no pool").
  assert.deepEqual(selectPools([pool('off', { disabled: true, nodeSelector: 'zone=b' })], ctx), []);
});
