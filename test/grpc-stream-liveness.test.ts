import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Server } from '@grpc/grpc-js';
import { createClient, type PromiseClient } from '../lib/grpc/client.js';
import { addService, bindServer, createServer, type Handlers } from '../lib/grpc/server.js';
import { silentLogger } from '../lib/logger.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { startBlackholeProxy, type BlackholeProxy } from './support/blackhole-proxy.js';

/**
 * A server stream whose client disappears without a clean close ends within a bounded time, even while the server
 * waits for the client to read (back-pressure): the client is reached through a userspace proxy that can reset every
 * connection (a killed process) or swallow every byte (a black-holed network).
 */
const KEEPALIVE = { timeMs: 500, timeoutMs: 500 };

let server: Server | null = null;
let proxy: BlackholeProxy | null = null;
let client: PromiseClient<typeof IpamServiceService> | null = null;
afterEach(async () => {
  proxy?.restore();
  client?.close();
  server?.forceShutdown();
  await proxy?.close();
  server = null;
  proxy = null;
  client = null;
});

/** A server whose WatchBlockAffinities sends big messages without end; says when the handler has ended. */
async function startStreamingServer() {
  const state = { yielded: 0, endedAt: 0 };
  const upserts = Array.from({ length: 500 }, (_, i) => ({
    cidr: `10.${i >> 8}.${i & 255}.0/26`,
    pool: 'main',
    node: `node-${i}`,
  }));
  const handlers = new Proxy(
    {},
    {
      get: (_t, name) =>
        name === 'watchBlockAffinities'
          ? async function* () {
              try {
                for (;;) {
                  state.yielded++;
                  yield { revision: state.yielded, reset: false, upserts, deletes: [] };
                }
              } finally {
                state.endedAt = Date.now();
              }
            }
          : undefined,
    },
  ) as unknown as Handlers<typeof IpamServiceService>;
  server = createServer(KEEPALIVE);
  addService(server, IpamServiceService, handlers, silentLogger);
  const port = await bindServer(server, '127.0.0.1:0');
  proxy = await startBlackholeProxy('127.0.0.1', port);
  // The client's own keepalive is off: it is the one that vanishes, and the server must notice by itself.
  client = createClient(IpamServiceService, `127.0.0.1:${proxy.port}`, {
    keepalive: { timeMs: 3_600_000, timeoutMs: 3_600_000 },
  });
  const it = client.watchBlockAffinities({})[Symbol.asyncIterator]();
  await it.next();
  // The client reads no more: the server's writes back up and it waits for the client to read.
  const deadline = Date.now() + 5000;
  let last = -1;
  while (state.yielded !== last && Date.now() < deadline) {
    last = state.yielded;
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.equal(state.endedAt, 0);
  return state;
}

async function endedWithin(state: { endedAt: number }, ms: number): Promise<number> {
  const started = Date.now();
  while (!state.endedAt && Date.now() - started < ms) await new Promise((r) => setTimeout(r, 25));
  assert.ok(state.endedAt, `the server stream still runs ${ms} ms after its client vanished`);
  return state.endedAt - started;
}

test("a server stream waiting on back-pressure ends when its client's connection is reset (process killed)", async () => {
  const state = await startStreamingServer();
  proxy!.cut();
  await endedWithin(state, 3000);
});

test('a server stream ends within the keepalive bound when its client is black-holed (no close ever arrives)', async () => {
  const state = await startStreamingServer();
  proxy!.blackhole();
  // A ping every 500 ms, unanswered after 500 ms more: the connection and its streams go.
  await endedWithin(state, 4 * (KEEPALIVE.timeMs + KEEPALIVE.timeoutMs));
});
