import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http2 from 'node:http2';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Metadata, Server, ServerCredentials, status, type sendUnaryData, type ServerUnaryCall } from '@grpc/grpc-js';
import { AgentServiceService, type AttachRequest, type AttachResponse, type CheckResponse, type DetachResponse } from '../gen/weft/agent/v1/agent.js';
import { GrpcStatus } from '../lib/grpc/status.js';
import { AGENT_METHODS, attachPod, checkPod, cniErrorFromAgent, detachPod } from './agent.js';
import { CniCode, CniError } from './errors.js';

const socket = '/run/weft/agent.sock';
const grpcError = (code: status, details: string) => Object.assign(new Error(`${code} ${status[code]}: ${details}`), { code, details });

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
    assert.equal(cniErrorFromAgent(grpcError(status.RESOURCE_EXHAUSTED, 'pool "default" has no free address'), socket, 'Attach').message, 'pool "default" has no free address');
    assert.equal(cniErrorFromAgent(grpcError(status.INVALID_ARGUMENT, 'unknown pool "blue"'), socket, 'Attach').message, 'unknown pool "blue"');
  });

  it("maps the agent's stable error codes before its gRPC status: a CHECK difference is 101, an unsupported requested address 7", () => {
    const withCode = (code: status, weftCode: string, details: string) => {
      const metadata = new Metadata();
      metadata.set('weft-error-code', weftCode);
      return Object.assign(grpcError(code, details), { metadata });
    };
    const diff = cniErrorFromAgent(withCode(status.FAILED_PRECONDITION, 'agent.check_failed', 'interface eth0 is down'), socket, 'Check');
    assert.equal(diff.code, CniCode.attachmentDiffers);
    assert.equal(diff.message, 'interface eth0 is down');
    assert.equal(cniErrorFromAgent(withCode(status.FAILED_PRECONDITION, 'agent.requested_address_unsupported', 'no'), socket, 'Attach').code, CniCode.invalidConfig);
    assert.equal(cniErrorFromAgent(withCode(status.FAILED_PRECONDITION, 'agent.attach_failed', 'no'), socket, 'Attach').code, CniCode.internal);
    assert.equal(cniErrorFromAgent(withCode(status.FAILED_PRECONDITION, 'constructor', 'no'), socket, 'Attach').code, CniCode.internal);
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
  let detachAnswer: { code: status; details: string } | null = null;
  let attachAnswer: AttachResponse | null = null;
  let lastAttach: { request: AttachRequest; traceparent: unknown; deadline: number } | null = null;

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'weft-cni-agent-'));
    socket = path.join(dir, 'agent.sock');
    server = new Server();
    server.addService(AgentServiceService, {
      attach: (call: ServerUnaryCall<AttachRequest, AttachResponse>, done: sendUnaryData<AttachResponse>) => {
        lastAttach = { request: call.request, traceparent: call.metadata.get('traceparent')[0], deadline: Number(call.getDeadline()) };
        if (attachAnswer) done(null, attachAnswer); // else never answers
      },
      detach: (_call: unknown, done: sendUnaryData<DetachResponse>) => (detachAnswer ? done(detachAnswer, null) : done(null, {})),
      check: (_call: unknown, done: sendUnaryData<CheckResponse>) => {
        const metadata = new Metadata();
        metadata.set('weft-error-code', 'agent.check_failed');
        done({ code: status.FAILED_PRECONDITION, details: 'proxy ARP is off on host interface weft1234, 100% sure: é', metadata }, null);
      },
    });
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix://${socket}`, ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
    );
  });
  after(async () => {
    server.forceShutdown();
    await rm(dir, { recursive: true, force: true });
  });

  const pod = { containerId: 'c1', netns: '/var/run/netns/x', ifname: 'eth0', podNamespace: 'default', podName: 'p', pool: '', requestedAddresses: [], mac: '' };

  it('answers "try again later" when the agent does not answer in time, and tells the agent the deadline', async () => {
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
    assert.ok(Math.abs(lastAttach!.deadline - (t0 + 200)) < 1_000, 'the server saw grpc-timeout');
  });

  it('sends the request, decodes the answer, and starts a trace the agent continues', async () => {
    const answer: AttachResponse = {
      interfaces: [{ name: 'weft1234', mac: '0a:00:00:00:00:01', sandbox: '' }, { name: 'eth0', mac: '0a:00:00:00:00:02', sandbox: '/var/run/netns/x' }],
      ips: [{ address: '10.244.0.5/32', gateway: '169.254.1.1', interface: 1 }],
      routes: [{ dst: '0.0.0.0/0', gw: '169.254.1.1' }],
    };
    attachAnswer = answer;
    const res = await attachPod(socket, { ...pod, requestedAddresses: ['10.244.0.5'], mac: '0a:00:00:00:00:02' }).finally(() => (attachAnswer = null));
    assert.deepEqual(res, answer);
    assert.deepEqual(lastAttach!.request, { ...pod, requestedAddresses: ['10.244.0.5'], mac: '0a:00:00:00:00:02' });
    assert.match(String(lastAttach!.traceparent), /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
  });

  it("maps the agent's error code trailer and decodes its percent-encoded message", async () => {
    await assert.rejects(checkPod(socket, { containerId: 'c1', netns: '/var/run/netns/x', ifname: 'eth0', reportedAddresses: [], reportedMac: '' }), (err: unknown) => {
      assert.ok(err instanceof CniError);
      assert.equal(err.code, CniCode.attachmentDiffers);
      assert.equal(err.message, 'proxy ARP is off on host interface weft1234, 100% sure: é');
      return true;
    });
  });

  it('uses the paths of the generated service definition', () => {
    for (const [name, m] of Object.entries(AGENT_METHODS)) {
      const generated = AgentServiceService[(name[0]!.toLowerCase() + name.slice(1)) as keyof typeof AgentServiceService];
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
    for (const [name, code] of Object.entries(GrpcStatus)) assert.equal(code, status[name as keyof typeof status], name);
  });

  it('treats NOT_FOUND on detach as success, and other errors as errors', async () => {
    detachAnswer = null;
    await detachPod(socket, { containerId: 'c1', netns: '', ifname: 'eth0' });
    detachAnswer = { code: status.NOT_FOUND, details: 'no such attachment' };
    await detachPod(socket, { containerId: 'c1', netns: '', ifname: 'eth0' });
    detachAnswer = { code: status.INTERNAL, details: 'boom' };
    await assert.rejects(detachPod(socket, { containerId: 'c1', netns: '', ifname: 'eth0' }), (err: unknown) => err instanceof CniError && err.code === CniCode.internal);
  });
});

