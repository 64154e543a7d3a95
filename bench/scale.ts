import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { getHeapStatistics } from 'node:v8';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { credentials, makeGenericClientConstructor, status, type ClientReadableStream } from '@grpc/grpc-js';
import { createBackoff } from '../lib/backoff.js';
import pg from 'pg';
import { startEmbeddedPostgres } from '../lib/db/embedded.js';
import { createClient } from '../lib/grpc/client.js';
import { createLogger, silentLogger } from '../lib/logger.js';
import { readCa } from '../lib/pki.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { PolicyServiceService } from '../gen/weft/policy/v1/policy.js';
import { startWeftUp } from '../test/support/weft-up.js';
import { freePort } from '../test/support/ports.js';
import { createNodeSimulator, simUnderlay, simVtepMac, type SimNode, type SimNodeSpec } from './node-sim.js';
import { FLOOR_SERVER, floorDefinition } from './routes-watchers.js';
import { findPgbench, ms, percentile, perSec, pgbenchInsertTps, printTable, type Row } from './support.js';

/**
 * bench/scale: one real control plane (`weft up` as a child process on embedded PostgreSQL) and thousands of
 * simulated agents (bench/node-sim.ts) in this process, each a node with its own certificate, lease, route and policy
 * streams and pods. The simulated cluster grows through the sizes of WEFT_BENCH_SCALE_NODES; at each size:
 *
 * - routes: a node claims a new block (Allocate from a pool where it holds none, through its own identity); from
 *   Allocate's return until every simulated agent's route table holds the block; beside a bare grpc-js fan-out to as
 *   many streams on as many connections (bench/routes-watchers' floor server), same trial count;
 * - policy: one pod's label change (UpsertPod keep_attachment, as the Kubernetes controller sends it) that every node's
 *   rules depend on; from UpsertPod's return until every agent applied a message at or past its revision;
 * - server cost: RSS growth per watch stream, CPU per change (control plane and PostgreSQL, the idle rate of the same
 *   size subtracted), with the growth law fitted across the sizes; the simulator's own CPU and memory beside.
 *
 * Then, at the last size (or each, WEFT_BENCH_SCALE_RESTART=each): the control plane SIGTERMed and started again on the
 * same data and port; time until every agent holds a fresh policy view and a route change made right after the start,
 * and PostgreSQL's load meanwhile (pg_stat_database deltas) beside an idle spell as long. And IPAM with every
 * simulated pod live (P per node, pools of C clusters): attach rate, churn rate, "who held X at T", utilization.
 *
 * Knobs: WEFT_BENCH_SCALE_NODES (500,1000,2000,5000), WEFT_BENCH_SCALE_PODS (30 per node), WEFT_BENCH_SCALE_CLUSTERS
 * (20), WEFT_BENCH_SCALE_TRIALS (20), WEFT_BENCH_SCALE_CLIENTS_EVERY (10: pod 0 of every 10th node is a described
 * `role=client` pod), WEFT_BENCH_SCALE_RESTART (last | each | none), WEFT_BENCH_SCALE_CHURN_S (10),
 * WEFT_BENCH_SCALE_PARTS (leases,routes,policy,restart,ipam), WEFT_BENCH_SCALE_ATTACH_CONCURRENCY (64 pods attaching at once).
 * Limits per identity are the production defaults. The control plane inherits this process's environment, so its own
 * settings apply too (WEFT_NODE_LEASE_MS=60000 was one run of bench/SCALE.md).
 * Figures and what broke first: bench/SCALE.md.
 */
const env = process.env;
const SIZES = (env.WEFT_BENCH_SCALE_NODES ?? '500,1000,2000,5000')
  .split(',')
  .map((x) => Number(x.trim()))
  .filter((x) => x > 0)
  .sort((a, b) => a - b);
const PODS = Number(env.WEFT_BENCH_SCALE_PODS ?? 30);
const CLUSTERS = Number(env.WEFT_BENCH_SCALE_CLUSTERS ?? 20);
const TRIALS = Number(env.WEFT_BENCH_SCALE_TRIALS ?? 20);
const CLIENTS_EVERY = Number(env.WEFT_BENCH_SCALE_CLIENTS_EVERY ?? 10);
const RESTART = env.WEFT_BENCH_SCALE_RESTART ?? 'last';
const CHURN_S = Number(env.WEFT_BENCH_SCALE_CHURN_S ?? 10);
const PARTS = new Set(
  (env.WEFT_BENCH_SCALE_PARTS ?? 'leases,routes,policy,restart,ipam').split(',').map((x) => x.trim()),
);
const NAMESPACES = 10;
/** The control plane's lease (WEFT_NODE_LEASE_MS, passed through to `weft up`): agents renew every third. */
const leaseMs = Number(env.WEFT_NODE_LEASE_MS ?? 20_000);
const ATTACH_CONCURRENCY = Number(env.WEFT_BENCH_SCALE_ATTACH_CONCURRENCY ?? 64);
/**
 * The control plane's flush period (WEFT_ROUTES_FLUSH_MS, passed through): a route stream that sent a change less than
 * this ago takes the next at its next flush tick, so route trials are spaced by more than it (each measures one change
 * reaching quiet streams).
 */
const flushMs = Number(env.WEFT_ROUTES_FLUSH_MS ?? 250);

const sleep = (t: number) => new Promise((r) => setTimeout(r, t));
const now = () => performance.now();
const log = (msg: string) => process.stderr.write(`bench/scale ${new Date().toISOString().slice(11, 19)} ${msg}\n`);

