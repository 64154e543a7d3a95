import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { status } from '@grpc/grpc-js';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { connect } from 'node:tls';
import { createClient } from './client.js';
import { clientTlsDir, type TransportSecurity } from './credentials.js';
import { addService, bindServer, createServer, shutdownServer, type CallContext } from './server.js';
import { silentLogger } from '../logger.js';
import {
  createCa,
  ensureControlPlanePki,
  issueCertificate,
  issueClientTlsDir,
  readCa,
  serverSubject,
  writeClientTlsDir,
} from '../pki.js';
import { writeFileAtomic } from '../atomic-file.js';
import { IpamServiceService, Pool } from '../../gen/weft/ipam/v1/ipam.js';

/** Mutual TLS on a real server: who may connect, who the handler sees, and certificates replaced on disk. */
const dir = mkdtempSync(path.join(tmpdir(), 'weft-mtls-'));
const pki = path.join(dir, 'pki');
const REFRESH_MS = 100;
const serverSecurity = (): TransportSecurity => ({
  mode: 'mtls',
  caFile: path.join(pki, 'ca.crt'),
  certFile: path.join(pki, 'server.crt'),
  keyFile: path.join(pki, 'server.key'),
  refreshMs: REFRESH_MS,
});
const server = createServer();
const seen: CallContext[] = [];
let port = 0;

const unimplemented = async () => {
  throw new Error('not used here');
};

before(async () => {
  await ensureControlPlanePki(pki);
  addService(
    server,
    IpamServiceService,
    {
      createPool: async (req: { name: string }, ctx: CallContext) => {
        seen.push(ctx);
        return { pool: Pool.fromPartial({ name: req.name, cidr: '10.0.0.0/16', createTime: new Date(0) }) };
      },
      listPools: unimplemented,
      allocate: unimplemented,
      release: unimplemented,
      listAllocations: unimplemented,
      garbageCollect: unimplemented,
      listAllocationHistory: unimplemented,
      getUtilization: unimplemented,
      updatePool: unimplemented,
      batchAllocate: unimplemented,
      checkConsistency: unimplemented,
      createRoutingDomain: unimplemented,
      listRoutingDomains: unimplemented,
      registerCluster: unimplemented,
      listClusters: unimplemented,
      createAggregate: unimplemented,
      listAggregates: unimplemented,
      allocatePrefix: unimplemented,
      releasePrefix: unimplemented,
      listPrefixes: unimplemented,
      createReservation: unimplemented,
      listReservations: unimplemented,
      deleteReservation: unimplemented,
      setNodeLabels: unimplemented,
      setNamespaceLabels: unimplemented,
      watchBlockAffinities: async function* (_req: unknown, ctx: CallContext) {
        seen.push(ctx);
        for (let revision = 1; !ctx.signal.aborted; revision++) {
          yield { revision, reset: false, upserts: [], deletes: [], more: false };
          await new Promise((r) => setTimeout(r, 20));
        }
      },
    } as never,
    silentLogger,
  );
  port = await bindServer(server, '127.0.0.1:0', serverSecurity());
});

after(async () => {
  await shutdownServer(server, 500);
  rmSync(dir, { recursive: true, force: true });
});

async function clientDir(name: string, subject: Parameters<typeof issueClientTlsDir>[2]): Promise<string> {
  const out = path.join(dir, name);
  await issueClientTlsDir(pki, out, subject);
  return out;
}

test("a node certificate is identity node:<name> in the handler, with a request id (the caller's when sane)", async () => {
  const client = createClient(IpamServiceService, `127.0.0.1:${port}`, {
    security: clientTlsDir(await clientDir('node1', { kind: 'node', name: 'node1' })),
  });
  try {
    await client.createPool({ name: 'a' });
    assert.deepEqual(seen.at(-1)!.identity, { kind: 'node', name: 'node1' });
    assert.match(seen.at(-1)!.requestId, /^[0-9a-f-]{36}$/);
    const stream = client.watchBlockAffinities({})[Symbol.asyncIterator]();
    await stream.next();
    assert.deepEqual(seen.at(-1)!.identity, { kind: 'node', name: 'node1' }, 'streaming calls too');
    await stream.return?.();
  } finally {
    client.close();
  }
  const admin = createClient(IpamServiceService, `localhost:${port}`, {
    security: clientTlsDir(await clientDir('admin', { kind: 'admin', name: 'ops' })),
  });
  try {
    const { Metadata } = await import('@grpc/grpc-js');
    await new Promise<void>((resolve, reject) => {
      const md = new Metadata();
      md.set('x-request-id', 'req-42');
      admin.raw.makeUnaryRequest(
        IpamServiceService.createPool.path,
        (r: unknown) => IpamServiceService.createPool.requestSerialize(r as never),
        (b: Buffer) => b,
        { ...IpamServiceService.createPool.requestDeserialize(Buffer.alloc(0)), name: 'b' },
        md,
        (err) => (err ? reject(err) : resolve()),
      );
    });
    assert.deepEqual(seen.at(-1)!.identity, { kind: 'admin', name: 'ops' });
    assert.equal(seen.at(-1)!.requestId, 'req-42');
  } finally {
    admin.close();
  }
});

