import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import {
  controlPlaneTarget,
  networkConfig,
  readState,
  runCni,
  type ClusterState,
  type PodState,
  clusterAdminSecurity,
} from '../cli/cluster/cluster.js';
import { createClient } from '../lib/grpc/client.js';
import { IpamServiceService, IpFamily } from '../gen/weft/ipam/v1/ipam.js';
import { bin } from './support/processes.js';
import { takeDownLocalCluster } from './support/local-cluster.js';
import { hostPort, listenTcp, tcpConnects } from './support/pod-probes.js';
import { privilegedOrSkip } from './support/privileges.js';

/**
 * Dual-stack pods on the local cluster (`weft cluster up --dual-stack`: an IPv4 and an IPv6 pool, agents with
 * WEFT_POD_FAMILIES=ipv4,ipv6), two nodes. What a user notices: each pod gets an IPv4 and an IPv6 address (IPAM
 * holds both under its handle); the real weft-cni prints both in every result version and CHECK verifies both; pods
 * on the two nodes reach each other over IPv6 (ping and TCP; IPv6 blocks travel through VXLAN on the IPv4
 * underlay); network policy holds for IPv6 as for IPv4: a default deny blocks both families, an allow rule opens
 * both, an ipBlock opens only its own family; DEL releases both addresses and removes everything.
 */
const run = promisify(execFile);
const opts = privilegedOrSkip();
const stateDir = mkdtempSync(path.join(tmpdir(), 'weft-dual-e2e-'));
const listeners: ChildProcess[] = [];
let state: ClusterState | null = null;
const BOUND_MS = 10_000;
const VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;

async function weft(...args: string[]): Promise<string> {
  const { stdout } = await run(bin.weft, [...args, '--state-dir', stateDir], { timeout: 120_000 });
  return stdout;
}
const podNs = (p: PodState) => path.basename(p.netns);
const v4 = (p: PodState) => p.addresses.find((a) => !a.includes(':'))!;
const v6 = (p: PodState) => p.addresses.find((a) => a.includes(':'))!;

