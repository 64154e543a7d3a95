import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import {
  readState,
  runCni,
  networkConfig,
  isAlive,
  cniDirs,
  agentLog,
  type ClusterState,
  type NodeState,
  type PodState,
} from '../cli/cluster/cluster.js';
import { hostIfnameFor } from '../node-dataplane/kernel/pod-network.js';
import { vtepMacFor } from '../node-dataplane/kernel/vxlan-device.js';
import { fabricNetns } from '../cli/cluster/topology.js';
import { createChainRunner, type NetworkConfigList } from './support/cni-chain.js';
import { bin } from './support/processes.js';
import { takeDownLocalCluster } from './support/local-cluster.js';
import { pings } from './support/pod-probes.js';
import { privilegedOrSkip } from './support/privileges.js';

/**
 * The whole system on the real kernel: a local cluster of three nodes (two on 192.0.2.0/24, one on
 * 198.51.100.0/24), the control plane in its own namespace, one agent per node, pods attached by the real weft-cni.
 */
const run = promisify(execFile);
const opts = privilegedOrSkip();
const stateDir = mkdtempSync(path.join(tmpdir(), 'weft-e2e-'));
const servers: ChildProcess[] = [];
let state: ClusterState | null = null;

async function weft(...args: string[]): Promise<string> {
  const { stdout } = await run(bin.weft, [...args, '--state-dir', stateDir], { timeout: 120_000 });
  return stdout;
}

const podNs = (p: PodState) => path.basename(p.netns);

/** A TCP server in the pod that answers every connection with the pod's name. */
function serveTcp(p: PodState): void {
  const child = spawn(
    'ip',
    [
      'netns',
      'exec',
      podNs(p),
      process.execPath,
      '-e',
      `require('net').createServer(s => s.end(${JSON.stringify(p.name)})).listen(8080, '0.0.0.0')`,
    ],
    { stdio: 'ignore' },
  );
  servers.push(child);
}

/** A TCP server in a namespace that answers every connection with the address the connection came from. */
function serveSourceAddress(netns: string, port: number): void {
  servers.push(
    spawn(
      'ip',
      [
        'netns',
        'exec',
        netns,
        process.execPath,
        '-e',
        `require('net').createServer(s => s.end(s.remoteAddress.replace(/^::ffff:/, ''))).listen(${port}, '0.0.0.0')`,
      ],
      { stdio: 'ignore' },
    ),
  );
}

/** From one pod, opens a TCP connection to each target and returns what each answered. */
async function tcpFrom(from: PodState, targets: string[], port = 8080): Promise<Record<string, string>> {
  const script = `
    const net = require('net');
    const targets = ${JSON.stringify(targets)};
    Promise.all(targets.map(t => new Promise(res => {
      const s = net.connect({ host: t, port: ${port}, timeout: 3000 });
      let data = '';
      s.on('data', d => data += d); s.on('end', () => res([t, data]));
      s.on('timeout', () => { s.destroy(); res([t, 'timeout']); }); s.on('error', e => res([t, e.code]));
    }))).then(r => console.log(JSON.stringify(Object.fromEntries(r))));`;
  for (let attempt = 0; ; attempt++) {
    const { stdout } = await run('ip', ['netns', 'exec', podNs(from), process.execPath, '-e', script], {
      timeout: 20_000,
    });
    const res = JSON.parse(stdout) as Record<string, string>;
    const failed = Object.values(res).filter((v) => v === 'timeout' || /^E[A-Z]+$/.test(v));
    if (failed.length === 0 || attempt >= 3) return res;
    await new Promise((r) => setTimeout(r, 500));
  }
}

async function allocations(): Promise<{ handle: string; address: string; node: string; podName: string }[]> {
  return JSON.parse(await weft('ipam', 'allocations', '--json'));
}

async function addPod(node: string, pod: string): Promise<PodState> {
  return JSON.parse(await weft('cluster', 'pod', 'add', node, pod, '--namespace', 'e2e', '--json')) as PodState;
}

