import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The API that other systems build on stays lint-clean (buf's STANDARD rules). */
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const run = promisify(execFile);

test('buf lint passes on proto/', async () => {
  const buf = path.join(root, 'node_modules/.bin/buf');
  const { stdout, stderr } = await run(buf, ['lint'], { cwd: path.join(root, 'proto') });
  assert.equal(stdout + stderr, '');
});

test('buf lint catches a violation (the check is live)', async () => {
  const buf = path.join(root, 'node_modules/.bin/buf');
  // A message with a lower-case name breaks STANDARD; feed it through buf's stdin-less path by a temp module.
  const { mkdtempSync, writeFileSync, rmSync, mkdirSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const dir = mkdtempSync(path.join(tmpdir(), 'weft-buf-'));
  try {
    mkdirSync(path.join(dir, 'weft/x/v1'), { recursive: true });
    writeFileSync(path.join(dir, 'buf.yaml'), 'version: v2\nlint:\n  use: [STANDARD]\n');
    writeFileSync(path.join(dir, 'weft/x/v1/x.proto'), 'syntax = "proto3";\npackage weft.x.v1;\nmessage bad_name {}\n');
    await assert.rejects(run(buf, ['lint'], { cwd: dir }), (err: { stdout: string }) => /bad_name/.test(err.stdout));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the API has no breaking change against the last released API (buf breaking)', async () => {
  const buf = path.join(root, 'node_modules/.bin/buf');
  const { stdout, stderr } = await run(buf, ['breaking', '--against', 'released/weft-api.binpb'], {
    cwd: path.join(root, 'proto'),
  });
  assert.equal(stdout + stderr, '');
});

test('buf breaking catches a removed field (the check is live)', async () => {
  const buf = path.join(root, 'node_modules/.bin/buf');
  const { mkdtempSync, cpSync, readFileSync, writeFileSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const dir = mkdtempSync(path.join(tmpdir(), 'weft-breaking-'));
  try {
    cpSync(path.join(root, 'proto'), dir, { recursive: true });
    const file = path.join(dir, 'weft/ipam/v1/ipam.proto');
    writeFileSync(file, readFileSync(file, 'utf8').replace(/\n\s*string pod_namespace = 6;/, ''));
    await assert.rejects(
      run(buf, ['breaking', '--against', path.join(root, 'proto/released/weft-api.binpb')], { cwd: dir }),
      (err: { stdout: string }) => /pod_namespace|deleted/.test(err.stdout),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
