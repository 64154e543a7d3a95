import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import {
  controlPlaneTarget,
  readState,
  type ClusterState,
  type PodState,
  clusterAdminSecurity,
} from '../cli/cluster/cluster.js';
import { createClient } from '../lib/grpc/client.js';
import { PolicyServiceService } from '../gen/weft/policy/v1/policy.js';
import { bin } from './support/processes.js';
import { takeDownLocalCluster } from './support/local-cluster.js';
import { listenTcp, tcpConnects } from './support/pod-probes.js';
import { privilegedOrSkip } from './support/privileges.js';

/**
 * Network policy enforced in the kernel, on the local cluster (three nodes): namespaces x and y (labels team=x,
 * team=y), pods xa, xb, ya, yb (label pod=a or pod=b, named port http:80/TCP) spread over the nodes, each listening
 * on TCP 80 and 81. After each change every probe (a TCP connect with a short timeout, 4 × 3 × 2 per round) is
 * compared with the policy service's Explain, the RPC behind `weft policy explain` (and the CLI itself after each
 * change), and the time from the change to the destination node's kernel rules is measured and printed. (The local cluster names pods uniquely across
 * namespaces, hence xa rather than x/a.)
 */
const run = promisify(execFile);
const opts = privilegedOrSkip();
const stateDir = mkdtempSync(path.join(tmpdir(), 'weft-policy-e2e-'));
const listeners: ChildProcess[] = [];
let state: ClusterState | null = null;
const PROBE_TIMEOUT_MS = 700;
const CONVERGE_BOUND_MS = 10_000;

async function weft(...args: string[]): Promise<string> {
  const { stdout } = await run(bin.weft, [...args, '--state-dir', stateDir], { timeout: 120_000 });
  return stdout;
}

/** From one pod, a TCP connect to each target (address:port) at once: 'open' when the listener answered, else the failure. */
const connects = (from: PodState, targets: string[]) => tcpConnects(from, targets, PROBE_TIMEOUT_MS);