async function expectFullMesh(pods: PodState[]): Promise<void> {
  const failures: string[] = [];
  await Promise.all(
    pods.map(async (from) => {
      for (const to of pods)
        if (to !== from && !(await pings(from, to.addresses[0]!)))
          failures.push(`${from.name} -> ${to.name} (${to.addresses[0]})`);
    }),
  );
  assert.deepEqual(failures, [], 'every pod pings every other pod');
  for (const p of pods)
    if (!servers.some((s) => (s as unknown as { pod?: string }).pod === p.name)) {
      serveTcp(p);
      (servers.at(-1) as unknown as { pod: string }).pod = p.name;
    }
  await new Promise((r) => setTimeout(r, 300));
  const tcpFailures: string[] = [];
  await Promise.all(
    pods.map(async (from) => {
      const others = pods.filter((p) => p !== from);
      const res = await tcpFrom(
        from,
        others.map((o) => o.addresses[0]!),
      );
      for (const o of others)
        if (res[o.addresses[0]!] !== o.name) tcpFailures.push(`${from.name} -> ${o.name}: ${res[o.addresses[0]!]}`);
    }),
  );
  assert.deepEqual(tcpFailures, [], 'every pod opens a TCP connection to every other pod');
}

describe('local cluster end to end', opts, () => {
  const pods: PodState[] = [];
  let xtablesLockExisted = true;

  before(async () => {
    xtablesLockExisted = existsSync('/run/xtables.lock');
    await weft('cluster', 'up', '--nodes', '3', '--json');
    state = readState(stateDir);
  });

  after(async () => {
    for (const s of servers) s.kill('SIGKILL');
    // Nothing is left behind: no namespace with the run's prefix, no agent or control plane process.
    await takeDownLocalCluster({ weft, stateDir, state, xtablesLockExisted });
  });

  test('three nodes on two underlay subnets (two on one, one on the other)', () => {
    assert.deepEqual(
      state!.nodes.map((n) => n.address),
      ['192.0.2.11', '192.0.2.12', '198.51.100.13'],
    );
  });

  test('six pods on three nodes all reach each other by ping and TCP, each address recorded under its handle', async () => {
    for (const node of ['node1', 'node2', 'node3'])
      for (const i of [1, 2]) pods.push(await addPod(node, `${node.replace('node', 'p')}-${i}`));
    const addrs = pods.map((p) => p.addresses[0]!);
    assert.equal(new Set(addrs).size, 6, `no two pods share an address: ${addrs.join(', ')}`);
    const recorded = await allocations();
    for (const p of pods) {
      const a = recorded.find((r) => r.handle === `${p.containerId}/eth0`);
      assert.ok(a, `pod ${p.name} has an allocation under its handle`);
      assert.equal(a.address, p.addresses[0]);
      assert.equal(a.node, p.node);
      assert.equal(a.podName, p.name);
    }
    await expectFullMesh(pods);
  });

  test("each node's agent installed weft and 10-weft.conflist in its runtime's CNI folders, and that conflist attaches a pod as libcni runs it", async () => {
    const st = readState(stateDir);
    for (const node of st.nodes) {
      const dirs = cniDirs(node);
      const plugin = path.join(dirs.bin, 'weft');
      assert.equal(statSync(plugin).mode & 0o7777, 0o755, `${plugin} is executable`);
      assert.ok(readFileSync(plugin).equals(readFileSync(bin.cni)), `${plugin} is the built plugin`);
      assert.equal(statSync(path.join(dirs.conf, '10-weft.conflist')).mode & 0o7777, 0o644);
      assert.deepEqual(readdirSync(dirs.conf), ['10-weft.conflist'], 'no temporary file left');
    }
    const node = st.nodes[0]!;
    const list = JSON.parse(
      readFileSync(path.join(cniDirs(node).conf, '10-weft.conflist'), 'utf8'),
    ) as NetworkConfigList;
    assert.deepEqual(
      list.plugins.map((p) => p.type),
      ['weft', 'portmap'],
    );
    assert.equal(list.plugins[0]!.agentSocket, node.socket);
    const netnsName = `${st.prefix}-pod-conflist`;
    await run('ip', ['netns', 'add', netnsName]);
    const rt = {
      containerId: `conflist-${st.prefix}`,
      netns: `/var/run/netns/${netnsName}`,
      ifname: 'eth0',
      args: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=e2e;K8S_POD_NAME=conflist',
    };
    const runner = createChainRunner({ list, netns: node.netns, cniPath: [cniDirs(node).bin, '/usr/lib/cni'] });
    try {
      const result = await runner.add({
        ...rt,
        capabilityArgs: { portMappings: [{ hostPort: 18082, containerPort: 8080, protocol: 'tcp' }] },
      });
      const address = (result.ips as { address: string }[])[0]!.address.split('/')[0]!;
      assert.equal((await allocations()).find((a) => a.handle === `${rt.containerId}/eth0`)?.address, address);
      assert.match(
        (await run('ip', ['netns', 'exec', node.netns, 'iptables', '-w', '5', '-t', 'nat', '-S'])).stdout,
        new RegExp(`--dport 18082 .*--to-destination ${address.replace(/\./g, '\\.')}:8080`),
      );
      await runner.del(rt, result);
      assert.equal(
        (await allocations()).find((a) => a.handle === `${rt.containerId}/eth0`),
        undefined,
      );
    } finally {
      await run('ip', ['netns', 'del', netnsName]).catch(() => {});
    }
  });

  test('node1 and node2 (one underlay subnet) route directly to each other, through VXLAN to node3; weft routes shows the mode; a direct route deleted by hand comes back', async (t) => {
    const [n1, n2, n3] = ['node1', 'node2', 'node3'].map((n) =>
      readState(stateDir).nodes.find((x) => x.name === n)!,
    ) as [NodeState, NodeState, NodeState];
    type Report = {
      peers: { node: string; mode: string }[];
      desired: { kind: string; cidr?: string; gateway?: string; mode?: string; mac?: string }[];
      missing: unknown[];
      stale: unknown[];
    };
    const report = JSON.parse(await weft('routes', 'node1', '--json')) as Report;
    assert.deepEqual(
      report.peers.map((p) => `${p.node}:${p.mode}`),
      ['node2:direct', 'node3:vxlan'],
    );
    assert.deepEqual([report.missing, report.stale], [[], []], "node1's kernel holds exactly what it should");
    const direct = report.desired.filter((e) => e.kind === 'route' && e.mode === 'direct');
    assert.ok(
      direct.length >= 1 && direct.every((e) => e.gateway === n2.address),
      "node2's blocks via node2's underlay address",
    );
    assert.ok(
      !report.desired.some((e) => e.kind !== 'route' && e.mac === vtepMacFor(n2.address)),
      'no FDB or neighbour entry for node2',
    );
    assert.ok(
      report.desired.some((e) => e.kind === 'route' && e.mode === 'vxlan'),
      'node3 through VXLAN',
    );
    const text = await weft('routes', 'node1');
    assert.match(
      text,
      new RegExp(`direct +route ${direct[0]!.cidr!.replace(/\./g, '\\.')} via ${n2.address.replace(/\./g, '\\.')}`),
    );
    assert.match(text, /vxlan +route 10\.244\.\S+ via \S+ onlink/);
    assert.match(text, /routing mode auto, underlay 192\.0\.2\.11\/24/);

    // The kernels, read independently: direct routes on eth0 with Weft's protocol, no VXLAN entries between node1 and node2.
    const routes = async (ns: string, dev: string) =>
      JSON.parse(
        (await run('ip', ['-n', ns, '-j', 'route', 'show', 'table', 'main', 'proto', '87', 'dev', dev])).stdout || '[]',
      ) as { dst: string; gateway?: string }[];
    assert.deepEqual(
      (await routes(n1.netns, 'eth0')).map((r) => `${r.dst} via ${r.gateway}`),
      direct.map((e) => `${e.cidr} via ${n2.address}`),
    );
    assert.ok(
      (await routes(n2.netns, 'eth0')).every((r) => r.gateway === n1.address) &&
        (await routes(n2.netns, 'eth0')).length >= 1,
      "node2 routes node1's blocks directly",
    );
    const fdb1 = (await run('bridge', ['-n', n1.netns, 'fdb', 'show', 'dev', 'weft.vxlan'])).stdout;
    assert.ok(
      !fdb1.includes(vtepMacFor(n2.address)) && fdb1.includes(vtepMacFor(n3.address)),
      `node1's FDB holds node3, not node2:\n${fdb1}`,
    );
    assert.equal((await routes(n3.netns, 'eth0')).length, 0, 'node3 (other subnet) routes nothing directly');
    assert.equal((await routes(n3.netns, 'weft.vxlan')).length, 2, 'node3 reaches node1 and node2 through VXLAN');

    // Pods on node1 and node2 talk over the direct path (the full mesh above ran over it too).
    const [p1, p2] = [pods.find((p) => p.node === 'node1')!, pods.find((p) => p.node === 'node2')!];
    assert.ok(await pings(p1, p2.addresses[0]!), "node1's pod pings node2's pod");

    // A direct route deleted by hand is back within the bound, driven by the kernel event.
    const victim = direct[0]!.cidr!;
    const t0 = performance.now();
    await run('ip', ['-n', n1.netns, 'route', 'del', victim, 'via', n2.address, 'dev', 'eth0']);
    let back = false;
    while (!back && performance.now() - t0 < 5000) {
      back = (await routes(n1.netns, 'eth0')).some((r) => r.dst === victim && r.gateway === n2.address);
      if (!back) await new Promise((r) => setTimeout(r, 5));
    }
    const ms = performance.now() - t0;
    t.diagnostic(`direct route deleted by hand: restored in ${ms.toFixed(0)} ms`);
    assert.ok(back, 'the direct route is back');
    assert.ok(await pings(p1, p2.addresses[0]!), 'and carries traffic');
  });

  test("pods reaching beyond the pools leave with their node's underlay address; between pods the pod address stays", async () => {
    const st = readState(stateDir);
    const n = (name: string) => st.nodes.find((x) => x.name === name)!;
    const [p1, p2, p3] = ['node1', 'node2', 'node3'].map((name) => pods.find((p) => p.node === name)!) as [
      PodState,
      PodState,
      PodState,
    ];
    // A listener in the fabric namespace (the routers' addresses: outside every pool) and one in a pod on node2.
    serveSourceAddress(fabricNetns(st.prefix), 9100);
    serveSourceAddress(podNs(p2), 9101);
    await new Promise((r) => setTimeout(r, 500));
    const out1 = await tcpFrom(p1, ['192.0.2.1', '198.51.100.1'], 9100);
    assert.deepEqual(
      out1,
      { '192.0.2.1': n('node1').address, '198.51.100.1': n('node1').address },
      "node1's pod arrives from node1's underlay address, on either subnet",
    );
    const out3 = await tcpFrom(p3, ['198.51.100.1'], 9100);
    assert.deepEqual(out3, { '198.51.100.1': n('node3').address }, "node3's pod arrives from node3's underlay address");
    const direct = await tcpFrom(p1, [p2.addresses[0]!], 9101);
    const vxlan = await tcpFrom(p3, [p2.addresses[0]!], 9101);
    assert.deepEqual(
      [direct[p2.addresses[0]!], vxlan[p2.addresses[0]!]],
      [p1.addresses[0], p3.addresses[0]],
      "pod to pod (direct and VXLAN) keeps the pod's source address",
    );
    const nat = (await run('ip', ['netns', 'exec', n('node1').netns, 'iptables-save', '-t', 'nat'])).stdout;
    assert.match(nat, /^-A WEFT-POSTROUTING -s 10\.244\.0\.0\/16 -j MASQUERADE$/m);
    assert.equal(
      nat.split('\n').filter((l) => l.startsWith('-A POSTROUTING') && l.endsWith('-j WEFT-POSTROUTING')).length,
      1,
      "one jump to Weft's chain",
    );
  });

  test('a fourth node added later becomes reachable from the first three without restarting anything', async () => {
    const pidsBefore = readState(stateDir).nodes.map((n) => n.agentPid);
    const cpPid = readState(stateDir).controlPlane.pid;
    await weft('cluster', 'node', 'add');
    const p4 = await addPod('node4', 'p4-1');
    pods.push(p4);
    await expectFullMesh(pods);
    const after = readState(stateDir);
    assert.deepEqual(
      after.nodes.slice(0, 3).map((n) => n.agentPid),
      pidsBefore,
      'the first agents were not restarted',
    );
    assert.equal(after.controlPlane.pid, cpPid);
    for (const pid of [...pidsBefore, cpPid]) assert.ok(isAlive(pid));
  });

  test('weft nodes and weft routes show what each node should have and whether its kernel has it', async () => {
    const nodes = JSON.parse(await weft('nodes', '--json')) as {
      revision: number;
      nodes: { name: string; inRouteTable: boolean; agent: { synced: boolean; revision: number } | null }[];
    };
    assert.deepEqual(
      nodes.nodes.map((n) => n.name),
      ['node1', 'node2', 'node3', 'node4'],
    );
    for (const n of nodes.nodes) {
      assert.ok(n.inRouteTable, `${n.name} is in the route table`);
      assert.ok(n.agent?.synced, `${n.name}'s agent reports it is synced`);
    }
    const report = JSON.parse(await weft('routes', 'node1', '--json')) as {
      desired: unknown[];
      missing: unknown[];
      stale: unknown[];
    };
    // node2 and node4 share node1's subnet (one direct route each); node3 does not (a neighbour, an FDB entry and a route).
    assert.equal(
      report.desired.length,
      1 + 1 + 3,
      "a direct route to node2's and node4's blocks, the VXLAN entries for node3's",
    );
    assert.deepEqual([report.missing, report.stale], [[], []]);
    // With node3's agent stopped, a route deleted by hand shows as missing (exit 1); the restarted agent repairs it.
    const node3 = readState(stateDir).nodes.find((n) => n.name === 'node3')!;
    const victim = (
      JSON.parse(await weft('routes', 'node3', '--json')) as { desired: { kind: string; cidr?: string }[] }
    ).desired.find((e) => e.kind === 'route')!;
    await weft('cluster', 'agent', 'stop', 'node3');
    try {
      await run('ip', ['-n', node3.netns, 'route', 'del', victim.cidr!]);
      const drift = await run(bin.weft, ['routes', 'node3', '--json', '--state-dir', stateDir]).then(
        () => null,
        (e: { code: number; stdout: string }) => e,
      );
      assert.equal(drift?.code, 1);
      assert.deepEqual(
        (JSON.parse(drift!.stdout) as { missing: { cidr: string }[] }).missing.map((m) => m.cidr),
        [victim.cidr],
      );
    } finally {
      await weft('cluster', 'agent', 'start', 'node3');
    }
    const deadline = Date.now() + 30_000;
    let ok = false;
    while (!ok && Date.now() < deadline) {
      ok = await run(bin.weft, ['routes', 'node3', '--state-dir', stateDir]).then(
        () => true,
        () => false,
      );
      if (!ok) await new Promise((r) => setTimeout(r, 300));
    }
    assert.ok(ok, 'the restarted agent restored the route');
  });

  test('deleting a pod frees its address and removes its interface and host route; a second DEL succeeds', async () => {
    const victim = pods.find((p) => p.name === 'p2-2')!;
    const node = readState(stateDir).nodes.find((n) => n.name === victim.node)!;
    const hostIf = hostIfnameFor(victim.containerId, 'eth0');
    await run('ip', ['-n', node.netns, 'link', 'show', hostIf]);
    await weft('cluster', 'pod', 'del', `${victim.namespace}/${victim.name}`);
    assert.ok(
      !(await allocations()).some((a) => a.address === victim.addresses[0]),
      'the address is free in the database',
    );
    await assert.rejects(run('ip', ['-n', node.netns, 'link', 'show', hostIf]), 'the host interface is gone');
    const { stdout: r } = await run('ip', ['-n', node.netns, 'route', 'show', `${victim.addresses[0]}/32`]);
    assert.equal(r.trim(), '', 'the host route is gone');
    assert.ok(!existsSync(victim.netns));
    const again = await runCni(
      node,
      { CNI_COMMAND: 'DEL', CNI_CONTAINERID: victim.containerId, CNI_NETNS: victim.netns, CNI_IFNAME: 'eth0' },
      networkConfig(node),
    );
    assert.equal(again.exitCode, 0, `second DEL: ${again.stdout} ${again.stderr}`);
    assert.equal(again.stdout, '');
  });

  test('pods are NAMESPACE/NAME: the same name in two namespaces is two pods, each deleted by its own name', async () => {
    const x = JSON.parse(
      await weft('cluster', 'pod', 'add', 'node1', 'twin', '--namespace', 'nsx', '--json'),
    ) as PodState;
    const y = JSON.parse(
      await weft('cluster', 'pod', 'add', 'node2', 'twin', '--namespace', 'nsy', '--json'),
    ) as PodState;
    assert.deepEqual([x.namespace, y.namespace], ['nsx', 'nsy']);
    assert.notEqual(x.netns, y.netns);
    assert.ok(existsSync(x.netns) && existsSync(y.netns));
    assert.ok(await pings(x, y.addresses[0]!), 'nsx/twin reaches nsy/twin');
    await assert.rejects(
      weft('cluster', 'pod', 'add', 'node1', 'twin', '--namespace', 'nsx'),
      /pod nsx\/twin already exists/,
    );
    const listed = (JSON.parse(await weft('cluster', 'status', '--json')) as ClusterState).pods.map(
      (p) => `${p.namespace}/${p.name}`,
    );
    assert.ok(listed.includes('nsx/twin') && listed.includes('nsy/twin'), listed.join(', '));
    await assert.rejects(weft('cluster', 'pod', 'del', 'twin'), /no pod default\/twin/);
    await weft('cluster', 'pod', 'del', 'twin', '--namespace', 'nsy');
    assert.ok(!existsSync(y.netns) && existsSync(x.netns), 'only nsy/twin is gone');
    assert.ok(
      (await allocations()).some((a) => a.address === x.addresses[0]) &&
        !(await allocations()).some((a) => a.address === y.addresses[0]),
    );
    await weft('cluster', 'pod', 'del', 'nsx/twin');
    assert.ok(!existsSync(x.netns));
    assert.ok(!(await allocations()).some((a) => a.address === x.addresses[0]));
  });

  test('the real plugin on a real node: bad input gets a CNI error and changes nothing; DEL of an unknown container succeeds', async () => {
    const node = readState(stateDir).nodes[0]!;
    const before = await allocations();
    const env = { CNI_CONTAINERID: 'never-added', CNI_NETNS: '/var/run/netns/does-not-exist', CNI_IFNAME: 'eth0' };
    const unknown = await runCni(node, { ...env, CNI_COMMAND: 'FROB' }, networkConfig(node));
    assert.notEqual(unknown.exitCode, 0);
    assert.equal(JSON.parse(unknown.stdout).code, 4);
    const malformed = await runCni(node, { ...env, CNI_COMMAND: 'ADD' }, '{"cniVersion": "1.0.0", "name": ');
    assert.notEqual(malformed.exitCode, 0);
    assert.equal(JSON.parse(malformed.stdout).code, 6);
    const badNetns = await runCni(node, { ...env, CNI_COMMAND: 'ADD' }, networkConfig(node));
    assert.notEqual(badNetns.exitCode, 0);
    assert.match(JSON.parse(badNetns.stdout).msg, /does-not-exist/);
    const del = await runCni(node, { ...env, CNI_COMMAND: 'DEL' }, networkConfig(node));
    assert.equal(del.exitCode, 0, del.stdout);
    assert.deepEqual(await allocations(), before, 'no allocation was made or lost');
  });
  test('a node whose underlay address changes is followed: its agent rebuilds the VXLAN device on the new address and registers again, every other node follows, pods reach each other', async (t) => {
    const st = readState(stateDir);
    const n3 = st.nodes.find((n) => n.name === 'node3')!;
    const n1 = st.nodes.find((n) => n.name === 'node1')!;
    const old = n3.address;
    const next = old.replace(/\.\d+$/, '.63');
    const fdb = async (ns: string) =>
      JSON.parse((await run('bridge', ['-n', ns, '-j', 'fdb', 'show', 'dev', 'weft.vxlan'])).stdout || '[]') as {
        mac: string;
        dst?: string;
      }[];
    // Another program on node3 (kubelet, an ssh session) holds a TCP connection from the old address to the fabric:
    // the agent's move destroys its own connections of that address, not this one.
    servers.push(
      spawn(
        'ip',
        [
          'netns',
          'exec',
          fabricNetns(st.prefix),
          process.execPath,
          '-e',
          `require('net').createServer((s) => s.on('error', () => {})).listen(9102, '198.51.100.1')`,
        ],
        { stdio: 'ignore' },
      ),
    );
    await new Promise((r) => setTimeout(r, 300));
    const other = spawn('ip', [
      'netns',
      'exec',
      n3.netns,
      process.execPath,
      '-e',
      `
      const s = require('net').connect({ host: '198.51.100.1', port: 9102, localAddress: ${JSON.stringify(old)} });
      let error = ''; s.on('error', (e) => (error = e.code));
      s.on('connect', () => console.log('connected')); s.on('close', () => console.log('closed ' + error));`,
    ]);
    servers.push(other);
    let otherOut = '';
    other.stdout!.on('data', (d) => (otherOut += d));
    for (const t0 = performance.now(); !otherOut.includes('connected');) {
      assert.ok(performance.now() - t0 < 5000, `another program on node3 connects from ${old}: ${otherOut}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    // The new address first, then the old one removed (promoted, so the node keeps its default route meanwhile).
    await run('ip', ['netns', 'exec', n3.netns, 'sysctl', '-qw', 'net.ipv4.conf.eth0.promote_secondaries=1']);
    await run('ip', ['-n', n3.netns, 'addr', 'add', `${next}/24`, 'dev', 'eth0']);
    const t0 = performance.now();
    await run('ip', ['-n', n3.netns, 'addr', 'del', `${old}/24`, 'dev', 'eth0']);
    for (;;) {
      const entries = await fdb(n1.netns);
      if (
        entries.some((f) => f.mac === vtepMacFor(next) && f.dst === next) &&
        !entries.some((f) => f.mac === vtepMacFor(old))
      )
        break;
      assert.ok(
        performance.now() - t0 < 20_000,
        `node1's FDB follows node3 to ${next} within 20 s: ${JSON.stringify(entries)}`,
      );
      await new Promise((r) => setTimeout(r, 20));
    }
    const ms = performance.now() - t0;
    t.diagnostic(
      `node3 moved from ${old} to ${next}: node1's FDB followed ${ms.toFixed(0)} ms after the old address was removed`,
    );
    // node3's agent closed its own connections of the old address (before registering again, so before the FDB followed).
    const closed = readFileSync(agentLog(n3), 'utf8')
      .split('\n')
      .filter((l) => l.includes("closed the agent's connections from the old underlay address"))
      .map((l) => JSON.parse(l) as { closed: number });
    assert.ok(
      closed.length === 1 && closed[0]!.closed >= 1,
      `node3's agent destroyed its own connections from ${old}: ${JSON.stringify(closed)}`,
    );
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(
      !otherOut.includes('closed'),
      `another program's connection from ${old} is not destroyed by the agent: ${otherOut}`,
    );
    // node3 rebuilds its device before it registers the new address, so the device is there by now.
    const [link] = JSON.parse((await run('ip', ['-n', n3.netns, '-d', '-j', 'link', 'show', 'weft.vxlan'])).stdout) as {
      address: string;
      linkinfo: { info_data: { local: string } };
    }[];
    assert.deepEqual(
      [link!.linkinfo.info_data.local, link!.address],
      [next, vtepMacFor(next)],
      "node3's VXLAN device sends from the new address with the MAC derived from it",
    );
    const { nodes } = JSON.parse(await weft('nodes', '--json')) as {
      nodes: { name: string; underlayAddress: string }[];
    };
    assert.equal(nodes.find((n) => n.name === 'node3')?.underlayAddress, next, 'the route table holds the new address');
    const [p1, p3] = [pods.find((p) => p.node === 'node1')!, pods.find((p) => p.node === 'node3')!];
    assert.ok(await pings(p1, p3.addresses[0]!), "node1's pod reaches node3's pod");
    assert.ok(await pings(p3, p1.addresses[0]!), 'and back');
  });
});
