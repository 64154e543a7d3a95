import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import type { PodState } from '../../cli/cluster/cluster.js';

const run = promisify(execFile);

/** "v4:port" or "[v6]:port". */
export const hostPort = (address: string, port: number) =>
  address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;

/**
 * TCP listeners inside a local-cluster pod on `ports` (both families), answering with the pod's name; each exits on
 * its own after `lifetimeMs` even if the test never stops it. Kill the returned processes when done.
 */
export function listenTcp(p: PodState, ports: number[] = [80, 81], lifetimeMs = 600_000): ChildProcess {
  return spawn(
    'ip',
    [
      'netns',
      'exec',
      path.basename(p.netns),
      process.execPath,
      '-e',
      `const net = require('net'); for (const port of ${JSON.stringify(ports)}) net.createServer(s => s.end(${JSON.stringify(p.name)})).listen({ port, host: '::', ipv6Only: false });
     setTimeout(() => process.exit(0), ${lifetimeMs}).unref(); setInterval(() => {}, 1 << 30);`,
    ],
    { stdio: 'ignore' },
  );
}

/**
 * From one pod, a TCP connect to each target ("[v6]:port" or "v4:port") at once, each with a timeout: 'open' when the
 * listener answered, else how it failed ('timeout', 'ECONNREFUSED', ...).
 */
export async function tcpConnects(from: PodState, targets: string[], timeoutMs = 700): Promise<Record<string, string>> {
  const script = `
    const net = require('net');
    Promise.all(${JSON.stringify(targets)}.map(t => new Promise(res => {
      const i = t.lastIndexOf(':'); const host = t.slice(0, i).replace(/^\\[|\\]$/g, ''); const port = Number(t.slice(i + 1));
      const s = net.connect({ host, port, timeout: ${timeoutMs} });
      let data = '';
      s.on('data', d => data += d); s.on('end', () => res([t, data ? 'open' : 'empty']));
      s.on('timeout', () => { s.destroy(); res([t, 'timeout']); }); s.on('error', e => res([t, e.code]));
    }))).then(r => console.log(JSON.stringify(Object.fromEntries(r))));`;
  const { stdout } = await run('ip', ['netns', 'exec', path.basename(from.netns), process.execPath, '-e', script], {
    timeout: 20_000,
  });
  return JSON.parse(stdout) as Record<string, string>;
}

/**
 * One ICMP echo from a local-cluster pod, retried (bounded: `attempts` tries, `pauseMs` apart) while routes converge;
 * true once one is answered.
 */
export async function pings(
  from: PodState,
  to: string,
  opts: { attempts?: number; pauseMs?: number } = {},
): Promise<boolean> {
  const attempts = opts.attempts ?? 5;
  for (let i = 0; i < attempts; i++) {
    try {
      await run('ip', ['netns', 'exec', path.basename(from.netns), 'ping', '-c', '1', '-W', '1', to], {
        timeout: 5000,
      });
      return true;
    } catch {
      if (i < attempts - 1) await new Promise((r) => setTimeout(r, opts.pauseMs ?? 200));
    }
  }
  return false;
}

export interface StreamResult {
  sent: number;
  sentBytes: number;
  recvBytes: number;
  maxGapMs: number;
  outOfOrder: number;
  error: string | null;
  ms: number;
  /** The bound the stream was started with. */
  maxMs: number;
}
const STREAM_INTERVAL_MS = 10;
/** A wait that does not keep the test process alive (a bound on a stop that normally ends sooner). */
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms).unref());

/**
 * A TCP stream from pod `from` to an echo server in pod `to` (port 9000): a counter every 10 ms until stopped, measuring
 * the echo (bytes, order, and the longest silence between two echoes). Bounded: the client stops sending after `maxMs`
 * (default 30 s) and both processes exit on their own soon after, even if the test never stops them; each is also
 * pushed onto `children` for the test's cleanup.
 */
