import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { IpamReports, IpamStore } from '../domain/ipam-store.js';
import { TransientConflict } from '../domain/ipam.errors.js';
import { validatePoolSpec, type AllocationRequest } from '../domain/pool.js';
import { createInMemoryIpamStore } from '../store/in-memory.store.js';
import { nodeNeedsBlock, poolCanSpare } from './block-prefetch.js';
import { createIpamUseCases } from './ipam.use-cases.js';

/**
 * The allocator's decisions, on the in-memory store (which keeps the PostgreSQL store's contract, see
 * store/ipam-store.contract.ts): no database, a clock the test moves.
 */
const noReports = {} as IpamReports;
function setup(opts: { store?: IpamStore } = {}) {
  let now = Date.parse('2026-12-07T06:00:00Z');
  const fake = createInMemoryIpamStore({ now: () => now });
  const store = opts.store ?? fake;
  const errors: string[] = [];
  const ipam = createIpamUseCases(store, noReports, {
    now: () => now,
    onBackgroundError: (what, err) => errors.push(`${what}: ${(err as Error).message}`),
  });
  const pool = (
    name: string,
    cidr: string,
    rules: Parameters<typeof validatePoolSpec>[0] extends infer T ? Partial<T> : never = {},
  ) => ipam.createPool(validatePoolSpec({ name, cidr, blockPrefixLength: 30, ...rules }));
  return { ipam, fake, pool, errors, advance: (seconds: number) => (now += seconds * 1000) };
}
const req = (handle: string, node: string, extra: Partial<AllocationRequest> = {}): AllocationRequest => ({
  handle,
  node,
  pool: null,
  families: null,
  podNamespace: 'ns',
  podName: handle,
  containerId: handle,
  addresses: [],
  owner: '',
  namespacePool: null,
  nodeLabels: {},
  namespaceLabels: {},
  use: 'workload',
  cluster: null,
  attemptId: null,
  podUid: '',
  ...extra,
});
const addresses = async (
  ipam: ReturnType<typeof setup>['ipam'],
  handles: string[],
  node: string,
  extra: Partial<AllocationRequest> = {},
) => {
  const out: string[] = [];
  for (const h of handles)
    out.push(
      await ipam.allocate(req(h, node, extra)).then(
        (a) => a.map((x) => x.address).join(' '),
        (e: { code: string }) => e.code,
      ),
    );
  return out;
};

