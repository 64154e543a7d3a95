import assert from 'node:assert/strict';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Server } from '@grpc/grpc-js';
import { AgentServiceService, type AttachResponse } from '../../gen/weft/agent/v1/agent.js';
import { silentLogger } from '../logger.js';
import { listenUnixSocket, type UnixSocketServer } from './frame-server.js';
import { addService, createServer, type Handlers, type UnaryMethods } from './server.js';
import { GrpcStatus } from './status.js';
import { encodeFrame, MAGIC, readFrame } from './unary-frames.js';

/** Sends raw bytes on a fresh connection and returns the answer frame's header (or null when the server just closes). */
function exchange(socketPath: string, bytes: Buffer): Promise<Record<string, unknown> | null> {
  return new Promise((resolve, reject) => {
    const conn = net.connect(socketPath);
    let data = Buffer.alloc(0);
    conn.on('data', (d: Buffer) => (data = Buffer.concat([data, d])));
    conn.on('error', reject);
    conn.on('close', () => {
      const frame = readFrame(data, 1 << 20);
      resolve(frame && typeof frame === 'object' ? frame.header : null);
    });
    conn.write(bytes);
  });
}

describe('listenUnixSocket: unary frames beside gRPC', () => {
  let dir = '';
  let socket = '';
  let server: Server;
  let listening: UnixSocketServer;
  let cancelled = false;

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'weft-frames-'));
    socket = path.join(dir, 'agent.sock');
    server = createServer();
    const unaryMethods: UnaryMethods = new Map();
    const never = (signal: AbortSignal) =>
      new Promise<never>((_r, reject) =>
        signal.addEventListener('abort', () => {
          cancelled = true;
          reject(new Error('cancelled'));
        }),
      );
    const handlers: Handlers<typeof AgentServiceService> = {
      attach: async (_req, ctx): Promise<AttachResponse> => never(ctx.signal),
      detach: async () => ({}),
      check: async () => ({}),
      status: async () => ({ ipamReachable: true, detail: '' }),
      garbageCollect: async () => ({ released: [], removedInterfaces: [], failures: [] }),
    };
    addService(server, AgentServiceService, handlers, silentLogger, { unaryMethods });
    listening = await listenUnixSocket({
      server,
      socketPath: socket,
      unaryMethods,
      logger: silentLogger,
      readTimeoutMs: 300,
    });
  });
  after(async () => {
    await listening.close();
    server.forceShutdown();
    await rm(dir, { recursive: true, force: true });
  });

  const request = (header: object, message = new Uint8Array(0)) => Buffer.concat([MAGIC, encodeFrame(header, message)]);

  it('makes its socket 0600: only its owner may connect', async () => {
    assert.equal((await stat(socket)).mode & 0o777, 0o600);
  });

  it('answers a known method, even when the request arrives a byte at a time', async () => {
    const bytes = request({ path: AgentServiceService.status.path, timeoutMs: 5000, metadata: {} });
    const answer = await new Promise<Record<string, unknown> | null>((resolve, reject) => {
      const conn = net.connect(socket);
      let data = Buffer.alloc(0);
      conn.on('data', (d: Buffer) => (data = Buffer.concat([data, d])));
      conn.on('error', reject);
      conn.on('close', () => {
        const f = readFrame(data, 1 << 20);
        resolve(f && typeof f === 'object' ? f.header : null);
      });
      let i = 0;
      const next = () => (i < bytes.length ? conn.write(bytes.subarray(i, ++i), () => setImmediate(next)) : undefined);
      next();
    });
    assert.equal(answer?.status, GrpcStatus.OK);
  });

  it('refuses an unknown method with UNIMPLEMENTED and a header that is not JSON with INTERNAL', async () => {
    assert.equal(
      (await exchange(socket, request({ path: '/weft.agent.v1.AgentService/Nope', timeoutMs: 1000, metadata: {} })))
        ?.status,
      GrpcStatus.UNIMPLEMENTED,
    );
    const bad = Buffer.concat([MAGIC, Buffer.from([0, 0, 0, 2, 0x7b, 0x7b, 0, 0, 0, 0])]);
    assert.equal((await exchange(socket, bad))?.status, GrpcStatus.INTERNAL);
  });

  it('answers DEADLINE_EXCEEDED at the deadline and cancels the handler', async () => {
    cancelled = false;
    const answer = await exchange(
      socket,
      request({ path: AgentServiceService.attach.path, timeoutMs: 100, metadata: {} }),
    );
    assert.equal(answer?.status, GrpcStatus.DEADLINE_EXCEEDED);
    assert.ok(cancelled, 'the handler saw its signal abort');
  });

  it('closes a connection that stays silent, or sends half a request, after the read timeout; a slow handler is not cut by it', async () => {
    const closedAfter = (bytes: Buffer) =>
      new Promise<number>((resolve, reject) => {
        const t0 = performance.now();
        const conn = net.connect(socket);
        conn.on('error', reject);
        conn.on('close', () => resolve(performance.now() - t0));
        conn.on('connect', () => conn.write(bytes));
      });
    const silent = await closedAfter(Buffer.alloc(0));
    assert.ok(silent >= 250 && silent < 3000, `a silent connection closed after ${silent.toFixed(0)} ms`);
    const whole = request({ path: AgentServiceService.status.path, timeoutMs: 5000, metadata: {} });
    const half = await closedAfter(whole.subarray(0, whole.length - 3));
    assert.ok(half >= 250 && half < 3000, `half a request closed after ${half.toFixed(0)} ms`);
    const header = await exchange(
      socket,
      request({ path: AgentServiceService.attach.path, timeoutMs: 900, metadata: {} }),
    );
    assert.equal(
      header?.status,
      GrpcStatus.DEADLINE_EXCEEDED,
      'a handler running longer than the read timeout ends at its own deadline',
    );
  });

  it('closes a connection that is neither unary frames nor HTTP/2, and keeps serving', async () => {
    assert.equal(await exchange(socket, Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')), null);
    assert.equal(
      (await exchange(socket, request({ path: AgentServiceService.detach.path, timeoutMs: 1000, metadata: {} })))
        ?.status,
      GrpcStatus.OK,
    );
  });
});