export async function startEchoStream(
  from: PodState,
  to: PodState,
  opts: { maxMs?: number; children?: ChildProcess[] } = {},
): Promise<{ stop(): Promise<StreamResult> }> {
  const maxMs = opts.maxMs ?? 30_000;
  const server = spawn(
    'ip',
    [
      'netns',
      'exec',
      path.basename(to.netns),
      process.execPath,
      '-e',
      `require('net').createServer((s) => { s.on('error', () => {}); s.pipe(s); }).listen(9000, '0.0.0.0', () => console.log('listening'));
       setTimeout(() => process.exit(0), ${maxMs + 20_000}).unref();`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  opts.children?.push(server);
  const lineFrom = (child: ChildProcess, text: string, what: string) =>
    new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${what} did not start`)), 10_000);
      child.stdout!.on('data', (d) => String(d).includes(text) && (clearTimeout(timer), resolve()));
    });
  await lineFrom(server, 'listening', 'the echo server');
  const clientScript = `
    const net = require('net');
    const s = net.connect({ host: ${JSON.stringify(to.addresses[0])}, port: 9000 });
    let seq = 0, sentBytes = 0, recvBytes = 0, start = 0, last = 0, maxGapMs = 0, buf = '', expect = 0, outOfOrder = 0, error = null, timer = null;
    const report = () => { console.log(JSON.stringify({ sent: seq, sentBytes, recvBytes, maxGapMs, outOfOrder, error, ms: Date.now() - start })); process.exit(0); };
    const finish = () => { if (timer) { clearInterval(timer); timer = null; s.end(); } };
    setTimeout(() => { error = error || 'timeout'; report(); }, ${maxMs + 5000}).unref();
    process.stdin.on('data', () => {}).on('end', finish);
    s.setNoDelay(true);
    s.on('connect', () => {
      start = last = Date.now();
      console.log('connected');
      timer = setInterval(() => {
        if (Date.now() - start >= ${maxMs}) return finish();
        const line = seq++ + '\\n'; sentBytes += line.length; s.write(line);
      }, ${STREAM_INTERVAL_MS});
    });
    s.on('data', (d) => {
      const now = Date.now(); maxGapMs = Math.max(maxGapMs, now - last); last = now; recvBytes += d.length;
      buf += d; const lines = buf.split('\\n'); buf = lines.pop();
      for (const l of lines) { if (Number(l) !== expect) outOfOrder++; expect = Number(l) + 1; }
    });
    s.on('error', (e) => { error = e.code || e.message; });
    s.on('close', report);`;
  const client = spawn('ip', ['netns', 'exec', path.basename(from.netns), process.execPath, '-e', clientScript], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  opts.children?.push(client);
  let clientOut = '';
  client.stdout!.on('data', (d) => (clientOut += d));
  const clientDone = new Promise<void>((r) => client.once('exit', () => r()));
  await lineFrom(client, 'connected', 'the stream');
  return {
    async stop() {
      client.stdin!.end();
      await Promise.race([clientDone, sleep(maxMs + 10_000)]);
      server.kill('SIGKILL');
      return { ...(JSON.parse(clientOut.trim().split('\n').at(-1)!) as StreamResult), maxMs };
    },
  };
}

/** What a stream that was stopped by the test must show: it ran, every byte came back in order, no long silence. */
export function assertStreamHeld(r: StreamResult, maxGapMs = 1000): void {
  assert.equal(r.error, null);
  assert.ok(r.ms < r.maxMs, 'the stream ran until the test stopped it');
  assert.ok(
    r.sent >= (r.ms / STREAM_INTERVAL_MS) * 0.5,
    `the client sent a counter every ~10 ms (${r.sent} in ${r.ms} ms)`,
  );
  assert.equal(r.recvBytes, r.sentBytes, 'every byte came back');
  assert.equal(r.outOfOrder, 0);
  assert.ok(r.maxGapMs < maxGapMs, `no gap over ${maxGapMs} ms (longest ${r.maxGapMs} ms)`);
}

export interface PingResult {
  sent: number;
  received: number;
  /** The longest time without an answer: between two answers, or from the start to the first, or the last to the end. */
  longestGapMs: number;
  ms: number;
}

/**
 * ICMP echoes from a pod every `intervalMs` (default 200) until stopped, bounded by `maxMs` (ping's own deadline, so
 * it ends even if the test never stops it). Reports how many were answered and the longest silence.
 */
export function startPingLoop(
  from: PodState,
  to: string,
  opts: { intervalMs?: number; maxMs?: number; children?: ChildProcess[] } = {},
): { stop(): Promise<PingResult> } {
  const intervalMs = opts.intervalMs ?? 200;
  const maxMs = opts.maxMs ?? 60_000;
  const t0 = Date.now();
  const child = spawn(
    'ip',
    [
      'netns',
      'exec',
      path.basename(from.netns),
      'ping',
      '-D',
      '-n',
      '-i',
      String(intervalMs / 1000),
      '-W',
      '1',
      '-w',
      String(Math.ceil(maxMs / 1000)),
      to,
    ],
    { stdio: ['ignore', 'pipe', 'ignore'] },
  );
  opts.children?.push(child);
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  const done = new Promise<void>((r) => child.once('exit', () => r()));
  return {
    async stop() {
      const end = Date.now();
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
      await Promise.race([done, sleep(5000)]);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      const replies = [...out.matchAll(/^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)/gm)].map((m) => ({
        at: Number(m[1]) * 1000,
        seq: Number(m[2]),
      }));
      const sent = Number(/(\d+) packets transmitted/.exec(out)?.[1] ?? Math.max(0, ...replies.map((r) => r.seq)));
      const times = [t0, ...replies.map((r) => r.at), end];
      let longestGapMs = 0;
      for (let i = 1; i < times.length; i++) longestGapMs = Math.max(longestGapMs, times[i]! - times[i - 1]!);
      return { sent, received: replies.length, longestGapMs: Math.round(longestGapMs), ms: end - t0 };
    },
  };
}
