import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { status } from '@grpc/grpc-js';
import type pg from 'pg';
import { errorCodeOf } from '../lib/grpc/errors.js';
import { AllocateRequest } from '../gen/weft/ipam/v1/ipam.js';
import { startIpamTestbed, type IpamTestbed } from './support/control-plane.js';
import { eventually } from './support/eventually.js';

/**
 * Allocation attempts on real PostgreSQL: a caller that gave up on an Allocate (deadline, cancellation) releases the
 * handle naming the attempt, and the outcome is then unambiguous: the attempt either committed before the Release
 * (which frees it) or never commits. The test delays the Allocate's commit with a lock it holds itself.
 */
let tb: IpamTestbed;
let ipam: IpamTestbed['ipam'];
let sql: pg.Client;

before(async () => {
  tb = await startIpamTestbed();
  ({ ipam, sql } = tb);
  await ipam.createPool({ name: 'main', cidr: '10.50.0.0/16', blockPrefixLength: 26, cooldownSeconds: 0 });
});

after(() => tb?.stop());

const request = (handle: string, node: string, extra: Record<string, unknown> = {}) => ({
  handle,
  node,
  pool: '',
  podNamespace: 'ns1',
  podName: handle.split('/')[0]!,
  containerId: handle.split('/')[0]!,
  ...extra,
});

/** Other sessions of this database: how many wait for a lock, and how many are busy at all. */
async function sessions(): Promise<{ waiting: number; busy: number }> {
  const { rows } = await sql.query(`SELECT count(*) FILTER (WHERE wait_event_type = 'Lock')::int AS waiting,
      count(*) FILTER (WHERE state = 'active' OR state LIKE 'idle in transaction%')::int AS busy
    FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'`);
  return rows[0] as { waiting: number; busy: number };
}

const until = (what: string, probe: () => Promise<boolean>, timeoutMs = 10_000) =>
  eventually(what, probe, timeoutMs, 20);

async function liveOn(node: string) {
  return (await ipam.listAllocations({ pool: '', node })).allocations.map((a) => `${a.handle} ${a.address}`);
}

/**
 * Holds `lockSql` in a transaction of the test's own session, runs an Allocate with a short deadline that waits
 * behind it (and so times out), releases the handle naming the attempt as a caller compensating would, then lets
 * the Allocate go on. Returns once the server has nothing left running.
 */
async function allocateTimesOutThenRelease(handle: string, node: string, lockSql: string) {
  const attemptId = randomUUID();
  await sql.query('BEGIN');
  let released: Promise<unknown> | undefined;
  try {
    await sql.query(lockSql);
    await assert.rejects(
      ipam.allocate(request(handle, node, { attemptId }), { timeoutMs: 400 }),
      (err: { code: number }) => {
        assert.equal(err.code, status.DEADLINE_EXCEEDED);
        return true;
      },
    );
    // The Allocate is still there, inside its transaction, waiting for the test's lock.
    await until('the Allocate waits for the lock', async () => (await sessions()).waiting >= 1);
    released = ipam.release({ handle, attemptId }, { timeoutMs: 30_000 });
    await sleep(300);
  } finally {
    await sql.query('COMMIT');
  }
  await released;
  await until('the server has finished the Allocate and the Release', async () => (await sessions()).busy === 0);
  return attemptId;
}

