import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { watchReads } from '../test/support/torn-reads.js';
import { writeFileAtomic } from './atomic-file.js';

describe('writeFileAtomic', () => {
  let dir = '';
  before(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'weft-atomic-'));
  });
  after(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('writes the content with the mode asked, whatever the umask, and leaves no temporary file', async () => {
    const file = path.join(dir, 'plugin');
    const old = process.umask(0o077);
    try {
      assert.equal(await writeFileAtomic(file, '#!/bin/sh\n', 0o755), 'written');
    } finally {
      process.umask(old);
    }
    assert.equal(readFileSync(file, 'utf8'), '#!/bin/sh\n');
    assert.equal(statSync(file).mode & 0o7777, 0o755);
    assert.deepEqual(readdirSync(dir), ['plugin']);
  });

  it('does not rewrite a file that already has the content and mode; rewrites one whose mode differs', async () => {
    const file = path.join(dir, 'conf');
    await writeFileAtomic(file, '{"a":1}', 0o644);
    const before = statSync(file);
    assert.equal(await writeFileAtomic(file, '{"a":1}', 0o644), 'unchanged');
    const after = statSync(file);
    assert.deepEqual([after.ino, after.mtimeMs], [before.ino, before.mtimeMs]);
    assert.equal(await writeFileAtomic(file, '{"a":1}', 0o600), 'written');
    assert.equal(statSync(file).mode & 0o7777, 0o600);
    assert.notEqual(statSync(file).ino, before.ino, 'replaced by rename, not written in place');
  });

  it('a failed replace (the target is a folder) leaves the folder and no temporary file', async () => {
    const target = path.join(dir, 'folder');
    mkdirSync(target);
    await assert.rejects(writeFileAtomic(target, 'new', 0o644), /EISDIR|ENOTEMPTY|EEXIST/);
    assert.ok(statSync(target).isDirectory());
    assert.deepEqual(
      readdirSync(dir).filter((n) => n.endsWith('.tmp')),
      [],
    );
    await assert.rejects(writeFileAtomic(path.join(dir, 'missing-folder', 'x'), 'new', 0o644), /ENOENT/);
  });

  it('a reader polling the path in another process while it is rewritten over and over never sees a partial file', async () => {
    const file = path.join(dir, 'big');
    const a = Buffer.alloc(4 << 20, 'a');
    const b = Buffer.alloc(4 << 20, 'b');
    await writeFileAtomic(file, a, 0o644);
    const reads = await watchReads(file, [a, b]);
    try {
      for (let i = 0; i < 40; i++) assert.equal(await writeFileAtomic(file, i % 2 === 0 ? b : a, 0o644), 'written');
    } finally {
      const report = await reads.stop();
      assert.ok(report.reads > 40, `the reader read while the file was rewritten (${report.reads} reads)`);
      assert.equal(report.torn, 0, `torn reads: ${report.torn} (first: ${report.firstTorn})`);
    }
  });
});
