/**
 * The CNI conformance suite (cni-conformance.test.ts) again, on Node 24: the plugin runs on whatever Node a host has,
 * so it must keep to public Node APIs that Node 24 still has. Everything of that run is on Node 24: the test runner,
 * the plugin (`#!/usr/bin/env node`, Node 24's folder first on PATH; the suite checks the plugin's timing line names
 * the Node it runs on) and, as root, the local cluster's control plane and agent (started with process.execPath).
 *
 * The binary is Node's official build from the npm registry (scripts/node24.mjs; npm test's pretest fetches it).
 * Missing, it fails this test with what to run, as root or under CI; only a run that is neither skips it.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const suite = path.join(here, 'cni-conformance.test.js');
const { node24Path, VERSION } = (await import(pathToFileURL(path.join(root, 'scripts/node24.mjs')).href)) as {
  node24Path: () => string;
  VERSION: string;
};
const node24 = node24Path();
const missing = existsSync(node24)
  ? null
  : `Node ${VERSION} is not at ${node24}; run \`node scripts/node24.mjs\` (npm test's pretest does) to fetch it from the npm registry`;
const mustRun = process.getuid?.() === 0 || Boolean(process.env.CI);

test(
  `the CNI conformance suite passes on Node ${VERSION}`,
  { skip: missing && !mustRun ? missing : false, timeout: 15 * 60_000 },
  async () => {
    assert.equal(missing, null, missing ?? '');
    // A run of its own, not a child of this runner (which node:test recognises by NODE_TEST_CONTEXT and refuses).
    const { NODE_TEST_CONTEXT: _, ...outer } = process.env;
    const env = { ...outer, PATH: `${path.dirname(node24)}:${process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'}` };
    const child = spawn(node24, ['--test', '--test-reporter=spec', suite], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    // The spec reporter ends with the counts: ℹ tests N … ℹ pass N … ℹ fail N … ℹ skipped N.
    const count = (what: string) => Number(new RegExp(`^ℹ ${what} (\\d+)$`, 'm').exec(out)?.[1] ?? NaN);
    const failures = out.slice(Math.max(0, out.indexOf('✖ failing tests')));
    assert.equal(code, 0, `the suite failed on Node ${VERSION} (exit ${code}):\n${failures.slice(-6000)}`);
    assert.ok(count('pass') > 0 && count('fail') === 0, `no passing tests, or failures:\n${out.slice(-3000)}`);
    if (process.getuid?.() === 0)
      assert.equal(count('skipped'), 0, `as root nothing of the suite may skip:\n${out.slice(-3000)}`);
  },
);
