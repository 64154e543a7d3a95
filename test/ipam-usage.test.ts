import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { status } from '@grpc/grpc-js';
import { startIpamTestbed, type IpamTestbed } from './support/control-plane.js';

/**
 * Utilization reads per-(pool, node) counters (ipam.node_usage, kept by triggers on blocks), not the allocation rows.
 * What a user must see: the same numbers that counting the rows gives, after concurrent allocations and releases,
 * reservations and block claims racing them, and cool-downs running out; and `check` naming a counter that drifted.
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

type Counts = { total: string; allocated: number; coolingDown: number; reserved: string; free: string };

/** What utilization must say, counted from the rows: live allocations, resting addresses, reservations, live blocks. */
async function countedFromRows(
  pool: string,
): Promise<{ pool: Counts; nodes: Map<string, Counts>; blocks: Map<string, Counts> }> {
  const {
    rows: [p],
  } = await tb.sql.query(
    `SELECT id, cooldown_seconds, power(2, 32 - masklen(cidr))::bigint AS size, power(2, 32 - block_prefix_length)::int AS block_size FROM ipam.pools WHERE name = $1`,
    [pool],
  );
  const { rows } = await tb.sql.query(
    `SELECT b.cidr::text AS cidr, b.node,
      (SELECT count(*)::int FROM ipam.allocations a WHERE a.address <<= b.cidr AND a.released_at IS NULL AND a.pool_id = b.pool_id) AS live,
      (SELECT count(*)::int FROM ipam.free_addresses f WHERE f.block_id = b.id AND (f.free_since > now() - make_interval(secs => $2::int) OR f.hold_until > now())) AS cooling,
      (SELECT count(*)::int FROM generate_series(0, $3::int - 1) i WHERE EXISTS (SELECT 1 FROM ipam.reservations r WHERE r.pool_id = b.pool_id
         AND host(network(b.cidr))::inet + i BETWEEN r.first AND r.last)) AS reserved
    FROM ipam.blocks b WHERE b.pool_id = $1 AND b.released_at IS NULL`,
    [p.id, p.cooldown_seconds, p.block_size],
  );
  const counts = (total: number, live: number, cooling: number, reserved: number): Counts => ({
    total: String(total),
    allocated: live,
    coolingDown: cooling,
    reserved: String(reserved),
    free: String(total - live - cooling - reserved),
  });
  const blocks = new Map<string, Counts>();
  const nodes = new Map<string, [number, number, number, number]>();
  for (const b of rows) {
    blocks.set(b.cidr, counts(p.block_size, b.live, b.cooling, b.reserved));
    const n = nodes.get(b.node) ?? [0, 0, 0, 0];
    nodes.set(b.node, [n[0] + p.block_size, n[1] + b.live, n[2] + b.cooling, n[3] + b.reserved]);
  }
  const {
    rows: [res],
  } = await tb.sql.query(
    `SELECT coalesce(sum(r.last - r.first + 1), 0)::int AS n FROM ipam.reservations r WHERE r.pool_id = $1`,
    [p.id],
  );
  const live = rows.reduce((s, b) => s + b.live, 0);
  const cooling = rows.reduce((s, b) => s + b.cooling, 0);
  return {
    pool: counts(Number(p.size), live, cooling, res.n),
    nodes: new Map([...nodes].map(([node, n]) => [node, counts(...n)])),
    blocks,
  };
}

async function utilization(pool: string) {
  const u = (await tb.ipam.getUtilization({ pool, includeBlocks: true })).pools[0]!;
  return {
    pool: u.counts as Counts,
    nodes: new Map(u.nodes.map((n) => [n.node, n.counts as Counts])),
    blocks: new Map(u.blocks.map((b) => [b.cidr, b.counts as Counts])),
  };
}