describe('allocate', () => {
  test("a node fills its first block, claims the pool's next free block, and the pool runs out with ipam.pool_exhausted", async () => {
    const { ipam, pool } = setup();
    await pool('p', '10.0.0.0/29', { cooldownSeconds: 60 });
    assert.deepEqual(await addresses(ipam, ['a', 'b', 'c', 'd', 'e'], 'n1'), [
      '10.0.0.0',
      '10.0.0.1',
      '10.0.0.2',
      '10.0.0.3',
      '10.0.0.4',
    ]);
    assert.deepEqual(await addresses(ipam, ['x'], 'n2'), ['ipam.pool_exhausted'], 'n1 took both blocks');
    assert.deepEqual(
      (await ipam.affinitySnapshot()).upserts.map((b) => `${b.cidr} ${b.node}`),
      ['10.0.0.0/30 n1', '10.0.0.4/30 n1'],
    );
  });

  test('a retried allocation gets the same address; a released one rests for the cool-down, then returns longest-free first', async () => {
    const { ipam, pool, advance } = setup();
    await pool('p', '10.0.0.0/30', { cooldownSeconds: 60 });
    assert.deepEqual(await addresses(ipam, ['a', 'a', 'b', 'c', 'd'], 'n1'), [
      '10.0.0.0',
      '10.0.0.0',
      '10.0.0.1',
      '10.0.0.2',
      '10.0.0.3',
    ]);
    await ipam.release('c');
    advance(1);
    await ipam.release('a');
    assert.deepEqual(await addresses(ipam, ['e'], 'n1'), ['ipam.pool_exhausted'], 'both still cool down');
    advance(60);
    assert.deepEqual(await addresses(ipam, ['e', 'f', 'g'], 'n1'), ['10.0.0.2', '10.0.0.0', 'ipam.pool_exhausted']);
  });

  test('dual-stack: both families or neither', async () => {
    const { ipam, pool, fake } = setup();
    await pool('v4', '10.0.0.0/30');
    await pool('v6', 'fd00::/126', { blockPrefixLength: 126 });
    assert.deepEqual(await addresses(ipam, ['a'], 'n1'), ['10.0.0.0 fd00::']);
    await addresses(ipam, ['b', 'c', 'd'], 'n1');
    assert.deepEqual(await addresses(ipam, ['e'], 'n1', { families: [4, 6] }), ['ipam.pool_exhausted']);
    assert.equal(await ipam.holderOfHandle('e'), null, 'no IPv4 address left: the IPv6 one is not kept either');
    assert.equal(fake.state().rows.filter((r) => r.releasedAt === null).length, 8);
  });

  test('exact addresses: taken from a pool the pod may use, on its node, not reserved, live or resting', async () => {
    const { ipam, pool, advance } = setup();
    await pool('p', '10.0.0.0/24', { cooldownSeconds: 60 });
    await ipam.createReservation('p', '10.0.0.200', '10.0.0.255', 'lb');
    const exact = (h: string, node: string, address: string) =>
      addresses(ipam, [h], node, { addresses: [{ family: 4, text: address }] });
    assert.deepEqual(await exact('a', 'n1', '10.0.0.77'), ['10.0.0.77']);
    assert.deepEqual(await exact('b', 'n1', '10.0.0.77'), ['ipam.address_in_use']);
    assert.deepEqual(await exact('b', 'n2', '10.0.0.78'), ['ipam.address_on_other_node'], "10.0.0.76/30 is n1's block");
    assert.deepEqual(await exact('b', 'n1', '10.0.0.201'), ['ipam.address_reserved']);
    assert.deepEqual(await exact('b', 'n1', '10.1.0.1'), ['ipam.address_not_in_pool']);
    await ipam.release('a');
    assert.deepEqual(await exact('b', 'n1', '10.0.0.77'), ['ipam.address_cooling_down']);
    advance(61);
    assert.deepEqual(await exact('b', 'n1', '10.0.0.77'), ['10.0.0.77']);
  });

  test("a StatefulSet pod gets its address back on its node within the sticky time, after it nobody's", async () => {
    const { ipam, pool, advance } = setup();
    await pool('p', '10.0.0.0/30', { cooldownSeconds: 0, stickySeconds: 600 });
    const owner = { owner: 'statefulset/shop/web-0' };
    await addresses(ipam, ['x'], 'n1');
    assert.deepEqual(await addresses(ipam, ['web-0/a'], 'n1', owner), ['10.0.0.1']);
    await ipam.release('web-0/a');
    await addresses(ipam, ['y', 'z'], 'n1');
    assert.deepEqual(await addresses(ipam, ['web-0/b'], 'n1', owner), ['10.0.0.1'], 'held for it');
    await ipam.release('web-0/b');
    advance(601);
    assert.deepEqual(await addresses(ipam, ['q'], 'n1'), ['10.0.0.1'], 'the hold ran out');
  });

  test('a Release naming the attempt fences it: the attempt then allocates nothing, on either path', async () => {
    const { ipam, pool } = setup();
    await pool('p', '10.0.0.0/29');
    await addresses(ipam, ['warm'], 'n1');
    await ipam.release('h', 'att-1');
    assert.deepEqual(await addresses(ipam, ['h'], 'n1', { attemptId: 'att-1' }), ['ipam.attempt_released']);
    assert.deepEqual(await addresses(ipam, ['h'], 'n1', { attemptId: 'att-1', families: [4, 6] }), [
      'ipam.attempt_released',
    ]);
    assert.deepEqual(await addresses(ipam, ['h'], 'n1', { attemptId: 'att-2' }), ['10.0.0.1']);
  });

  test('stored labels select pools when the request carries none; request labels win', async () => {
    const { ipam, pool } = setup();
    await pool('edge', '10.1.0.0/30', { nodeSelector: 'zone=edge' });
    await pool('core', '10.2.0.0/30', { nodeSelector: 'zone=core' });
    await ipam.setNodeLabels('n1', { zone: 'edge' });
    assert.deepEqual(await addresses(ipam, ['a'], 'n1'), ['10.1.0.0']);
    assert.deepEqual(await addresses(ipam, ['b'], 'n1', { nodeLabels: { zone: 'core' } }), ['10.2.0.0']);
    assert.deepEqual(await addresses(ipam, ['c'], 'n2'), ['ipam.node_not_selected']);
  });

  test("a pool change is seen by this replica's next allocation (its cache is dropped)", async () => {
    const { ipam, pool } = setup();
    const p = await pool('p', '10.0.0.0/30');
    await addresses(ipam, ['a'], 'n1');
    await ipam.updatePool('p', p.etag, { disabled: true });
    assert.deepEqual(await addresses(ipam, ['b'], 'n1', { pool: 'p' }), ['ipam.pool_disabled']);
  });

  test('a lost race is retried; one that never ends fails after the retries', async () => {
    const fake = createInMemoryIpamStore();
    let conflicts = 3;
    let calls = 0;
    const racing: IpamStore = {
      ...fake,
      transaction: (fn) => {
        calls++;
        return conflicts-- > 0
          ? Promise.reject(new TransientConflict(new Error('deadlock detected')))
          : fake.transaction(fn);
      },
    };
    const { ipam, pool } = setup({ store: racing });
    await pool('p', '10.0.0.0/30');
    // An owner takes the full path (one transaction).
    assert.deepEqual(await addresses(ipam, ['a'], 'n1', { owner: 'o' }), ['10.0.0.0']);
    assert.equal(calls, 4);
    conflicts = Infinity;
    calls = 0;
    await assert.rejects(ipam.allocate(req('b', 'n1', { owner: 'o' })), TransientConflict);
    assert.equal(calls, 11);
  });

  test("a new node's pods arriving together: one full-path transaction at a time per node, the rest take the first's block", async () => {
    const fake = createInMemoryIpamStore();
    let open = 0;
    let most = 0;
    let calls = 0;
    const counting: IpamStore = {
      ...fake,
      transaction: async (fn) => {
        calls++;
        most = Math.max(most, ++open);
        try {
          await new Promise((r) => setTimeout(r, 5)); // a transaction takes a while
          return await fake.transaction(fn);
        } finally {
          open--;
        }
      },
    };
    const { ipam, pool } = setup({ store: counting });
    await pool('p', '10.0.0.0/24', { blockPrefixLength: 28 });
    const got = await Promise.all(
      Array.from({ length: 8 }, (_, i) => ipam.allocate(req(`h${i}`, i < 6 ? 'n1' : 'n2'))),
    );
    const all = got.flat().map((a) => a.address);
    assert.equal(new Set(all).size, 8);
    // n1's six pods share its one block, n2's two theirs: a transaction each for the two claims, nothing more.
    assert.deepEqual(
      got.map((a) => a[0]!.blockCidr),
      [...Array(6).fill(got[0]![0]!.blockCidr), ...Array(2).fill(got[6]![0]!.blockCidr)],
    );
    assert.equal(calls, 2);
    assert.equal(most, 2); // the two nodes' claims ran side by side
  });
});

