import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import {
  AGENT_METRICS_PORT,
  agentLog,
  controlPlaneTarget,
  isAlive,
  readState,
  restartAgent,
  networkConfig,
  restartControlPlane,
  runCni,
  startAgent,
  startStoppedControlPlane,
  stopAgent,
  stopControlPlane,
  type ClusterState,
  type NodeState,
  type PodState,
  clusterAdminSecurity,
} from '../cli/cluster/cluster.js';
import { CONTROL_PLANE_ADDRESS } from '../cli/cluster/topology.js';
import { createClient } from '../lib/grpc/client.js';
import { RoutesServiceService } from '../gen/weft/routes/v1/routes.js';
import { IpamServiceService, IpFamily } from '../gen/weft/ipam/v1/ipam.js';
import { hostIfnameFor } from '../node-dataplane/kernel/pod-network.js';
import { vtepMacFor } from '../node-dataplane/kernel/vxlan-device.js';
import { bin } from './support/processes.js';
import { eventually } from './support/eventually.js';
import {
  assertStreamHeld,
  pings as reaches,
  startEchoStream as startStream,
  startPingLoop,
} from './support/pod-probes.js';
import { privilegedOrSkip } from './support/privileges.js';

/**
 * The agent on the real kernel, in a local cluster of three nodes: drift made by hand is repaired within a bound,
 * pod traffic keeps flowing while agents are killed and restarted, a restarted agent adopts what it finds without
 * deleting or re-adding anything, and a restarted agent removes stale entries only once it holds its snapshot.
 * Measured figures are reported as test diagnostics.
 */
const exec = promisify(execFile);
const opts = privilegedOrSkip();
const stateDir = mkdtempSync(path.join(tmpdir(), 'weft-e2e-agent-'));
const children: ChildProcess[] = [];
let state: ClusterState | null = null;
const pods: Record<string, PodState> = {};

const VXLAN = 'weft.vxlan';
/** Repairs must be this fast; the measured figures are printed. */
const REPAIR_BOUND_MS = 2000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const node = (name: string): NodeState => readState(stateDir).nodes.find((n) => n.name === name)!;

async function sh(file: string, ...args: string[]): Promise<string> {
  const { stdout } = await exec(file, args, { timeout: 20_000 });
  return stdout;
}

async function weft(...args: string[]): Promise<string> {
  const { stdout } = await exec(bin.weft, [...args, '--state-dir', stateDir], { timeout: 120_000 });
  return stdout;
}

interface Overlay {
  routes: { dst: string; gateway?: string }[];
  /** Direct routes: Weft's protocol on the underlay device (nodes on the same subnet, routing mode auto). */
  direct: { dst: string; gateway?: string }[];
  neighbours: { dst: string; lladdr?: string }[];
  fdb: { mac: string; dst?: string }[];
  /** Everything Weft owns in the node's kernel, as iproute2 prints it in detail (for byte-for-byte comparison). */
  text: string;
}

const json = (p: Promise<string>) => p.then((out) => JSON.parse(out) as Record<string, string>[]).catch(() => []);
const by = (k: string) => (a: Record<string, string>, b: Record<string, string>) =>
  String(a[k]).localeCompare(String(b[k]));
// Each is one iproute2 call, so that polling for a repair measures the agent rather than the probe. Listing order is
// the kernel's (a rebuilt device lists entries in the order they were re-added), so lists are sorted.
const routesOf = async (ns: string) =>
  (await json(sh('ip', '-n', ns, '-j', 'route', 'show', 'table', 'main', 'proto', '87', 'dev', VXLAN))).sort(
    by('dst'),
  ) as Overlay['routes'];
const neighboursOf = async (ns: string) =>
  (await json(sh('ip', '-n', ns, '-j', 'neigh', 'show', 'dev', VXLAN, 'nud', 'permanent'))).sort(
    by('dst'),
  ) as Overlay['neighbours'];
const directOf = async (ns: string) =>
  (await json(sh('ip', '-n', ns, '-j', 'route', 'show', 'table', 'main', 'proto', '87', 'dev', 'eth0'))).sort(
    by('dst'),
  ) as Overlay['direct'];
const fdbOf = async (ns: string) =>
  (await json(sh('bridge', '-n', ns, '-j', 'fdb', 'show', 'dev', VXLAN)))
    .filter((f) => f.mac !== '00:00:00:00:00:00')
    .sort(by('mac')) as Overlay['fdb'];

/** Reads a node's overlay state back with iproute2 (independently of the agent). */
async function overlay(ns: string): Promise<Overlay> {
  const [routes, direct, neighbours, fdb, text] = await Promise.all([
    routesOf(ns),
    directOf(ns),
    neighboursOf(ns),
    fdbOf(ns),
    Promise.all([
      sh('ip', '-n', ns, '-d', 'link', 'show', 'dev', VXLAN).catch(() => 'no device\n'),
      sh('ip', '-n', ns, '-d', 'route', 'show', 'table', 'main'),
      sh('ip', '-n', ns, '-d', 'neigh', 'show', 'dev', VXLAN).catch(() => ''),
      sh('bridge', '-n', ns, '-d', 'fdb', 'show', 'dev', VXLAN).catch(() => ''),
    ]).then((parts) => parts.join('---\n')),
  ]);
  return { routes, direct, neighbours, fdb, text };
}

/**
 * Everything of a node's kernel that Weft programs, as text to compare byte for byte: the overlay (as `overlay`),
 * iptables (all tables; counters and comment headers dropped) and ipsets.
 */
