import { fork, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { credentials, makeGenericClientConstructor, type ClientReadableStream } from '@grpc/grpc-js';
import { clusterAdminSecurity, controlPlaneTarget, type ClusterState } from '../cli/cluster/cluster.js';
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

/**
 * The baseline: a bare grpc-js server (its own process, on a unix socket) that holds server streams and, for each
 * line on its stdin, writes that line to every stream at once: what fanning one message out to N streams costs the
 * transport, with no database, no log and no protobuf.
 */
export const FLOOR_SERVER = `
  const grpc = require(${JSON.stringify(createRequire(import.meta.url).resolve('@grpc/grpc-js'))});
  const id = (b) => b;
  const streams = new Set();
  const server = new grpc.Server();
  server.addService({ watch: { path: '/weft.bench.Fanout/Watch', requestStream: false, responseStream: true, requestSerialize: id, requestDeserialize: id, responseSerialize: id, responseDeserialize: id } },
    { watch: (call) => { streams.add(call); call.on('cancelled', () => streams.delete(call)); call.write(Buffer.from('snapshot')); } });
  server.bindAsync('unix:' + process.argv[1], grpc.ServerCredentials.createInsecure(), (err) => { if (err) throw err; console.log('ready'); });
  require('node:readline').createInterface({ input: process.stdin }).on('line', (l) => { const b = Buffer.from(l); for (const s of streams) s.write(b); });
  process.stdin.on('end', () => process.exit(0));`;
export const floorDefinition = {
  watch: {
    path: '/weft.bench.Fanout/Watch',
    requestStream: false,
    responseStream: true,
    requestSerialize: (b: Buffer) => b,
    requestDeserialize: (b: Buffer) => b,
    responseSerialize: (b: Buffer) => b,
    responseDeserialize: (b: Buffer) => b,
  },
};

/** The child: opens `count` streams and reports, per trial, every stream's receipt time. */
function client(kind: 'weft' | 'floor', target: string, count: number, tag: string, stateDir: string): void {
  let ready = 0;
  const seen = new Map<string, number[]>();
  const received = (first: boolean, trials: string[]) => {
    const t = now();
    if (first) {
      if (++ready === count) process.send!({ ready });
      return;
    }
    for (const trial of trials) {
      if (!trial.startsWith('fanout-')) continue;
      const times = seen.get(trial) ?? [];
      seen.set(trial, times);
      times.push(t);
      if (times.length === count) process.send!({ trial, times });
    }
  };
  const Floor = makeGenericClientConstructor(floorDefinition, 'Fanout');
  const channels = Array.from({ length: Math.ceil(count / PER_CHANNEL) }, () =>
    kind === 'weft'
      ? createClient(RoutesServiceService, target, { security: clusterAdminSecurity({ stateDir }) })
      : new Floor(target, credentials.createInsecure()),
  );
  for (let i = 0; i < count; i++) {
    const ch = channels[Math.floor(i / PER_CHANNEL)]!;
    const call = (kind === 'weft'
      ? (ch as ReturnType<typeof createClient<typeof RoutesServiceService>>).watchRoutes({
          node: `w-${tag}-${i}`,
          sinceRevision: 0,
        })
      : (ch as unknown as { watch(req: Buffer): unknown }).watch(Buffer.alloc(0))) as unknown as ClientReadableStream<
      WatchRoutesResponse | Buffer
    >;
    let first = true;
    call.on('data', (m: WatchRoutesResponse | Buffer) => {
      received(first, Buffer.isBuffer(m) ? [m.toString()] : m.upserts.map((u) => u.node));
      first = false;
    });
    call.on('error', (err) => process.send!({ error: `stream ${i}: ${err.message}` }));
  }
}

const rssKiB = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);

interface Fanout {
  latency: number[];
  lastPerTrial: number[];
  rss: [number, number, number];
  openMs: number;
}

