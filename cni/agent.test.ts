import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Metadata, status, type Server } from '@grpc/grpc-js';
import { AgentServiceService, type AttachRequest, type AttachResponse } from '../gen/weft/agent/v1/agent.js';
import {
  AttachRequest as AttachRequestCodec,
  AttachResponse as AttachResponseCodec,
} from '../gen/codec/weft/agent/v1/agent.js';
import { DomainError } from '../lib/errors.js';
import { createClient } from '../lib/grpc/client.js';
import { listenUnixSocket, type UnixSocketServer } from '../lib/grpc/frame-server.js';
import { addService, createServer, type Handlers, type UnaryMethods } from '../lib/grpc/server.js';
import { GrpcStatus } from '../lib/grpc/status.js';
import { callUnary, GrpcCallError } from '../lib/grpc/unary-client.js';
import { encodeFrame, readFrame } from '../lib/grpc/unary-frames.js';
import { silentLogger } from '../lib/logger.js';
import { AGENT_METHODS, attachPod, checkPod, cniErrorFromAgent, detachPod } from './agent.js';
import { CniCode, CniError } from './errors.js';

const socket = '/run/weft/agent.sock';
const grpcError = (code: status, details: string) =>
  Object.assign(new Error(`${code} ${status[code]}: ${details}`), { code, details });

describe('cniErrorFromAgent', () => {
  const table: [status, number][] = [
    [status.UNAVAILABLE, CniCode.tryAgainLater],
    [status.DEADLINE_EXCEEDED, CniCode.tryAgainLater],
    [status.INVALID_ARGUMENT, CniCode.invalidConfig],
    [status.RESOURCE_EXHAUSTED, CniCode.poolExhausted],
    [status.INTERNAL, CniCode.internal],
    [status.FAILED_PRECONDITION, CniCode.internal],
    [status.ALREADY_EXISTS, CniCode.internal],
  ];
  for (const [grpcCode, cniCode] of table) {
    it(`maps ${status[grpcCode]} to ${cniCode}`, () => {
      const err = cniErrorFromAgent(grpcError(grpcCode, 'agent says so'), socket, 'Attach');
      assert.equal(err.code, cniCode);
      assert.match(err.details, new RegExp(`${status[grpcCode]} \\(${grpcCode}\\): agent says so`));
    });
  }

  it('says "try again later" and names the socket when the agent cannot be reached', () => {
    for (const code of [status.UNAVAILABLE, status.DEADLINE_EXCEEDED]) {
      const err = cniErrorFromAgent(grpcError(code, 'No connection established'), socket, 'Attach');
      assert.match(err.message, /try again later/);
      assert.ok(err.message.includes(socket));
    }
  });

  it("passes the agent's own message on for errors the caller can act on", () => {
    assert.equal(
      cniErrorFromAgent(grpcError(status.RESOURCE_EXHAUSTED, 'pool "default" has no free address'), socket, 'Attach')
        .message,
      'pool "default" has no free address',
    );
    assert.equal(
      cniErrorFromAgent(grpcError(status.INVALID_ARGUMENT, 'unknown pool "blue"'), socket, 'Attach').message,
      'unknown pool "blue"',
    );
  });

  it("maps the agent's stable error codes before its gRPC status: a CHECK difference is 101, an unsupported requested address or an unknown pool 7, a cooling address 11", () => {
    const withCode = (code: status, weftCode: string, details: string) => {
      const metadata = new Metadata();
      metadata.set('weft-error-code', weftCode);
      return Object.assign(grpcError(code, details), { metadata });
    };
    const diff = cniErrorFromAgent(
      withCode(status.FAILED_PRECONDITION, 'agent.check_failed', 'interface eth0 is down'),
      socket,
      'Check',
    );
    assert.equal(diff.code, CniCode.attachmentDiffers);
    assert.equal(diff.message, 'interface eth0 is down');
    assert.equal(
      cniErrorFromAgent(
        withCode(status.FAILED_PRECONDITION, 'agent.requested_address_unsupported', 'no'),
        socket,
        'Attach',
      ).code,
      CniCode.invalidConfig,
    );
    const pool = cniErrorFromAgent(
      withCode(
        status.INVALID_ARGUMENT,
        'agent.unknown_pool',
        'the network config names pool "blue", which IPAM does not have',
      ),
      socket,
      'Attach',
    );
    assert.deepEqual(
      [pool.code, pool.message],
      [CniCode.invalidConfig, 'the network config names pool "blue", which IPAM does not have'],
    );
    // A requested address cooling down: try again later, with IPAM's message (when it frees), not "agent unavailable".
    const cooling = cniErrorFromAgent(
      withCode(
        status.UNAVAILABLE,
        'agent.address_cooling_down',
        'IPAM: address 10.244.5.9 was released recently and rests until 2026-01-01T00:00:30.000Z',
      ),
      socket,
      'Attach',
    );
    assert.deepEqual(
      [cooling.code, cooling.message],
      [
        CniCode.tryAgainLater,
        'IPAM: address 10.244.5.9 was released recently and rests until 2026-01-01T00:00:30.000Z',
      ],
    );
    assert.equal(
      cniErrorFromAgent(withCode(status.FAILED_PRECONDITION, 'agent.attach_failed', 'no'), socket, 'Attach').code,
      CniCode.internal,
    );
    assert.equal(
      cniErrorFromAgent(withCode(status.FAILED_PRECONDITION, 'constructor', 'no'), socket, 'Attach').code,
      CniCode.internal,
    );
  });

  it('turns a non-gRPC failure into code 999 naming the call', () => {
    const err = cniErrorFromAgent(new Error('boom'), socket, 'Detach');
    assert.equal(err.code, CniCode.internal);
    assert.match(err.message, /Detach.*boom/);
  });
});

