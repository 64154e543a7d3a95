import { fork, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { ClientReadableStream } from '@grpc/grpc-js';
import { controlPlaneTarget, type ClusterState } from '../cli/cluster/cluster.js';
import { RoutesServiceService, type WatchRoutesResponse } from '../gen/weft/routes/v1/routes.js';
import { createClient } from '../lib/grpc/client.js';
import { ms, percentile, type Row } from './support.js';

/**
 * bench/routes, part "watchers": many WatchRoutes streams on one routes replica (the local cluster's control plane),
 * opened by CLIENT_PROCESSES child processes (this file, run with `client`), 100 streams per gRPC channel. Each trial
 * registers a new node; each stream stamps the message that carries it. Fan-out latency is from RegisterNode's
 * return (its transaction committed the change) to each stream's delivery, in the client process; memory per
 * stream is the control plane process's RSS delta over the streams, divided by their number.
 */
const CLIENT_PROCESSES = 2;
const PER_CHANNEL = 100;
const sleep = (t: number) => new Promise((r) => setTimeout(r, t));
const now = () => performance.timeOrigin + performance.now();

type FromClient = { ready: number } | { trial: string; times: number[] } | { error: string };

/** The child: opens `count` streams and reports, per trial node, every stream's receipt time. */
function client(target: string, count: number, tag: string): void {
  const channels = Array.from({ length: Math.ceil(count / PER_CHANNEL) }, () => createClient(RoutesServiceService, target));
  let ready = 0;
  const seen = new Map<string, number[]>();
  for (let i = 0; i < count; i++) {
    const call = channels[Math.floor(i / PER_CHANNEL)]!.watchRoutes({ node: `w-${tag}-${i}`, sinceRevision: 0 }) as unknown as ClientReadableStream<WatchRoutesResponse>;
    let first = true;
    call.on('data', (m: WatchRoutesResponse) => {
      const t = now();
      if (first) {
        first = false;
        if (++ready === count) process.send!({ ready });
        return;
      }
      for (const u of m.upserts) {
        if (!u.node.startsWith('fanout-')) continue;
        const times = seen.get(u.node) ?? [];
        seen.set(u.node, times);
        times.push(t);
        if (times.length === count) process.send!({ trial: u.node, times });
      }
    });
    call.on('error', (err) => process.send!({ error: `stream ${i}: ${err.message}` }));
  }
}

const rssKiB = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);

export async function runWatchers(state: ClusterState, streams: number, trials: number, cleanups: Set<() => Promise<void>>): Promise<Row[]> {
  const routes = createClient(RoutesServiceService, controlPlaneTarget(state));
  const children: ChildProcess[] = [];
  const kill = async () => { for (const c of children) c.kill('SIGKILL'); };
  cleanups.add(kill);
  try {
    const pid = state.controlPlane.pid;
    await sleep(1000);
    const rss0 = rssKiB(pid);
    const perChild = Math.ceil(streams / CLIENT_PROCESSES);
    const trialTimes = new Map<string, number[]>();
    let readyCount = 0;
    const t0 = now();
    for (let c = 0; c < CLIENT_PROCESSES; c++) {
      const child = fork(fileURLToPath(import.meta.url), ['client', controlPlaneTarget(state), String(Math.min(perChild, streams - c * perChild)), String(c)], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
      children.push(child);
      child.on('message', (m: FromClient) => {
        if ('ready' in m) readyCount++;
        else if ('trial' in m) trialTimes.set(m.trial, [...(trialTimes.get(m.trial) ?? []), ...m.times]);
        else process.stderr.write(`bench/routes watchers: ${m.error}\n`);
      });
    }
    const waitUntil = async (what: string, cond: () => boolean, timeoutMs: number) => {
      const deadline = Date.now() + timeoutMs;
      while (!cond()) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        if (children.some((c) => c.exitCode !== null)) throw new Error('a watch client exited');
        await sleep(5);
      }
    };
    await waitUntil(`${streams} snapshots`, () => readyCount === CLIENT_PROCESSES, 120_000);
    const openMs = now() - t0;
    await sleep(2000);
    const rss1 = rssKiB(pid);
    const latency: number[] = [], lastPerTrial: number[] = [];
    for (let k = 0; k < trials; k++) {
      const name = `fanout-${k}`;
      await routes.registerNode({ name, underlayAddress: `192.0.2.${211 + (k % 40)}`, vtepMac: `02:58:02:00:00:${(k & 255).toString(16).padStart(2, '0')}` });
      const t1 = now();
      await waitUntil(`${name} on every stream`, () => (trialTimes.get(name)?.length ?? 0) === streams, 60_000);
      const times = trialTimes.get(name)!.map((t) => t - t1);
      latency.push(...times);
      lastPerTrial.push(Math.max(...times));
      await sleep(300);
    }
    const rss2 = rssKiB(pid);
    const sorted = latency.sort((a, b) => a - b);
    const perStream = ((rss1 - rss0) * 1024) / streams;
    return [
      { figure: `${streams} WatchRoutes streams on one replica: commit -> delivery, every stream of ${trials} changes, p50 / p99`, value: `${ms(percentile(sorted, 50))} / ${ms(percentile(sorted, 99))}`, baseline: 'last stream per change, median', ratio: ms(percentile([...lastPerTrial].sort((a, b) => a - b), 50)) },
      { figure: '  memory per stream (control plane RSS delta / streams)', value: `${(perStream / 1024).toFixed(1)} KiB`, baseline: `RSS ${(rss0 / 1024).toFixed(0)} -> ${(rss1 / 1024).toFixed(0)} MiB (${(rss2 / 1024).toFixed(0)} MiB after the trials)` },
      { figure: '  time to open every stream and receive its snapshot', value: ms(openMs) },
    ];
  } finally {
    await kill();
    cleanups.delete(kill);
    routes.close();
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href && process.argv[2] === 'client') {
  client(process.argv[3]!, Number(process.argv[4]), process.argv[5]!);
}