/** Probes until every target shows the wanted verdict (true: open), within the bound; returns the ms it took. */
async function until(label: string, from: PodState, want: Record<string, boolean>): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    const got = await tcpConnects(from, Object.keys(want));
    const wrong = Object.entries(want)
      .filter(([t, open]) => (got[t] === 'open') !== open)
      .map(([t, open]) => `${t} ${open ? 'blocked' : 'open'} (${got[t]})`);
    if (wrong.length === 0) return performance.now() - t0;
    assert.ok(performance.now() - t0 < BOUND_MS, `${label}: after ${BOUND_MS} ms still ${wrong.join(', ')}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('dual-stack pods on the local cluster', opts, () => {
  let xtablesLockExisted = true;
  let a: PodState;
  let b: PodState;

  const applyPolicy = (name: string, namespace: string, spec: unknown) => {
    const file = path.join(stateDir, `${name}.json`);
    writeFileSync(
      file,
      JSON.stringify({
        apiVersion: 'networking.k8s.io/v1',
        kind: 'NetworkPolicy',
        metadata: { namespace, name },
        spec,
      }),
    );
    return weft('policy', 'apply', '-f', file);
  };

  before(async () => {
    xtablesLockExisted = existsSync('/run/xtables.lock');
    await weft('cluster', 'up', '--nodes', '2', '--dual-stack');
    state = readState(stateDir);
    await weft('cluster', 'ns', 'add', 'dx', '--labels', 'team=x');
    a = JSON.parse(
      await weft('cluster', 'pod', 'add', 'node1', 'da', '--namespace', 'dx', '--labels', 'app=a', '--json'),
    ) as PodState;
    b = JSON.parse(
      await weft('cluster', 'pod', 'add', 'node2', 'db', '--namespace', 'dx', '--labels', 'app=b', '--json'),
    ) as PodState;
    listeners.push(listenTcp(a), listenTcp(b));
  });

  after(async () => {
    for (const l of listeners) l.kill('SIGKILL');
    await takeDownLocalCluster({ weft, stateDir, state, xtablesLockExisted });
  });

  test('each pod gets an IPv4 and an IPv6 address, and IPAM holds both under its handle', async () => {
    for (const p of [a, b]) {
      assert.equal(p.addresses.length, 2, `${p.name}: ${p.addresses}`);
      assert.match(v4(p), /^10\.244\./);
      assert.match(v6(p), /^fd00:10:244:/);
      const inPod = (await run('ip', ['netns', 'exec', podNs(p), 'ip', '-6', 'addr', 'show', 'dev', 'eth0'])).stdout;
      assert.match(inPod, new RegExp(`inet6 ${v6(p)}/128 scope global`));
      assert.match(
        (await run('ip', ['netns', 'exec', podNs(p), 'ip', '-6', 'route', 'show', 'default'])).stdout,
        /^default via fe80::1 dev eth0/,
      );
    }
    const ipam = createClient(IpamServiceService, controlPlaneTarget(state!), {
      security: clusterAdminSecurity(state!),
    });
    try {
      const all = (
        await ipam.listAllocations({ pool: '', node: '', pageSize: 1000, pageToken: '' }, { timeoutMs: 10_000 })
      ).allocations;
      for (const p of [a, b]) {
        const held = all.filter((x) => x.handle === `${p.containerId}/eth0`);
        assert.deepEqual(
          held.map((x) => [x.family, x.address]).sort(),
          [
            [IpFamily.IP_FAMILY_IPV4, v4(p)],
            [IpFamily.IP_FAMILY_IPV6, v6(p)],
          ].sort(),
        );
      }
    } finally {
      ipam.close();
    }
  });

  test('pods on two nodes reach each other over IPv6: ping and TCP', async () => {
    const { stdout } = await run(
      'ip',
      ['netns', 'exec', podNs(a), 'ping', '-6', '-c', '3', '-i', '0.2', '-W', '2', v6(b)],
      { timeout: 15_000 },
    );
    assert.match(stdout, /3 received/);
    const ms = await until('TCP over both families, no policy', a, {
      [hostPort(v6(b), 80)]: true,
      [hostPort(v4(b), 80)]: true,
    });
    console.log(
      `# dual-stack: TCP over IPv6 and IPv4 from ${a.node} to ${b.node} open (${ms.toFixed(0)} ms of probing)`,
    );
  });

  test('network policy holds for IPv6: default deny blocks both families, an allow rule opens both, an ipBlock only its family', async () => {
    const node2 = state!.nodes.find((n) => n.name === 'node2')!;
    const ip6save = async () =>
      (await run('ip', ['netns', 'exec', node2.netns, 'ip6tables-save', '-t', 'filter'])).stdout;
    assert.match(
      await ip6save(),
      /-A FORWARD -m comment --comment "weft: network policy" -j WEFT-FORWARD/,
      "ip6tables FORWARD jumps to Weft's dispatch",
    );
    assert.match(
      await ip6save(),
      /-A WEFT-TO-POD -m comment --comment "weft fail closed: .*" -j DROP/,
      'and it fails closed',
    );

    // How long after the policy call returned node2's ip6tables rules changed (polled every 20 ms, the poll included).
    const before6 = await ip6save();
    await applyPolicy('deny-all', 'dx', { podSelector: {}, policyTypes: ['Ingress'] });
    const t0 = performance.now();
    while ((await ip6save()) === before6) {
      assert.ok(performance.now() - t0 < BOUND_MS, `node2's ip6tables rules unchanged after ${BOUND_MS} ms`);
      await new Promise((r) => setTimeout(r, 20));
    }
    console.log(
      `# dual-stack: node2's ip6tables rules changed ${(performance.now() - t0).toFixed(0)} ms after the default deny was applied`,
    );
    let ms = await until('default deny', a, {
      [hostPort(v6(b), 80)]: false,
      [hostPort(v4(b), 80)]: false,
      [hostPort(v6(b), 81)]: false,
    });
    console.log(
      `# dual-stack: default deny in force for IPv6 and IPv4 within ${ms.toFixed(0)} ms of probing (a probe that meets the drop waits out its 700 ms timeout)`,
    );
    await applyPolicy('allow-a-80', 'dx', {
      podSelector: { matchLabels: { app: 'b' } },
      ingress: [{ from: [{ podSelector: { matchLabels: { app: 'a' } } }], ports: [{ port: 80 }] }],
    });
    ms = await until('allow from a on 80', a, {
      [hostPort(v6(b), 80)]: true,
      [hostPort(v4(b), 80)]: true,
      [hostPort(v6(b), 81)]: false,
      [hostPort(v4(b), 81)]: false,
    });
    console.log(
      `# dual-stack: an allow rule by pod selector opens IPv6 and IPv4 on port 80 within ${ms.toFixed(0)} ms; 81 stays closed`,
    );
    assert.match(
      await ip6save(),
      /--match-set weft6-[0-9a-f]{16} src -m tcp --dport 80/,
      'the IPv6 rule matches an inet6 set',
    );
    // An ipBlock belongs to its family: the IPv6 pool opens 81 over IPv6 only.
    await applyPolicy('allow-v6-81', 'dx', {
      podSelector: { matchLabels: { app: 'b' } },
      ingress: [{ from: [{ ipBlock: { cidr: 'fd00:10:244::/48' } }], ports: [{ port: 81 }] }],
    });
    ms = await until('IPv6 ipBlock on 81', a, {
      [hostPort(v6(b), 81)]: true,
      [hostPort(v4(b), 81)]: false,
      [hostPort(v6(b), 80)]: true,
    });
    console.log(`# dual-stack: an IPv6 ipBlock opens 81 over IPv6 only within ${ms.toFixed(0)} ms`);
    // The namespace's default deny selects a too: b reaches a on neither family.
    await until('default deny on a', b, { [hostPort(v6(a), 80)]: false, [hostPort(v4(a), 80)]: false });
    for (const name of ['deny-all', 'allow-a-80', 'allow-v6-81'])
      await weft('policy', 'delete', 'NetworkPolicy', `dx/${name}`);
    await until('policies deleted', a, { [hostPort(v6(b), 81)]: true, [hostPort(v4(b), 81)]: true });
  });

  test('the real weft-cni prints both addresses in every result version, CHECK verifies both, DEL releases both', async () => {
    const node1 = state!.nodes.find((n) => n.name === 'node1')!;
    const ipam = createClient(IpamServiceService, controlPlaneTarget(state!), {
      security: clusterAdminSecurity(state!),
    });
    const netnsName = `${state!.prefix}-pod-cni`;
    await run('ip', ['netns', 'add', netnsName]);
    try {
      for (const v of VERSIONS) {
        const containerId = `dualcni${v.replaceAll('.', '')}`;
        const env = {
          CNI_CONTAINERID: containerId,
          CNI_NETNS: `/var/run/netns/${netnsName}`,
          CNI_IFNAME: 'eth0',
          CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=dx;K8S_POD_NAME=cni',
        };
        const conf = (extra: Record<string, unknown> = {}) =>
          JSON.stringify({ ...JSON.parse(networkConfig(node1)), cniVersion: v, ...extra });
        const tAdd = performance.now();
        const add = await runCni(node1, { ...env, CNI_COMMAND: 'ADD' }, conf());
        assert.equal(add.exitCode, 0, `${v}: ${add.stdout} ${add.stderr}`);
        console.log(
          `# dual-stack: weft-cni ADD (${v}) took ${(performance.now() - tAdd).toFixed(0)} ms, plugin start-up and ip netns exec included`,
        );
        const result = JSON.parse(add.stdout) as {
          cniVersion: string;
          interfaces: { name: string; sandbox?: string }[];
          ips: Record<string, unknown>[];
          routes: unknown[];
        };
        assert.equal(result.cniVersion, v);
        assert.equal(result.interfaces[1]!.sandbox, env.CNI_NETNS);
        const legacy = v.startsWith('0.');
        assert.equal(result.ips.length, 2, `${v}: ${add.stdout}`);
        assert.match(String(result.ips[0]!.address), /^10\.244\.\d+\.\d+\/32$/);
        assert.match(String(result.ips[1]!.address), /^fd00:10:244:[0-9a-f:]+\/128$/);
        assert.deepEqual(
          result.ips.map((i) => [i.gateway, i.interface, i.version]),
          [
            ['169.254.1.1', 1, legacy ? '4' : undefined],
            ['fe80::1', 1, legacy ? '6' : undefined],
          ],
        );
        assert.deepEqual(result.routes, [
          { dst: '0.0.0.0/0', gw: '169.254.1.1' },
          { dst: '::/0', gw: 'fe80::1' },
        ]);
        if (!['0.3.0', '0.3.1'].includes(v)) {
          const check = await runCni(node1, { ...env, CNI_COMMAND: 'CHECK' }, conf({ prevResult: result }));
          assert.equal(check.exitCode, 0, `${v} CHECK: ${check.stdout}`);
          // The IPv6 host route removed by hand: CHECK names it.
          const addr6 = String(result.ips[1]!.address);
          await run('ip', [
            'netns',
            'exec',
            node1.netns,
            'ip',
            '-6',
            'route',
            'del',
            addr6,
            'dev',
            result.interfaces[0]!.name,
          ]);
          const broken = await runCni(node1, { ...env, CNI_COMMAND: 'CHECK' }, conf({ prevResult: result }));
          assert.equal(broken.exitCode, 1);
          const err = JSON.parse(broken.stdout) as { code: number; msg: string };
          assert.equal(err.code, 101);
          assert.match(
            err.msg,
            new RegExp(`the node has no route to ${addr6.replace(/\//g, '\\/')} through ${result.interfaces[0]!.name}`),
          );
        }
        const del = await runCni(node1, { ...env, CNI_COMMAND: 'DEL' }, conf());
        assert.equal(del.exitCode, 0, `${v} DEL: ${del.stdout}`);
        const left = (
          await ipam.listAllocations({ pool: '', node: 'node1', pageSize: 1000, pageToken: '' }, { timeoutMs: 10_000 })
        ).allocations.filter((x) => x.containerId === containerId);
        assert.deepEqual(left, [], `${v}: DEL released both addresses`);
        const routes6 = (
          await run('ip', ['netns', 'exec', node1.netns, 'ip', '-6', 'route', 'show', 'proto', '87'])
        ).stdout.split('\n');
        assert.ok(
          !routes6.some((l) => l.startsWith(`${String(result.ips[1]!.address).split('/')[0]} `)),
          `${v}: the IPv6 host route is gone`,
        );
      }
      // Both or neither: a network config that names the IPv4 pool cannot make a dual-stack pod; the ADD fails with a
      // message that says what to change, and leaves no address and no interface behind.
      const env = {
        CNI_COMMAND: 'ADD',
        CNI_CONTAINERID: 'dualcnipool',
        CNI_NETNS: `/var/run/netns/${netnsName}`,
        CNI_IFNAME: 'eth0',
        CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=dx;K8S_POD_NAME=cni',
      };
      const refused = await runCni(
        node1,
        env,
        JSON.stringify({ ...JSON.parse(networkConfig(node1)), pool: 'default' }),
      );
      assert.equal(refused.exitCode, 1, refused.stdout);
      const err = JSON.parse(refused.stdout) as { code: number; msg: string };
      assert.equal(err.code, 7);
      assert.match(err.msg, /IPAM gave no IPv6 address .* pool default, which has one family/);
      const left = (
        await ipam.listAllocations({ pool: '', node: 'node1', pageSize: 1000, pageToken: '' }, { timeoutMs: 10_000 })
      ).allocations.filter((x) => x.containerId === 'dualcnipool');
      assert.deepEqual(left, [], 'the IPv4 address was released');
      assert.doesNotMatch(
        (await run('ip', ['netns', 'exec', netnsName, 'ip', '-br', 'link'])).stdout,
        /eth0/,
        'no interface left in the pod',
      );
    } finally {
      ipam.close();
      await run('ip', ['netns', 'del', netnsName]).catch(() => {});
    }
  });
});