describe('attachPod and detachPod against a real server', () => {
  let dir = '';
  let socket = '';
  let server: Server;
  let listening: UnixSocketServer;
  let detachAnswer: { code: status; details: string } | null = null;
  let attachAnswer: AttachResponse | null = null;
  let lastAttach: { request: AttachRequest; traceparent: unknown; cancelledAfterMs: number | null } | null = null;

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'weft-cni-agent-'));
    socket = path.join(dir, 'agent.sock');
    // Served as the node agent serves it: unary frames and gRPC on one socket, through the same handlers.
    server = createServer();
    const unaryMethods: UnaryMethods = new Map();
    const handlers: Handlers<typeof AgentServiceService> = {
      attach: async (request, ctx) => {
        const t0 = Date.now();
        const seen = {
          request,
          traceparent: ctx.metadata.get('traceparent')[0],
          cancelledAfterMs: null as number | null,
        };
        lastAttach = seen;
        if (attachAnswer) return attachAnswer;
        return new Promise<AttachResponse>((_resolve, reject) =>
          ctx.signal.addEventListener('abort', () => {
            seen.cancelledAfterMs = Date.now() - t0;
            reject(new Error('cancelled'));
          }),
        ); // else never answers
      },
      detach: async () => {
        if (detachAnswer)
          throw Object.assign(
            new DomainError(
              'test.detach',
              detachAnswer.code === status.NOT_FOUND ? 'not_found' : 'failed_precondition',
              detachAnswer.details,
            ),
          );
        return {};
      },
      check: async () => {
        throw new DomainError(
          'agent.check_failed',
          'failed_precondition',
          'proxy ARP is off on host interface weft1234, 100% sure: é',
        );
      },
      status: async () => ({ ipamReachable: true, detail: '' }),
      garbageCollect: async () => ({ released: [], removedInterfaces: [], failures: [] }),
    };
    addService(server, AgentServiceService, handlers, silentLogger, { unaryMethods });
    listening = await listenUnixSocket({ server, socketPath: socket, unaryMethods, logger: silentLogger });
  });
  after(async () => {
    await listening.close();
    server.forceShutdown();
    await rm(dir, { recursive: true, force: true });
  });

  const pod = {
    containerId: 'c1',
    netns: '/var/run/netns/x',
    ifname: 'eth0',
    podNamespace: 'default',
    podName: 'p',
    podUid: '',
    pool: '',
    requestedAddresses: [],
    mac: '',
    network: 'weft',
  };

  it('answers "try again later" when the agent does not answer in time, and the agent stops at the deadline', async () => {
    attachAnswer = null;
    const t0 = Date.now();
    await assert.rejects(attachPod(socket, pod, { timeoutMs: 200 }), (err: unknown) => {
      assert.ok(err instanceof CniError);
      assert.equal(err.code, CniCode.tryAgainLater);
      assert.match(err.message, /did not answer Attach in time; try again later/);
      assert.match(err.details, /DEADLINE_EXCEEDED/);
      return true;
    });
    assert.ok(Date.now() - t0 < 2_000, 'gave up at the deadline');
    await new Promise((r) => setTimeout(r, 100));
    assert.ok(
      lastAttach!.cancelledAfterMs !== null && lastAttach!.cancelledAfterMs < 1_000,
      'the handler was cancelled at (or before) the deadline',
    );
  });

  it('sends the request, decodes the answer, and starts a trace the agent continues', async () => {
    const answer: AttachResponse = {
      interfaces: [
        { name: 'weft1234', mac: '0a:00:00:00:00:01', sandbox: '' },
        { name: 'eth0', mac: '0a:00:00:00:00:02', sandbox: '/var/run/netns/x' },
      ],
      ips: [{ address: '10.244.0.5/32', gateway: '169.254.1.1', interface: 1 }],
      routes: [{ dst: '0.0.0.0/0', gw: '169.254.1.1' }],
    };
    attachAnswer = answer;
    let connected = false;
    const res = await attachPod(
      socket,
      { ...pod, requestedAddresses: ['10.244.0.5'], mac: '0a:00:00:00:00:02' },
      { onConnected: () => (connected = true) },
    ).finally(() => (attachAnswer = null));
    assert.deepEqual(res, answer);
    assert.ok(connected, 'onConnected was called');
    assert.deepEqual(lastAttach!.request, { ...pod, requestedAddresses: ['10.244.0.5'], mac: '0a:00:00:00:00:02' });
    assert.match(String(lastAttach!.traceparent), /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
  });

  it("maps the agent's error code trailer and passes its message on unchanged", async () => {
    await assert.rejects(
      checkPod(socket, {
        containerId: 'c1',
        netns: '/var/run/netns/x',
        ifname: 'eth0',
        reportedAddresses: [],
        reportedMac: '',
      }),
      (err: unknown) => {
        assert.ok(err instanceof CniError);
        assert.equal(err.code, CniCode.attachmentDiffers);
        assert.equal(err.message, 'proxy ARP is off on host interface weft1234, 100% sure: é');
        return true;
      },
    );
  });

  it('serves gRPC clients on the same socket, with the same answers', async () => {
    const client = createClient(AgentServiceService, `unix://${socket}`);
    try {
      attachAnswer = {
        interfaces: [],
        ips: [{ address: '10.244.0.9/32', gateway: '169.254.1.1', interface: 1 }],
        routes: [],
      };
      const res = await client.attach({ ...pod }, { timeoutMs: 5_000 }).finally(() => (attachAnswer = null));
      assert.equal(res.ips[0]!.address, '10.244.0.9/32');
      await assert.rejects(
        client.check(
          { containerId: 'c1', netns: '', ifname: 'eth0', reportedAddresses: [], reportedMac: '' },
          { timeoutMs: 5_000 },
        ),
        (err: unknown) => {
          assert.equal((err as { code?: number }).code, status.FAILED_PRECONDITION);
          assert.equal(cniErrorFromAgent(err, socket, 'Check').code, CniCode.attachmentDiffers);
          return true;
        },
      );
    } finally {
      client.close();
    }
  });

  it('uses the paths of the generated service definition', () => {
    for (const [name, m] of Object.entries(AGENT_METHODS)) {
      const generated =
        AgentServiceService[(name[0]!.toLowerCase() + name.slice(1)) as keyof typeof AgentServiceService];
      assert.equal(m.path, generated.path);
    }
  });

  it('stops waiting when interrupted, and says so', async () => {
    const ac = new AbortController();
    setTimeout(() => ac.abort(new Error('weft-cni received SIGTERM')), 100);
    await assert.rejects(attachPod(socket, pod, { signal: ac.signal }), (err: unknown) => {
      assert.ok(err instanceof CniError);
      assert.equal(err.code, CniCode.tryAgainLater);
      assert.match(err.message, /SIGTERM while waiting for the weft agent's Attach answer/);
      return true;
    });
  });

  it('keeps status numbers equal to grpc-js', () => {
    for (const [name, code] of Object.entries(GrpcStatus))
      assert.equal(code, status[name as keyof typeof status], name);
  });

  it('treats NOT_FOUND on detach as success, and other errors as errors', async () => {
    detachAnswer = null;
    await detachPod(socket, { containerId: 'c1', netns: '', ifname: 'eth0' });
    detachAnswer = { code: status.NOT_FOUND, details: 'no such attachment' };
    await detachPod(socket, { containerId: 'c1', netns: '', ifname: 'eth0' });
    detachAnswer = { code: status.INTERNAL, details: 'boom' };
    await assert.rejects(
      detachPod(socket, { containerId: 'c1', netns: '', ifname: 'eth0' }),
      (err: unknown) => err instanceof CniError && err.code === CniCode.internal,
    );
  });
});

