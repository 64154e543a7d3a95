import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { silentLogger } from '../lib/logger.js';
import { createPendingReleases } from './pending-releases.js';

/** Releases a DEL could not hand to IPAM: kept on disk, fenced then released in order, retried until taken. */
function fakeIpam() {
  const calls: string[] = [];
  const ipam = {
    up: false,
    calls,
    async release(handle: string, attemptId?: string) {
      calls.push(attemptId ? `fence ${handle} ${attemptId}` : `release ${handle}`);
      if (!ipam.up) throw Object.assign(new Error('IPAM unreachable'), { code: 14 });
      return { released: !attemptId, address: '10.244.0.7' };
    },
  };
  return ipam;
}

const until = async (ok: () => boolean, ms = 3000) => {
  for (const end = Date.now() + ms; !ok(); await new Promise((r) => setTimeout(r, 5)))
    assert.ok(Date.now() < end, 'in time');
};

test('a pending release outlives the agent: on disk before add() resolves, taken by a new instance once IPAM answers', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'weft-pending-'));
  try {
    const file = path.join(dir, 'pending-releases.json');
    const ipam = fakeIpam();
    const retry = { baseMs: 5, capMs: 20 };
    const first = createPendingReleases({ release: ipam.release, file, logger: silentLogger, retry });
    await first.add('c1/eth0', ['attempt-a']);
    assert.deepEqual(
      (JSON.parse(readFileSync(file, 'utf8')) as { releases: { handle: string; attemptIds: string[] }[] }).releases.map(
        (e) => [e.handle, e.attemptIds],
      ),
      [['c1/eth0', ['attempt-a']]],
    );
    await until(() => ipam.calls.length >= 2); // retried while IPAM is down
    first.stop();

    const sizes: number[] = [];
    const second = createPendingReleases({
      release: ipam.release,
      file,
      logger: silentLogger,
      retry,
      onSize: (n) => sizes.push(n),
    });
    assert.ok(second.has('c1/eth0'), 'read back from the file');
    ipam.calls.length = 0;
    ipam.up = true;
    await until(() => !second.has('c1/eth0'));
    second.stop();
    assert.deepEqual(
      ipam.calls.slice(-2),
      ['fence c1/eth0 attempt-a', 'release c1/eth0'],
      'the failed ADD is fenced before the handle is released',
    );
    assert.equal(sizes.at(-1), 0, 'the metric says none');
    // The file is emptied (written after the release, atomically).
    await until(() => (JSON.parse(readFileSync(file, 'utf8')) as { releases: unknown[] }).releases.length === 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('settle: rejects and keeps the entry while IPAM refuses, releases at once when it answers; no entry resolves at once', async () => {
  const ipam = fakeIpam();
  // A long first retry: only settle() calls IPAM here.
  const p = createPendingReleases({
    release: ipam.release,
    file: null,
    logger: silentLogger,
    retry: { baseMs: 60_000, capMs: 60_000 },
  });
  try {
    await p.settle('none/eth0');
    assert.deepEqual(ipam.calls, []);
    await p.add('c2/eth0', []);
    await assert.rejects(p.settle('c2/eth0'), /IPAM unreachable/);
    assert.ok(p.has('c2/eth0'));
    ipam.up = true;
    await p.settle('c2/eth0');
    assert.ok(!p.has('c2/eth0'));
    assert.deepEqual(ipam.calls, ['release c2/eth0', 'release c2/eth0']);
  } finally {
    p.stop();
  }
});

test('an unreadable file is no entries (logged), never a crash', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'weft-pending-'));
  try {
    const file = path.join(dir, 'pending-releases.json');
    writeFileSync(file, '{"releases": [{"handle": 7}');
    const p = createPendingReleases({ release: fakeIpam().release, file, logger: silentLogger });
    assert.deepEqual(p.list(), []);
    p.stop();
    assert.ok(existsSync(file), 'left for an operator to read');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