// --- process accounting ----------------------------------------------------------------------------------------------
const TICK = 100; // USER_HZ on Linux
function procTimes(pid: number): { self: number; children: number } {
  const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  // fields after the name: state(3) ... utime(14) stime(15) cutime(16) cstime(17): index = field - 3
  return {
    self: (Number(f[11]) + Number(f[12])) * (1000 / TICK),
    children: (Number(f[13]) + Number(f[14])) * (1000 / TICK),
  };
}
/** The kernel's TCP counters that show connections waiting on the listener: SYNs retransmitted, accept queue overflows. */
function tcpCounters(): { synRetrans: number; listenOverflows: number; listenDrops: number } {
  const lines = readFileSync('/proc/net/netstat', 'utf8').split('\n');
  const i = lines.findIndex((l) => l.startsWith('TcpExt:'));
  const names = lines[i]!.split(' ');
  const values = lines[i + 1]!.split(' ').map(Number);
  const get = (k: string) => values[names.indexOf(k)] ?? 0;
  return { synRetrans: get('TCPSynRetrans'), listenOverflows: get('ListenOverflows'), listenDrops: get('ListenDrops') };
}
const rssKiB = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
/** CPU milliseconds of PostgreSQL: the postmaster, its live backends, and the backends it reaped. */
function postgresCpuMs(pgDir: string): number {
  const master = Number(readFileSync(path.join(pgDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  const m = procTimes(master);
  let total = m.self + m.children;
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const s = readFileSync(`/proc/${d}/stat`, 'utf8');
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
      if (Number(f[1]) === master) total += (Number(f[11]) + Number(f[12])) * (1000 / TICK);
    } catch {
      /* exited */
    }
  }
  return total;
}
function postgresRssKiB(pgDir: string): number {
  const master = Number(readFileSync(path.join(pgDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  let total = rssKiB(master);
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const s = readFileSync(`/proc/${d}/stat`, 'utf8');
      if (Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[1]) === master) total += rssKiB(Number(d));
    } catch {
      /* exited */
    }
  }
  return total;
}

interface Meter {
  server: number;
  postgres: number;
  sim: number;
  at: number;
}
function makeMeter(serverPid: () => number, pgDir: string): () => Meter {
  return () => {
    const u = process.cpuUsage();
    return {
      server: procTimes(serverPid()).self,
      postgres: postgresCpuMs(pgDir),
      sim: (u.user + u.system) / 1000,
      at: now(),
    };
  };
}
const cpuPct = (a: Meter, b: Meter, k: 'server' | 'postgres' | 'sim') => (100 * (b[k] - a[k])) / (b.at - a.at);

/** The growth law of y over n: the exponent of the least-squares line through (log n, log y), named. */
function growthLaw(points: { n: number; y: number }[]): string {
  const ps = points.filter((p) => p.y > 0);
  if (ps.length < 2) return 'one size: no law';
  const xs = ps.map((p) => Math.log(p.n));
  const ys = ps.map((p) => Math.log(p.y));
  const mx = xs.reduce((a, b) => a + b, 0) / xs.length;
  const my = ys.reduce((a, b) => a + b, 0) / ys.length;
  const k = xs.reduce((a, x, i) => a + (x - mx) * (ys[i]! - my), 0) / xs.reduce((a, x) => a + (x - mx) ** 2, 0);
  const name = k < 0.35 ? 'constant' : k < 1.4 ? 'linear' : k < 2.4 ? 'quadratic' : 'worse than quadratic';
  return `~N^${k.toFixed(2)} (${name})`;
}

const p = (xs: number[], q: number) =>
  percentile(
    [...xs].sort((a, b) => a - b),
    q,
  );
/** A cost with the idle rate subtracted: below zero it is within the idle rate's noise. */
const cost = (x: number) => (x < 0 ? '~0 (in the noise)' : ms(x));
const kib = (x: number) => `${x.toFixed(1)} KiB`;
const mib = (kb: number) => `${(kb / 1024).toFixed(0)} MiB`;

// --- the floor: a bare grpc-js fan-out to as many streams on as many connections ------------------------------------
async function floorFanout(streams: number, trials: number): Promise<{ latency: number[]; last: number[] }> {
  const dir = mkdtempSync(path.join(tmpdir(), 'weft-bench-scale-floor-'));
  const server = spawn(process.execPath, ['-e', FLOOR_SERVER, path.join(dir, 'f.sock')], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const Floor = makeGenericClientConstructor(floorDefinition, 'Fanout');
  const clients: InstanceType<typeof Floor>[] = [];
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('exit', (code) => reject(new Error(`the fan-out floor server exited with ${code}`)));
      createInterface({ input: server.stdout! }).once('line', () => resolve());
    });
    const seen = new Map<string, number[]>();
    let ready = 0;
    const deadline = now() + 120_000;
    for (let i = 0; i < streams; i++) {
      // A hundred connections at a time: the server's listen backlog (511) overflows with a thousand at once, and a
      // refused connection fails its stream (it would never open).
      if (i % 100 === 0)
        while (ready < i) {
          if (now() > deadline) throw new Error('floor streams did not open');
          await sleep(20);
        }
      // A channel option of its own: one connection per stream, as each simulated node has its own.
      const c = new Floor(`unix://${path.join(dir, 'f.sock')}`, credentials.createInsecure(), { 'weft.bench.conn': i });
      clients.push(c);
      const call = (c as unknown as { watch(req: Buffer): ClientReadableStream<Buffer> }).watch(Buffer.alloc(0));
      let first = true;
      call.on('data', (b: Buffer) => {
        if (first) {
          first = false;
          ready++;
          return;
        }
        const t = now();
        const k = b.toString();
        (seen.get(k) ?? seen.set(k, []).get(k)!).push(t);
      });
      call.on('error', () => {});
    }
    while (ready < streams) {
      if (now() > deadline) throw new Error('floor streams did not open');
      await sleep(20);
    }
    await sleep(500);
    const latency: number[] = [],
      last: number[] = [];
    for (let k = 0; k < trials; k++) {
      const name = `t${k}`;
      const t0 = now();
      server.stdin!.write(`${name}\n`);
      const until = now() + 60_000;
      while ((seen.get(name)?.length ?? 0) < streams) {
        if (now() > until) throw new Error('floor fan-out lost a message');
        await sleep(2);
      }
      const ts = seen.get(name)!.map((t) => t - t0);
      latency.push(...ts);
      last.push(Math.max(...ts));
      await sleep(200);
    }
    return { latency, last };
  } finally {
    for (const c of clients) c.close();
    server.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * A controller's call: retried with backoff while the control plane answers UNAVAILABLE or does not answer in time, as
 * the Kubernetes controller's work queue retries. `retries` counts them (a figure: the control plane refusing work).
 */
const controllerRetries = { count: 0 };
const attachRetries = { count: 0 };
async function retrying<T>(call: () => Promise<T>, retries = controllerRetries): Promise<T> {
  const backoff = createBackoff({ baseMs: 200, capMs: 5000 });
  for (let attempt = 0; ; attempt++) {
    try {
      return await call();
    } catch (err) {
      const code = (err as { code?: number }).code;
      if (attempt >= 20 || (code !== status.UNAVAILABLE && code !== status.DEADLINE_EXCEEDED)) throw err;
      retries.count++;
      // Rare outside a restart: say why, so that a figure that includes a retry can be read.
      log(`retrying a call after ${status[code]}: ${(err as Error).message.slice(0, 200)}`);
      await sleep(backoff.next());
    }
  }
}

// --- the bench -------------------------------------------------------------------------------------------------------
interface SizeFigures {
  n: number;
  streams: number;
  views: [number, number];
  serverRssKiB: number;
  pgRssKiB: number;
  simRssKiB: number;
  /** The simulator's V8 heap in use (KiB), beside its limit: near the limit V8 collects again and again. */
  simHeapKiB: number;
  idle: { server: number; postgres: number; sim: number };
  route?: {
    latency: number[];
    last: number[];
    missing: number;
    cpuServer: number;
    cpuPg: number;
    cpuSim: number;
    floor: { latency: number[]; last: number[] };
  };
  policy?: { latency: number[]; last: number[]; missing: number; cpuServer: number; cpuPg: number; cpuSim: number };
  /** A pod attached on one node and detached again: that node's agent, and how many others were sent anything. */
  attach?: { latency: number[]; missing: number; others: number; cpuServer: number; cpuPg: number };
  leases?: { rate: number; p50: number; p99: number; server: number; postgres: number; nodesAtRate: number };
  setup: {
    attachRate: number;
    firstP50: number;
    firstP99: number;
    allocP50: number;
    allocP99: number;
    attachP50: number;
    attachP99: number;
    cpu: { server: number; postgres: number; sim: number };
    joinSeconds: number;
    attached: number;
  };
}

/** Which Node the simulator and the control plane run (printed with the figures). */
let runtimes = '';

/** What a signal must undo (the control plane, PostgreSQL, the data folder) when the bench is stopped early. */
let cleanUp: (() => Promise<void>) | null = null;
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    log(`${sig}: cleaning up`);
    void (cleanUp?.() ?? Promise.resolve()).finally(() => process.exit(130));
  });
}

