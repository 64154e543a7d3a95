/**
 * closeOwnConnections in the kernel: a throwaway "node" namespace holding the old and the new underlay address, and a
 * "peer" namespace with an echo server, joined by a veth pair and removed afterwards, also on failure. The agent's
 * side (a connection of its own from the old address, then the call) runs in a child process started with
 * `ip netns exec <node>`, as the agent runs in its node's namespace; another program, a second process there, holds
 * its own connection from the old address. Needs root; skipped otherwise.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createInterface } from 'node:readline';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { privilegedOrSkip } from '../../test/support/privileges.js';

const sh = promisify(execFile);
const prefix = `woc${process.pid.toString(36)}`;
const nodeNs = `${prefix}-node`;
const peerNs = `${prefix}-peer`;
const OLD = '192.0.2.11';
const NEW = '192.0.2.63';
const PEER = '192.0.2.1';
const moduleUrl = new URL('./own-connections.js', import.meta.url).href;

/** A process in a namespace that speaks line by line on stdin/stdout; every child is killed at the end. */
const children: ChildProcessWithoutNullStreams[] = [];
function start(ns: string, script: string) {
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, '--input-type=module', '-e', script]);
  children.push(child);
  const lines = createInterface({ input: child.stdout });
  const queue: string[] = [];
  const waiting: ((l: string) => void)[] = [];
  lines.on('line', (l) => (waiting.length > 0 ? waiting.shift()!(l) : queue.push(l)));
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  return {
    send: (l: string) => child.stdin.write(`${l}\n`),
    next: (ms = 5000) =>
      new Promise<string>((resolve, reject) => {
        const started = new Error('waiting here').stack;
        if (queue.length > 0) return resolve(queue.shift()!);
        const t = setTimeout(() => reject(new Error(`no answer within ${ms} ms; stderr: ${stderr}; ${started}`)), ms);
        waiting.push((l) => (clearTimeout(t), resolve(l)));
      }),
  };
}

/** A TCP client from the old address to the peer's echo server: a line on stdin is sent (`close` runs `onClose`), and it prints what comes back, or `closed <code>`. */
const client = (onClose = '') => `
import net from 'node:net';
import { createInterface } from 'node:readline';
const s = net.connect({ host: ${JSON.stringify(PEER)}, port: 7000, localAddress: ${JSON.stringify(OLD)} });
s.setEncoding('utf8');
s.on('connect', () => console.log('connected'));
s.on('data', (d) => console.log('echo ' + d.trim()));
let error = '';
s.on('error', (e) => (error = e.code));
s.on('close', () => console.log('closed ' + error));
createInterface({ input: process.stdin }).on('line', async (l) => {
  if (l === 'close') { ${onClose} } else s.write(l + '\\n');
});`;

describe('closeOwnConnections in the kernel', privilegedOrSkip(), () => {
  before(async () => {
    await sh('ip', ['netns', 'add', nodeNs]);
    await sh('ip', ['netns', 'add', peerNs]);
    await sh('ip', ['-n', nodeNs, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', peerNs]);
    for (const [ns, addrs] of [
      [nodeNs, [OLD, NEW]],
      [peerNs, [PEER]],
    ] as const) {
      for (const a of addrs) await sh('ip', ['-n', ns, 'addr', 'add', `${a}/24`, 'dev', 'eth0']);
      await sh('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
      await sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    }
    const server = start(
      peerNs,
      `import net from 'node:net'; net.createServer((s) => { s.on('error', () => {}); s.pipe(s); }).listen(7000, ${JSON.stringify(PEER)}, () => console.log('listening'));`,
    );
    assert.equal(await server.next(), 'listening');
  });

  after(async () => {
    for (const c of children) c.kill('SIGKILL');
    await sh('ip', ['netns', 'del', nodeNs]).catch(() => {});
    await sh('ip', ['netns', 'del', peerNs]).catch(() => {});
  });

  it("the agent's underlay change handling closes only the agent's own connections of the old address: another program's TCP connection bound to it survives", async () => {
    const other = start(nodeNs, client());
    assert.equal(await other.next(), 'connected');
    const agent = start(
      nodeNs,
      client(
        `console.log('killed ' + await (await import(${JSON.stringify(moduleUrl)})).closeOwnConnections(${JSON.stringify(OLD)}));`,
      ),
    );
    assert.equal(await agent.next(), 'connected');
    other.send('before');
    assert.equal(await other.next(), 'echo before');
    agent.send('close');
    const answers = [await agent.next(), await agent.next()].sort();
    assert.equal(
      answers[0],
      'closed ECONNABORTED',
      "the agent's own connection is destroyed at once (gRPC reconnects from the new address)",
    );
    assert.match(answers[1]!, /^killed \d+$/);
    other.send('after');
    assert.equal(
      await other.next(),
      'echo after',
      "the other program's connection from the old address still carries data",
    );
  });
});
