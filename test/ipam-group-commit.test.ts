import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { AllocateRequest } from '../gen/weft/ipam/v1/ipam.js';
import { startIpamTestbed, type IpamTestbed } from './support/control-plane.js';
import { FAST_ALLOCATE_BATCH } from '../services/ipam/store/fast-allocate.js';

/**
 * Concurrent allocations share one statement and one commit (services/ipam/store/fast-allocate.ts). What a caller
 * must still see: distinct addresses, reservations and taken addresses stepped over, a full block spilling into a
 * new one, a repeated handle answered with the one allocation, and counters that match the rows.
 */
let tb: IpamTestbed;
before(async () => {
  tb = await startIpamTestbed();
});
after(async () => {
  await tb?.stop();
});

const req = (handle: string, node: string, pool: string) => ({
  handle,
  node,
  pool,
  podNamespace: 'ns',
  podName: handle.split('/')[0]!,
  containerId: handle.split('/')[0]!,
});

describe('group commit of concurrent allocations', () => {
  test('many callers on one node at once: distinct addresses, reservations skipped, full blocks spill into new ones', async () => {
    await tb.ipam.createPool({ name: 'gc', cidr: '10.90.0.0/24', blockPrefixLength: 28 });
    // Reserve the middle of the first block the node will get, and take one address in it as an exact address.
    await tb.ipam.createReservation({ pool: 'gc', first: '10.90.0.4', last: '10.90.0.6', reason: 'test' });
    await tb.ipam.allocate({ ...req('exact/eth0', 'n1', 'gc'), addresses: ['10.90.0.9'] });
    const got = await Promise.all(
      Array.from({ length: 60 }, (_, i) => tb.ipam.allocate(req(`p${i}/eth0`, 'n1', 'gc'))),
    );
    const addresses = got.map((g) => g.allocation!.address);
    assert.equal(new Set(addresses).size, 60, 'every caller got its own address');
    for (const a of addresses) {
      assert.ok(!['10.90.0.4', '10.90.0.5', '10.90.0.6', '10.90.0.9'].includes(a), `${a} is reserved or taken`);
    }
    const blocks = new Set(got.map((g) => g.allocation!.blockCidr));
    // 61 live addresses and 3 reserved fill exactly four /28 blocks: nothing skipped is lost.
    assert.equal(blocks.size, 4, `blocks: ${[...blocks].join(' ')}`);
    const { problems } = await tb.ipam.checkConsistency({});
    assert.deepEqual(problems, []);
    const { rows } = await tb.sql.query(
      `SELECT count(*)::int AS n FROM ipam.allocations WHERE released_at IS NULL AND host(address) LIKE '10.90.%'`,
    );
    assert.equal(rows[0].n, 61);
  });

  test('many nodes at once, and one handle asked for twice in the same instant, get one allocation each', async () => {
    await tb.ipam.createPool({ name: 'gc2', cidr: '10.91.0.0/20', blockPrefixLength: 26 });
    const calls = Array.from({ length: 80 }, (_, i) =>
      tb.ipam.allocate(req(`q${i % 40}/eth0`, `node-${i % 40}`, 'gc2')),
    );
    const got = await Promise.all(calls);
    for (let i = 0; i < 40; i++)
      assert.equal(got[i]!.allocation!.address, got[i + 40]!.allocation!.address, `q${i}: one handle, one address`);
    assert.equal(new Set(got.map((g) => g.allocation!.address)).size, 40);
    const { rows } = await tb.sql.query(
      `SELECT count(*)::int AS n, count(DISTINCT handle)::int AS h FROM ipam.allocations WHERE released_at IS NULL AND host(address) LIKE '10.91.%'`,
    );
    assert.deepEqual(rows[0], { n: 40, h: 40 });
    // A batch through the API takes the same path: all distinct, and the counters agree with the rows.
    const { results } = await tb.ipam.batchAllocate({
      requests: Array.from({ length: 200 }, (_, i) =>
        AllocateRequest.fromPartial(req(`r${i}/eth0`, `node-${i % 7}`, 'gc2')),
      ),
    });
    assert.equal(results.filter((r) => r.errorCode === '').length, 200);
    assert.equal(new Set(results.map((r) => r.allocations[0]!.address)).size, 200);
    assert.deepEqual((await tb.ipam.checkConsistency({})).problems, []);
  });

  test('a node three quarters full gets its next block claimed in the background; a node with churn reuses instead', async () => {
    await tb.ipam.createPool({ name: 'pf', cidr: '10.92.0.0/24', blockPrefixLength: 28, cooldownSeconds: 0 });
    const blocksOf = async (node: string) =>
      (
        await tb.sql.query(
          `SELECT count(*)::int AS n FROM ipam.blocks b JOIN ipam.pools p ON p.id = b.pool_id WHERE p.name = 'pf' AND b.node = $1 AND b.released_at IS NULL`,
          [node],
        )
      ).rows[0].n as number;
    const waitFor = async (what: string, ok: () => Promise<boolean>) => {
      for (let i = 0; i < 50; i++) {
        if (await ok()) return;
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.fail(`${what} within 5 s`);
    };
    for (let i = 0; i < 12; i++) await tb.ipam.allocate(req(`pf${i}/eth0`, 'busy', 'pf'));
    await waitFor('a second block for node busy', async () => (await blocksOf('busy')) === 2);
    const events = await tb.sql.query(
      `SELECT count(*)::int AS n FROM ipam.block_events WHERE pool = 'pf' AND node = 'busy'`,
    );
    assert.equal(events.rows[0].n, 2, 'the prefetched block is announced to routes like any claim');
    const more = await Promise.all(
      Array.from({ length: 8 }, (_, i) => tb.ipam.allocate(req(`pf-more${i}/eth0`, 'busy', 'pf'))),
    );
    assert.equal(new Set(more.map((m) => m.allocation!.address)).size, 8);

    // 11 of 16 used leaves 5 never-used: no prefetch yet. Most pods go, then new ones use the block's last fresh
    // addresses: the block is mostly free, so nothing more is claimed.
    for (let i = 0; i < 11; i++) await tb.ipam.allocate(req(`ch${i}/eth0`, 'churn', 'pf'));
    for (let i = 0; i < 9; i++) await tb.ipam.release({ handle: `ch${i}/eth0` });
    for (let i = 0; i < 4; i++) await tb.ipam.allocate(req(`ch-again${i}/eth0`, 'churn', 'pf'));
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(await blocksOf('churn'), 1, 'a node whose block is mostly free claims nothing more');
    assert.deepEqual((await tb.ipam.checkConsistency({})).problems, []);
  });

  test('the statement reaches allocations by index, however few rows the table held when its plan was made', async () => {
    // A session keeps one generic plan (the service's pool forces it); made while allocations was small (up to a few
    // thousand rows), a join form read every history row on every allocation until the planner changed its mind.
    // An allocation's cost must not grow with history. (A one-page blocks table may well be read whole.)
    // Statistics of small tables, as autovacuum takes them early in a cluster's life.
    await tb.sql.query('ANALYZE ipam.allocations, ipam.blocks, ipam.free_addresses');
    await tb.sql.query('SET plan_cache_mode = force_generic_plan');
    try {
      await tb.sql.query(`PREPARE gc_plan AS ${FAST_ALLOCATE_BATCH}`);
      const { rows } = await tb.sql.query(
        `EXPLAIN EXECUTE gc_plan('{h/eth0}', '{4}', '{n1}', '{1}', '{16}', '{ns}', '{p}', '{c}', '{1}', '{""}', '{attempt-1}', '{uid-1}')`,
      );
      const plan = rows.map((r) => String(r['QUERY PLAN'])).join('\n');
      assert.doesNotMatch(plan, /Seq Scan on allocations\b/, plan);
    } finally {
      await tb.sql.query('DEALLOCATE ALL');
      await tb.sql.query('RESET plan_cache_mode');
    }
  });

  test('an exact address released into its cool-down is stepped over when the block reaches it', async () => {
    await tb.ipam.createPool({ name: 'cool', cidr: '10.93.0.0/24', blockPrefixLength: 28, cooldownSeconds: 3600 });
    await tb.ipam.allocate({ ...req('exact-cool/eth0', 'n1', 'cool'), addresses: ['10.93.0.3'] });
    await tb.ipam.release({ handle: 'exact-cool/eth0' });
    const together = await Promise.all(
      Array.from({ length: 4 }, (_, i) => tb.ipam.allocate(req(`cool${i}/eth0`, 'n1', 'cool'))),
    );
    const oneByOne = [];
    for (let i = 4; i < 8; i++) oneByOne.push(await tb.ipam.allocate(req(`cool${i}/eth0`, 'n1', 'cool')));
    const addresses = [...together, ...oneByOne].map((g) => g.allocation!.address);
    assert.equal(new Set(addresses).size, 8);
    assert.ok(!addresses.includes('10.93.0.3'), `10.93.0.3 is cooling down, yet given out: ${addresses.join(' ')}`);
    assert.deepEqual((await tb.ipam.checkConsistency({})).problems, []);
  });
});
