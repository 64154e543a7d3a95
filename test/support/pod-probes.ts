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
