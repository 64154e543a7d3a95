import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import * as ipamMessages from '../../gen/weft/ipam/v1/ipam.js';
import { IpamServiceService } from '../../gen/weft/ipam/v1/ipam.js';
import type { Handlers } from '../grpc/server.js';
import { silentLogger } from '../logger.js';
import { createHttpServer, createJsonGateway } from './json-gateway.js';

/** An NDJSON stream whose client stops reading: the gateway honours back-pressure instead of buffering without bound. */
test('an HTTP stream client that never reads does not make the server buffer without bound (NDJSON back-pressure)', async () => {
  let yielded = 0;
  let ended = false;
  const upserts = Array.from({ length: 200 }, (_, i) => ({ cidr: `10.${i >> 8}.${i & 255}.0/26`, pool: 'main', node: `node-${i}` }));
  const messageBytes = JSON.stringify(ipamMessages.WatchBlockAffinitiesResponse.toJSON({ revision: 1, reset: false, upserts, deletes: [], more: false })).length;
  const CAP = 64 * 1024 * 1024;
  const handlers = new Proxy({}, {
    get: (_t, name) => name === 'watchBlockAffinities'
      ? async function* (_req: unknown, ctx: { signal: AbortSignal }) {
        try {
          while (!ctx.signal.aborted) {
            yielded++;
            yield { revision: yielded, reset: false, upserts, deletes: [] };
            // Let the event loop run (sockets, timers) as a real stream's awaits do.
            if (yielded % 50 === 0) await new Promise((r) => setImmediate(r));
            // The test's own limit (so a server without back-pressure fails it without eating the machine's memory).
            if (yielded * messageBytes > CAP) await new Promise((r) => ctx.signal.addEventListener('abort', r));
          }
        } finally {
          ended = true;
        }
      }
      : undefined,
  }) as unknown as Handlers<typeof IpamServiceService>;
  const server = createHttpServer([createJsonGateway(IpamServiceService, handlers, ipamMessages, silentLogger)]);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  const socket = net.connect(port, '127.0.0.1');
  try {
    await new Promise((r) => socket.once('connect', r));
    socket.write('POST /weft.ipam.v1.IpamService/WatchBlockAffinities HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}');
    // Read the headers and a little, then stop reading for good.
    await new Promise((r) => socket.once('data', r));
    socket.pause();
    await new Promise((r) => setTimeout(r, 1500));
    const produced = yielded * messageBytes;
    // Kernel socket buffers on both ends hold a few MB at most; without back-pressure this grows by GBs.
    assert.ok(produced < 32 * 1024 * 1024, `the handler produced ${yielded} messages (${Math.round(produced / 1e6)} MB) for a client that reads nothing`);
    const before = yielded;
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(yielded, before, 'the handler waits while the client does not read');
    // A client that leaves releases the waiting handler.
    socket.destroy();
    const deadline = Date.now() + 2000;
    while (!ended && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.ok(ended, 'the handler ended after its client left');
  } finally {
    socket.destroy();
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});
