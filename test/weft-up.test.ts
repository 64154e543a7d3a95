import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, existsSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createClient } from '../lib/grpc/client.js';
import type { TransportSecurity } from '../lib/grpc/credentials.js';
import { clientTlsDir } from '../lib/grpc/credentials.js';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { readFileSync, statSync } from 'node:fs';
import { randomBytes, X509Certificate } from 'node:crypto';
import { status } from '@grpc/grpc-js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { bin, startUntil, type Started } from './support/processes.js';
import { freePort } from './support/ports.js';
import { createTestDatabase } from './support/database.js';
import pg from 'pg';

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
  mode: 'mtls',
  caFile: path.join(dataDir, 'pki', 'ca.crt'),
  certFile: path.join(dataDir, 'pki', 'admin.crt'),
  keyFile: path.join(dataDir, 'pki', 'admin.key'),
});

async function up(pgPort: number) {
  // DATABASE_URL is cleared: this test is about the embedded default.
  const env = {
    DATABASE_URL: '',
    WEFT_PG_PORT: String(pgPort),
    WEFT_LOG_LEVEL: 'warn',
    WEFT_HTTP_LISTEN: '127.0.0.1:0',
  };
  const s = await startUntil(bin.weft, ['up', '--data-dir', dataDir, '--listen', '127.0.0.1:0'], /"serving":true/, {
    env,
  });
  running = s;
  const info = JSON.parse(s.line) as { socket: string; port: number };
  return { s, info, ipam: createClient(IpamServiceService, `127.0.0.1:${info.port}`, { security: adminSecurity() }) };
}

