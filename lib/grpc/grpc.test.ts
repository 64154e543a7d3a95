import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { getEventListeners } from 'node:events';
import { status } from '@grpc/grpc-js';
import { context, trace } from '@opentelemetry/api';
import { createClient } from './client.js';
import { addService, bindServer, createServer, LISTEN_BACKLOG, shutdownServer } from './server.js';
import { errorCodeOf } from './errors.js';
import { DomainError } from '../errors.js';
import { createLogger } from '../logger.js';
import { setupTelemetry, tracer } from '../telemetry.js';
import { IpamServiceService, Pool } from '../../gen/weft/ipam/v1/ipam.js';

/** The shared gRPC plumbing on a real server bound to port 0: trace context crosses the wire, errors map once. */
setupTelemetry('test');
const server = createServer();
const seenTraceIds: string[] = [];
const seenIdentities: string[] = [];
const logLines: string[] = [];
let port = 0;

const unimplemented = async () => {
  throw new Error('not used here');
};

before(async () => {
  addService(
    server,
    IpamServiceService,
    {
      createPool: async (req, ctx) => {
        seenTraceIds.push(trace.getSpan(context.active())!.spanContext().traceId);
        seenIdentities.push(ctx.identity.kind);
        ctx.logger.info('creating');
        if (req.name === 'conflict') throw new DomainError('test.conflict', 'conflict', 'it changed; read it again');
        if (req.name === 'boom') throw new Error('secret detail');
        if (req.name === 'slow') await new Promise((r) => setTimeout(r, 2000).unref());
        return {
          pool: Pool.fromPartial({
            name: req.name,
            cidr: req.cidr,
            blockPrefixLength: req.blockPrefixLength,
            createTime: new Date(0),
          }),
        };
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
      // eslint-disable-next-line require-yield
      watchBlockAffinities: async function* () {
        throw new DomainError('test.unavailable', 'unavailable', 'try later');
      },
    },
    createLogger({}, { write: (l) => logLines.push(l) }),
  );
  port = await bindServer(server, '127.0.0.1:0');
});

after(() => shutdownServer(server, 500));

test("the caller's trace continues on the server, and server logs carry its id", async () => {
  const client = createClient(IpamServiceService, `127.0.0.1:${port}`);
  try {
    const traceId = await tracer().startActiveSpan('caller', async (span) => {
      await client.createPool({ name: 'ok', cidr: '10.0.0.0/16', blockPrefixLength: 24 });
      span.end();
      return span.spanContext().traceId;
    });
    assert.equal(seenTraceIds.at(-1), traceId);
    assert.equal(
      seenIdentities.at(-1),
      'none',
      'a server without identify knows no caller (and, not enforcing, serves it)',
    );
    assert.ok(logLines.some((l) => JSON.parse(l).trace_id === traceId && JSON.parse(l).msg === 'creating'));
  } finally {
    client.close();
  }
});

test('domain errors map to their status with their code; unexpected ones become INTERNAL without detail', async () => {
  const client = createClient(IpamServiceService, `127.0.0.1:${port}`);
  try {
    await assert.rejects(
      client.createPool({ name: 'conflict', cidr: '', blockPrefixLength: 0 }),
      (e: { code: number; details: string }) =>
        e.code === status.ABORTED && e.details === 'it changed; read it again' && errorCodeOf(e) === 'test.conflict',
    );
    await assert.rejects(
      client.createPool({ name: 'boom', cidr: '', blockPrefixLength: 0 }),
      (e: { code: number; details: string }) => e.code === status.INTERNAL && !e.details.includes('secret'),
    );
    assert.ok(
      logLines.some((l) => l.includes('secret detail')),
      'the stack goes to the log',
    );
    const it = client.watchBlockAffinities({})[Symbol.asyncIterator]();
    await assert.rejects(it.next(), (e: { code: number }) => e.code === status.UNAVAILABLE);
  } finally {
    client.close();
  }
});

test('a long-lived AbortSignal shared by many calls keeps no listener per finished call (abort listener leak)', async () => {
  const client = createClient(IpamServiceService, `127.0.0.1:${port}`);
  const signal = new AbortController().signal;
  const warnings: string[] = [];
  const onWarning = (w: Error) => warnings.push(w.name);
  process.on('warning', onWarning);
  try {
    for (let i = 0; i < 300; i++)
      await client.createPool({ name: `p${i}`, cidr: '10.0.0.0/16', blockPrefixLength: 24 }, { signal });
    assert.equal(
      getEventListeners(signal, 'abort').length,
      0,
      'finished unary calls left abort listeners on the signal',
    );
    for (let i = 0; i < 100; i++) {
      await assert.rejects(
        async () => {
          for await (const _ of client.watchBlockAffinities({}, { signal })) void _;
        },
        (e: { code: number }) => e.code === status.UNAVAILABLE,
      );
    }
    assert.equal(getEventListeners(signal, 'abort').length, 0, 'finished streams left abort listeners on the signal');
    // A call still running holds exactly one listener, and a signal that aborts cancels it.
    const ac = new AbortController();
    const pending = client.createPool(
      { name: 'slow', cidr: '10.0.0.0/16', blockPrefixLength: 24 },
      { signal: ac.signal },
    );
    assert.equal(getEventListeners(ac.signal, 'abort').length, 1);
    ac.abort();
    await assert.rejects(pending, (e: { code: number }) => e.code === status.CANCELLED);
    // An already aborted signal cancels at once.
    await assert.rejects(
      client.createPool({ name: 'late', cidr: '', blockPrefixLength: 0 }, { signal: ac.signal }),
      (e: { code: number }) => e.code === status.CANCELLED,
    );
    assert.deepEqual(
      warnings.filter((w) => w === 'MaxListenersExceededWarning'),
      [],
    );
  } finally {
    process.off('warning', onWarning);
    client.close();
  }
});

test('a TCP listener takes a queue of LISTEN_BACKLOG connections (as many as the kernel allows), and closes with the server', async (t) => {
  const { execFileSync } = await import('node:child_process');
  const { readFileSync } = await import('node:fs');
  const { connect } = await import('node:net');
  let ss: string;
  try {
    ss = execFileSync('ss', ['-Hltn', `sport = :${port}`], { encoding: 'utf8' });
  } catch {
    t.skip('ss (iproute2) is not installed: install it with scripts/install-deps.sh');
    return;
  }
  // For a listening socket ss shows the accept queue's length in Send-Q (the third column).
  const somaxconn = Number(readFileSync('/proc/sys/net/core/somaxconn', 'utf8'));
  assert.equal(Number(ss.trim().split(/\s+/)[2]), Math.min(LISTEN_BACKLOG, somaxconn), ss);
  // Its own server, shut down the way a failed start does: the port is free again at once.
  const other = createServer();
  const otherPort = await bindServer(other, '127.0.0.1:0');
  other.forceShutdown();
  await new Promise<void>((resolve, reject) => {
    const s = connect(otherPort, '127.0.0.1');
    s.once('connect', () => reject(new Error('a shut-down server still accepts connections')));
    s.once('error', (err: NodeJS.ErrnoException) => (err.code === 'ECONNREFUSED' ? resolve() : reject(err)));
  });
});