/** Opens `streams` streams on the server at `target` from child processes, then `trials` times: trigger, and stamp every delivery. */
async function measureFanout(
  kind: 'weft' | 'floor',
  stateDir: string,
  target: string,
  serverPid: number,
  streams: number,
  trials: number,
  trigger: (name: string, k: number) => Promise<void>,
  cleanups: Set<() => Promise<void>>,
): Promise<Fanout> {
  const children: ChildProcess[] = [];
  const kill = async () => {
    for (const c of children) c.kill('SIGKILL');
  };
  cleanups.add(kill);
  try {
    await sleep(1000);
    const rss0 = rssKiB(serverPid);
    const perChild = Math.ceil(streams / CLIENT_PROCESSES);
    const trialTimes = new Map<string, number[]>();
    let readyCount = 0;
    const t0 = now();
    for (let c = 0; c < CLIENT_PROCESSES; c++) {
      const child = fork(
        fileURLToPath(import.meta.url),
        ['client', target, String(Math.min(perChild, streams - c * perChild)), String(c), kind, stateDir],
        { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] },
      );
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
    const rss1 = rssKiB(serverPid);
    const latency: number[] = [],
      lastPerTrial: number[] = [];
    for (let k = 0; k < trials; k++) {
      const name = `fanout-${k}`;
      await trigger(name, k);
      const t1 = now();
      await waitUntil(`${name} on every stream`, () => (trialTimes.get(name)?.length ?? 0) === streams, 60_000);
      const times = trialTimes.get(name)!.map((t) => t - t1);
      latency.push(...times);
      lastPerTrial.push(Math.max(...times));
      await sleep(300);
    }
    return { latency, lastPerTrial, rss: [rss0, rss1, rssKiB(serverPid)], openMs };
  } finally {
    await kill();
    cleanups.delete(kill);
  }
}

export async function runWatchers(
  state: ClusterState,
  streams: number,
  trials: number,
  cleanups: Set<() => Promise<void>>,
): Promise<Row[]> {
  const routes = createClient(RoutesServiceService, controlPlaneTarget(state), {
    security: clusterAdminSecurity(state),
  });
  let weft: Fanout;
  try {
    // The change: a node registers; RegisterNode returns once its transaction (and the change it logs) committed.
    weft = await measureFanout(
      'weft',
      state.stateDir,
      controlPlaneTarget(state),
      state.controlPlane.pid,
      streams,
      trials,
      async (name, k) => {
        await routes.registerNode({
          name,
          underlayAddress: `192.0.2.${211 + (k % 40)}`,
          vtepMac: `02:58:02:00:00:${(k & 255).toString(16).padStart(2, '0')}`,
        });
      },
      cleanups,
    );
  } finally {
    routes.close();
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'weft-bench-fanout-'));
  const server = spawn(process.execPath, ['-e', FLOOR_SERVER, path.join(dir, 'fanout.sock')], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const stopServer = async () => {
    server.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  };
  cleanups.add(stopServer);
  let floor: Fanout;
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('exit', (code) => reject(new Error(`the fan-out floor server exited with ${code}`)));
      createInterface({ input: server.stdout! }).once('line', () => resolve());
    });
    floor = await measureFanout(
      'floor',
      '',
      `unix://${path.join(dir, 'fanout.sock')}`,
      server.pid!,
      streams,
      trials,
      async (name) => {
        server.stdin!.write(`${name}\n`);
      },
      cleanups,
    );
  } finally {
    await stopServer();
    cleanups.delete(stopServer);
  }
  const p = (xs: number[], q: number) =>
    percentile(
      [...xs].sort((a, b) => a - b),
      q,
    );
  const kib = (f: Fanout) => (f.rss[1] - f.rss[0]) / streams;
  return [
    {
      figure: `${streams} WatchRoutes streams on one replica: commit -> delivery, every stream of ${trials} changes, p50 / p99`,
      value: `${ms(p(weft.latency, 50))} / ${ms(p(weft.latency, 99))}`,
      baseline: `bare grpc-js fan-out ${ms(p(floor.latency, 50))} / ${ms(p(floor.latency, 99))}`,
      ratio: `${(p(weft.latency, 99) / p(floor.latency, 99)).toFixed(2)}x`,
    },
    {
      figure: '  the last stream of each change, median',
      value: ms(p(weft.lastPerTrial, 50)),
      baseline: `bare grpc-js fan-out ${ms(p(floor.lastPerTrial, 50))}`,
      ratio: `${(p(weft.lastPerTrial, 50) / p(floor.lastPerTrial, 50)).toFixed(2)}x`,
    },
    {
      figure: `  memory per stream (server RSS delta / streams; control plane ${(weft.rss[0] / 1024).toFixed(0)} -> ${(weft.rss[1] / 1024).toFixed(0)} MiB)`,
      value: `${kib(weft).toFixed(1)} KiB`,
      baseline: `bare grpc-js ${kib(floor).toFixed(1)} KiB`,
      ratio: `${(kib(weft) / kib(floor)).toFixed(2)}x`,
    },
    {
      figure: '  time to open every stream and receive its snapshot',
      value: ms(weft.openMs),
      baseline: `bare grpc-js ${ms(floor.openMs)}`,
      ratio: `${(weft.openMs / floor.openMs).toFixed(2)}x`,
    },
  ];
}

if (
  process.argv[1] &&
  import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href &&
  process.argv[2] === 'client'
) {
  client(
    process.argv[6] === 'floor' ? 'floor' : 'weft',
    process.argv[3]!,
    Number(process.argv[4]),
    process.argv[5]!,
    process.argv[7] ?? '',
  );
}
