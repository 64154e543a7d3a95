import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { status } from '@grpc/grpc-js';
import { cniErrorFromAgent } from './agent.js';
import { CniCode } from './errors.js';

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

  it('turns a non-gRPC failure into code 999 naming the call', () => {
    const err = cniErrorFromAgent(new Error('boom'), socket, 'Detach');
    assert.equal(err.code, CniCode.internal);
    assert.match(err.message, /Detach.*boom/);
  });
});
