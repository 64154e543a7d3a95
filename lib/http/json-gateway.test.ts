import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
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
  const upserts = Array.from({ length: 200 }, (_, i) => ({
    cidr: `10.${i >> 8}.${i & 255}.0/26`,
    pool: 'main',
    node: `node-${i}`,
  }));
  const messageBytes = JSON.stringify(
    ipamMessages.WatchBlockAffinitiesResponse.toJSON({ revision: 1, reset: false, upserts, deletes: [], more: false }),
  ).length;
  const CAP = 64 * 1024 * 1024;
  const handlers = new Proxy(
    {},
    {
      get: (_t, name) =>
        name === 'watchBlockAffinities'
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
    },
  ) as unknown as Handlers<typeof IpamServiceService>;
  const server = createHttpServer([
    createJsonGateway(IpamServiceService, handlers, ipamMessages, silentLogger, {
      access: { tokens: async () => ({ kind: 'admin', name: 'test' }) },
    }),
  ]);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  const socket = net.connect(port, '127.0.0.1');
  try {
    await new Promise((r) => socket.once('connect', r));
    socket.write(
      'POST /weft.ipam.v1.IpamService/WatchBlockAffinities HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer any\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}',
    );
    // Read the headers and a little, then stop reading for good.
    await new Promise((r) => socket.once('data', r));
    socket.pause();
    await new Promise((r) => setTimeout(r, 1500));
    const produced = yielded * messageBytes;
    // Kernel socket buffers on both ends hold a few MB at most; without back-pressure this grows by GBs.
    assert.ok(
      produced < 32 * 1024 * 1024,
      `the handler produced ${yielded} messages (${Math.round(produced / 1e6)} MB) for a client that reads nothing`,
    );
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

/** A gateway on 127.0.0.1:0 whose ListPools answers; `access` as the control plane would pass it. */
async function startGateway(access: Parameters<typeof createHttpServer>[1] = {}, maxBodyBytes?: number) {
  let calls = 0;
  const handlers = { listPools: async () => (calls++, { pools: [], nextPageToken: '' }) } as unknown as Handlers<
    typeof IpamServiceService
  >;
  const server = createHttpServer(
    [
      createJsonGateway(IpamServiceService, handlers, ipamMessages, silentLogger, {
        maxBodyBytes,
        access: { tokens: async () => ({ kind: 'admin', name: 'test' }) },
      }),
    ],
    access,
  );
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    calls: () => calls,
    /** One raw HTTP/1.1 request (fetch would not let a test set Host or Origin); the status code and body. */
    async request(headers: Record<string, string>, body = '{}'): Promise<{ status: number; body: string }> {
      return new Promise((resolve, reject) => {
        const req = http.request(
          {
            host: '127.0.0.1',
            port,
            method: 'POST',
            path: '/weft.ipam.v1.IpamService/ListPools',
            headers: {
              host: `127.0.0.1:${port}`,
              'content-type': 'application/json',
              authorization: 'Bearer any',
              ...headers,
            },
          },
          (res) => {
            let text = '';
            res
              .setEncoding('utf8')
              .on('data', (d: string) => (text += d))
              .on('end', () => resolve({ status: res.statusCode!, body: text }));
          },
        );
        req.on('error', reject);
        req.end(body);
      });
    },
    close: async () => {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

test('a POST without a JSON content type is refused with 415 before the handler runs (no cross-site form posts)', async () => {
  const gw = await startGateway();
  try {
    assert.equal((await gw.request({})).status, 200);
    assert.equal((await gw.request({ 'content-type': 'application/json; charset=utf-8' })).status, 200);
    for (const type of ['text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x']) {
      const r = await gw.request({ 'content-type': type });
      assert.equal(r.status, 415, type);
      assert.match(r.body, /content-type: application\/json/);
    }
    assert.equal(gw.calls(), 2, 'the refused requests never reached the handler');
  } finally {
    await gw.close();
  }
});

test('a Host header naming another site is refused with 403 (DNS rebinding); addresses, localhost and allowed names pass', async () => {
  const gw = await startGateway({ listenHost: '127.0.0.1', allowedHosts: ['weft.internal'] });
  try {
    for (const host of [
      `127.0.0.1:${gw.port}`,
      `localhost:${gw.port}`,
      'weft.internal:7401',
      'WEFT.internal',
      '[::1]:7401',
      '10.0.0.5',
    ]) {
      assert.equal((await gw.request({ host })).status, 200, host);
    }
    const evil = await gw.request({ host: `rebind.attacker.example:${gw.port}` });
    assert.equal(evil.status, 403);
    assert.match(evil.body, /rebind\.attacker\.example.*WEFT_HTTP_ALLOWED_HOSTS/);
    assert.equal(gw.calls(), 6);
  } finally {
    await gw.close();
  }
});

test('a request carrying an Origin is refused with 403 unless that origin is allowed (CSRF)', async () => {
  const gw = await startGateway({ allowedOrigins: ['https://console.example'] });
  try {
    assert.equal((await gw.request({ origin: 'https://evil.example' })).status, 403);
    assert.equal((await gw.request({ origin: 'null' })).status, 403);
    assert.equal((await gw.request({ origin: 'https://console.example' })).status, 200);
    assert.equal((await gw.request({})).status, 200, 'no Origin: not a browser page, allowed');
    assert.equal(gw.calls(), 2);
  } finally {
    await gw.close();
  }
});

test('a body over the limit is refused with 413, and the server stops reading it', async () => {
  const gw = await startGateway({}, 1024);
  try {
    const declared = await gw.request({}, JSON.stringify({ pageToken: 'x'.repeat(4096) }));
    assert.equal(declared.status, 413, 'Content-Length over the limit: refused before reading');
    assert.match(declared.body, /over 1024 bytes/);
    // Chunked (no Content-Length): the server counts, answers at the limit and closes; the rest is never read.
    const socket = net.connect(gw.port, '127.0.0.1');
    await new Promise((r) => socket.once('connect', r));
    let answer = '';
    socket.setEncoding('utf8').on('data', (d: string) => (answer += d));
    socket.on('error', () => {});
    const closed = new Promise((r) => socket.once('close', r));
    socket.write(
      `POST /weft.ipam.v1.IpamService/ListPools HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer any\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n`,
    );
    const chunk = 'x'.repeat(512);
    let sent = 0;
    for (let i = 0; i < 8 && !socket.destroyed; i++) {
      socket.write(`${chunk.length.toString(16)}\r\n${chunk}\r\n`);
      sent += chunk.length;
      await new Promise((r) => setTimeout(r, 20));
    }
    // The body never ends (no last chunk): only a server that stops reading at the limit answers and closes.
    const outcome = await Promise.race([
      closed.then(() => 'closed'),
      new Promise((r) => setTimeout(() => r('still open'), 3000)),
    ]);
    assert.equal(outcome, 'closed', 'the server closed the connection instead of reading on');
    assert.match(answer, /^HTTP\/1\.1 413/, answer);
    assert.ok(sent > 1024, 'the body did go over the limit');
    assert.equal(gw.calls(), 0);
  } finally {
    await gw.close();
  }
});