async function kernelState(ns: string): Promise<{ overlay: string; iptables: string; ipsets: string }> {
  const [o, iptables, ipsets] = await Promise.all([
    overlay(ns),
    sh('ip', 'netns', 'exec', ns, 'iptables-save'),
    sh('ip', 'netns', 'exec', ns, 'ipset', 'save'),
  ]);
  return {
    overlay: o.text,
    iptables: iptables
      .split('\n')
      .filter((l) => !l.startsWith('#'))
      .map((l) => l.replace(/\[\d+:\d+\]/g, '[0:0]'))
      .join('\n'),
    ipsets,
  };
}

async function allocations(): Promise<{ handle: string; address: string }[]> {
  return JSON.parse(await weft('ipam', 'allocations', '--json')) as { handle: string; address: string }[];
}

/** The overlay entries that lead to one remote node: its FDB entry, its blocks' neighbours and routes. */
function entriesFor(o: Overlay, remote: NodeState) {
  const mac = vtepMacFor(remote.address);
  const gateways = new Set(o.neighbours.filter((n) => n.lladdr === mac).map((n) => n.dst));
  return {
    mac,
    fdb: o.fdb.filter((f) => f.mac === mac),
    neighbours: o.neighbours.filter((n) => n.lladdr === mac),
    routes: o.routes.filter((r) => r.gateway !== undefined && gateways.has(r.gateway)),
  };
}

/** The agent's metrics, read inside the node's namespace (where the agent serves them). */
async function metrics(n: NodeState): Promise<Map<string, number>> {
  const out = await sh(
    'ip',
    'netns',
    'exec',
    n.netns,
    process.execPath,
    '-e',
    `fetch('http://127.0.0.1:${AGENT_METRICS_PORT}/metrics', { signal: AbortSignal.timeout(2000) }).then((r) => r.text()).then((t) => process.stdout.write(t), () => process.exit(1))`,
  );
  const m = new Map<string, number>();
  for (const line of out.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    m.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return m;
}

const total = (m: Map<string, number>, prefix: string) =>
  [...m].filter(([k]) => k === prefix || k.startsWith(`${prefix}{`)).reduce((s, [, v]) => s + v, 0);

/**
 * The agent's kernel writes so far, by operation and kind (weft_agent_kernel_changes_total), as one comparable line;
 * without `policy`, what a detached pod takes with it is left out: network policy's kinds (filter chains, ipsets) and
 * the pod's veth and host route.
 */
const kernelChanges = (m: Map<string, number>, opts: { policy: boolean }) =>
  [...m]
    .filter(
      ([k]) =>
        k.startsWith('weft_agent_kernel_changes_total') &&
        (opts.policy || !/kind="((filter|ipset)[46]|pod-link|pod-route)"/.test(k)),
    )
    .map(([k, v]) => `${k.replace('weft_agent_kernel_changes_total', '')}=${v}`)
    .sort()
    .join(' ');

/** Waits until a (re)started agent has applied its first complete snapshot; returns the milliseconds it took. */
async function waitForSync(n: NodeState, timeoutMs = 20_000): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    const m = await metrics(n).catch(() => null);
    if (m && m.get('weft_agent_synced') === 1 && (m.get('weft_agent_revision_applied') ?? 0) > 0)
      return performance.now() - t0;
    if (performance.now() - t0 > timeoutMs) throw new Error(`${n.name}'s agent did not sync within ${timeoutMs} ms`);
    await sleep(50);
  }
}

/** Polls (bounded, every 5 ms) until `ok` holds; returns the milliseconds it took. */
async function until(what: string, ok: () => Promise<boolean>, timeoutMs = 10_000): Promise<number> {
  const t0 = performance.now();
  await eventually(what, ok, timeoutMs, 5);
  return performance.now() - t0;
}