describe('attachPod against an agent that misbehaves or is not there', () => {
  let dir = '';
  let socket = '';
  let server: net.Server;
  /** What the fake agent does once it has read a connection's first bytes. */
  let answer: (socket: net.Socket, received: Buffer) => void = () => {};

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'weft-cni-frames-'));
    socket = path.join(dir, 'agent.sock');
    server = net.createServer((conn) => {
      conn.on('error', () => {});
      let received: Buffer = Buffer.alloc(0);
      conn.on('data', (d: Buffer) => {
        received = Buffer.concat([received, d]);
        if (readFrame(received.subarray(8), 1 << 20) !== null) answer(conn, received);
      });
    });
    await new Promise<void>((resolve) => server.listen(socket, resolve));
  });
  after(async () => {
    server.close();
    await rm(dir, { recursive: true, force: true });
  });

  const pod = {
    containerId: 'c1',
    netns: '/var/run/netns/x',
    ifname: 'eth0',
    podNamespace: 'default',
    podName: 'p',
    podUid: '',
    pool: '',
    requestedAddresses: [],
    mac: '',
    network: 'weft',
  };
  const rejectsWith = (promise: Promise<unknown>, code: number, details: RegExp, message?: RegExp) =>
    assert.rejects(promise, (err: unknown) => {
      assert.ok(err instanceof CniError, String(err));
      assert.equal(err.code, code, `${err.message} / ${err.details}`);
      assert.match(err.details, details);
      if (message) assert.match(err.message, message);
      return true;
    });

  it('answers "try again later" when the agent drops the connection mid-call', async () => {
    answer = (conn) => conn.destroy(); // as when the agent's process dies
    await rejectsWith(
      attachPod(socket, pod, { timeoutMs: 5_000 }),
      CniCode.tryAgainLater,
      /UNAVAILABLE \(14\)/,
      /unavailable; try again later/,
    );
  });

  it('answers "try again later" when nothing listens on the socket, or it is missing', async () => {
    const stale = path.join(dir, 'stale.sock');
    await writeFile(stale, ''); // a file where the socket should be: connect is refused
    await rejectsWith(
      attachPod(stale, pod),
      CniCode.tryAgainLater,
      /UNAVAILABLE.*ECONNREFUSED/,
      new RegExp(`${stale}.*try again later`),
    );
    await rejectsWith(attachPod(path.join(dir, 'missing.sock'), pod), CniCode.tryAgainLater, /UNAVAILABLE.*ENOENT/);
  });

  it('reports an answer that is not a frame, or has no status, as the agent failing (999)', async () => {
    answer = (conn) => conn.end(Buffer.from([0, 0, 0, 3, 0x7b, 0x7b, 0x7b, 0, 0, 0, 0])); // header "{{{"
    await rejectsWith(attachPod(socket, pod), CniCode.internal, /INTERNAL \(13\).*not a frame.*JSON/);
    answer = (conn) => conn.end(encodeFrame({ message: 'hello' }, new Uint8Array(0)));
    await rejectsWith(attachPod(socket, pod), CniCode.internal, /INTERNAL \(13\).*no gRPC status/);
    answer = (conn) => conn.end(encodeFrame({ status: 0, message: '', metadata: {} }, Buffer.from([0xff, 0xff, 0xff])));
    await rejectsWith(attachPod(socket, pod), CniCode.internal, /INTERNAL \(13\).*parsing error/);
  });

  it("passes the agent's status and message on", async () => {
    answer = (conn) =>
      conn.end(
        encodeFrame(
          {
            status: GrpcStatus.RESOURCE_EXHAUSTED,
            message: 'pool "blue" is 100% full \u2014 no free address',
            metadata: {},
          },
          new Uint8Array(0),
        ),
      );
    await assert.rejects(
      attachPod(socket, pod),
      (err: unknown) =>
        err instanceof CniError &&
        err.code === CniCode.poolExhausted &&
        err.message === 'pool "blue" is 100% full \u2014 no free address',
    );
    answer = (conn) =>
      conn.end(
        encodeFrame({ status: GrpcStatus.UNAVAILABLE, message: 'IPAM is down', metadata: {} }, new Uint8Array(0)),
      );
    await rejectsWith(attachPod(socket, pod), CniCode.tryAgainLater, /UNAVAILABLE \(14\): IPAM is down/);
  });

  it('connects through node:net: answers in one or many reads, drops, refused and missing sockets', async () => {
    const call = (socketPath: string, request: AttachRequest = AttachRequestCodec.fromPartial({ containerId: 'c1' })) =>
      callUnary({
        socketPath,
        path: AGENT_METHODS.Attach.path,
        request,
        requestCodec: AttachRequestCodec,
        responseCodec: AttachResponseCodec,
        timeoutMs: 5_000,
      });
    const unavailable = (pattern: RegExp) => (err: unknown) => {
      assert.ok(err instanceof GrpcCallError, String(err));
      assert.equal(err.code, GrpcStatus.UNAVAILABLE);
      assert.match(err.details, pattern);
      return true;
    };
    // Large enough to arrive in several reads, and a request large enough to be written in several writes.
    const big = AttachResponseCodec.fromPartial({
      interfaces: Array.from({ length: 5000 }, (_, i) => ({
        name: `weft${i}`,
        mac: '02:00:00:00:00:01',
        sandbox: '/var/run/netns/x',
      })),
    });
    let seen = 0;
    answer = (conn, received) => {
      seen = received.length;
      conn.end(encodeFrame({ status: 0, message: '', metadata: {} }, AttachResponseCodec.encode(big).finish()));
    };
    assert.deepEqual(await call(socket, AttachRequestCodec.fromPartial({ containerId: 'c'.repeat(300_000) })), big);
    assert.ok(seen > 300_000);
    answer = (conn) => conn.destroy();
    await assert.rejects(call(socket), unavailable(/Connection dropped/));
    const stale = path.join(dir, 'stale.sock');
    await writeFile(stale, '');
    await assert.rejects(call(stale), unavailable(/No connection established.*ECONNREFUSED/));
    await assert.rejects(call(path.join(dir, 'missing.sock')), unavailable(/No connection established.*ENOENT/));
  });

  it('gives up at the deadline when the agent accepts the call but never answers, and sends the deadline and path', async () => {
    let request: Buffer | undefined;
    answer = (_conn, received) => (request = received); // reads the call, never answers
    const t0 = Date.now();
    await rejectsWith(
      attachPod(socket, pod, { timeoutMs: 300 }),
      CniCode.tryAgainLater,
      /DEADLINE_EXCEEDED \(4\)/,
      /did not answer Attach in time/,
    );
    assert.ok(Date.now() - t0 < 2_000);
    assert.equal(request!.subarray(0, 8).toString(), 'WEFTRPC1');
    const frame = readFrame(request!.subarray(8), 1 << 20);
    assert.ok(frame && typeof frame === 'object');
    assert.equal(frame.header.path, '/weft.agent.v1.AgentService/Attach');
    assert.equal(frame.header.timeoutMs, 300);
    assert.match(
      String((frame.header.metadata as Record<string, string>).traceparent),
      /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/,
    );
  });
});