test('weft up starts from nothing, serves, stops, and starts again with its pools and allocations intact', async () => {
  const pgPort = await freePort();
  const first = await up(pgPort);
  assert.ok(existsSync(first.info.socket), 'the unix socket exists');
  // Only the user running weft may reach the control plane's socket, the database or its passwords.
  const mode = (p: string) => statSync(p).mode & 0o777;
  assert.equal(mode(first.info.socket), 0o600, 'the gRPC socket is 0600');
  assert.equal(mode(dataDir) & 0o007, 0, 'the data folder is closed to others');
  assert.equal(
    mode(dataDir) & 0o070,
    process.getuid?.() === 0 ? 0o010 : 0,
    "the data folder: only the group 'postgres' may enter it (as root), else no group",
  );
  assert.equal(mode(path.join(dataDir, 'pg-passwords.json')), 0o600);
  assert.equal(mode(path.join(dataDir, 'pg')), 0o700, "PostgreSQL's folder (and socket) is its own");
  assert.ok(existsSync(path.join(dataDir, 'pg', `.s.PGSQL.${pgPort}`)), "PostgreSQL's unix socket is in its folder");
  // No TCP listener: the port only names the socket.
  const tcp = await new Promise<string>((resolve) => {
    const c = net.connect(pgPort, '127.0.0.1', () => {
      c.destroy();
      resolve('connected');
    });
    c.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
  assert.equal(tcp, 'ECONNREFUSED', 'the embedded PostgreSQL listens on no TCP port');
  const passwords = readFileSync(path.join(dataDir, 'pg-passwords.json'), 'utf8');
  assert.doesNotMatch(passwords, /"weft"/, 'no fixed password');
  await first.ipam.createPool({ name: 'default', cidr: '10.244.0.0/16', blockPrefixLength: 26 });
  const { allocation } = await first.ipam.allocate({
    handle: 'c1/eth0',
    node: 'n1',
    pool: '',
    podNamespace: 'ns',
    podName: 'p',
    containerId: 'c1',
  });
  first.ipam.close();
  assert.equal(await first.s.stop(), 0, `weft up exits cleanly on SIGTERM:\n${first.s.output().slice(-2000)}`);
  running = null;
  assert.ok(!existsSync(first.info.socket), 'the socket is removed on stop');

  const pki = path.join(dataDir, 'pki');
  assert.equal(statSync(pki).mode & 0o777, 0o700, 'the pki folder is 0700');
  for (const key of ['ca.key', 'server.key', 'admin.key'])
    assert.equal(statSync(path.join(pki, key)).mode & 0o777, 0o600, key);
  const caBefore = readFileSync(path.join(pki, 'ca.crt'), 'utf8');

  const second = await up(pgPort);
  assert.equal(readFileSync(path.join(pki, 'ca.crt'), 'utf8'), caBefore, 'a restart keeps the CA');
  try {
    const { pools } = await second.ipam.listPools({});
    assert.deepEqual(
      pools.map((p) => [p.name, p.cidr]),
      [['default', '10.244.0.0/16']],
    );
    const { allocations } = await second.ipam.listAllocations({ pool: '', node: '' });
    assert.deepEqual(
      allocations.map((a) => [a.handle, a.address]),
      [['c1/eth0', allocation!.address]],
    );
    // The same handle still gets the same address after the restart.
    const again = await second.ipam.allocate({
      handle: 'c1/eth0',
      node: 'n1',
      pool: '',
      podNamespace: 'ns',
      podName: 'p',
      containerId: 'c1',
    });
    assert.equal(again.allocation!.address, allocation!.address);
  } finally {
    second.ipam.close();
  }
  assert.equal(await second.s.stop(), 0);
  running = null;
});

test('weft up with an invalid setting exits with status 2 and names the setting', async () => {
  await assert.rejects(
    startUntil(bin.weft, ['up', '--data-dir', dataDir], /serving/, {
      env: { WEFT_PG_PORT: 'seventy', WEFT_LOG_LEVEL: 'warn' },
      timeoutMs: 20_000,
    }),
    (err: Error) => /exited with 2/.test(err.message) && /WEFT_PG_PORT/.test(err.message),
  );
});

test('weft up on an external database as a role whose password is only in WEFT_DATABASE_PASSWORD_FILE (deploy/overlays/in-cluster-postgres), and refused with a wrong one', async () => {
  const db = await createTestDatabase();
  const admin = new pg.Client({ connectionString: db.url });
  await admin.connect();
  const role = `weft_pwfile_${randomBytes(4).toString('hex')}`;
  // As `openssl rand -base64 24` makes them (/ + =), and what a URL would misread.
  const password = 'Ab/c+d=@:?#%41';
  const url = new URL(db.url);
  const dbName = url.pathname.slice(1);
  const pwDir = mkdtempSync(path.join(tmpdir(), 'weft-up-pw-'));
  const pwFile = path.join(pwDir, 'password');
  try {
    await admin.query(`CREATE ROLE ${role} LOGIN PASSWORD '${password}'`);
    await admin.query(`ALTER DATABASE ${dbName} OWNER TO ${role}`);
    url.username = role;
    url.password = '';
    // PGPASSWORD cleared: the password comes from the file alone.
    const env = {
      DATABASE_URL: url.toString(),
      WEFT_DATABASE_PASSWORD_FILE: pwFile,
      PGPASSWORD: '',
      WEFT_LOG_LEVEL: 'warn',
      WEFT_HTTP_LISTEN: '127.0.0.1:0',
    };
    const args = ['up', '--data-dir', path.join(pwDir, 'data'), '--listen', '127.0.0.1:0'];
    writeFileSync(pwFile, `${password}\n`);
    const s = await startUntil(bin.weft, args, /"serving":true/, { env });
    running = s;
    const pkiDir = path.join(pwDir, 'data', 'pki');
    const adminTls: TransportSecurity = {
      mode: 'mtls',
      caFile: path.join(pkiDir, 'ca.crt'),
      certFile: path.join(pkiDir, 'admin.crt'),
      keyFile: path.join(pkiDir, 'admin.key'),
    };
    const ipam = createClient(IpamServiceService, `127.0.0.1:${(JSON.parse(s.line) as { port: number }).port}`, {
      security: adminTls,
    });
    try {
      await ipam.createPool({ name: 'default', cidr: '10.244.0.0/16', blockPrefixLength: 26 });
    } finally {
      ipam.close();
    }
    assert.equal(await s.stop(), 0);
    running = null;
    const { rows } = await admin.query(`SELECT tableowner FROM pg_tables WHERE schemaname = 'ipam' LIMIT 1`);
    assert.equal(rows[0]?.tableowner, role, 'the migrations ran as the role');

    writeFileSync(pwFile, 'not-the-password');
    await assert.rejects(startUntil(bin.weft, args, /"serving":true/, { env, timeoutMs: 30_000 }), (err: Error) => {
      assert.match(err.message, /password authentication failed/);
      assert.doesNotMatch(err.message, /not-the-password/, 'the password is not shown');
      return true;
    });
  } finally {
    await admin.end();
    await db.drop();
    // A role belongs to the whole server: on an external DATABASE_URL's it outlives the test database (an embedded
    // server goes with it).
    if (process.env.DATABASE_URL) {
      const server = new pg.Client({ connectionString: process.env.DATABASE_URL });
      await server.connect();
      await server.query(`DROP ROLE IF EXISTS ${role}`);
      await server.end();
    }
    rmSync(pwDir, { recursive: true, force: true });
  }
});

test('weft up serves only mTLS; weft ca issue makes credentials that the CLI and clients use', async () => {
  const pgPort = await freePort();
  const cp = await up(pgPort);
  const run = promisify(execFile);
  try {
    const nodeDir = path.join(dataDir, 'issued-node');
    const out = JSON.parse(
      (
        await run(bin.weft, [
          'ca',
          'issue',
          '--node',
          'node7',
          '--out',
          nodeDir,
          '--days',
          '30',
          '--data-dir',
          dataDir,
          '--json',
        ])
      ).stdout,
    );
    assert.equal(out.identity, 'weft:node:node7');
    assert.equal(
      new X509Certificate(readFileSync(path.join(nodeDir, 'tls.crt'))).subjectAltName,
      'URI:weft:node:node7',
    );
    assert.equal(statSync(path.join(nodeDir, 'tls.key')).mode & 0o777, 0o600);
    const node = createClient(IpamServiceService, `127.0.0.1:${cp.info.port}`, { security: clientTlsDir(nodeDir) });
    const unix = createClient(IpamServiceService, `unix://${cp.info.socket}`, { security: clientTlsDir(nodeDir) });
    const plain = createClient(IpamServiceService, `unix://${cp.info.socket}`);
    try {
      await node.listPools({}, { timeoutMs: 5000 });
      await unix.listPools({}, { timeoutMs: 5000 });
      await assert.rejects(
        plain.listPools({}, { timeoutMs: 3000 }),
        (e: { code: number }) => e.code === status.UNAVAILABLE,
        'the unix socket is mTLS too',
      );
    } finally {
      node.close();
      unix.close();
      plain.close();
    }
    // The CLI finds weft up's admin credentials through --data-dir, or takes --tls-dir.
    const cwdEnv = { ...process.env, WEFT_TLS_DIR: '', WEFT_CLUSTER_DIR: path.join(dataDir, 'no-cluster') };
    await run(bin.weft, ['ipam', 'pools', '--server', `127.0.0.1:${cp.info.port}`, '--data-dir', dataDir], {
      env: cwdEnv,
    });
    await run(bin.weft, ['ipam', 'pools', '--server', `127.0.0.1:${cp.info.port}`, '--tls-dir', nodeDir], {
      env: cwdEnv,
    });
    await assert.rejects(
      run(
        bin.weft,
        ['ipam', 'pools', '--server', `127.0.0.1:${cp.info.port}`, '--data-dir', path.join(dataDir, 'elsewhere')],
        { env: cwdEnv },
      ),
      (e: { code: number; stderr: string }) => e.code === 2 && /no credentials for the control plane/.test(e.stderr),
    );
    await assert.rejects(
      run(bin.weft, ['ca', 'issue', '--node', 'a', '--admin', 'b', '--out', nodeDir, '--data-dir', dataDir]),
      (e: { code: number }) => e.code === 2,
    );
  } finally {
    cp.ipam.close();
    await cp.s.stop();
    running = null;
  }
});
