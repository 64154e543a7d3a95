import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { createClient } from '../lib/grpc/client.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { startTestControlPlane, type TestControlPlane } from './support/control-plane.js';

/**
 * A randomized hammer: concurrent clients allocate, release, retry, abandon requests mid-flight and drop their
 * connections, bounded in time. Afterwards: no address was ever live twice, garbage collection leaves exactly what
 * the clients hold, no address came back inside its cool-down, and every acknowledged allocation is in history.
 */
const WORKERS = 16;
const NODES = 8;
const DURATION_MS = Number(process.env.WEFT_HAMMER_MS ?? 20_000);
const COOLDOWN_S = 1;

let cp: TestControlPlane;
let sql: pg.Client;
before(async () => {
  cp = await startTestControlPlane();
  sql = new pg.Client({ connectionString: cp.databaseUrl });
  await sql.connect();
});
after(async () => {
  await sql?.end();
  await cp?.stop();
});

type Client = ReturnType<typeof createClient<typeof IpamServiceService>>;

test(
  `hammer: ${WORKERS} clients for ${DURATION_MS / 1000} s keep every IPAM invariant`,
  { timeout: DURATION_MS + 120_000 },
  async () => {
    // Small on purpose: blocks fill, addresses are released and reused, cool-downs matter.
    const admin = createClient(IpamServiceService, cp.address, { security: cp.security });
    await admin.createPool({
      name: 'hammer',
      cidr: '10.77.0.0/23',
      blockPrefixLength: 28,
      cooldownSeconds: COOLDOWN_S,
    });
    const acknowledged: { handle: string; address: string }[] = [];
    const held = new Map<string, { node: string; address: string }>();
    const counts = { allocate: 0, release: 0, retry: 0, abandoned: 0, dropped: 0, exhausted: 0 };
    const deadline = Date.now() + DURATION_MS;
    let seq = 0;

    async function worker(w: number) {
      let client: Client = createClient(IpamServiceService, cp.address, { security: cp.security });
      const node = `hn-${w % NODES}`;
      const mine = new Map<string, string>();
      while (Date.now() < deadline) {
        const r = Math.random();
        try {
          if (r < 0.5 || mine.size === 0) {
            const handle = `h${w}-${seq++}/eth0`;
            const { allocation } = await client.allocate(
              { handle, node, pool: 'hammer', podName: handle },
              { timeoutMs: 10_000 },
            );
            mine.set(handle, allocation!.address);
            acknowledged.push({ handle, address: allocation!.address });
            counts.allocate++;
          } else if (r < 0.8) {
            const keys = [...mine.keys()];
            const handle = keys[Math.floor(Math.random() * keys.length)]!;
            await client.release({ handle }, { timeoutMs: 10_000 });
            mine.delete(handle);
            counts.release++;
          } else if (r < 0.88) {
            // A runtime retrying ADD: the same handle must get the same address.
            const [handle, address] = [...mine.entries()][Math.floor(Math.random() * mine.size)]!;
            const { allocation } = await client.allocate({ handle, node, pool: 'hammer' }, { timeoutMs: 10_000 });
            assert.equal(allocation!.address, address, `retry of ${handle}`);
            counts.retry++;
          } else if (r < 0.96) {
            // Killed mid-request: the client gives up after a few milliseconds and never learns the outcome.
            const ac = new AbortController();
            const handle = `h${w}-${seq++}/eth0`;
            setTimeout(() => ac.abort(), Math.random() * 5);
            await client.allocate({ handle, node, pool: 'hammer' }, { signal: ac.signal }).then(
              ({ allocation }) => {
                mine.set(handle, allocation!.address);
                acknowledged.push({ handle, address: allocation!.address });
              },
              () => counts.abandoned++,
            );
          } else {
            // The connection drops with a request in flight.
            const handle = `h${w}-${seq++}/eth0`;
            const p = client.allocate({ handle, node, pool: 'hammer' }).catch(() => null);
            client.close();
            await p;
            client = createClient(IpamServiceService, cp.address, { security: cp.security });
            counts.dropped++;
          }
        } catch (err) {
          if ((err as { code?: number }).code === 8)
            counts.exhausted++; // RESOURCE_EXHAUSTED: fine when the pool is full
          else throw err;
        }
      }
      client.close();
      for (const [handle, address] of mine) held.set(handle, { node, address });
    }

    await Promise.all(Array.from({ length: WORKERS }, (_, w) => worker(w)));

    // What the clients don't know they hold (abandoned and dropped requests) is garbage: collect it per node.
    for (let n = 0; n < NODES; n++) {
      const node = `hn-${n}`;
      const valid = [...held].filter(([, v]) => v.node === node).map(([h]) => h);
      await admin.garbageCollect({ node, validHandles: valid });
    }
    admin.close();

    const live = (
      await sql.query(`SELECT handle, host(address) AS address FROM ipam.allocations WHERE released_at IS NULL`)
    ).rows;
    assert.deepEqual(
      live.map((r) => `${r.handle}=${r.address}`).sort(),
      [...held].map(([h, v]) => `${h}=${v.address}`).sort(),
      'after GC the live set is exactly what the clients hold (no leak, nothing lost)',
    );
    const overlaps =
      await sql.query(`SELECT a.address FROM ipam.allocations a JOIN ipam.allocations b ON a.address = b.address AND a.id < b.id
    WHERE tstzrange(a.allocated_at, coalesce(a.released_at, 'infinity')) && tstzrange(b.allocated_at, coalesce(b.released_at, 'infinity')) LIMIT 5`);
    assert.deepEqual(overlaps.rows, [], 'no address was ever live for two handles at once');
    const early = await sql.query(`SELECT b.address, b.allocated_at - a.released_at AS gap FROM ipam.allocations a
    JOIN ipam.allocations b ON a.address = b.address AND b.allocated_at > a.allocated_at
    WHERE a.released_at IS NOT NULL AND b.allocated_at < a.released_at + interval '${COOLDOWN_S} second'
      AND NOT EXISTS (SELECT 1 FROM ipam.allocations m WHERE m.address = a.address AND m.allocated_at > a.allocated_at AND m.allocated_at < b.allocated_at)
    LIMIT 5`);
    assert.deepEqual(early.rows, [], 'no address came back inside its cool-down');
    const drift =
      await sql.query(`SELECT b.cidr::text, b.live_count, (SELECT count(*)::int FROM ipam.allocations a WHERE a.block_id = b.id AND a.released_at IS NULL) AS actual
    FROM ipam.blocks b WHERE b.live_count <> (SELECT count(*) FROM ipam.allocations a WHERE a.block_id = b.id AND a.released_at IS NULL)`);
    assert.deepEqual(drift.rows, [], "every block's live counter equals its live rows");
    const history = new Set(
      (await sql.query(`SELECT handle || '=' || host(address) AS k FROM ipam.allocations`)).rows.map((r) => r.k),
    );
    const lost = acknowledged.filter((a) => !history.has(`${a.handle}=${a.address}`));
    assert.deepEqual(lost, [], 'every acknowledged allocation is in history');
    const reused = await sql.query(
      `SELECT count(*)::int AS n FROM (SELECT address FROM ipam.allocations GROUP BY address HAVING count(*) > 1) x`,
    );
    assert.ok(counts.allocate > 200, `enough work was done: ${JSON.stringify(counts)}`);
    assert.ok(reused.rows[0].n > 0, 'addresses were reused, so the cool-down was exercised');
    process.stderr.write(
      `hammer: ${JSON.stringify({ ...counts, reusedAddresses: reused.rows[0].n, live: live.length })}\n`,
    );
  },
);