describe('utilization from per-node counters', () => {
  test('counters equal the rows after concurrent allocations, releases, claims and a reservation racing them', async () => {
    await tb.ipam.createPool({ name: 'usage', cidr: '10.95.0.0/22', blockPrefixLength: 28, cooldownSeconds: 600 });
    // Reserved before any block exists: each block claimed in the range counts it when it is claimed.
    await tb.ipam.createReservation({ pool: 'usage', first: '10.95.0.2', last: '10.95.0.4', reason: 'gateways' });
    const held: string[][] = Array.from({ length: 24 }, () => []);
    const worker = async (w: number) => {
      for (let k = 0; k < 12; k++) {
        const handle = `u${w}-${k}/eth0`;
        await tb.ipam.allocate(req(handle, `usage-node-${w % 4}`, 'usage'));
        held[w]!.push(handle);
        // Every third step releases the worker's oldest live handle: cooling addresses pile up beside live ones.
        if (k % 3 === 2) await tb.ipam.release({ handle: held[w]!.shift()! });
      }
    };
    // A reservation where the workers' claims are heading, made while they run: a block claimed before it counts it
    // when the reservation is made, one claimed after counts it when it is claimed. (If an address there is already
    // live, the reservation is refused, and the counts must still hold.)
    const reserve = (async () => {
      await new Promise((r) => setTimeout(r, 150));
      await tb.ipam
        .createReservation({ pool: 'usage', first: '10.95.1.1', last: '10.95.1.40', reason: 'later' })
        .catch((e: { code: number }) => {
          if (e.code !== status.FAILED_PRECONDITION) throw e;
        });
    })();
    await Promise.all([...Array.from({ length: 24 }, (_, w) => worker(w)), reserve]);
    const expected = await countedFromRows('usage');
    const got = await utilization('usage');
    assert.equal(got.pool.allocated, 24 * 8, 'every worker holds 8 live addresses');
    assert.equal(got.pool.coolingDown, 24 * 4, 'and released 4 that are cooling down');
    assert.deepEqual(got.pool, expected.pool);
    assert.deepEqual(got.nodes, expected.nodes);
    assert.deepEqual(got.blocks, expected.blocks);
    assert.equal(got.nodes.size, 4);
    assert.deepEqual((await tb.ipam.checkConsistency({})).problems, []);
    // The pool listing reads the same counters.
    const listed = (await tb.ipam.listPools({})).pools.find((p) => p.name === 'usage')!;
    assert.equal(listed.liveAllocations, 24 * 8);
  });

  test('a released address stops counting as cooling down when its cool-down has passed, and counts as free', async () => {
    await tb.ipam.createPool({ name: 'usage-cool', cidr: '10.96.0.0/26', blockPrefixLength: 28, cooldownSeconds: 1 });
    await Promise.all(
      Array.from({ length: 6 }, (_, i) => tb.ipam.allocate(req(`c${i}/eth0`, 'cool-node', 'usage-cool'))),
    );
    await Promise.all([0, 1, 2].map((i) => tb.ipam.release({ handle: `c${i}/eth0` })));
    const cooling = await utilization('usage-cool');
    assert.deepEqual(cooling.nodes.get('cool-node'), {
      total: '16',
      allocated: 3,
      coolingDown: 3,
      reserved: '0',
      free: '10',
    });
    assert.deepEqual(cooling, await countedFromRows('usage-cool'));
    await new Promise((r) => setTimeout(r, 1300));
    const rested = await utilization('usage-cool');
    assert.deepEqual(rested.nodes.get('cool-node'), {
      total: '16',
      allocated: 3,
      coolingDown: 0,
      reserved: '0',
      free: '13',
    });
    assert.deepEqual(rested.pool, { total: '64', allocated: 3, coolingDown: 0, reserved: '0', free: '61' });
    assert.deepEqual(rested, await countedFromRows('usage-cool'));
    assert.deepEqual((await tb.ipam.checkConsistency({})).problems, []);
  });

  test('every pool at once, whole and in pages, says what each pool alone says (each with its own cool-down)', async () => {
    const names = (await tb.ipam.listPools({})).pools.map((p) => p.name).sort();
    assert.ok(names.includes('usage') && names.includes('usage-cool'));
    const alone = new Map<string, { counts: unknown; nodes: unknown[] }>();
    for (const name of names) {
      const u = (await tb.ipam.getUtilization({ pool: name })).pools[0]!;
      alone.set(name, { counts: u.counts, nodes: u.nodes });
    }
    // 'usage' counts 96 cooling (600 s cool-down); 'usage-cool' none, its addresses released over a second ago.
    assert.equal((alone.get('usage')!.counts as Counts).coolingDown, 96);
    assert.equal((alone.get('usage-cool')!.counts as Counts).coolingDown, 0);
    const whole = (await tb.ipam.getUtilization({})).pools;
    assert.deepEqual(
      whole.map((u) => u.pool),
      names,
    );
    for (const u of whole) assert.deepEqual({ counts: u.counts, nodes: u.nodes }, alone.get(u.pool));
    const paged = new Map<string, unknown[]>();
    let pageToken = '';
    let pages = 0;
    do {
      const r = await tb.ipam.getUtilization({ pageSize: 3, pageToken });
      pages++;
      assert.ok(r.pools.flatMap((u) => u.nodes).length <= 3);
      for (const u of r.pools) {
        assert.deepEqual(u.counts, alone.get(u.pool)!.counts);
        paged.set(u.pool, [...(paged.get(u.pool) ?? []), ...u.nodes]);
      }
      pageToken = r.nextPageToken;
    } while (pageToken);
    assert.ok(pages > 1);
    for (const [name, a] of alone) assert.deepEqual(paged.get(name) ?? [], a.nodes, name);
  });

  test("check names a per-node counter or a block's reserved count that disagrees with the rows", async () => {
    await tb.sql.query(`UPDATE ipam.node_usage SET live = live + 2 WHERE node = 'cool-node'`);
    const drifted = (await tb.ipam.checkConsistency({})).problems;
    assert.deepEqual(
      drifted.map((p) => p.kind),
      ['usage_count_mismatch'],
    );
    assert.match(
      drifted[0]!.detail,
      /pool usage-cool, node cool-node: counts 1 blocks, 5 live, 0 reserved; holds 1 blocks, 3 live, 0 reserved/,
    );
    await tb.sql.query(`UPDATE ipam.node_usage SET live = live - 2 WHERE node = 'cool-node'`);
    await tb.sql.query(`UPDATE ipam.blocks SET reserved = reserved + 1 WHERE cidr = '10.96.0.0/28'`);
    const reserved = (await tb.ipam.checkConsistency({})).problems;
    assert.deepEqual(
      reserved.map((p) => p.kind),
      ['reserved_count_mismatch'],
    );
    assert.match(reserved[0]!.detail, /block 10\.96\.0\.0\/28 counts 1 reserved, holds 0/);
    await tb.sql.query(`UPDATE ipam.blocks SET reserved = reserved - 1 WHERE cidr = '10.96.0.0/28'`);
    assert.deepEqual((await tb.ipam.checkConsistency({})).problems, []);
  });

  test('deleting a reservation gives its addresses back to the blocks that counted them', async () => {
    const { reservations } = await tb.ipam.listReservations({ pool: 'usage' });
    const gateways = reservations.find((r) => r.reason === 'gateways')!;
    assert.deepEqual(await tb.ipam.deleteReservation({ name: gateways.name }), { deleted: true });
    const got = await utilization('usage');
    assert.equal(got.blocks.get('10.95.0.0/28')!.reserved, '0');
    assert.deepEqual(got, await countedFromRows('usage'));
    assert.deepEqual((await tb.ipam.checkConsistency({})).problems, []);
    await assert.rejects(
      tb.ipam.getUtilization({ pool: 'no-such-pool' }),
      (e: { code: number }) => e.code === status.NOT_FOUND,
    );
  });
});