describe('attachPod against an agent that misbehaves or is not there', () => {
  let dir = '';
  let socket = '';
  let server: http2.Http2Server;
  /** What the fake agent does with each call. */
  let answer: (stream: http2.ServerHttp2Stream) => void = () => {};

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'weft-cni-h2-'));
    socket = path.join(dir, 'agent.sock');
    server = http2.createServer();
    server.on('stream', (stream: http2.ServerHttp2Stream) => {
      stream.on('error', () => {});
      answer(stream);
    });
    await new Promise<void>((resolve) => server.listen(socket, resolve));
  });
  after(async () => {
    server.close();
    await rm(dir, { recursive: true, force: true });
  });

  const pod = { containerId: 'c1', netns: '/var/run/netns/x', ifname: 'eth0', podNamespace: 'default', podName: 'p', pool: '', requestedAddresses: [], mac: '' };
  const rejectsWith = (promise: Promise<unknown>, code: number, details: RegExp, message?: RegExp) =>
    assert.rejects(promise, (err: unknown) => {
      assert.ok(err instanceof CniError, String(err));
      assert.equal(err.code, code, `${err.message} / ${err.details}`);
      assert.match(err.details, details);
      if (message) assert.match(err.message, message);
      return true;
    });

  it('answers "try again later" when the agent drops the connection mid-call', async () => {
    answer = (stream) => stream.session!.destroy(); // as when the agent's process dies
    await rejectsWith(attachPod(socket, pod, { timeoutMs: 5_000 }), CniCode.tryAgainLater, /UNAVAILABLE \(14\)/, /unavailable; try again later/);
  });

  it('answers "try again later" when nothing listens on the socket, or it is missing', async () => {
    const stale = path.join(dir, 'stale.sock');
    await writeFile(stale, ''); // a file where the socket should be: connect is refused
    await rejectsWith(attachPod(stale, pod), CniCode.tryAgainLater, /UNAVAILABLE.*ECONNREFUSED/, new RegExp(`${stale}.*try again later`));
    await rejectsWith(attachPod(path.join(dir, 'missing.sock'), pod), CniCode.tryAgainLater, /UNAVAILABLE.*ENOENT/);
  });

  it('reports an answer without grpc-status as the agent failing (999), as grpc-js did', async () => {
    // The stream ends without trailers: INTERNAL.
    answer = (stream) => {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
      stream.end();
    };
    await rejectsWith(attachPod(socket, pod), CniCode.internal, /INTERNAL \(13\).*without gRPC status/);
    // Trailers without grpc-status: HTTP 200 maps to UNKNOWN.
    answer = (stream) => {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'weft-error-code': 'x' }));
      stream.end();
    };
    await rejectsWith(attachPod(socket, pod), CniCode.internal, /UNKNOWN \(2\): Received HTTP status code 200/);
  });

  it('answers "try again later" for an HTTP 503 without grpc-status (a proxy or an agent going away)', async () => {
    answer = (stream) => {
      stream.respond({ ':status': 503 });
      stream.end();
    };
    await rejectsWith(attachPod(socket, pod), CniCode.tryAgainLater, /UNAVAILABLE \(14\): Received HTTP status code 503/);
  });

  it('decodes a percent-encoded grpc-message in a trailers-only answer', async () => {
    answer = (stream) => {
      stream.respond({
        ':status': 200, 'content-type': 'application/grpc', 'grpc-status': String(GrpcStatus.RESOURCE_EXHAUSTED),
        'grpc-message': 'pool "blue" is 100%25 full %E2%80%94 no free address',
      }, { endStream: true });
    };
    await assert.rejects(attachPod(socket, pod), (err: unknown) =>
      err instanceof CniError && err.code === CniCode.poolExhausted && err.message === 'pool "blue" is 100% full \u2014 no free address');
    // A malformed encoding is passed on as it came.
    answer = (stream) => {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '3', 'grpc-message': 'bad %E2%80 escape' }, { endStream: true });
    };
    await assert.rejects(attachPod(socket, pod), (err: unknown) => err instanceof CniError && err.code === CniCode.invalidConfig && err.message === 'bad %E2%80 escape');
  });

  it('gives up at the deadline when the agent accepts the call but never answers, and sends grpc-timeout', async () => {
    answer = () => {}; // reads the call, never answers
    let headers: http2.IncomingHttpHeaders | undefined;
    server.once('stream', (_s, h) => (headers = h));
    const t0 = Date.now();
    await rejectsWith(attachPod(socket, pod, { timeoutMs: 300 }), CniCode.tryAgainLater, /DEADLINE_EXCEEDED \(4\)/, /did not answer Attach in time/);
    assert.ok(Date.now() - t0 < 2_000);
    assert.equal(headers?.['grpc-timeout'], '300m');
    assert.equal(headers?.['content-type'], 'application/grpc');
    assert.equal(headers?.te, 'trailers');
    assert.equal(headers?.[':path'], '/weft.agent.v1.AgentService/Attach');
  });
});
