import { test } from 'node:test';
import assert from 'node:assert/strict';
import { status } from '@grpc/grpc-js';
import { createClient } from './client.js';
import { addService, bindServer, createServer, shutdownServer, SHUTDOWN_DETAILS, type Handlers } from './server.js';
import { silentLogger } from '../logger.js';
import { freePort } from '../../test/support/ports.js';
import { IpamServiceService, Pool } from '../../gen/weft/ipam/v1/ipam.js';

/** What a restart of the control plane looks like from both ends of a connection. */
const unimplemented = async () => {
  throw new Error('not used here');
};

type IpamHandlers = Handlers<typeof IpamServiceService>;

function serve() {
  const server = createServer();
  const handlers: IpamHandlers = {
    ...(Object.fromEntries(Object.keys(IpamServiceService).map((k) => [k, unimplemented])) as unknown as IpamHandlers),
    createPool: async (req) => ({
      pool: Pool.fromPartial({ name: req.name, cidr: req.cidr, blockPrefixLength: req.blockPrefixLength }),
    }),
    // A watch that sends one message and then stays open until its caller leaves, as every Weft watch does.
    watchBlockAffinities: async function* (_req, ctx) {
      yield { revision: 1, reset: true, upserts: [], deletes: [], more: false };
      await new Promise((r) => ctx.signal.addEventListener('abort', r, { once: true }));
    },
  };
  addService(server, IpamServiceService, handlers, silentLogger);
  return server;
}

test('a server shutting down ends its open streams at once with UNAVAILABLE saying why, not after its grace', async () => {
  const server = serve();
  const port = await bindServer(server, '127.0.0.1:0');
  const client = createClient(IpamServiceService, `127.0.0.1:${port}`);
  try {
    const streams = Array.from({ length: 20 }, () => client.watchBlockAffinities({})[Symbol.asyncIterator]());
    for (const s of streams) assert.equal((await s.next()).value.revision, 1);
    const t0 = performance.now();
    await shutdownServer(server, 5000);
    const took = performance.now() - t0;
    // Without ending them, the shutdown waited its whole grace for streams that never end, then dropped them.
    assert.ok(took < 2000, `the shutdown took ${Math.round(took)} ms`);
    for (const s of streams)
      await assert.rejects(
        s.next(),
        (e: { code: number; details: string }) => e.code === status.UNAVAILABLE && e.details === SHUTDOWN_DETAILS,
      );
  } finally {
    client.close();
  }
});

test('a call that waits for ready is served by a server that comes up after it was made; one that does not fails at once', async () => {
  const port = await freePort();
  const client = createClient(IpamServiceService, `127.0.0.1:${port}`);
  const server = serve();
  try {
    const req = { name: 'p', cidr: '10.0.0.0/16', blockPrefixLength: 24 };
    // Nothing listens: the channel's connection attempt is refused and it backs off.
    await assert.rejects(
      client.createPool(req, { timeoutMs: 5000 }),
      (e: { code: number }) => e.code === status.UNAVAILABLE,
    );
    const waiting = client.createPool(req, { timeoutMs: 15_000, waitForReady: true });
    // Made while the channel backs off: without waiting for ready it fails at once with the last connection error.
    await assert.rejects(
      client.createPool(req, { timeoutMs: 5000 }),
      (e: { code: number }) => e.code === status.UNAVAILABLE,
    );
    await new Promise((r) => setTimeout(r, 1500));
    await bindServer(server, `127.0.0.1:${port}`);
    assert.equal((await waiting).pool?.name, 'p');
  } finally {
    client.close();
    await shutdownServer(server, 500);
  }
});