test('a client without a certificate, or with one from another CA, does not get through the handshake', async () => {
  const before = seen.length;
  const ca = await readCa(pki);
  // A plaintext client, and one whose certificate another CA signed (it trusts the right CA for the server).
  const plain = createClient(IpamServiceService, `127.0.0.1:${port}`);
  const foreignCa = await createCa({ commonName: 'Someone else' });
  const foreign = path.join(dir, 'foreign');
  await writeClientTlsDir(foreign, ca.cert, await issueCertificate(foreignCa, { kind: 'admin', name: 'local' }));
  const foreignClient = createClient(IpamServiceService, `127.0.0.1:${port}`, { security: clientTlsDir(foreign) });
  try {
    await assert.rejects(
      plain.createPool({ name: 'x' }, { timeoutMs: 3000 }),
      (e: { code: number }) => e.code === status.UNAVAILABLE,
    );
    await assert.rejects(
      foreignClient.createPool({ name: 'x' }, { timeoutMs: 3000 }),
      (e: { code: number }) => e.code === status.UNAVAILABLE,
    );
    // A TLS client that presents no certificate at all is refused by the server during the handshake.
    const err = await new Promise<Error | null>((resolve) => {
      const s = connect({
        port,
        host: '127.0.0.1',
        ca: ca.cert,
        servername: 'weft-control-plane',
        ALPNProtocols: ['h2'],
      });
      s.on('error', (e) => resolve(e));
      s.on('secureConnect', () =>
        s.once('data', () => resolve(null)).once('close', () => resolve(new Error('closed'))),
      );
    });
    assert.ok(err, 'the server closed the connection of a client without a certificate');
    assert.equal(seen.length, before, 'no handler ran');
  } finally {
    plain.close();
    foreignClient.close();
  }
});

test('a renewal caught between its two writes (new key, old certificate) is not taken: new connections keep the old pair until both agree', async () => {
  const ca = await readCa(pki);
  const leaf = await issueCertificate(ca, { kind: 'admin', name: 'probe2' });
  const handshake = () =>
    new Promise<string>((resolve, reject) => {
      const s = connect(
        {
          port,
          host: '127.0.0.1',
          ca: ca.cert,
          servername: 'weft-control-plane',
          ALPNProtocols: ['h2'],
          cert: leaf.cert,
          key: leaf.key,
        },
        () => {
          resolve(s.getPeerCertificate().serialNumber);
          s.destroy();
        },
      );
      s.on('error', reject);
    });
  const old = await handshake();
  const renewed = await issueCertificate(ca, serverSubject());
  await writeFileAtomic(path.join(pki, 'server.key'), renewed.key, 0o600);
  // Several refreshes see the new key beside the old certificate: every handshake still succeeds, with the old pair.
  for (let i = 0; i < 8; i++) {
    await new Promise((r) => setTimeout(r, REFRESH_MS / 2));
    assert.equal(await handshake(), old, 'a handshake in the middle of the renewal');
  }
  await writeFileAtomic(path.join(pki, 'server.crt'), renewed.cert, 0o644);
  const want = new X509Certificate(renewed.cert).serialNumber;
  const deadline = Date.now() + 5000;
  let now = old;
  while (now !== want && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    now = await handshake();
  }
  assert.equal(now, want, 'once both files agree, new connections get the new certificate');
});

test('a server certificate replaced on disk is used for new connections without a restart; an open stream keeps going', async () => {
  const peerSerial = () =>
    new Promise<string>((resolve, reject) => {
      const s = connect(
        {
          port,
          host: '127.0.0.1',
          ca: ca.cert,
          servername: 'weft-control-plane',
          ALPNProtocols: ['h2'],
          cert: leaf.cert,
          key: leaf.key,
        },
        () => {
          resolve(s.getPeerCertificate().serialNumber);
          s.destroy();
        },
      );
      s.on('error', reject);
    });
  const ca = await readCa(pki);
  const leaf = await issueCertificate(ca, { kind: 'admin', name: 'probe' });
  const client = createClient(IpamServiceService, `127.0.0.1:${port}`, {
    security: clientTlsDir(await clientDir('watcher', { kind: 'node', name: 'w' }), REFRESH_MS),
  });
  try {
    const stream = client.watchBlockAffinities({})[Symbol.asyncIterator]();
    const first = (await stream.next()).value.revision as number;
    const old = await peerSerial();
    const renewed = await issueCertificate(ca, serverSubject());
    await writeFileAtomic(path.join(pki, 'server.key'), renewed.key, 0o600);
    await writeFileAtomic(path.join(pki, 'server.crt'), renewed.cert, 0o644);
    const want = new X509Certificate(renewed.cert).serialNumber;
    assert.notEqual(old, want);
    const deadline = Date.now() + 5000;
    let now = old;
    while (now !== want && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
      now = await peerSerial();
    }
    assert.equal(now, want, 'new connections get the new certificate');
    let last = first;
    for (let i = 0; i < 5; i++) last = (await stream.next()).value.revision as number;
    assert.ok(last > first + 4, 'the stream opened before the change still delivers');
    await client.createPool({ name: 'after' }); // and unary calls on the same channel still work
    await stream.return?.();
  } finally {
    client.close();
  }
});
