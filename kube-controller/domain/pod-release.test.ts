import { test } from 'node:test';
import assert from 'node:assert/strict';
import { planPodReleases, type KnownPod, type PodAllocation } from './pod-release.js';

const GRACE = 60_000;
const T0 = Date.parse('2026-12-07T00:00:00Z');
const alloc = (handle: string, over: Partial<PodAllocation> = {}): PodAllocation => ({
  handle,
  node: 'n1',
  podNamespace: 'shop',
  podName: handle,
  podUid: `uid-${handle}`,
  allocatedAt: new Date(T0 - 10 * GRACE),
  ...over,
});

function plan(
  allocations: PodAllocation[],
  pods: Record<string, KnownPod>,
  missingSince = new Map<string, number>(),
  now = T0,
) {
  return planPodReleases({
    allocations,
    nodes: new Set(['n1']),
    pod: (ns, n) => pods[`${ns}/${n}`],
    missingSince,
    now,
    graceMs: GRACE,
  });
}

test('a live pod keeps its address; a missing one waits out the grace from when it was first seen missing, then goes', () => {
  const live = alloc('a');
  const gone = alloc('b');
  const first = plan([live, gone], { 'shop/a': { uid: 'uid-a', mayHoldAddress: true } });
  assert.deepEqual(first.release, []);
  assert.deepEqual([...first.missingSince], [['b', T0]]);
  const early = plan(
    [live, gone],
    { 'shop/a': { uid: 'uid-a', mayHoldAddress: true } },
    first.missingSince,
    T0 + GRACE - 1,
  );
  assert.deepEqual(early.release, []);
  const late = plan([live, gone], { 'shop/a': { uid: 'uid-a', mayHoldAddress: true } }, early.missingSince, T0 + GRACE);
  assert.deepEqual(late.release, ['b']);
  assert.equal(late.missingSince.size, 0);
});

test('a pod back under the same name and UID stops the countdown; another UID of the same name does not', () => {
  const a = alloc('a');
  const waiting = new Map([['a', T0 - GRACE]]);
  assert.deepEqual(plan([a], { 'shop/a': { uid: 'uid-a', mayHoldAddress: true } }, waiting).release, []);
  assert.deepEqual(plan([a], { 'shop/a': { uid: 'uid-other', mayHoldAddress: true } }, waiting).release, ['a']);
  // An allocation that recorded no UID (an older plugin) is matched by name alone.
  assert.deepEqual(
    plan([alloc('a', { podUid: '' })], { 'shop/a': { uid: 'uid-other', mayHoldAddress: true } }, waiting).release,
    [],
  );
});

test("a finished pod's address goes; a fresh allocation whose pod the informer has not shown yet stays", () => {
  const waiting = new Map([
    ['a', T0 - GRACE],
    ['fresh', T0 - GRACE],
  ]);
  assert.deepEqual(plan([alloc('a')], { 'shop/a': { uid: 'uid-a', mayHoldAddress: false } }, waiting).release, ['a']);
  const fresh = alloc('fresh', { allocatedAt: new Date(T0 - 1000) });
  const r = plan([fresh], {}, waiting);
  assert.deepEqual(r.release, []);
  assert.ok(r.missingSince.has('fresh'));
});

test("allocations of other clusters' nodes and of no pod are never touched", () => {
  const waiting = new Map([
    ['x', T0 - GRACE],
    ['y', T0 - GRACE],
  ]);
  const r = plan([alloc('x', { node: 'other-cluster-node' }), alloc('y', { podName: '' })], {}, waiting);
  assert.deepEqual(r.release, []);
  assert.equal(r.missingSince.size, 0);
});

test("the countdown starts at the pod's delete event when the controller saw it", () => {
  const r = planPodReleases({
    allocations: [alloc('a')],
    nodes: new Set(['n1']),
    pod: () => undefined,
    missingSince: new Map(),
    now: T0,
    graceMs: GRACE,
    deletedAt: (ns, n) => (ns === 'shop' && n === 'a' ? T0 - GRACE : undefined),
  });
  assert.deepEqual(r.release, ['a']);
});