/** `ip monitor route neigh` in a namespace (neighbour events include FDB entries), until stopped. */
function monitor(ns: string): { stop(): Promise<string[]> } {
  const child = spawn('ip', ['-n', ns, 'monitor', 'route', 'neigh'], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  return {
    async stop() {
      await sleep(200);
      child.kill('SIGKILL');
      await new Promise((r) =>
        child.exitCode !== null || child.signalCode !== null ? r(null) : child.once('exit', r),
      );
      return out.split('\n').filter(Boolean);
    },
  };
}

/** Monitor lines about Weft's overlay entries: on its device or a direct route on eth0, naming a pod block address or a VTEP MAC. */
const weftLines = (lines: string[]) =>
  lines.filter(
    (l) => (l.includes(`dev ${VXLAN}`) || l.includes('dev eth0 proto 87')) && /(^|\s)10\.244\.|02:57:/.test(l),
  );

const pings = (from: PodState, to: string) => reaches(from, to, { attempts: 10, pauseMs: 100 });

/** A TCP echo stream between two pods (a counter every 10 ms), its processes killed in `after` if still running. */
const startEchoStream = (from: PodState, to: PodState, maxMs?: number) => startStream(from, to, { maxMs, children });

describe('agent reconciliation on the local cluster', opts, () => {
  before(async () => {
    await weft('cluster', 'up', '--nodes', '3', '--json');
    state = readState(stateDir);
    for (const [n, p] of [
      ['node1', 'pa'],
      ['node2', 'pc'],
      ['node3', 'pb'],
    ] as const) {
      pods[p] = JSON.parse(await weft('cluster', 'pod', 'add', n, p, '--namespace', 'e2e', '--json')) as PodState;
    }
    // Every node holds the other two nodes' entries before the tests begin: node1 and node2 share a subnet and route
    // each other directly (routing mode auto), and reach node3 (the other subnet) through VXLAN.
    const wanted: Record<string, [vxlan: number, direct: number]> = { node1: [1, 1], node2: [1, 1], node3: [2, 0] };
    for (const [n, [vx, di]] of Object.entries(wanted)) {
      await until(
        `${n}'s overlay`,
        async () => {
          const o = await overlay(node(n).netns);
          return o.routes.length === vx && o.direct.length === di;
        },
        15_000,
      );
    }
  });

  after(async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    const prefix = state?.prefix;
    const pids = state ? [state.controlPlane.pid, ...readState(stateDir).nodes.map((n) => n.agentPid)] : [];
    await weft('cluster', 'down');
    rmSync(stateDir, { recursive: true, force: true });
    if (prefix) {
      const out = await sh('ip', 'netns', 'list');
      assert.ok(!out.includes(prefix), `namespaces left behind:\n${out}`);
      for (const pid of pids) assert.ok(!isAlive(pid), `process ${pid} left running`);
    }
  });

  test("a pod's host route and proxy ARP changed by hand come back at the next resync; a stale pod veth is removed, live pods untouched", async (t) => {
    const n1 = node('node1');
    const ns = n1.netns;
    const pa = pods.pa!;
    const host = hostIfnameFor(pa.containerId, pa.ifname);
    const hostRoute = () => sh('ip', '-n', ns, 'route', 'show', 'table', 'main', 'proto', '87', 'dev', host);
    const proxyArp = () => sh('ip', 'netns', 'exec', ns, 'cat', `/proc/sys/net/ipv4/conf/${host}/proxy_arp`);
    const before = await hostRoute();
    assert.match(before, new RegExp(`^${pa.addresses[0]!.replace(/\./g, '\\.')} scope link`));
    // A veth that is no attachment's (an ADD that crashed midway): Weft's name, no allocation behind it.
    const stale = 'weft0000000e2e0';
    await sh('ip', '-n', ns, 'link', 'add', stale, 'type', 'veth', 'peer', 'name', 'e2epeer0');
    await sh('ip', '-n', ns, 'route', 'del', `${pa.addresses[0]}/32`, 'dev', host);
    await sh('ip', 'netns', 'exec', ns, 'sh', '-c', `echo 0 > /proc/sys/net/ipv4/conf/${host}/proxy_arp`);
    const t0 = performance.now();
    await eventually(
      'the host route, proxy ARP and the stale veth repaired',
      async () =>
        (await hostRoute()) === before &&
        (await proxyArp()).trim() === '1' &&
        !(await sh('ip', '-n', ns, '-br', 'link', 'show', 'type', 'veth')).includes(stale),
      15_000,
      50,
    );
    t.diagnostic(
      `pod host route, proxy ARP and stale veth repaired in ${Math.round(performance.now() - t0)} ms (resync 5 s)`,
    );
    assert.ok(await pings(pa, pods.pb!.addresses[0]!), 'pa reaches pb across nodes again');
    assert.ok(await pings(pods.pb!, pa.addresses[0]!), 'pb reaches pa again');
  });

  test('a route, a neighbour entry, an FDB entry, a direct route and the whole VXLAN device deleted by hand come back within the bound', async (t) => {
    const n1 = node('node1');
    const ns = n1.netns;
    const before = await overlay(ns);
    const toNode3 = entriesFor(before, node('node3'));
    assert.equal(toNode3.routes.length, 1);
    const block = toNode3.routes[0]!.dst;
    const gateway = toNode3.neighbours[0]!.dst;
    const m0 = await metrics(n1);
    const figures: Record<string, number> = {};

    let t0 = performance.now();
    await sh('ip', '-n', ns, 'route', 'del', block, 'dev', VXLAN);
    await until('the route back', async () => (await routesOf(ns)).some((r) => r.dst === block));
    figures.route = performance.now() - t0;

    t0 = performance.now();
    await sh('ip', '-n', ns, 'neigh', 'del', gateway, 'dev', VXLAN);
    await until('the neighbour entry back', async () =>
      (await neighboursOf(ns)).some((x) => x.dst === gateway && x.lladdr === toNode3.mac),
    );
    figures.neighbour = performance.now() - t0;

    t0 = performance.now();
    await sh('bridge', '-n', ns, 'fdb', 'del', toNode3.mac, 'dev', VXLAN, 'dst', node('node3').address, 'self');
    await until('the FDB entry back', async () => (await fdbOf(ns)).some((f) => f.mac === toNode3.mac));
    figures.fdb = performance.now() - t0;

    const direct = before.direct[0]!;
    t0 = performance.now();
    await sh('ip', '-n', ns, 'route', 'del', direct.dst, 'via', direct.gateway!, 'dev', 'eth0');
    await until('the direct route back', async () =>
      (await directOf(ns)).some((r) => r.dst === direct.dst && r.gateway === direct.gateway),
    );
    figures['direct route'] = performance.now() - t0;

    t0 = performance.now();
    await sh('ip', '-n', ns, 'link', 'del', 'dev', VXLAN);
    // Routes go in last (after neighbours and FDB entries), so all routes back means all entries back.
    await until(
      'the device and all its entries back',
      async () => (await routesOf(ns)).length === before.routes.length,
    );
    figures.device = performance.now() - t0;

    for (const [what, ms] of Object.entries(figures))
      t.diagnostic(`${what} deleted by hand: restored in ${ms.toFixed(0)} ms`);
    for (const [what, ms] of Object.entries(figures))
      assert.ok(ms < REPAIR_BOUND_MS, `${what} restored in ${ms.toFixed(0)} ms (bound ${REPAIR_BOUND_MS} ms)`);

    const after = await overlay(ns);
    assert.deepEqual(
      { r: after.routes, d: after.direct, n: after.neighbours, f: after.fdb },
      { r: before.routes, d: before.direct, n: before.neighbours, f: before.fdb },
      'the rebuilt device holds exactly the entries it held; the direct route is as it was',
    );
    assert.ok(await pings(pods.pa!, pods.pb!.addresses[0]!), 'pods reach each other over the rebuilt device');

    // The repairs are counted: one of each kind by hand (two routes: the VXLAN one and the direct one), then one of each
    // with the device (one remote node through VXLAN; the direct route does not live on the device).
    const m1 = await metrics(n1);
    const repaired = (kind: string) =>
      (m1.get(`weft_agent_drift_repairs_total{kind="${kind}"}`) ?? 0) -
      (m0.get(`weft_agent_drift_repairs_total{kind="${kind}"}`) ?? 0);
    assert.deepEqual(
      { route: repaired('route'), neighbour: repaired('neighbour'), fdb: repaired('fdb') },
      { route: 3, neighbour: 2, fdb: 2 },
    );
    assert.ok(
      total(m1, 'weft_agent_kernel_events_total') > total(m0, 'weft_agent_kernel_events_total'),
      'kernel events drove the repairs',
    );

    // The agent's own writes echo back as events; the loop comes to rest (at most one periodic resync in the window).
    await sleep(300);
    const passesBefore = total(await metrics(n1), 'weft_agent_reconcile_passes_total');
    await sleep(1500);
    const passesAfter = total(await metrics(n1), 'weft_agent_reconcile_passes_total');
    t.diagnostic(`passes while idle for 1.5 s: ${passesAfter - passesBefore}`);
    assert.ok(passesAfter - passesBefore <= 1, `no reconcile loop: ${passesAfter - passesBefore} passes in 1.5 s idle`);
  });

  test("a TCP stream between pods on two nodes keeps flowing while either node's agent is killed (SIGKILL) and restarted", async (t) => {
    const stream = await startEchoStream(pods.pa!, pods.pb!);
    const t0 = performance.now();
    const restarts: string[] = [];
    for (const name of ['node1', 'node3']) {
      await sleep(1000);
      const mon = monitor(node(name).netns);
      await sleep(100);
      const before = await overlay(node(name).netns);
      const killedAt = performance.now() - t0;
      await stopAgent(stateDir, name, 'SIGKILL');
      startAgent(stateDir, name);
      const syncMs = await waitForSync(node(name));
      const after = await overlay(node(name).netns);
      const lines = weftLines(await mon.stop());
      restarts.push(
        `${name}: agent killed ${killedAt.toFixed(0)} ms into the stream; the new agent was in sync ${syncMs.toFixed(0)} ms after it started`,
      );
      assert.deepEqual(lines, [], `${name}: nothing of Weft's was deleted or re-added across the SIGKILL restart`);
      assert.equal(after.text, before.text, `${name}: kernel state byte-identical across the restart`);
    }
    await sleep(1000);
    const r = await stream.stop();
    for (const line of restarts) t.diagnostic(line);
    t.diagnostic(
      `stream: ${r.ms} ms, ${r.sent} messages, ${r.sentBytes} bytes sent, ${r.recvBytes} echoed, longest silence ${r.maxGapMs} ms`,
    );
    assertStreamHeld(r);
  });

  test('the control plane (IPAM, routes and PostgreSQL) restarted: every agent recovers without help, traffic keeps flowing', async (t) => {
    const names = ['node1', 'node2', 'node3'];
    const before = new Map(
      await Promise.all(
        names.map(async (n) => [n, (await metrics(node(n))).get('weft_agent_revision_applied') ?? 0] as const),
      ),
    );
    const stream = await startEchoStream(pods.pa!, pods.pb!);
    const t0 = performance.now();
    const cp = await restartControlPlane(stateDir);
    const upMs = performance.now() - t0;
    assert.ok(isAlive(cp.controlPlane.pid), 'the new control plane runs');
    // Each agent reconnects its watch on its own (resuming from its revision) and keeps renewing its lease.
    const recovered: string[] = [];
    for (const n of names) {
      const ms = await until(
        `${n}'s agent to follow the restarted control plane`,
        async () => {
          const m = await metrics(node(n)).catch(() => null);
          return (
            !!m && m.get('weft_agent_synced') === 1 && (m.get('weft_agent_revision_applied') ?? 0) >= before.get(n)!
          );
        },
        30_000,
      );
      recovered.push(`${n} ${ms.toFixed(0)} ms`);
    }
    // The restarted services work end to end: a new node claims a block, every agent routes to it, and its pod is
    // reachable from the first three nodes' pods.
    const added = JSON.parse(await weft('cluster', 'node', 'add', '--json')) as NodeState;
    const pd = JSON.parse(
      await weft('cluster', 'pod', 'add', added.name, 'pd', '--namespace', 'e2e', '--json'),
    ) as PodState;
    for (const from of [pods.pa!, pods.pb!, pods.pc!])
      assert.ok(await pings(from, pd.addresses[0]!), `${from.name} reaches the new node's pod`);
    const r = await stream.stop();
    t.diagnostic(
      `control plane answering again ${upMs.toFixed(0)} ms after the restart began; agents following it: ${recovered.join(', ')}`,
    );
    t.diagnostic(`stream across the restart: ${r.ms} ms, longest silence ${r.maxGapMs} ms`);
    assertStreamHeld(r);
    assert.ok(isAlive(node('node1').agentPid) && isAlive(node('node3').agentPid), 'no agent was restarted');
  });

  test('the control plane down for a while (SIGKILL of its namespace, then a clean stop): kernels untouched, pods keep talking, ADD fails "try again later", DEL succeeds and its release is taken once the control plane is back', async (t) => {
    const OUTAGE_MS = 8000;
    const names = readState(stateDir).nodes.map((n) => n.name);
    const rows: string[] = [];
    for (const signal of ['SIGKILL', 'SIGTERM'] as const) {
      // A pod on node2 that is deleted during the outage.
      const pe = JSON.parse(
        await weft(
          'cluster',
          'pod',
          'add',
          'node2',
          `pe-${signal.slice(3).toLowerCase()}`,
          '--namespace',
          'e2e',
          '--json',
        ),
      ) as PodState;
      const peVeth = hostIfnameFor(pe.containerId, 'eth0');
      for (const n of names) await waitForSync(node(n));
      const revisions = new Map<string, number>();
      const changes = new Map<string, string>();
      for (const n of names) {
        const m = await metrics(node(n));
        revisions.set(n, m.get('weft_agent_revision_applied') ?? 0);
        changes.set(n, kernelChanges(m, { policy: n !== 'node2' }));
      }
      const monitors = new Map(names.map((n) => [n, monitor(node(n).netns)]));
      await sleep(200);
      const before = new Map(await Promise.all(names.map(async (n) => [n, await kernelState(node(n).netns)] as const)));
      // Traffic throughout: a TCP echo stream node1 → node3 (VXLAN), pings node2 → node1 (direct).
      const stream = await startEchoStream(pods.pa!, pods.pb!, 60_000);
      const ping = startPingLoop(pods.pc!, pods.pa!.addresses[0]!, { maxMs: 60_000, children });
      await sleep(500);

      const t0 = performance.now();
      await stopControlPlane(stateDir, signal);
      const stoppedMs = performance.now() - t0;
      assert.ok(!isAlive(readState(stateDir).controlPlane.pid));

      // ADD now: refused with CNI code 11 and a message naming IPAM, well within the plugin's own deadline; nothing left.
      const n2 = node('node2');
      const addId = `outage-${signal.toLowerCase()}-${state!.prefix}`;
      const addNs = `${state!.prefix}-pod-${addId}`;
      await sh('ip', 'netns', 'add', addNs);
      const a0 = performance.now();
      const add = await runCni(
        n2,
        {
          CNI_COMMAND: 'ADD',
          CNI_CONTAINERID: addId,
          CNI_NETNS: `/var/run/netns/${addNs}`,
          CNI_IFNAME: 'eth0',
          CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=e2e;K8S_POD_NAME=outage',
        },
        networkConfig(n2),
      ).finally(() => sh('ip', 'netns', 'del', addNs).catch(() => ''));
      const addMs = performance.now() - a0;
      assert.notEqual(add.exitCode, 0, 'ADD fails while IPAM is down');
      const addErr = JSON.parse(add.stdout) as { code: number; msg: string };
      assert.equal(addErr.code, 11, `CNI "try again later": ${add.stdout}`);
      assert.match(addErr.msg, /IPAM at .* is unavailable now .*; try again later$/);
      assert.ok(addMs < 15_000, `ADD answered in ${addMs.toFixed(0)} ms`);
      await assert.rejects(
        sh('ip', '-n', n2.netns, 'link', 'show', hostIfnameFor(addId, 'eth0')),
        'the failed ADD left no interface',
      );
      // DEL now: succeeds; the interface is gone, the release waits on the agent.
      const d0 = performance.now();
      const del = await runCni(
        n2,
        { CNI_COMMAND: 'DEL', CNI_CONTAINERID: pe.containerId, CNI_NETNS: pe.netns, CNI_IFNAME: 'eth0' },
        networkConfig(n2),
      );
      const delMs = performance.now() - d0;
      assert.equal(del.exitCode, 0, `DEL during the outage: ${del.stdout} ${del.stderr}`);
      await assert.rejects(sh('ip', '-n', n2.netns, 'link', 'show', peVeth), "pe's interface is gone");
      assert.equal((await metrics(n2)).get('weft_agent_pending_releases'), 1, "node2 holds pe's release");

      const left = OUTAGE_MS - (performance.now() - t0);
      if (left > 0) await sleep(left);
      const during = new Map(await Promise.all(names.map(async (n) => [n, await kernelState(node(n).netns)] as const)));
      const outageMs = performance.now() - t0;
      const s0 = performance.now();
      await startStoppedControlPlane(stateDir);
      const startMs = performance.now() - s0;
      const resync: string[] = [];
      for (const n of names) {
        const ms = await until(
          `${n}'s agent to follow the control plane`,
          async () => {
            const m = await metrics(node(n)).catch(() => null);
            return (
              !!m &&
              m.get('weft_agent_synced') === 1 &&
              (m.get('weft_agent_revision_applied') ?? 0) >= revisions.get(n)! &&
              (m.get('weft_agent_pending_releases') ?? 0) === 0
            );
          },
          30_000,
        );
        resync.push(`${n} ${ms.toFixed(0)} ms`);
      }
      // The released address is free in IPAM; the failed ADD holds nothing.
      const held = await allocations();
      assert.ok(
        !held.some((a) => a.address === pe.addresses[0] || a.handle === `${pe.containerId}/eth0`),
        `pe's address ${pe.addresses[0]} was released once IPAM was back`,
      );
      await eventually(
        'the failed ADD holds no address',
        async () => !(await allocations()).some((a) => a.handle === `${addId}/eth0`),
        20_000,
      );
      await sleep(1000); // a pass or two after the resync, had anything been rewritten
      const after = new Map(await Promise.all(names.map(async (n) => [n, await kernelState(node(n).netns)] as const)));
      const r = await stream.stop();
      const p = await ping.stop();
      const lines = new Map(
        await Promise.all([...monitors].map(async ([n, m]) => [n, weftLines(await m.stop())] as const)),
      );
      rows.push(
        `${signal}: stopped in ${stoppedMs.toFixed(0)} ms, down ${outageMs.toFixed(0)} ms, start ${startMs.toFixed(0)} ms; ADD refused in ${addMs.toFixed(0)} ms, DEL answered in ${delMs.toFixed(0)} ms; agents in sync: ${resync.join(', ')}; TCP stream ${r.ms} ms, longest silence ${r.maxGapMs} ms; pings ${p.received}/${p.sent}, longest gap ${p.longestGapMs} ms`,
      );

      for (const n of names) {
        const [b, d, a] = [before.get(n)!, during.get(n)!, after.get(n)!];
        // On node2 the deleted pod's host route is gone with its interface, as DEL should do.
        const overlayWas = b.overlay
          .split('\n')
          .filter((l) => !l.includes(`dev ${peVeth} `))
          .join('\n');
        if (lines.get(n)!.length > 0) {
          // For whoever chases it: what the agent and the control plane said around the change.
          for (const l of readFileSync(agentLog(node(n)), 'utf8')
            .split('\n')
            .slice(-80))
            if (!l.includes('UNAVAILABLE')) t.diagnostic(`${n}'s agent: ${l.slice(0, 500)}`);
          for (const l of readFileSync(path.join(stateDir, 'cp', 'control-plane.log'), 'utf8')
            .split('\n')
            .slice(-150))
            if (/lease|sweep|resum|withdr|snapshot/i.test(l)) t.diagnostic(`control plane: ${l.slice(0, 500)}`);
        }
        assert.deepEqual(
          lines.get(n),
          [],
          `${n}: ip monitor saw no change to Weft's routes, neighbours or FDB entries`,
        );
        assert.equal(
          d.overlay,
          overlayWas,
          `${n}: routes, neighbours, FDB and device byte-identical during the outage`,
        );
        assert.equal(a.overlay, overlayWas, `${n}: and after the control plane is back`);
        assert.equal(a.ipsets, b.ipsets, `${n}: ipsets unchanged`);
        const m = await metrics(node(n));
        // node2 writes policy once: the deleted pod's rules go.
        assert.equal(
          kernelChanges(m, { policy: n !== 'node2' }),
          changes.get(n),
          `${n}: the agent wrote no entry${n === 'node2' ? " (but the deleted pod's policy, veth and host route)" : ''}`,
        );
        if (n !== 'node2') {
          assert.equal(a.iptables, b.iptables, `${n}: iptables byte-identical`);
          continue;
        }
        // node2: only the deleted pod's rules are gone; nothing else removed, nothing added.
        const [bl, al] = [b.iptables.split('\n'), a.iptables.split('\n')];
        assert.deepEqual(
          al.filter((l) => !bl.includes(l)),
          [],
          'node2: no rule added',
        );
        assert.deepEqual(
          bl.filter((l) => !al.includes(l) && !l.includes(peVeth)),
          [],
          `node2: only ${peVeth}'s rules removed`,
        );
      }
      assertStreamHeld(r);
      assert.ok(p.received >= p.sent - 2, `pings answered throughout: ${p.received}/${p.sent}`);
      assert.ok(p.longestGapMs < 1500, `no ping gap over 1.5 s (longest ${p.longestGapMs} ms)`);
      // The pod is forgotten by the cluster (a second DEL: idempotent, the policy service told).
      await weft('cluster', 'pod', 'del', `e2e/${pe.name}`);
    }
    for (const row of rows) t.diagnostic(row);
    // Attaches work again: a new pod on node2 is reachable from node1's.
    const pf = JSON.parse(
      await weft('cluster', 'pod', 'add', 'node2', 'pf', '--namespace', 'e2e', '--json'),
    ) as PodState;
    assert.ok(await pings(pods.pa!, pf.addresses[0]!), "node1's pod reaches the pod attached after the outage");
  });

  test('a restarted agent adopts what it finds: no entry deleted or re-added, kernel state byte-identical, no kernel write', async (t) => {
    const n2 = node('node2');
    const mon = monitor(n2.netns);
    await sleep(200);
    const before = await overlay(n2.netns);
    const t0 = performance.now();
    await restartAgent(stateDir, 'node2');
    const stoppedMs = performance.now() - t0;
    const syncMs = await waitForSync(n2);
    const m = await metrics(n2);
    await sleep(300); // the confirming pass after the first one, had there been any write
    const after = await overlay(n2.netns);
    const lines = await mon.stop();
    t.diagnostic(
      `node2: graceful stop (SIGTERM) took ${stoppedMs.toFixed(0)} ms; the new agent was in sync ${syncMs.toFixed(0)} ms after it started`,
    );
    assert.deepEqual(weftLines(lines), [], "ip monitor saw no change to Weft's entries");
    assert.ok(!lines.some((l) => l.startsWith('Deleted') && l.includes(VXLAN)), 'no Deleted line on the VXLAN device');
    assert.equal(after.text, before.text, 'kernel state byte-identical across the restart');
    assert.equal(total(m, 'weft_agent_kernel_changes_total'), 0, 'the restarted agent wrote nothing');
    assert.ok(
      (m.get('weft_agent_reconcile_passes_total{result="unchanged"}') ?? 0) >= 1,
      'its first pass found nothing to do',
    );
  });

  test("IPv6 blocks: a node's IPv6 block reaches the other nodes through VXLAN over the IPv4 underlay, the pool is masqueraded, and a hand-deleted IPv6 route or neighbour comes back", async (t) => {
    const ipam = createClient(IpamServiceService, controlPlaneTarget(readState(stateDir)), {
      security: clusterAdminSecurity(readState(stateDir)),
    });
    const [n1, n2, n3] = [node('node1'), node('node2'), node('node3')];
    const routes6 = async (ns: string) =>
      (await json(sh('ip', '-n', ns, '-6', '-j', 'route', 'show', 'table', 'main', 'proto', '87', 'dev', VXLAN))) as {
        dst: string;
        gateway?: string;
        flags?: string[];
      }[];
    const neighbours6 = async (ns: string) =>
      (await json(sh('ip', '-n', ns, '-6', '-j', 'neigh', 'show', 'dev', VXLAN, 'nud', 'permanent'))) as {
        dst: string;
        lladdr: string;
      }[];
    try {
      await ipam.createPool(
        {
          name: 'e2e-v6',
          cidr: 'fd00:10:244::/56',
          blockPrefixLength: 120,
          disabled: false,
          nodeSelector: '',
          namespaceSelector: '',
          allowedUses: [],
          maxBlocksPerNode: 0,
          routingDomain: '',
        },
        { timeoutMs: 10_000 },
      );
      const t0 = performance.now();
      const a = await ipam.allocate(
        {
          handle: 'e2e-v6/eth0',
          node: 'node2',
          pool: 'e2e-v6',
          families: [IpFamily.IP_FAMILY_IPV6],
          addresses: [],
          podNamespace: 'e2e',
          podName: 'v6',
          containerId: 'e2e-v6',
        },
        { timeoutMs: 10_000 },
      );
      const address = a.allocation!.address;
      const block = `${address.replace(/:[0-9a-f]*$/, ':')}`;
      // node1 reaches node2 directly for IPv4 (one subnet) yet gets node2's IPv6 block through VXLAN; node3 too.
      for (const n of [n1, n3]) {
        const ms = await until(`${n.name} to route node2's IPv6 block`, async () =>
          (await routes6(n.netns)).some((r) => r.dst.startsWith(block) && r.dst.endsWith('/120')),
        );
        t.diagnostic(
          `${n.name}: node2's IPv6 block routed ${(performance.now() - t0).toFixed(0)} ms after Allocate was sent (${ms.toFixed(0)} ms of polling)`,
        );
        const [r] = (await routes6(n.netns)).filter((x) => x.dst.endsWith('/120'));
        assert.ok(r!.flags?.includes('onlink'), 'an onlink route');
        const [nb] = (await neighbours6(n.netns)).filter((x) => x.dst === r!.gateway);
        assert.equal(nb?.lladdr, vtepMacFor(n2.address), "its next hop resolves to node2's VTEP MAC, permanently");
      }
      assert.equal((await routes6(n2.netns)).length, 0, 'node2 routes its own block nowhere');
      // The IPv6 pool is masqueraded like an IPv4 one, in ip6tables' nat table (pools are polled every resync).
      for (const n of [n1, n2, n3]) {
        await until(
          `${n.name}'s IPv6 masquerade`,
          async () =>
            (await sh('ip', 'netns', 'exec', n.netns, 'ip6tables-save', '-t', 'nat')).includes(
              '-A WEFT-POSTROUTING -s fd00:10:244::/56 -j MASQUERADE',
            ),
          15_000,
        );
      }

      // Drift: the IPv6 route and the IPv6 neighbour deleted by hand come back (kernel events, not the resync).
      const [r] = (await routes6(n1.netns)).filter((x) => x.dst.endsWith('/120'));
      let t1 = performance.now();
      await sh('ip', '-n', n1.netns, '-6', 'route', 'del', r!.dst, 'dev', VXLAN);
      await until('the IPv6 route back', async () => (await routes6(n1.netns)).some((x) => x.dst === r!.dst));
      const routeMs = performance.now() - t1;
      t1 = performance.now();
      await sh('ip', '-n', n1.netns, '-6', 'neigh', 'del', r!.gateway!, 'dev', VXLAN);
      await until('the IPv6 neighbour back', async () =>
        (await neighbours6(n1.netns)).some((x) => x.dst === r!.gateway),
      );
      const neighMs = performance.now() - t1;
      t.diagnostic(`IPv6 route restored in ${routeMs.toFixed(0)} ms, IPv6 neighbour in ${neighMs.toFixed(0)} ms`);
      assert.ok(routeMs < REPAIR_BOUND_MS && neighMs < REPAIR_BOUND_MS, `within ${REPAIR_BOUND_MS} ms`);
    } finally {
      await ipam.release({ handle: 'e2e-v6/eth0' }, { timeoutMs: 10_000 }).catch(() => {});
      ipam.close();
    }
  });

  test("a node deregistered while another node's agent is down: the restarted agent removes its stale entries, only once it holds its snapshot", async (t) => {
    const [n1, n2, n3] = [node('node1'), node('node2'), node('node3')];
    await stopAgent(stateDir, 'node1', 'SIGKILL');
    const before = await overlay(n1.netns);
    const stale = entriesFor(before, n3);
    const kept = entriesFor(before, n2);
    assert.ok(
      stale.routes.length === 1 && stale.neighbours.length === 1 && stale.fdb.length === 1,
      "node1 holds node3's entries",
    );
    const staleBlock = stale.routes[0]!.dst;
    const gateway = stale.neighbours[0]!.dst;
    /** How many of node3's entries a node still holds (looked up by block, gateway and MAC, each on its own). */
    const staleLeft = async (ns: string) => {
      const o = await overlay(ns);
      return (
        o.routes.filter((r) => r.dst === staleBlock).length +
        o.neighbours.filter((x) => x.dst === gateway).length +
        o.fdb.filter((f) => f.mac === stale.mac).length
      );
    };

    // An operator removing node3 for good stops its agent first (a running agent registers its node again).
    await stopAgent(stateDir, 'node3', 'SIGKILL');
    const routes = createClient(RoutesServiceService, controlPlaneTarget(readState(stateDir)), {
      security: clusterAdminSecurity(readState(stateDir)),
    });
    try {
      const res = await routes.deregisterNode({ name: 'node3' }, { timeoutMs: 10_000 });
      assert.equal(res.deregistered, true);
    } finally {
      routes.close();
    }
    // A running agent withdraws at once: that is what node1's agent missed.
    const withdrawMs = await until('node2 to withdraw node3', async () => (await staleLeft(n2.netns)) === 0);
    t.diagnostic(
      `node2 (agent running) withdrew node3's entries ${withdrawMs.toFixed(0)} ms after DeregisterNode returned`,
    );

    // node1's agent starts cut off from the control plane: without its snapshot it must not remove anything.
    const mon = monitor(n1.netns);
    await sh('ip', '-n', n1.netns, 'route', 'add', 'blackhole', `${CONTROL_PLANE_ADDRESS}/32`);
    startAgent(stateDir, 'node1');
    const started = performance.now();
    // Its metrics come up before it registers; it keeps trying to reach the control plane for at least 2.5 s.
    let cutOff: Map<string, number> | null = null;
    while (!cutOff) {
      cutOff = await metrics(n1).catch(() => null);
      if (!cutOff && performance.now() - started > 20_000) throw new Error("node1's agent serves no metrics");
      if (!cutOff) await sleep(100);
    }
    await sleep(Math.max(0, 2500 - (performance.now() - started)));
    assert.ok(isAlive(node('node1').agentPid), 'the agent runs');
    cutOff = await metrics(n1);
    assert.equal(cutOff.get('weft_agent_synced'), 0, 'the agent has no snapshot yet');
    const withoutBlackhole = (text: string) =>
      text
        .split('\n')
        .filter((l) => !l.startsWith('blackhole '))
        .join('\n');
    assert.equal(
      withoutBlackhole((await overlay(n1.netns)).text),
      before.text,
      'without its snapshot the agent removed nothing (the stale entries stay)',
    );

    await sh('ip', '-n', n1.netns, 'route', 'del', 'blackhole', `${CONTROL_PLANE_ADDRESS}/32`);
    const reachable = performance.now();
    const syncMs = await waitForSync(n1, 30_000);
    await until("node1 to remove node3's entries", async () => (await staleLeft(n1.netns)) === 0);
    t.diagnostic(
      `node1: in sync ${syncMs.toFixed(0)} ms and stale entries gone ${(performance.now() - reachable).toFixed(0)} ms after the control plane became reachable (gRPC reconnect backoff included)`,
    );
    const after = await overlay(n1.netns);
    assert.deepEqual(entriesFor(after, n2), kept, "node2's entries on node1 are untouched");
    assert.deepEqual(
      after.direct,
      before.direct,
      "node1's direct routes (to node2, and to node4 when an earlier test added it) are untouched",
    );
    assert.equal(after.direct.filter((r) => r.gateway === n2.address).length, 1, "node1 routes node2's block directly");
    const lines = weftLines(await mon.stop());
    assert.ok(
      lines.every((l) => l.includes(gateway) || l.includes(stale.mac) || l.includes(n3.address)),
      `only node3's entries changed:\n${lines.join('\n')}`,
    );
    const deleted = lines.filter((l) => l.startsWith('Deleted'));
    const routeAt = deleted.findIndex((l) => l.includes(staleBlock));
    const fdbAt = deleted.findIndex((l) => l.includes(n3.address) && l.includes(stale.mac));
    const neighAt = deleted.findIndex((l) => l.startsWith(`Deleted ${gateway} `));
    assert.ok(
      routeAt >= 0 && fdbAt >= 0 && neighAt >= 0,
      `route, FDB and neighbour entries deleted:\n${lines.join('\n')}`,
    );
    assert.ok(routeAt < fdbAt && fdbAt < neighAt, `routes first, then FDB, then neighbours:\n${deleted.join('\n')}`);
    assert.ok(await pings(pods.pa!, pods.pc!.addresses[0]!), "node1 still reaches node2's pods");
  });
});
