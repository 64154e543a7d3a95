import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { run } from './exec.js';

describe('run', () => {
  it('starts the program at once and gives it a promised input when it resolves', async () => {
    let resolve!: (s: string) => void;
    const input = new Promise<string>((r) => (resolve = r));
    // The program records when it started, then echoes its input: it ran before the input existed.
    const out = run('sh', ['-c', 'date +%s%N; cat'], { input });
    await new Promise((r) => setTimeout(r, 300));
    const resolvedAt = BigInt(Date.now()) * 1_000_000n;
    resolve('hello\n');
    const [startedAt, echoed] = (await out).split('\n');
    assert.ok(BigInt(startedAt!) < resolvedAt, 'the program started before its input was ready');
    assert.equal(echoed, 'hello');
  });

  it('closes stdin with nothing written when the promised input rejects', async () => {
    const input = Promise.reject(new Error('no address'));
    assert.equal(await run('cat', [], { input }), '');
  });
});