async function main() {
  const dir = mkdtempSync(path.join(tmpdir(), 'weft-bench-scale-'));
  chmodSync(dir, 0o755);
  const db = await startEmbeddedPostgres(dir, await freePort(), silentLogger);
  const pgDir = path.join(dir, 'pg');
  const sql = new pg.Client({ connectionString: db.ownerUrl });
  sql.on('error', () => {}); // PostgreSQL stopping under it (a signal's clean-up) is not the bench's failure
  await sql.connect();
  const cp = await startWeftUp({
    dataDir: path.join(dir, 'cp'),
    databaseUrl: db.appUrl,
    migrationDatabaseUrl: db.ownerUrl,
    // Its stop says when it began and which of its steps took the time (info: a few lines a run).
    logLevel: 'info',
  });
  const { target, security, pkiDir: pki } = cp;
  const ipam = createClient(IpamServiceService, target, { security });
  const policy = createClient(PolicyServiceService, target, { security });
  const meter = makeMeter(() => cp.pid(), pgDir);
  const sim = createNodeSimulator({
    target,
    ca: await readCa(pki),
    logger: createLogger({ component: 'node-sim' }, { level: 'error' }),
  });
  const index = new Map<SimNode, number>();
  const figures: SizeFigures[] = [];
  const rows: Row[] = [];
  const restartRows: Row[] = [];
  const ipamRows: Row[] = [];

  /** RSS of the control plane and of this process before any simulated node. */
  let rss0 = 0,
    simRss0 = 0;
  /** The table rows of one size. */
  const rowsOf = (f: SizeFigures): Row[] => {
    const rows: Row[] = [];
    const s = `${f.n} nodes`;
    if (f.route) {
      rows.push({
        figure: `${s}: new block -> all ${f.n} agents, p50 / p99${f.route.missing ? ` (${f.route.missing} deliveries MISSING)` : ''}`,
        value: `${ms(p(f.route.latency, 50))} / ${ms(p(f.route.latency, 99))}`,
        baseline: `bare grpc-js fan-out ${ms(p(f.route.floor.latency, 50))} / ${ms(p(f.route.floor.latency, 99))}`,
        ratio: `${(p(f.route.latency, 99) / p(f.route.floor.latency, 99)).toFixed(1)}x`,
        goal: `p99 <= 1 s: ${p(f.route.latency, 99) <= 1000 && !f.route.missing ? 'met' : 'missed'}`,
      });
      rows.push({
        figure: '  last agent per change, median',
        value: ms(p(f.route.last, 50)),
        baseline: `floor ${ms(p(f.route.floor.last, 50))}`,
      });
    }
    if (f.policy)
      rows.push({
        figure: `${s}: pod label change -> every affected agent, p50 / p99${f.policy.missing ? ` (${f.policy.missing} MISSING)` : ''}`,
        value: `${ms(p(f.policy.latency, 50))} / ${ms(p(f.policy.latency, 99))}`,
        baseline: `last agent median ${ms(p(f.policy.last, 50))}`,
        goal: `p99 <= 2 s: ${p(f.policy.latency, 99) <= 2000 && !f.policy.missing ? 'met' : 'missed'}`,
      });
    rows.push({
      figure: `${s}: nodes in each agent's route table once settled (a lapsed lease withdraws a node)`,
      value: f.views[0] === f.views[1] ? String(f.views[0]) : `${f.views[0]}-${f.views[1]}`,
      goal: `${f.n}: ${f.views[0] >= f.n ? 'met' : 'missed'}`,
    });
    rows.push({
      figure: `${s}: server RSS per watch stream ((RSS - ${mib(rss0)} before any node) / ${f.streams})`,
      value: kib((f.serverRssKiB - rss0) / f.streams),
      baseline: `server ${mib(f.serverRssKiB)}, PostgreSQL ${mib(f.pgRssKiB)}`,
    });
    rows.push({
      figure: `${s}: idle CPU (leases, bookmarks, keepalives): server; PostgreSQL`,
      value: `${f.idle.server.toFixed(1)}%; ${f.idle.postgres.toFixed(1)}%`,
      baseline: `simulator ${f.idle.sim.toFixed(1)}%, RSS ${mib(f.simRssKiB)} (${kib((f.simRssKiB - simRss0) / f.n)} per node), heap ${mib(f.simHeapKiB)} of ${mib(getHeapStatistics().heap_size_limit / 1024)}`,
    });
    if (f.route)
      rows.push({
        figure: `${s}: CPU per route change: server; PostgreSQL`,
        value: `${cost(f.route.cpuServer)}; ${cost(f.route.cpuPg)}`,
        baseline: `simulator ${cost(f.route.cpuSim)}`,
      });
    if (f.leases)
      rows.push({
        figure: `${s}: RenewLease capacity (64 nodes renewing back to back, 5 s)`,
        value: `${perSec(f.leases.rate)}: the renewals of ${Math.round(f.leases.nodesAtRate)} nodes`,
        baseline: `p50 / p99 ${ms(f.leases.p50)} / ${ms(f.leases.p99)}; CPU server ${f.leases.server.toFixed(0)}%, PostgreSQL ${f.leases.postgres.toFixed(0)}%`,
        goal: `${f.n} nodes renew ${perSec(f.n / (leaseMs / 3 / 1000))}`,
      });
    if (f.policy)
      rows.push({
        figure: `${s}: CPU per policy change: server; PostgreSQL`,
        value: `${cost(f.policy.cpuServer)}; ${cost(f.policy.cpuPg)}`,
        baseline: `simulator ${cost(f.policy.cpuSim)}`,
      });
    if (f.attach)
      rows.push({
        figure: `${s}: pod attached or detached on one node (AttachPod, DetachPod) -> its agent, p50 / p99${f.attach.missing ? ` (${f.attach.missing} MISSING)` : ''}`,
        value: `${ms(p(f.attach.latency, 50))} / ${ms(p(f.attach.latency, 99))}`,
        baseline: `CPU per change: server ${cost(f.attach.cpuServer)}, PostgreSQL ${cost(f.attach.cpuPg)}`,
        goal: `other agents sent a message: ${f.attach.others} (0: ${f.attach.others === 0 ? 'met' : 'missed'})`,
      });
    rows.push({
      figure: `${s}: joining (register + snapshot, 32 at once); attaching ${f.setup.attached} pods (Allocate, ${ATTACH_CONCURRENCY} at once)`,
      value: `${f.setup.joinSeconds.toFixed(1)} s; ${perSec(f.setup.attachRate)}`,
      baseline: `first pod's Allocate (block claim) p50 / p99 ${ms(f.setup.firstP50)} / ${ms(f.setup.firstP99)}; others' Allocate ${ms(f.setup.allocP50)} / ${ms(f.setup.allocP99)}; AttachPod report taken after ${ms(f.setup.attachP50)} / ${ms(f.setup.attachP99)}; CPU server ${f.setup.cpu.server.toFixed(0)}%, PostgreSQL ${f.setup.cpu.postgres.toFixed(0)}%, simulator ${f.setup.cpu.sim.toFixed(0)}%`,
    });
    return rows;
  };
  cleanUp = async () => {
    sim.close();
    await sql.end().catch(() => {});
    await cp.stop().catch(() => {});
    await db.stop().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    // Clusters (one IPAM, one routing domain: their pod CIDRs never overlap), a pool each; the probe pool of new blocks.
    const clusterBits = Math.ceil(Math.log2(Math.max(1, CLUSTERS)));
    for (let c = 0; c < CLUSTERS; c++) {
      await ipam.registerCluster({ name: `c${c}` });
      const base = (c << (24 - clusterBits)) >>> 0; // inside 10.0.0.0/8
      await ipam.createPool({
        name: `c${c}`,
        cidr: `10.${(base >> 16) & 255}.${(base >> 8) & 255}.0/${8 + clusterBits}`,
        blockPrefixLength: 26,
      });
    }
    await ipam.createPool({ name: 'probe', cidr: '172.16.0.0/12', blockPrefixLength: 28 });
    // Policy: every namespace admits TCP 80 from `role=client` pods of any namespace (the one set every node's rules name).
    const objects: string[] = [];
    for (let k = 0; k < NAMESPACES; k++) {
      await policy.upsertNamespace({ name: `ns-${k}`, labels: { name: `ns-${k}` } });
      objects.push(
        JSON.stringify({
          apiVersion: 'networking.k8s.io/v1',
          kind: 'NetworkPolicy',
          metadata: { name: 'from-clients', namespace: `ns-${k}` },
          spec: {
            podSelector: {},
            ingress: [
              {
                from: [{ namespaceSelector: {}, podSelector: { matchLabels: { role: 'client' } } }],
                ports: [{ protocol: 'TCP', port: 80 }],
              },
            ],
          },
        }),
      );
    }
    await policy.applyPolicies({ objectsJson: objects });
    await sleep(2000);
    rss0 = rssKiB(cp.pid());
    simRss0 = process.memoryUsage().rss / 1024;
    // Both processes' Node (the control plane runs the `node` on PATH): the runtime moves these figures a lot.
    runtimes = `simulator Node ${process.versions.node}, control plane Node ${execFileSync(readlinkSync(`/proc/${cp.pid()}/exe`), ['-p', 'process.versions.node'], { encoding: 'utf8' }).trim()}`;
    log(
      `${runtimes}; control plane up (RSS ${mib(rss0)}); sizes ${SIZES.join(', ')}; ${PODS} pods per node; ${CLUSTERS} clusters`,
    );

    // Trials' stamps: one array per trial, indexed by node.
    let routeTrial: { node: string; expected: number; stamps: Float64Array; count: number } | null = null;
    // The revision is known once UpsertPod returns; messages before that are kept and judged then.
    let policyTrial: {
      revision: number;
      stamps: Float64Array;
      count: number;
      early: { i: number; revision: number; at: number }[];
    } | null = null;
    sim.onRoutes((node, m) => {
      const t = routeTrial;
      if (!t || m.bookmark) return;
      const i = index.get(node)!;
      if (t.stamps[i] === 0 && node.blocksOf(t.node) >= t.expected) {
        t.stamps[i] = now();
        t.count++;
      }
    });
    let attachTrial: ((node: SimNode, m: { bookmark: boolean; revision: number }) => void) | null = null;
    let policyBackHook: ((node: SimNode, m: { bookmark: boolean; delta?: unknown }) => void) | null = null;
    sim.onPolicy((node, m) => {
      attachTrial?.(node, m);
      policyBackHook?.(node, m);
      const t = policyTrial;
      if (!t) return;
      const i = index.get(node)!;
      if (t.revision === 0) t.early.push({ i, revision: m.revision, at: now() });
      else if (t.stamps[i] === 0 && m.revision >= t.revision) {
        t.stamps[i] = now();
        t.count++;
      }
    });
    const waitFor = async (what: string, cond: () => boolean, timeoutMs: number) => {
      const deadline = now() + timeoutMs;
      while (!cond()) {
        if (now() > deadline) return false;
        await sleep(10);
      }
      return true;
    };

    let probeSeq = 0;
    const probeUsed = new Set<number>();
    const pickProbeNode = () => {
      for (;;) {
        const i = Math.floor(Math.random() * sim.nodes.length);
        if (!probeUsed.has(i)) {
          probeUsed.add(i);
          return sim.nodes[i]!;
        }
      }
    };
    /**
     * A new block for `node`, through its own client, the admin's, or the admin's in a process of its own
     * (bench/allocate-once.ts): returns Allocate's return time and the expected block count.
     */
    const claimBlock = async (node: SimNode, via: 'own' | 'admin' | 'admin-process') => {
      const expected = sim.nodes[0]!.blocksOf(node.spec.name) + 1;
      const req = {
        handle: `probe${probeSeq++}/eth0`,
        node: node.spec.name,
        pool: 'probe',
        podNamespace: 'ns-0',
        podName: `probe-${probeSeq}`,
        containerId: `probe${probeSeq}`,
      };
      if (via === 'admin-process') {
        const out = await new Promise<string>((resolve, reject) => {
          const child = spawn(process.execPath, [
            path.join(path.dirname(fileURLToPath(import.meta.url)), 'allocate-once.js'),
            JSON.stringify([target, security, req]),
          ]);
          let text = '';
          child.stdout.on('data', (d: Buffer) => (text += d.toString()));
          child.stderr.on('data', (d: Buffer) => (text += d.toString()));
          child.once('close', (code) => (code === 0 ? resolve(text) : reject(new Error(`allocate-once: ${text}`))));
        });
        return { returned: (JSON.parse(out) as { at: number }).at - performance.timeOrigin, expected };
      }
      await retrying(() => (via === 'own' ? node.ipam : ipam).allocate(req, { timeoutMs: 20_000 }));
      return { returned: now(), expected };
    };

    for (const n of SIZES) {
      // --- grow to n nodes: register, watch, attach their pods -------------------------------------------------------
      const from = sim.nodes.length;
      const specs: SimNodeSpec[] = [];
      for (let i = from; i < n; i++)
        specs.push({
          name: `sim-${i}`,
          underlayAddress: simUnderlay(i),
          vtepMac: simVtepMac(i),
          cluster: `c${i % CLUSTERS}`,
          pool: `c${i % CLUSTERS}`,
        });
      const tJoin = now();
      const added = await sim.addNodes(specs, 32);
      added.forEach((node, k) => index.set(node, from + k));
      const joinSeconds = (now() - tJoin) / 1000;
      log(
        `${n} nodes registered and watching (${joinSeconds.toFixed(1)} s for ${added.length}); attaching ${added.length * PODS} pods`,
      );
      const work: { node: SimNode; j: number }[] = [];
      for (let j = 0; j < PODS; j++) for (const node of added) work.push({ node, j });
      // A node's first pod claims its block in the cluster's pool (IPAM's full path, and a route change); the rest do not.
      const allocLat: number[] = [],
        allocateFirst: number[] = [],
        allocateOnly: number[] = [],
        attachOnly: number[] = [];
      const tAttach = now();
      const attachA = meter();
      let next = 0;
      let failed = 0;
      await Promise.all(
        Array.from({ length: ATTACH_CONCURRENCY }, async () => {
          while (next < work.length) {
            const { node, j } = work[next++]!;
            const t0 = now();
            try {
              // The runtime retries a failed ADD (kubelet does, with backoff): a refusal for load is counted and retried.
              const pod = await retrying(
                () => sim.attachPod(node, { namespace: `ns-${j % NAMESPACES}`, name: `p-${node.spec.name}-${j}` }),
                attachRetries,
              );
              allocLat.push(now() - t0);
              (j === 0 ? allocateFirst : allocateOnly).push(pod.allocateMs);
            } catch (err) {
              if (failed++ < 5) log(`attach failed on ${node.spec.name}: ${(err as Error).message}`);
            }
          }
        }),
      );
      const attachRate = allocLat.length / ((now() - tAttach) / 1000);
      // The reports to policy, sent in the background: until the policy service took them all.
      await waitFor('reports', () => sim.reportsPending() === 0, 600_000);
      const reportsSettled = (now() - tAttach) / 1000;
      attachOnly.push(...sim.reportLatencies());
      const attachB = meter();
      const attachCpu = {
        server: cpuPct(attachA, attachB, 'server'),
        postgres: cpuPct(attachA, attachB, 'postgres'),
        sim: cpuPct(attachA, attachB, 'sim'),
      };
      if (failed > 0) log(`${failed} attaches failed`);
      log(
        `${n}: ${allocLat.length} pods at ${perSec(attachRate)}; first pod's Allocate p50/p99 ${ms(p(allocateFirst, 50))} / ${ms(p(allocateFirst, 99))}; the others' Allocate p50/p99 ${ms(p(allocateOnly, 50))} / ${ms(p(allocateOnly, 99))}, AttachPod report taken after p50/p99 ${ms(p(attachOnly, 50))} / ${ms(p(attachOnly, 99))}, all after ${reportsSettled.toFixed(1)} s; CPU server ${attachCpu.server.toFixed(0)}%, postgres ${attachCpu.postgres.toFixed(0)}%, simulator ${attachCpu.sim.toFixed(0)}%`,
      );
      // The controller describes a client pod on every CLIENTS_EVERY-th new node.
      for (const node of added) {
        if (index.get(node)! % CLIENTS_EVERY !== 0) continue;
        const pod = [...node.pods.values()][0];
        if (pod)
          await retrying(() =>
            policy.upsertPod(
              {
                pod: {
                  namespace: pod.namespace,
                  name: pod.name,
                  node: node.spec.name,
                  labels: { role: 'client' },
                  addresses: [],
                  ports: [],
                },
                keepAttachment: true,
              },
              { timeoutMs: 10_000 },
            ),
          );
      }
      // Settled: every agent holds every node (its own entry too) and a policy view.
      const ok = await waitFor(
        'sync',
        () => sim.nodes.every((x) => x.routesSynced && x.routeView.size >= n && x.policyRules !== null),
        300_000,
      );
      if (!ok) {
        const sizes = sim.nodes.map((x) => x.routeView.size);
        log(
          `not every agent synced at ${n} within 300 s: route views hold ${Math.min(...sizes)}-${Math.max(...sizes)} nodes (a lapsed lease withdraws a node); ${JSON.stringify(sim.stats())}`,
        );
      }
      await sleep(3000);
      const idleA = meter();
      await sleep(8000);
      const idleB = meter();
      const sizes = sim.nodes.map((x) => x.routeView.size);
      const fig: SizeFigures = {
        n,
        streams: 2 * n,
        views: [Math.min(...sizes), Math.max(...sizes)],
        serverRssKiB: rssKiB(cp.pid()),
        pgRssKiB: postgresRssKiB(pgDir),
        simRssKiB: process.memoryUsage().rss / 1024,
        simHeapKiB: process.memoryUsage().heapUsed / 1024,
        idle: {
          server: cpuPct(idleA, idleB, 'server'),
          postgres: cpuPct(idleA, idleB, 'postgres'),
          sim: cpuPct(idleA, idleB, 'sim'),
        },
        setup: {
          attachRate,
          firstP50: p(allocateFirst, 50),
          firstP99: p(allocateFirst, 99),
          allocP50: p(allocateOnly, 50),
          allocP99: p(allocateOnly, 99),
          attachP50: p(attachOnly, 50),
          attachP99: p(attachOnly, 99),
          cpu: attachCpu,
          joinSeconds,
          attached: allocLat.length,
        },
      };
      const idleRate = (a: Meter, b: Meter, k: 'server' | 'postgres' | 'sim') => (fig.idle[k] / 100) * (b.at - a.at);
      log(
        `${n}: idle server ${fig.idle.server.toFixed(1)}% cpu, postgres ${fig.idle.postgres.toFixed(1)}%, simulator ${fig.idle.sim.toFixed(1)}%; server RSS ${mib(fig.serverRssKiB)}`,
      );

      // --- leases: how many renewals a second the control plane takes (each holds the route log's lock) -------------
      if (PARTS.has('leases')) {
        const callers = sim.nodes.slice(0, Math.min(64, sim.nodes.length));
        const lat: number[] = [];
        const a = meter();
        const end = now() + 5000;
        await Promise.all(
          callers.map(async (node) => {
            while (now() < end) {
              const t0 = now();
              try {
                await node.routes.renewLease({ name: node.spec.name }, { timeoutMs: 5000 });
                lat.push(now() - t0);
              } catch {
                /* counted by its absence */
              }
            }
          }),
        );
        const b = meter();
        const rate = lat.length / ((b.at - a.at) / 1000);
        // Every node renews every third of the lease: the nodes that rate keeps alive, less what the steady state uses.
        fig.leases = {
          rate,
          p50: p(lat, 50),
          p99: p(lat, 99),
          server: cpuPct(a, b, 'server'),
          postgres: cpuPct(a, b, 'postgres'),
          nodesAtRate: rate * (leaseMs / 3 / 1000),
        };
        log(`${n}: renewals at most ${perSec(rate)} (64 callers), p50/p99 ${ms(p(lat, 50))} / ${ms(p(lat, 99))}`);
      }

      // --- routes: a new block in every agent ------------------------------------------------------------------------
      if (PARTS.has('routes')) {
        const latency: number[] = [],
          last: number[] = [];
        let missing = 0;
        const a = meter();
        for (let k = 0; k < TRIALS; k++) {
          const node = pickProbeNode();
          routeTrial = {
            node: node.spec.name,
            expected: sim.nodes[0]!.blocksOf(node.spec.name) + 1,
            stamps: new Float64Array(sim.nodes.length),
            count: 0,
          };
          const t = routeTrial;
          const { returned } = await claimBlock(node, 'own');
          await waitFor('route', () => t.count === sim.nodes.length, 60_000);
          routeTrial = null;
          missing += sim.nodes.length - t.count;
          const ts = [...t.stamps].filter((x) => x > 0).map((x) => x - returned);
          latency.push(...ts);
          last.push(Math.max(...ts));
          await sleep(Math.max(300, flushMs + 100));
        }
        const b = meter();
        const floor = await floorFanout(n, TRIALS);
        fig.route = {
          latency,
          last,
          missing,
          floor,
          cpuServer: (b.server - a.server - idleRate(a, b, 'server')) / TRIALS,
          cpuPg: (b.postgres - a.postgres - idleRate(a, b, 'postgres')) / TRIALS,
          cpuSim: (b.sim - a.sim - idleRate(a, b, 'sim')) / TRIALS,
        };
        log(
          `${n}: route p50/p99 ${ms(p(latency, 50))} / ${ms(p(latency, 99))} (floor ${ms(p(floor.latency, 50))} / ${ms(p(floor.latency, 99))}), missing ${missing}`,
        );
      }

      // --- policy: one pod's label change in every affected agent ----------------------------------------------------
      if (PARTS.has('policy')) {
        const latency: number[] = [],
          last: number[] = [];
        let missing = 0;
        const a = meter();
        let pod: { node: SimNode; namespace: string; name: string } | null = null;
        for (let k = 0; k < TRIALS; k++) {
          // Even trials give a pod `role=client`, odd ones take it away again.
          if (k % 2 === 0) {
            // Not a pod that is a client already (pod 0 of every CLIENTS_EVERY-th node): that would change nothing.
            const candidates = sim.nodes.filter((x) => x.pods.size > 1 || index.get(x)! % CLIENTS_EVERY !== 0);
            const node = candidates[Math.floor(Math.random() * candidates.length)]!;
            const held = [...node.pods.values()][1] ?? [...node.pods.values()][0]!;
            pod = { node, namespace: held.namespace, name: held.name };
          }
          const expectAll = sim.nodes.filter((x) => x.pods.size > 0).length;
          policyTrial = { revision: 0, stamps: new Float64Array(sim.nodes.length), count: 0, early: [] };
          const t = policyTrial;
          const res = await retrying(() =>
            policy.upsertPod(
              {
                pod: {
                  namespace: pod!.namespace,
                  name: pod!.name,
                  node: pod!.node.spec.name,
                  labels: k % 2 === 0 ? { role: 'client' } : {},
                  addresses: [],
                  ports: [],
                },
                keepAttachment: true,
              },
              { timeoutMs: 10_000 },
            ),
          );
          const returned = now();
          for (const e of t.early)
            if (e.revision >= res.revision && t.stamps[e.i] === 0) {
              t.stamps[e.i] = e.at;
              t.count++;
            }
          t.revision = res.revision;
          await waitFor('policy', () => t.count >= expectAll, 60_000);
          policyTrial = null;
          missing += expectAll - t.count;
          const ts = [...t.stamps].filter((x) => x > 0).map((x) => x - returned);
          latency.push(...ts);
          last.push(Math.max(...ts));
          await sleep(Math.max(300, flushMs + 100));
        }
        const b = meter();
        fig.policy = {
          latency,
          last,
          missing,
          cpuServer: (b.server - a.server - idleRate(a, b, 'server')) / TRIALS,
          cpuPg: (b.postgres - a.postgres - idleRate(a, b, 'postgres')) / TRIALS,
          cpuSim: (b.sim - a.sim - idleRate(a, b, 'sim')) / TRIALS,
        };
        log(`${n}: policy p50/p99 ${ms(p(latency, 50))} / ${ms(p(latency, 99))}, missing ${missing}`);

        // A pod attached on one node (undescribed: no labels, so no set changes), then detached: only that node's
        // rules change. Every other agent must be sent nothing (bookmarks aside).
        const attached: number[] = [];
        let attachMissing = 0,
          others = 0;
        const c = meter();
        for (let k = 0; k < TRIALS; k++) {
          const node = sim.nodes[Math.floor(Math.random() * sim.nodes.length)]!;
          const at = index.get(node)!;
          const containerId = `probe-${n}-${k}`;
          for (const change of ['attach', 'detach'] as const) {
            let revision = 0,
              stamp = 0;
            const early: { revision: number; at: number }[] = [];
            attachTrial = (x, m) => {
              if (m.bookmark) return;
              if (index.get(x) !== at) others++;
              else if (revision === 0) early.push({ revision: m.revision, at: now() });
              else if (stamp === 0 && m.revision >= revision) stamp = now();
            };
            const res =
              change === 'attach'
                ? await retrying(() =>
                    node.policy.attachPod(
                      {
                        namespace: 'ns-0',
                        name: containerId,
                        node: node.spec.name,
                        containerId,
                        addresses: [`100.64.${k}.${n % 250}`],
                      },
                      { timeoutMs: 10_000 },
                    ),
                  )
                : await retrying(() => node.policy.detachPod({ containerId }, { timeoutMs: 10_000 }));
            const returned = now();
            revision = Math.max(1, res.revision);
            for (const e of early) if (stamp === 0 && e.revision >= revision) stamp = e.at;
            await waitFor('attach', () => stamp > 0, 10_000);
            if (stamp > 0) attached.push(stamp - returned);
            else attachMissing++;
            await sleep(300);
            attachTrial = null;
          }
        }
        const d = meter();
        fig.attach = {
          latency: attached,
          missing: attachMissing,
          others,
          cpuServer: (d.server - c.server - idleRate(c, d, 'server')) / (2 * TRIALS),
          cpuPg: (d.postgres - c.postgres - idleRate(c, d, 'postgres')) / (2 * TRIALS),
        };
        log(
          `${n}: attach p50/p99 ${ms(p(attached, 50))} / ${ms(p(attached, 99))}, missing ${attachMissing}, messages to other agents ${others}`,
        );
      }
      figures.push(fig);
      printTable(`bench/scale — ${n} simulated nodes (so far; the whole table follows at the end)`, rowsOf(fig));

      // --- restart with n agents connected ---------------------------------------------------------------------------
      if (PARTS.has('restart') && (RESTART === 'each' || (RESTART === 'last' && n === SIZES[SIZES.length - 1]))) {
        const stat = async () =>
          (
            await sql.query(
              `SELECT sum(xact_commit)::bigint AS commits, sum(tup_returned)::bigint AS returned, sum(tup_fetched)::bigint AS fetched, sum(tup_inserted + tup_updated + tup_deleted)::bigint AS written FROM pg_stat_database`,
            )
          ).rows[0] as Record<string, string>;
        type Load = { commits: number; returned: number; fetched: number; written: number };
        const delta = (a: Record<string, string>, b: Record<string, string>): Load =>
          Object.fromEntries(Object.keys(a).map((k) => [k, Number(b[k]) - Number(a[k])])) as Load;
        const views = sim.nodes.map((x) => x.policyCompleteViews);
        // When each agent had its fresh policy view (the first complete view after SIGTERM).
        const policyBack: number[] = [];
        const policySeen = new Set<SimNode>();
        policyBackHook = (node, m) => {
          if (m.delta || m.bookmark || policySeen.has(node)) return;
          policySeen.add(node);
          policyBack.push(now());
        };
        const breaks0 = sim.stats().streamBreaks;
        const renewalFailures0 = sim.stats().renewalFailures;
        const reasons0 = new Map(sim.stats().reasons);
        const s0 = await stat();
        const pg0 = meter();
        const tcp0 = tcpCounters();
        const t0 = now();
        await cp.stop(30_000);
        const tExit = now();
        // The control plane's own account of its stop (cli/control-plane.ts): when it began, and each step's time.
        for (const line of cp
          .output()
          .split('\n')
          .filter((l) => /"msg":"(stopping|control plane stopped)/.test(l)))
          log(`control plane: ${line}`);
        log(
          `SIGTERM sent at ${new Date(performance.timeOrigin + t0).toISOString()}, exit seen ${ms(tExit - t0)} after`,
        );
        await cp.start();
        const tServing = now();
        const mServing = meter();
        // The simulator's own event loop from serving to in sync: every simulated agent shares it, so a stall is time
        // in which no agent's timer or stream callback ran, the harness's limit rather than the control plane's.
        const simLoop = monitorEventLoopDelay({ resolution: 10 });
        simLoop.enable();
        const probeNode = pickProbeNode();
        routeTrial = {
          node: probeNode.spec.name,
          expected: sim.nodes[0]!.blocksOf(probeNode.spec.name) + 1,
          stamps: new Float64Array(sim.nodes.length),
          count: 0,
        };
        const rt = routeTrial;
        const claimed = await claimBlock(probeNode, 'admin-process');
        log(`${n}: the route change's Allocate returned ${ms(claimed.returned - tServing)} after serving`);
        const allBack = () =>
          rt.count === sim.nodes.length && sim.nodes.every((x, i) => x.policyCompleteViews > views[i]!);
        const synced = await waitFor('restart', allBack, 120_000);
        const tSynced = now();
        const mSynced = meter();
        const tcp1 = tcpCounters();
        simLoop.disable();
        routeTrial = null;
        policyBackHook = null;
        await sleep(1500); // pg_stat_database is flushed by backends at most every second
        const s1 = await stat();
        const pg1 = meter();
        // The same span of steady state with every agent connected, for comparison.
        const span = tSynced - t0 + 1500;
        const i0 = await stat();
        const m0 = meter();
        await sleep(span);
        const i1 = await stat();
        const m1 = meter();
        const during = delta(s0, s1),
          idle = delta(i0, i1);
        const fmt = (d: Load) =>
          `${d.commits} commits, ${(d.returned / 1e6).toFixed(2)}M tuples returned, ${(d.fetched / 1e3).toFixed(0)}k fetched, ${(d.written / 1e3).toFixed(1)}k written`;
        restartRows.push(
          {
            figure: `${n} agents: SIGTERM -> every agent back in sync (fresh policy view and a route change made at start)`,
            value: synced ? ms(tSynced - t0) : `not within 120 s (${rt.count}/${sim.nodes.length} routes)`,
            goal: `<= 30 s: ${synced && tSynced - t0 <= 30_000 ? 'met' : 'missed'}`,
          },
          {
            figure: '  of which: stop (SIGTERM -> exit); start (-> serving); serving -> in sync',
            value: `${ms(tExit - t0)}; ${ms(tServing - tExit)}; ${ms(tSynced - tServing)}`,
          },
          {
            figure: `  PostgreSQL meanwhile (${(span / 1000).toFixed(1)} s)`,
            value: fmt(during),
            baseline: `steady state, as long: ${fmt(idle)}`,
            ratio: `${(during.commits / Math.max(1, idle.commits)).toFixed(2)}x commits, ${(during.returned / Math.max(1, idle.returned)).toFixed(2)}x returned`,
          },
          {
            // The restarted process alone (its CPU before the start is another process's).
            figure: '  CPU from serving to in sync: control plane; PostgreSQL; simulator (2 cores: 200%)',
            value: `${cpuPct(mServing, mSynced, 'server').toFixed(0)}%; ${cpuPct(mServing, mSynced, 'postgres').toFixed(0)}%; ${cpuPct(mServing, mSynced, 'sim').toFixed(0)}%`,
          },
          {
            figure: "  the simulator's event loop from serving to in sync: longest stall; delay p99 / p50",
            value: `${ms(simLoop.max / 1e6)}; ${ms(simLoop.percentile(99) / 1e6)} / ${ms(simLoop.percentile(50) / 1e6)}`,
            baseline: 'one loop for every simulated agent: in a stall none of them runs',
          },
          {
            figure: '  CPU meanwhile: PostgreSQL; simulator',
            value: `${cpuPct(pg0, pg1, 'postgres').toFixed(0)}%; ${cpuPct(pg0, pg1, 'sim').toFixed(0)}%`,
            baseline: `steady: ${cpuPct(m0, m1, 'postgres').toFixed(0)}%; ${cpuPct(m0, m1, 'sim').toFixed(0)}%`,
          },
          {
            figure: '  serving -> each agent has its fresh policy view, p10 / p50 / p90 / last',
            value: [10, 50, 90, 100].map((q) => ms(p(policyBack, q) - tServing)).join(' / '),
            baseline: `the route change: p50 / p99 ${ms(
              p(
                Array.from(rt.stamps).filter((x) => x > 0),
                50,
              ) - tServing,
            )} / ${ms(
              p(
                Array.from(rt.stamps).filter((x) => x > 0),
                99,
              ) - tServing,
            )}`,
          },
          {
            figure:
              "  serving -> the route change's Allocate returned (an administrator's write from a process of its own)",
            value: ms(claimed.returned - tServing),
          },
          {
            figure: "  the kernel's TCP meanwhile: SYNs retransmitted; accept-queue overflows; listen drops",
            value: `${tcp1.synRetrans - tcp0.synRetrans}; ${tcp1.listenOverflows - tcp0.listenOverflows}; ${tcp1.listenDrops - tcp0.listenDrops}`,
            baseline: 'a connection whose SYN went unanswered tries again 1, 3, 7, 15 s later',
          },
          {
            figure: `  streams broken and reopened (${2 * n} streams); renewals failed`,
            value: `${sim.stats().streamBreaks - breaks0}; ${sim.stats().renewalFailures - renewalFailures0}`,
          },
        );
        // Why: each gRPC status the streams and renewals saw, and when the streams broke (seconds after SIGTERM).
        const why = [...sim.stats().reasons]
          .map(([k, v]) => [k, v - (reasons0.get(k) ?? 0)] as const)
          .filter(([, v]) => v > 0)
          .sort((a, b) => b[1] - a[1]);
        for (const [k, v] of why.slice(0, 12)) restartRows.push({ figure: `    ${k}`, value: String(v) });
        const buckets = new Map<number, number>();
        for (const t of sim.stats().breakTimes)
          if (t >= t0) buckets.set(Math.floor((t - t0) / 5000), (buckets.get(Math.floor((t - t0) / 5000)) ?? 0) + 1);
        restartRows.push({
          figure: '  stream breaks per 5 s after SIGTERM',
          value: [...buckets]
            .sort((a, b) => a[0] - b[0])
            .map(([b, c]) => `${b * 5}s:${c}`)
            .join(' '),
          baseline: `exit at ${ms(tExit - t0)}, serving at ${ms(tServing - t0)}`,
        });
        log(`${n}: restart back in sync in ${ms(tSynced - t0)} (synced ${synced})`);
      }
    }

    // --- IPAM with every simulated pod live ------------------------------------------------------------------------
    if (PARTS.has('ipam')) {
      const live = Number(
        (await sql.query('SELECT count(*) FROM ipam.allocations WHERE released_at IS NULL')).rows[0].count,
      );
      const held: { address: string; pod: string; from: number; until: number }[] = [];
      const wall = () => performance.timeOrigin + now();
      // Churn: 32 at a time, a node's pod detached and a new one attached (a rollout): the history the queries read.
      const churnLat: number[] = [];
      let churned = 0;
      const end = now() + CHURN_S * 1000;
      await Promise.all(
        Array.from({ length: 32 }, async () => {
          while (now() < end) {
            const node = sim.nodes[Math.floor(Math.random() * sim.nodes.length)]!;
            const pods = [...node.pods.values()];
            const pod = pods[Math.floor(Math.random() * pods.length)];
            if (!pod) continue;
            const t0 = now();
            held.push({ address: pod.address, pod: pod.name, from: pod.allocatedAt, until: wall() });
            await sim.detachPod(node, pod);
            await sim.attachPod(node, {
              namespace: pod.namespace,
              name: `${pod.name.replace(/-r\d+$/, '')}-r${churned}`,
            });
            churnLat.push(now() - t0);
            churned++;
          }
        }),
      );
      const churnRate = churned / CHURN_S;
      await waitFor('reports', () => sim.reportsPending() === 0, 300_000);
      sim.reportLatencies();
      // Who held X at T: a released pod's address at the middle of its life (from Allocate's return to Release's call).
      const who: number[] = [];
      let wrong = 0;
      for (const h of held.slice(0, 300)) {
        const at = new Date((h.from + h.until) / 2);
        const s = now();
        const { entries } = await ipam.listAllocationHistory({ address: h.address, at });
        who.push(now() - s);
        if (entries.length !== 1 || entries[0]!.allocation!.podName !== h.pod) {
          if (wrong++ < 3)
            log(
              `who held ${h.address} at ${at.toISOString()}: expected ${h.pod} (${new Date(h.from).toISOString()} - ${new Date(h.until).toISOString()}), got ${JSON.stringify(entries.map((e) => [e.allocation?.podName, e.allocation?.allocateTime, e.releaseTime]))}`,
            );
        }
      }
      const util: number[] = [],
        utilAll: number[] = [];
      for (let i = 0; i < 100; i++) {
        let s = now();
        await ipam.getUtilization({ pool: `c${i % CLUSTERS}` });
        util.push(now() - s);
        s = now();
        await ipam.getUtilization({});
        utilAll.push(now() - s);
      }
      const history = Number((await sql.query('SELECT count(*) FROM ipam.allocations')).rows[0].count);
      const pgbench = findPgbench();
      let baseline = '';
      if (pgbench) {
        await sql.query(
          'CREATE TABLE IF NOT EXISTS bench_baseline (id bigserial PRIMARY KEY, v double precision, at timestamptz DEFAULT now())',
        );
        baseline = `pgbench one-row insert, ${ATTACH_CONCURRENCY} clients: ${perSec(await pgbenchInsertTps(pgbench, db.ownerUrl, ATTACH_CONCURRENCY, 5))}`;
      } else baseline = 'pgbench not installed (bash bench/install-deps.sh)';
      const last = figures[figures.length - 1]!;
      ipamRows.push(
        {
          figure: `live pods across ${CLUSTERS} clusters' pools (${sim.nodes.length} nodes)`,
          value: String(live),
          goal: 'target 150,000',
        },
        {
          figure: `pods attached at the last size (Allocate, ${ATTACH_CONCURRENCY} at once, every agent watching)`,
          value: perSec(last.setup.attachRate),
          baseline,
        },
        {
          figure: '  Allocate without a block claim p50 / p99; AttachPod report taken after p50 / p99',
          value: `${ms(last.setup.allocP50)} / ${ms(last.setup.allocP99)}; ${ms(last.setup.attachP50)} / ${ms(last.setup.attachP99)}`,
        },
        {
          figure: 'churn: Release + Allocate (a pod replaced), 32 at once',
          value: perSec(churnRate),
          baseline: `p50 / p99 ${ms(p(churnLat, 50))} / ${ms(p(churnLat, 99))}`,
        },
        {
          figure: `"who held X at T" (${history} history rows), p50 / p99`,
          value: `${ms(p(who, 50))} / ${ms(p(who, 99))}`,
          baseline: wrong ? `${wrong} WRONG of ${who.length}` : `${who.length} answers checked`,
          goal: `p99 <= 20 ms: ${p(who, 99) <= 20 ? 'met' : 'missed'}`,
        },
        {
          figure: "utilization of one cluster's pool; of every pool, p50 / p99",
          value: `${ms(p(util, 50))} / ${ms(p(util, 99))}; ${ms(p(utilAll, 50))} / ${ms(p(utilAll, 99))}`,
          goal: `<= 50 ms: ${p(utilAll, 99) <= 50 ? 'met' : 'missed'}`,
        },
      );
    }

    // --- tables ------------------------------------------------------------------------------------------------------
    for (const f of figures) rows.push(...rowsOf(f));
    if (figures.length > 1) {
      const law = (y: (f: SizeFigures) => number | undefined) =>
        growthLaw(figures.map((f) => ({ n: f.n, y: y(f) ?? 0 })));
      rows.push({
        figure: `growth over ${figures.map((f) => f.n).join(', ')} nodes: server RSS per stream`,
        value: law((f) => (f.serverRssKiB - rss0) / f.streams),
      });
      rows.push({
        figure: '  server CPU per route change; per policy change; per attach on one node',
        value: `${law((f) => f.route?.cpuServer)}; ${law((f) => f.policy?.cpuServer)}; ${law((f) => f.attach?.cpuServer)}`,
      });
      rows.push({
        figure: '  route p99; policy p99; idle server CPU',
        value: `${law((f) => f.route && p(f.route.latency, 99))}; ${law((f) => f.policy && p(f.policy.latency, 99))}; ${law((f) => f.idle.server)}`,
      });
    }
    const st = sim.stats();
    printTable(
      `bench/scale — ${SIZES.join(', ')} simulated nodes, ${PODS} pods each, ${CLUSTERS} clusters, ${TRIALS} changes per figure; ${runtimes}; simulator: ${st.renewals} renewals (${st.renewalFailures} failed, ${st.reRegistrations} re-registrations), ${st.streamBreaks} stream breaks, ${st.reportFailures} pod reports retried; ${controllerRetries.count} controller calls and ${attachRetries.count} pod ADDs retried (UNAVAILABLE or no answer in time)`,
      rows,
    );
    if (restartRows.length)
      printTable('bench/scale — control plane restarted (SIGTERM, start on the same data and port)', restartRows);
    if (ipamRows.length) printTable('bench/scale — IPAM with every simulated pod live', ipamRows);
  } finally {
    sim.close();
    ipam.close();
    policy.close();
    await sql.end().catch(() => {});
    await cp.stop();
    await db.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`bench/scale: ${(err as Error).stack ?? err}\n`);
    process.exit(1);
  },
);