describe('a timed-out Allocate cannot commit after the compensating Release', () => {
  test('an Allocate that claims a block, delayed behind the claim lock past its deadline, commits nothing after the Release', async () => {
    const handle = 'late-claim/eth0';
    await allocateTimesOutThenRelease(
      handle,
      'node-claim',
      `SELECT pg_advisory_xact_lock(hashtext('ipam.block_claims'))`,
    );
    assert.deepEqual(await liveOn('node-claim'), [], 'no address is live for the handle nobody holds');
    const history = (await ipam.listAllocationHistory({ handle })).entries;
    assert.ok(
      history.every((e) => e.releaseTime),
      `every allocation of ${handle} is released: ${JSON.stringify(history)}`,
    );
    assert.deepEqual((await ipam.checkConsistency({})).problems, []);
  });

  test('an Allocate on the group-commit path, delayed behind a lock on its block past its deadline, commits nothing after the Release', async () => {
    const node = 'node-fast';
    await ipam.allocate(request('warm/eth0', node));
    const handle = 'late-fast/eth0';
    await allocateTimesOutThenRelease(handle, node, `SELECT 1 FROM ipam.blocks WHERE node = '${node}' FOR UPDATE`);
    assert.deepEqual(
      (await liveOn(node)).map((l) => l.split(' ')[0]),
      ['warm/eth0'],
      'only the handle somebody holds is live',
    );
    const history = (await ipam.listAllocationHistory({ handle })).entries;
    assert.ok(
      history.every((e) => e.releaseTime),
      `every allocation of ${handle} is released: ${JSON.stringify(history)}`,
    );
    assert.deepEqual((await ipam.checkConsistency({})).problems, []);
  });

  test('an Allocate that arrives after the Release that fenced its attempt fails with ABORTED and allocates nothing, on every path', async () => {
    await ipam.allocate(request('warm2/eth0', 'node-b'));
    const cases = [
      { what: 'group commit', handle: 'fenced-fast/eth0', extra: {} },
      { what: 'full path (exact address)', handle: 'fenced-exact/eth0', extra: { addresses: ['10.50.200.7'] } },
      { what: 'BatchAllocate', handle: 'fenced-batch/eth0', extra: {}, batch: true },
    ];
    for (const c of cases) {
      const attemptId = randomUUID();
      assert.equal((await ipam.release({ handle: c.handle, attemptId })).released, false);
      const req = request(c.handle, 'node-b', { attemptId, ...c.extra });
      if (c.batch) {
        const { results } = await ipam.batchAllocate({ requests: [AllocateRequest.fromPartial(req)] });
        assert.equal(results[0]!.errorCode, 'ipam.attempt_released', c.what);
      } else {
        await assert.rejects(ipam.allocate(req), (err: { code: number; details: string }) => {
          assert.equal(err.code, status.ABORTED, `${c.what}: ${err.details}`);
          assert.equal(errorCodeOf(err), 'ipam.attempt_released');
          assert.match(err.details, new RegExp(`attempt ${attemptId} of handle ${c.handle} was released`));
          return true;
        });
      }
      assert.ok(
        !(await liveOn('node-b')).some((l) => l.startsWith(c.handle)),
        `${c.what}: nothing is live for ${c.handle}`,
      );
      assert.deepEqual(
        (await ipam.listAllocationHistory({ handle: c.handle })).entries,
        [],
        `${c.what}: nothing was ever allocated`,
      );
      // A new attempt (the runtime's next ADD) is not fenced; its retry gets the same address back.
      const next = randomUUID();
      const a = (await ipam.allocate(request(c.handle, 'node-b', { attemptId: next, ...c.extra }))).allocation!;
      assert.equal(
        (await ipam.allocate(request(c.handle, 'node-b', { attemptId: next, ...c.extra }))).allocation!.address,
        a.address,
      );
      assert.equal((await ipam.release({ handle: c.handle, attemptId: next })).released, true);
    }
    assert.deepEqual((await ipam.checkConsistency({})).problems, []);
  });

  test('a malformed attempt id is INVALID_ARGUMENT and changes nothing', async () => {
    for (const bad of ['has space', 'x'.repeat(129), '-leading']) {
      await assert.rejects(
        ipam.allocate(request('bad-attempt/eth0', 'node-b', { attemptId: bad })),
        (err: { code: number }) => err.code === status.INVALID_ARGUMENT,
      );
      await assert.rejects(
        ipam.release({ handle: 'bad-attempt/eth0', attemptId: bad }),
        (err: { code: number }) => err.code === status.INVALID_ARGUMENT,
      );
    }
    assert.deepEqual((await ipam.listAllocationHistory({ handle: 'bad-attempt/eth0' })).entries, []);
  });
});

describe('the sweeper forgets allocation attempts', () => {
  let swept: IpamTestbed;
  before(async () => {
    swept = await startIpamTestbed({ settings: { sweepSeconds: '1', attemptRetentionSeconds: '3600' } });
    await swept.ipam.createPool({ name: 'main', cidr: '10.50.0.0/16', blockPrefixLength: 26 });
  });
  after(() => swept?.stop());

  test('fenced attempts after the retention, the others after ten minutes; a fence it keeps still holds', async () => {
    const { ipam, sql } = swept;
    const ids = { oldFence: randomUUID(), newFence: randomUUID(), oldPlain: randomUUID(), newPlain: randomUUID() };
    await ipam.release({ handle: 'sweep/eth0', attemptId: ids.oldFence });
    await ipam.release({ handle: 'sweep/eth0', attemptId: ids.newFence });
    await ipam.allocate(request('sweep/eth0', 'node-b', { attemptId: ids.oldPlain }));
    await ipam.allocate(request('sweep/eth0', 'node-b', { attemptId: ids.newPlain }));
    await sql.query(
      `UPDATE ipam.allocation_attempts SET created_at = now() - interval '2 hours', fenced_at = now() - interval '2 hours' WHERE attempt_id = $1`,
      [ids.oldFence],
    );
    await sql.query(
      `UPDATE ipam.allocation_attempts SET created_at = now() - interval '11 minutes' WHERE attempt_id = $1`,
      [ids.oldPlain],
    );
    const left = async () =>
      (await sql.query(`SELECT attempt_id FROM ipam.allocation_attempts WHERE handle = 'sweep/eth0'`)).rows
        .map((r) => r.attempt_id as string)
        .sort();
    await until('the sweeper ran', async () => (await left()).length === 2, 5000);
    assert.deepEqual(await left(), [ids.newFence, ids.newPlain].sort());
    // The fence it keeps still holds.
    await assert.rejects(
      ipam.allocate(request('sweep/eth0', 'node-b', { attemptId: ids.newFence })),
      (err: { code: number }) => err.code === status.ABORTED,
    );
  });
});
