import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Metadata, Server, ServerCredentials, status, type sendUnaryData } from '@grpc/grpc-js';
import { AgentServiceService, type DetachResponse } from '../gen/weft/agent/v1/agent.js';
import { attachPod, cniErrorFromAgent, detachPod } from './agent.js';
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

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'weft-cni-agent-'));
    socket = path.join(dir, 'agent.sock');
    server = new Server();
    server.addService(AgentServiceService, {
      attach: () => {}, // never answers
      detach: (_call: unknown, done: sendUnaryData<DetachResponse>) => (detachAnswer ? done(detachAnswer, null) : done(null, {})),
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

  it('answers "try again later" when the agent does not answer in time', async () => {
    await assert.rejects(attachPod(socket, pod, { timeoutMs: 200 }), (err: unknown) => {
      assert.ok(err instanceof CniError);
      assert.equal(err.code, CniCode.tryAgainLater);
      assert.match(err.details, /DEADLINE_EXCEEDED/);
      return true;
    });
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

  it('treats NOT_FOUND on detach as success, and other errors as errors', async () => {
    detachAnswer = null;
    await detachPod(socket, { containerId: 'c1', netns: '', ifname: 'eth0' });
    detachAnswer = { code: status.NOT_FOUND, details: 'no such attachment' };
    await detachPod(socket, { containerId: 'c1', netns: '', ifname: 'eth0' });
    detachAnswer = { code: status.INTERNAL, details: 'boom' };
    await assert.rejects(detachPod(socket, { containerId: 'c1', netns: '', ifname: 'eth0' }), (err: unknown) => err instanceof CniError && err.code === CniCode.internal);
  });
});
