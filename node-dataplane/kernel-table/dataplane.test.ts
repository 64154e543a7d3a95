import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createDataplane, type Driver, type Phase } from './dataplane.js';
import { createFakeKernel } from './fake-kernel.js';
import { createKernelTable } from './table.js';

/**
 * The dataplane's own bookkeeping, on made-up kinds (drivers/drivers.test.ts has the real drivers): a batch phase's
 * holds and order at the scale of a node's policy (thousands of chains), and read-backs begun ahead of an apply.
 */
const BASE = 'base';
const CHAIN = 'chain';
const ORDER: Phase[] = [
  { kind: BASE, op: 'update' },
  { kind: CHAIN, op: 'update' },
  { kind: CHAIN, op: 'delete' },
  { kind: BASE, op: 'delete' },
];
const N = 2000;
const name = (i: number) => `c${String(i).padStart(4, '0')}`;

/**
 * A base entry and N chain entries written in batches: c0000 needs c0001, which needs c0002, … and the last one
 * depends on the base entry. The desired entries come in that order, so every entry is listed before what it needs.
 */
function chains() {
  const base = createFakeKernel<string>();
  const kernel = createFakeKernel<string>([], { batch: true });
  const calls = { dependsOn: 0, needs: 0 };
  const chain: Driver<string> = {
    kind: CHAIN,
    table: createKernelTable<string>(),
    access: kernel,
    dependsOn: (key) => (calls.dependsOn++, key === name(N - 1) ? [`${BASE}/b`] : []),
    needs: (key) => (calls.needs++, key === name(N - 1) ? [] : [`${CHAIN}/${name(Number(key.slice(1)) + 1)}`]),
  };
  const baseDriver: Driver<string> = { kind: BASE, table: createKernelTable<string>(), access: base };
  baseDriver.table.replaceDesired(new Map([['b', 'x']]));
  chain.table.replaceDesired(new Map(Array.from({ length: N }, (_, i) => [name(i), `rules of ${i}`])));
  const dataplane = createDataplane({
    drivers: [baseDriver as Driver<unknown>, chain as Driver<unknown>],
    order: ORDER,
  });
  return { dataplane, base, kernel, calls };
}

test('a hold runs through a batch of 2,000 entries listed before what they need, each entry looked at a bounded number of times', async () => {
  const { dataplane, base, kernel, calls } = chains();
  base.fail('write', 'b', Infinity);
  const r = await dataplane.apply();
  assert.equal(kernel.batches.length, 0, 'nothing of the chain written while what it rests on failed');
  assert.equal(r.held.length, N);
  assert.deepEqual(
    r.held.slice(0, 2).map((h) => `${h.key} on ${h.on}`),
    [`${name(N - 1)} on ${BASE}/b`, `${name(N - 2)} on ${CHAIN}/${name(N - 1)}`],
    'reported from the entry the failure reaches first',
  );
  // Resolved once per entry and phase (the update phase; nothing is pending for the others to look at).
  assert.ok(
    calls.needs <= 2 * N && calls.dependsOn <= 2 * N,
    `needs asked ${calls.needs}, dependsOn ${calls.dependsOn} times`,
  );
  base.clearFailures();
  await dataplane.apply();
  assert.equal(kernel.batches.length, 1, 'one request once the base entry is in place');
  const written = kernel.batches[0]!.split(' ').slice(1);
  assert.deepEqual(
    written,
    Array.from({ length: N }, (_, i) => name(N - 1 - i)),
    'in dependency order: what an entry needs comes before it',
  );
  assert.equal(dataplane.pending(), 0);
});

test('deletes wait for the entries of the batch that use them, and go after them in the same request', async () => {
  const { dataplane, kernel } = chains();
  await dataplane.apply();
  const d = dataplane.driver<string>(CHAIN);
  // The kernel holds the chain; all of it goes, and the entry that everything rests on cannot be removed.
  d.table.replaceDesired(new Map());
  kernel.fail('remove', name(N - 1), Infinity);
  const r = await dataplane.apply();
  assert.equal(r.failed.length, 1);
  assert.equal(r.failed[0]!.key, name(N - 1));
  assert.equal(
    kernel.entries.size,
    1,
    'every other chain entry removed: the users first, in halves around the failure',
  );
  kernel.clearFailures();
  await dataplane.apply();
  assert.equal(kernel.entries.size, 0);
  assert.equal(dataplane.pending(), 0);
});

test('a prefetch begins the read-backs the next apply takes: one read per kind, none of a kind with a manager', async () => {
  const a = createFakeKernel<string>([['x', '1']]);
  const b = createFakeKernel<string>([['y', '2']]);
  const managed = createFakeKernel<string>();
  let bReady = true;
  const drivers: Driver<unknown>[] = [
    { kind: 'a', table: createKernelTable<unknown>(), access: a as never },
    { kind: 'b', table: createKernelTable<unknown>(), access: b as never, ready: () => bReady },
    { kind: 'm', table: createKernelTable<unknown>(), access: managed as never, desired: () => new Map() },
  ];
  const dataplane = createDataplane({
    drivers,
    order: ['a', 'b', 'm'].map((kind): Phase => ({ kind, op: 'update' })),
  });
  dataplane.prefetch();
  dataplane.prefetch();
  assert.deepEqual([a.reads, b.reads, managed.reads], [0, 0, 0], 'begun, not yet answered');
  await new Promise((r) => setImmediate(r));
  assert.deepEqual([a.reads, b.reads, managed.reads], [1, 1, 0], 'once each; the managed kind waits for its manager');
  const r = await dataplane.apply();
  assert.deepEqual(r.reads.sort(), ['a', 'b', 'm']);
  assert.deepEqual([a.reads, b.reads, managed.reads], [1, 1, 1], 'the apply took the prefetched reads');
  assert.deepEqual(r.changes.length, 0);
  // A kind read ahead that is not ready by the apply is not left unread: it is read at its next apply.
  dataplane.markForResync(['b']);
  dataplane.prefetch();
  bReady = false;
  const skipped = await dataplane.apply();
  assert.ok(!skipped.reads.includes('b'));
  assert.equal(dataplane.driver('b').table.needsResync, true);
  bReady = true;
  const again = await dataplane.apply();
  assert.deepEqual(again.reads, ['b']);
});
