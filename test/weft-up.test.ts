import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createClient } from '../lib/grpc/client.js';
import type { TransportSecurity } from '../lib/grpc/credentials.js';
import { clientTlsDir } from '../lib/grpc/credentials.js';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { readFileSync, statSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import { status } from '@grpc/grpc-js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { bin, startUntil, type Started } from './support/processes.js';
import { freePort } from './support/ports.js';

/** `weft up` as a user runs it: from nothing, on embedded PostgreSQL, and again on the same data. */
const dataDir = mkdtempSync(path.join(tmpdir(), 'weft-up-'));
chmodSync(dataDir, 0o755);
let running: Started | null = null;

after(async () => {
  await running?.stop();
  rmSync(dataDir, { recursive: true, force: true });
});

/** The local admin's credentials that `weft up` makes in <data-dir>/pki on its first start. */
const adminSecurity = (): TransportSecurity => ({
  mode: 'mtls', caFile: path.join(dataDir, 'pki', 'ca.crt'), certFile: path.join(dataDir, 'pki', 'admin.crt'), keyFile: path.join(dataDir, 'pki', 'admin.key'),
});

async function up(pgPort: number) {
  // DATABASE_URL is cleared: this test is about the embedded default.
  const env = { DATABASE_URL: '', WEFT_PG_PORT: String(pgPort), WEFT_LOG_LEVEL: 'warn', WEFT_HTTP_LISTEN: '127.0.0.1:0' };
  const s = await startUntil(bin.weft, ['up', '--data-dir', dataDir, '--listen', '127.0.0.1:0'], /"serving":true/, { env });
  running = s;
  const info = JSON.parse(s.line) as { socket: string; port: number };
  return { s, info, ipam: createClient(IpamServiceService, `127.0.0.1:${info.port}`, { security: adminSecurity() }) };
}

test('weft up starts from nothing, serves, stops, and starts again with its pools and allocations intact', async () => {
  const pgPort = await freePort();
  const first = await up(pgPort);
  assert.ok(existsSync(first.info.socket), 'the unix socket exists');
  await first.ipam.createPool({ name: 'default', cidr: '10.244.0.0/16', blockPrefixLength: 26 });
  const { allocation } = await first.ipam.allocate({ handle: 'c1/eth0', node: 'n1', pool: '', podNamespace: 'ns', podName: 'p', containerId: 'c1' });
  first.ipam.close();
  assert.equal(await first.s.stop(), 0, `weft up exits cleanly on SIGTERM:\n${first.s.output().slice(-2000)}`);
  running = null;
  assert.ok(!existsSync(first.info.socket), 'the socket is removed on stop');

  const pki = path.join(dataDir, 'pki');
  assert.equal(statSync(pki).mode & 0o777, 0o700, 'the pki folder is 0700');
  for (const key of ['ca.key', 'server.key', 'admin.key']) assert.equal(statSync(path.join(pki, key)).mode & 0o777, 0o600, key);
  const caBefore = readFileSync(path.join(pki, 'ca.crt'), 'utf8');

  const second = await up(pgPort);
  assert.equal(readFileSync(path.join(pki, 'ca.crt'), 'utf8'), caBefore, 'a restart keeps the CA');
  try {
    const { pools } = await second.ipam.listPools({});
    assert.deepEqual(pools.map((p) => [p.name, p.cidr]), [['default', '10.244.0.0/16']]);
    const { allocations } = await second.ipam.listAllocations({ pool: '', node: '' });
    assert.deepEqual(allocations.map((a) => [a.handle, a.address]), [['c1/eth0', allocation!.address]]);
    // The same handle still gets the same address after the restart.
    const again = await second.ipam.allocate({ handle: 'c1/eth0', node: 'n1', pool: '', podNamespace: 'ns', podName: 'p', containerId: 'c1' });
    assert.equal(again.allocation!.address, allocation!.address);
  } finally {
    second.ipam.close();
  }
  assert.equal(await second.s.stop(), 0);
  running = null;
});

test('weft up with an invalid setting exits with status 2 and names the setting', async () => {
  await assert.rejects(
    startUntil(bin.weft, ['up', '--data-dir', dataDir], /serving/, { env: { WEFT_PG_PORT: 'seventy', WEFT_LOG_LEVEL: 'warn' }, timeoutMs: 20_000 }),
    (err: Error) => /exited with 2/.test(err.message) && /WEFT_PG_PORT/.test(err.message),
  );
});

test('weft up serves only mTLS; weft ca issue makes credentials that the CLI and clients use', async () => {
  const pgPort = await freePort();
  const cp = await up(pgPort);
  const run = promisify(execFile);
  try {
    const nodeDir = path.join(dataDir, 'issued-node');
    const out = JSON.parse((await run(bin.weft, ['ca', 'issue', '--node', 'node7', '--out', nodeDir, '--days', '30', '--data-dir', dataDir, '--json'])).stdout);
    assert.equal(out.identity, 'weft:node:node7');
    assert.equal(new X509Certificate(readFileSync(path.join(nodeDir, 'tls.crt'))).subjectAltName, 'URI:weft:node:node7');
    assert.equal(statSync(path.join(nodeDir, 'tls.key')).mode & 0o777, 0o600);
    const node = createClient(IpamServiceService, `127.0.0.1:${cp.info.port}`, { security: clientTlsDir(nodeDir) });
    const unix = createClient(IpamServiceService, `unix://${cp.info.socket}`, { security: clientTlsDir(nodeDir) });
    const plain = createClient(IpamServiceService, `unix://${cp.info.socket}`);
    try {
      await node.listPools({}, { timeoutMs: 5000 });
      await unix.listPools({}, { timeoutMs: 5000 });
      await assert.rejects(plain.listPools({}, { timeoutMs: 3000 }), (e: { code: number }) => e.code === status.UNAVAILABLE, 'the unix socket is mTLS too');
    } finally {
      node.close();
      unix.close();
      plain.close();
    }
    // The CLI finds weft up's admin credentials through --data-dir, or takes --tls-dir.
    const cwdEnv = { ...process.env, WEFT_TLS_DIR: '', WEFT_CLUSTER_DIR: path.join(dataDir, 'no-cluster') };
    await run(bin.weft, ['ipam', 'pools', '--server', `127.0.0.1:${cp.info.port}`, '--data-dir', dataDir], { env: cwdEnv });
    await run(bin.weft, ['ipam', 'pools', '--server', `127.0.0.1:${cp.info.port}`, '--tls-dir', nodeDir], { env: cwdEnv });
    await assert.rejects(run(bin.weft, ['ipam', 'pools', '--server', `127.0.0.1:${cp.info.port}`, '--data-dir', path.join(dataDir, 'elsewhere')], { env: cwdEnv }),
      (e: { code: number; stderr: string }) => e.code === 2 && /no credentials for the control plane/.test(e.stderr));
    await assert.rejects(run(bin.weft, ['ca', 'issue', '--node', 'a', '--admin', 'b', '--out', nodeDir, '--data-dir', dataDir]), (e: { code: number }) => e.code === 2);
  } finally {
    cp.ipam.close();
    await cp.s.stop();
    running = null;
  }
});