describe('network policy on the local cluster', opts, () => {
  const pods: Record<string, PodState> = {};
  let policy: ReturnType<typeof createClient<typeof PolicyServiceService>> | null = null;
  let xtablesLockExisted = true;
  const figures: string[] = [];

  const id = (p: PodState) => `${p.namespace}/${p.name}`;
  const explainAllowed = async (from: PodState, to: PodState, port: number) =>
    (await policy!.explain({ from: id(from), to: id(to), port, protocol: 'TCP' }, { timeoutMs: 5000 })).allowed;

  /** Every pod to every other pod on 80 and 81: what the kernel did, checked against Explain for every probe. */
  async function matrix(label: string): Promise<Record<string, boolean>> {
    const all = Object.values(pods);
    const observed: Record<string, boolean> = {};
    await Promise.all(
      all.map(async (from) => {
        const others = all.filter((o) => o !== from);
        const res = await connects(
          from,
          others.flatMap((o) => [80, 81].map((port) => `${o.addresses[0]}:${port}`)),
        );
        for (const o of others)
          for (const port of [80, 81])
            observed[`${from.name}->${o.name}:${port}`] = res[`${o.addresses[0]}:${port}`] === 'open';
      }),
    );
    const disagreements: string[] = [];
    for (const from of all)
      for (const to of all)
        if (from !== to)
          for (const port of [80, 81]) {
            const key = `${from.name}->${to.name}:${port}`;
            const want = await explainAllowed(from, to, port);
            if (want !== observed[key])
              disagreements.push(
                `${key}: explain ${want ? 'allows' : 'denies'}, the kernel ${observed[key] ? 'let it through' : 'did not'}`,
              );
          }
    assert.deepEqual(disagreements, [], `${label}: weft policy explain and the kernel agree on every probe`);
    return observed;
  }

  /** Weft's filter chains and sets in a node's kernel, as iptables-save and ipset save print them. */
  const kernelPolicy = async (node: string) => {
    const ns = state!.nodes.find((n) => n.name === node)!.netns;
    const [filter, sets] = await Promise.all([
      run('ip', ['netns', 'exec', ns, 'iptables-save', '-t', 'filter']),
      run('ip', ['netns', 'exec', ns, 'ipset', 'save']),
    ]);
    return (filter.stdout + sets.stdout).replace(/^#.*\n/gm, '');
  };

  /**
   * Applies a change and measures how long after it returned the destination node's kernel rules changed (polled
   * every 20 ms), then probes until the expected verdict shows (both bounded).
   */
  async function converge(
    label: string,
    change: () => Promise<unknown>,
    from: PodState,
    to: PodState,
    port: number,
    open: boolean,
  ): Promise<void> {
    const before = await kernelPolicy(to.node);
    await change();
    const t0 = performance.now();
    while ((await kernelPolicy(to.node)) === before) {
      assert.ok(
        performance.now() - t0 < CONVERGE_BOUND_MS,
        `${label}: ${to.node}'s rules unchanged after ${CONVERGE_BOUND_MS} ms`,
      );
      await new Promise((r) => setTimeout(r, 20));
    }
    const ms = Math.round(performance.now() - t0);
    let probes = 0;
    for (;;) {
      probes++;
      const r = await connects(from, [`${to.addresses[0]}:${port}`]);
      if ((r[`${to.addresses[0]}:${port}`] === 'open') === open) break;
      assert.ok(
        performance.now() - t0 < CONVERGE_BOUND_MS,
        `${label}: ${from.name} -> ${to.name}:${port} still ${open ? 'blocked' : 'open'} after ${CONVERGE_BOUND_MS} ms`,
      );
    }
    // The CLI says the same: `weft policy explain` exits 0 when allowed, 3 when denied.
    const exit = await weft('policy', 'explain', id(from), id(to), `${port}/tcp`).then(
      () => 0,
      (err: { code?: number }) => err.code,
    );
    assert.equal(exit, open ? 0 : 3, `${label}: weft policy explain ${id(from)} ${id(to)} ${port}/tcp`);
    figures.push(`${label}: ${ms} ms`);
    console.log(
      `# policy: ${label}: ${to.node}'s kernel rules changed ${ms} ms after the change returned; probe ${probes} confirmed the verdict`,
    );
  }

  const apply = (name: string, spec: unknown) => {
    const file = path.join(stateDir, `${name}.json`);
    writeFileSync(
      file,
      JSON.stringify({
        apiVersion: 'networking.k8s.io/v1',
        kind: 'NetworkPolicy',
        metadata: { namespace: 'x', name },
        spec,
      }),
    );
    return weft('policy', 'apply', '-f', file);
  };

  before(async () => {
    xtablesLockExisted = existsSync('/run/xtables.lock');
    await weft('cluster', 'up', '--nodes', '3', '--json');
    state = readState(stateDir);
    policy = createClient(PolicyServiceService, controlPlaneTarget(state), { security: clusterAdminSecurity(state) });
    await weft('cluster', 'ns', 'add', 'x', '--labels', 'team=x');
    await weft('cluster', 'ns', 'add', 'y', '--labels', 'team=y');
    for (const [node, name, ns, label] of [
      ['node1', 'xa', 'x', 'a'],
      ['node2', 'xb', 'x', 'b'],
      ['node3', 'ya', 'y', 'a'],
      ['node1', 'yb', 'y', 'b'],
    ] as const) {
      pods[name] = JSON.parse(
        await weft(
          'cluster',
          'pod',
          'add',
          node,
          name,
          '--namespace',
          ns,
          '--labels',
          `pod=${label}`,
          '--ports',
          'http:80/tcp',
          '--json',
        ),
      ) as PodState;
      listeners.push(listenTcp(pods[name]!));
    }
    await new Promise((r) => setTimeout(r, 500));
  });

  after(async () => {
    for (const l of listeners) l.kill('SIGKILL');
    policy?.close();
    if (figures.length > 0) console.log(`# policy convergence: ${figures.join('; ')}`);
    await takeDownLocalCluster({ weft, stateDir, state, xtablesLockExisted });
  });

  test('verdicts follow policies, label changes and deletions, and agree with explain for every probe', async () => {
    const { xa, xb, ya, yb } = pods as Record<string, PodState>;
    // No policy: everything connects.
    let m = await matrix('no policy');
    assert.ok(Object.values(m).every(Boolean), 'with no policy every pod reaches every other on 80 and 81');

    // Default deny ingress in x: y -> x blocked (and x -> x), x -> y untouched.
    await converge(
      'default deny in x blocks y/ya -> x/xa:80',
      () => apply('default-deny', { podSelector: {}, policyTypes: ['Ingress'] }),
      ya!,
      xa!,
      80,
      false,
    );
    m = await matrix('default deny');
    assert.equal(m['ya->xa:80'], false);
    assert.equal(m['yb->xb:81'], false);
    assert.equal(m['xa->xb:80'], false, 'pods of x too');
    assert.equal(m['xa->ya:80'], true, 'x -> y is not affected');
    assert.equal(m['xb->yb:81'], true);

    // Admit namespaces labelled team=y on port 80, for pods of x without the label quarantine.
    await converge(
      'allow team=y on 80 lets y/ya -> x/xa:80 through',
      () =>
        apply('allow-y-80', {
          podSelector: { matchExpressions: [{ key: 'quarantine', operator: 'DoesNotExist' }] },
          ingress: [{ from: [{ namespaceSelector: { matchLabels: { team: 'y' } } }], ports: [{ port: 'http' }] }],
        }),
      ya!,
      xa!,
      80,
      true,
    );
    m = await matrix('allow y on 80');
    assert.equal(m['ya->xa:80'], true);
    assert.equal(m['yb->xa:80'], true, 'same node as xa');
    assert.equal(m['ya->xa:81'], false, 'not 81');
    assert.equal(m['xb->xa:80'], false, 'x itself is not admitted');

    // A restarted agent (SIGKILL) keeps enforcing: the rules it finds stay as they are, and its first pass rewrites nothing.
    const node1 = state!.nodes.find((n) => n.name === 'node1')!;
    const filterOf = async () =>
      (await run('ip', ['netns', 'exec', node1.netns, 'iptables-save', '-t', 'filter'])).stdout.replace(/^#.*\n/gm, '');
    const before = await filterOf();
    await weft('cluster', 'agent', 'stop', 'node1', '--kill');
    await weft('cluster', 'agent', 'start', 'node1');
    const during = await connects(ya!, [`${xa!.addresses[0]}:80`, `${xa!.addresses[0]}:81`]);
    assert.deepEqual(
      during,
      { [`${xa!.addresses[0]}:80`]: 'open', [`${xa!.addresses[0]}:81`]: 'timeout' },
      'enforced while the agent restarts',
    );
    await new Promise((r) => setTimeout(r, 3000));
    assert.equal(await filterOf(), before, 'the restarted agent rewrote nothing');
    await matrix('node1 agent restarted');

    // A pod label change: xb is quarantined, so the allow policy no longer selects it (default deny still does).
    await converge(
      'label quarantine=true on x/xb blocks y/yb -> x/xb:80',
      () =>
        policy!.upsertPod({
          pod: {
            namespace: 'x',
            name: 'xb',
            labels: { pod: 'b', quarantine: 'true' },
            node: xb!.node,
            addresses: xb!.addresses,
            ports: [{ name: 'http', port: 80, protocol: 'TCP' }],
          },
        }),
      yb!,
      xb!,
      80,
      false,
    );
    m = await matrix('xb quarantined');
    assert.equal(m['yb->xb:80'], false);
    assert.equal(m['yb->xa:80'], true);

    // Deletions: the allow policy (y -> x:80 blocked again), then the default deny (everything open again).
    await converge(
      'deleting allow-y-80 blocks y/ya -> x/xa:80',
      () => weft('policy', 'delete', 'NetworkPolicy', 'x/allow-y-80'),
      ya!,
      xa!,
      80,
      false,
    );
    m = await matrix('allow deleted');
    assert.equal(m['ya->xa:80'], false);
    await converge(
      'deleting default-deny opens y/ya -> x/xa:81',
      () => weft('policy', 'delete', 'NetworkPolicy', 'x/default-deny'),
      ya!,
      xa!,
      81,
      true,
    );
    m = await matrix('all deleted');
    assert.ok(Object.values(m).every(Boolean), 'with the policies gone every pod reaches every other again');

    // Weft's objects in a node's kernel: its chain, jumped to once from FORWARD, and no set left once nothing needs one.
    const save = (await run('ip', ['netns', 'exec', node1.netns, 'iptables-save', '-t', 'filter'])).stdout;
    assert.equal(save.split('\n').filter((l) => l.endsWith('-j WEFT-FORWARD') && l.startsWith('-A FORWARD')).length, 1);
    assert.ok(!/^:WEFT-[IE]-[^- ]+-/m.test(save), 'no entries chain once no policy selects a pod');
    assert.ok(
      /^:WEFT-P-\S+ /m.test(save) && !/^-A WEFT-P-/m.test(save),
      "every pod's anchor is there, empty (falling off it returns)",
    );
    assert.equal((await run('ip', ['netns', 'exec', node1.netns, 'ipset', 'list', '-n'])).stdout.trim(), '');
  });

  test("an ACCEPT another program inserts above Weft's FORWARD jump does not bypass policy: the jump is put back on top", async () => {
    const { xa, ya } = pods as Record<string, PodState>;
    const node1 = state!.nodes.find((n) => n.name === 'node1')!;
    await converge(
      'default deny in x (again) blocks y/ya -> x/xa:80',
      () => apply('default-deny', { podSelector: {}, policyTypes: ['Ingress'] }),
      ya!,
      xa!,
      80,
      false,
    );
    const forward = async () =>
      (await run('ip', ['netns', 'exec', node1.netns, 'iptables', '-S', 'FORWARD'])).stdout
        .split('\n')
        .filter((l) => l.startsWith('-A FORWARD'));
    await run('ip', ['netns', 'exec', node1.netns, 'iptables', '-I', 'FORWARD', '1', '-j', 'ACCEPT']);
    try {
      const t0 = performance.now();
      // The resync (5 s in the local cluster) reads the filter table back and finds the jump below another rule.
      const bound = 15_000;
      for (;;) {
        const r = await connects(ya!, [`${xa!.addresses[0]}:80`]);
        if (r[`${xa!.addresses[0]}:80`] !== 'open') break;
        assert.ok(
          performance.now() - t0 < bound,
          `y/ya -> x/xa:80 still let through by the ACCEPT above Weft's jump after ${bound} ms: ${JSON.stringify(await forward())}`,
        );
        await new Promise((r) => setTimeout(r, 100));
      }
      const ms = Math.round(performance.now() - t0);
      const rules = await forward();
      assert.match(rules[0] ?? '', /-j WEFT-FORWARD$/, `Weft's jump is first in FORWARD: ${JSON.stringify(rules)}`);
      assert.equal(rules.filter((l) => l.endsWith('-j WEFT-FORWARD')).length, 1, 'exactly one jump');
      assert.ok(rules.includes('-A FORWARD -j ACCEPT'), "the other program's rule stays (below Weft's jump)");
      console.log(
        `# policy: an ACCEPT inserted above Weft's jump on node1 was bypassed for ${ms} ms, until the resync put the jump back on top`,
      );
      await matrix("after the ACCEPT inserted above Weft's jump");
    } finally {
      await run('ip', ['netns', 'exec', node1.netns, 'iptables', '-D', 'FORWARD', '-j', 'ACCEPT']).catch(() => {});
      await weft('policy', 'delete', 'NetworkPolicy', 'x/default-deny').catch(() => {});
    }
  });
});