describe('block prefetch', () => {
  test('a node whose block runs low gets its next block in the background, while the pool can spare one', async () => {
    const { ipam, pool, errors } = setup();
    await pool('p', '10.0.0.0/26', { blockPrefixLength: 29 });
    assert.deepEqual(await addresses(ipam, ['a0', 'a1', 'a2', 'a3', 'a4', 'a5'], 'n1'), [
      '10.0.0.0',
      '10.0.0.1',
      '10.0.0.2',
      '10.0.0.3',
      '10.0.0.4',
      '10.0.0.5',
    ]);
    await ipam.prefetchesSettled();
    const blocks = async () => (await ipam.affinitySnapshot()).upserts.map((b) => b.cidr);
    assert.deepEqual(
      await blocks(),
      ['10.0.0.0/29', '10.0.0.8/29'],
      'claimed when 2 of 8 never-used addresses were left',
    );
    assert.deepEqual(errors, []);
  });

  test('no prefetch for a node with churn (under three quarters live) or a roomy block', () => {
    assert.equal(nodeNeedsBlock({ blocks: 1, live: 6n, roomy: 0 }, 8n), true);
    assert.equal(nodeNeedsBlock({ blocks: 2, live: 11n, roomy: 0 }, 8n), false, '11 of 16 live');
    assert.equal(nodeNeedsBlock({ blocks: 2, live: 14n, roomy: 1 }, 8n), false);
  });

  test("never one of the pool's last tenth of blocks (at least two)", async () => {
    const { pool, ipam } = setup();
    const p = { ...(await pool('p', '10.0.0.0/24', { blockPrefixLength: 28 })), id: 1, routingDomainId: 1 };
    assert.equal(poolCanSpare(p, 13n), true, '3 of 16 free');
    assert.equal(poolCanSpare(p, 14n), false, '2 of 16 free');
    await ipam.createPool(validatePoolSpec({ name: 'big', cidr: '10.1.0.0/16', blockPrefixLength: 26 }));
    const big = (await ipam.listPools({ after: null, limit: 10 })).items.find((x) => x.name === 'big')!;
    assert.equal(poolCanSpare({ ...big, id: 2, routingDomainId: 1 }, 920n), true, '104 of 1024 free');
    assert.equal(poolCanSpare({ ...big, id: 2, routingDomainId: 1 }, 922n), false, '102 of 1024 free');
  });
});
