import { createClusterCompiler } from '../services/policy/domain/cluster-compile.js';
import {
  compileNodePolicy,
  createCompileCache,
  diffNodePolicy,
  type NodePolicy,
  type PlacedPod,
} from '../services/policy/domain/compile.js';
import type { World } from '../services/policy/domain/evaluate.js';
import { parseIp, parsePolicyObject, type AdminPolicy, type NetworkPolicy } from '../services/policy/domain/model.js';
import { ms, percentile, printTable, type Row } from './support.js';

/**
 * bench/policy-fanout: the policy service's fan-out without the network, in this process: one replica's
 * `ClusterCompiler` watching N nodes of P pods (bench/scale's world: ten namespaces, each with a NetworkPolicy that
 * admits TCP 80 from `role=client` pods of any namespace; pod 0 of every tenth node is a client), plus a namespace
 * `tenant` (labelled `tier=tenant`) whose 30 pods are on 10 nodes. For each size: the first compilation of every node
 * (a replica's start), a label change that renames the set every node's rules name (every node compiled again, a
 * delta each), a pod attached on one node (one node compiled again), and changes of policies and namespaces: a
 * NetworkPolicy added to and removed from `tenant` (admitting pods of namespaces labelled `team=blue`), an
 * AdminNetworkPolicy whose subject selects `tenant` by its label added and removed, a label of `ns-5` that the
 * tenant policy's peer selector tells apart (`team=blue`) set and unset, a label no selector tells apart set and unset,
 * and a NetworkPolicy added to and removed from `ns-3` (whose pods are on every node). The time includes working out
 * each concerned node's delta; "woken" counts the nodes whose rules changed (their streams are sent a delta). Heap per
 * node after the first compilation (with --expose-gc).
 * Beside it, the anchor: each node compiled alone with its own `CompileCache` on every change, as each stream did
 * before the replica's fan-out (2 label changes and 2 attaches; not run above ANCHOR_MAX nodes, where it takes minutes).
 *
 * Usage: node --expose-gc dist/bench/policy-fanout.js [sizes, default 500,1000,2000,5000] [pods per node, default 30]
 */
const SIZES = (process.argv[2] ?? '500,1000,2000,5000').split(',').map(Number);
const PODS = Number(process.argv[3] ?? 30);
const TRIALS = 10;
const ANCHOR_MAX = Number(process.env.WEFT_BENCH_FANOUT_ANCHOR_MAX ?? 2000);
const gc = (globalThis as { gc?: () => void }).gc;
const heap = () => {
  gc?.();
  return process.memoryUsage().heapUsed;
};

const byName = (a: PlacedPod, b: PlacedPod) =>
  a.namespace < b.namespace ? -1 : a.namespace > b.namespace ? 1 : a.name < b.name ? -1 : a.name > b.name ? 1 : 0;

function worldOf(): World {
  const namespaces = new Map<string, Record<string, string>>(
    Array.from({ length: 10 }, (_, k) => [`ns-${k}`, { name: `ns-${k}` }]),
  );
  namespaces.set('tenant', { name: 'tenant', tier: 'tenant' });
  const networkPolicies = Array.from(
    { length: 10 },
    (_, k) =>
      parsePolicyObject({
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
      }) as NetworkPolicy,
  );
  return { namespaces, networkPolicies, adminPolicies: [], baseline: null };
}

const rows: Row[] = [];
for (const n of SIZES) {
  let world = worldOf();
  let pods: PlacedPod[] = [];
  for (let node = 0; node < n; node++)
    for (let i = 0; i < PODS; i++) {
      const k = node * PODS + i;
      pods.push({
        namespace: `ns-${k % 10}`,
        name: `p${k}`,
        node: `node${node}`,
        labels: i === 0 && node % 10 === 0 ? { role: 'client' } : {},
        addresses: [parseIp(`10.${(k >> 16) & 255}.${(k >> 8) & 255}.${k & 255}`, 'ip')],
        ports: [],
      });
    }
  // The tenant namespace: 3 pods on each of 10 nodes spread over the cluster.
  for (let t = 0; t < 30; t++)
    pods.push({
      namespace: 'tenant',
      name: `t${t}`,
      node: `node${Math.floor(t / 3) * Math.floor(n / 10)}`,
      labels: { app: 'tenant' },
      addresses: [parseIp(`100.65.0.${t}`, 'ip')],
      ports: [],
    });
  pods.sort(byName);
  const h0 = heap();
  const compiler = createClusterCompiler();
  const held = new Map<string, NodePolicy>();
  const t = performance.now();
  compiler.advance(world, pods);
  for (let node = 0; node < n; node++) held.set(`node${node}`, compiler.compile(`node${node}`));
  const first = performance.now() - t;
  const perNode = (heap() - h0) / n;
  const label: number[] = [],
    attach: number[] = [];
  let concernedLabel = 0,
    concernedAttach = 0;
  const step = (next: PlacedPod[], nextWorld = world) => {
    pods = next;
    world = nextWorld;
    const t0 = performance.now();
    const concerned = compiler.advance(world, pods);
    let woken = 0;
    for (const node of concerned) {
      const policy = compiler.compile(node);
      if (diffNodePolicy(held.get(node)!, policy)) woken++;
      held.set(node, policy);
    }
    return { ms: performance.now() - t0, concerned: concerned.length, woken };
  };
  /** Policy and namespace changes: each trial's samples (both ways), nodes concerned and woken (first way). */
  const changes = new Map<string, { ms: number[]; concerned: number; woken: number }>();
  const sample = (what: string, r: ReturnType<typeof step>, first: boolean) => {
    let c = changes.get(what);
    if (!c) changes.set(what, (c = { ms: [], concerned: 0, woken: 0 }));
    c.ms.push(r.ms);
    if (first) Object.assign(c, { concerned: r.concerned, woken: r.woken });
  };
  const withPolicies = (add: (NetworkPolicy | AdminPolicy)[], remove: (NetworkPolicy | AdminPolicy)[] = []) => ({
    ...world,
    networkPolicies: [
      ...world.networkPolicies.filter((p) => !remove.includes(p)),
      ...add.filter((p): p is NetworkPolicy => p.kind === 'NetworkPolicy'),
    ],
    adminPolicies: [
      ...world.adminPolicies.filter((p) => !remove.includes(p)),
      ...add.filter((p): p is AdminPolicy => p.kind === 'AdminNetworkPolicy'),
    ],
  });
  const withLabels = (ns: string, labels: Record<string, string>) => ({
    ...world,
    namespaces: new Map([...world.namespaces].map(([k, v]) => [k, k === ns ? labels : v])),
  });
  const tenantPolicy = (k: number) =>
    parsePolicyObject({
      kind: 'NetworkPolicy',
      metadata: { name: `from-blue-${k}`, namespace: 'tenant' },
      spec: {
        podSelector: {},
        ingress: [{ from: [{ namespaceSelector: { matchLabels: { team: 'blue' } } }], ports: [{ port: 8080 }] }],
      },
    }) as NetworkPolicy;
  const tenantAdmin = (k: number) =>
    parsePolicyObject({
      kind: 'AdminNetworkPolicy',
      metadata: { name: `tenant-${k}` },
      spec: {
        priority: 10,
        subject: { namespaces: { matchLabels: { tier: 'tenant' } } },
        ingress: [{ name: 'own', action: 'Allow', from: [{ namespaces: { matchLabels: { tier: 'tenant' } } }] }],
      },
    }) as AdminPolicy;
  const everywherePolicy = (k: number) =>
    parsePolicyObject({
      kind: 'NetworkPolicy',
      metadata: { name: `web-${k}`, namespace: 'ns-3' },
      spec: { podSelector: {}, ingress: [{ ports: [{ port: 443 }] }] },
    }) as NetworkPolicy;
  const tenantTrial = (k: number) => {
    const np = tenantPolicy(k);
    sample('np-tenant', step(pods, withPolicies([np])), true);
    // With the tenant policy in place: a namespace joins and leaves the set its peer selector makes.
    const ns5 = world.namespaces.get('ns-5')!;
    sample('ns-peer', step(pods, withLabels('ns-5', { ...ns5, team: 'blue' })), true);
    sample('ns-peer', step(pods, withLabels('ns-5', ns5)), false);
    sample('ns-other', step(pods, withLabels('ns-5', { ...ns5, env: `e${k}` })), true);
    sample('ns-other', step(pods, withLabels('ns-5', ns5)), false);
    sample('np-tenant', step(pods, withPolicies([], [np])), false);
    const anp = tenantAdmin(k);
    sample('anp-tenant', step(pods, withPolicies([anp])), true);
    sample('anp-tenant', step(pods, withPolicies([], [anp])), false);
    const web = everywherePolicy(k);
    sample('np-everywhere', step(pods, withPolicies([web])), true);
    sample('np-everywhere', step(pods, withPolicies([], [web])), false);
  };
  for (let k = 0; k < TRIALS; k++) {
    // A pod on a node that is not a tenth node becomes a client, then stops being one.
    const i = pods.findIndex((p) => p.name === `p${(k * 7 + 1) * PODS + 1}`);
    for (const labels of [{ role: 'client' }, {}] as Record<string, string>[]) {
      const r = step(pods.map((p, j) => (j === i ? { ...p, labels } : p)));
      label.push(r.ms);
      concernedLabel = r.concerned;
    }
    const extra: PlacedPod = {
      namespace: 'ns-0',
      name: `attached-${k}`,
      node: `node${k}`,
      labels: {},
      addresses: [parseIp(`100.64.0.${k}`, 'ip')],
      ports: [],
    };
    const r = step([...pods, extra].sort(byName));
    attach.push(r.ms);
    concernedAttach = r.concerned;
    step(pods.filter((p) => p !== extra));
    tenantTrial(k);
  }
  const p = (xs: number[], q: number) =>
    percentile(
      [...xs].sort((a, b) => a - b),
      q,
    );
  // The anchor: every node alone, each with its cache, on the same changes.
  const anchor = { label: [] as number[], attach: [] as number[] };
  if (n <= ANCHOR_MAX) {
    const caches = new Map<string, ReturnType<typeof createCompileCache>>();
    const alone = new Map<string, NodePolicy>();
    const every = () => {
      const t0 = performance.now();
      for (let node = 0; node < n; node++) {
        const name = `node${node}`;
        let cache = caches.get(name);
        if (!cache) caches.set(name, (cache = createCompileCache()));
        const policy = compileNodePolicy(world, pods, name, cache);
        const before = alone.get(name);
        if (before) diffNodePolicy(before, policy);
        alone.set(name, policy);
      }
      return performance.now() - t0;
    };
    every();
    for (let k = 0; k < 2; k++) {
      const i = pods.findIndex((q) => q.name === `p${(k * 7 + 3) * PODS + 1}`);
      pods = pods.map((q, j) => (j === i ? { ...q, labels: { role: 'client' } } : q));
      anchor.label.push(every());
      const extra: PlacedPod = {
        namespace: 'ns-0',
        name: `alone-${k}`,
        node: `node${k}`,
        labels: {},
        addresses: [parseIp(`100.64.1.${k}`, 'ip')],
        ports: [],
      };
      pods = [...pods, extra].sort(byName);
      anchor.attach.push(every());
    }
  }
  const beside = (xs: number[]) =>
    xs.length ? `each node alone: ${xs.map(ms).join(', ')}` : 'each node alone: not run';
  rows.push(
    {
      figure: `${n} nodes x ${PODS} pods: first compilation of every node; heap per node`,
      value: `${ms(first)}; ${(perNode / 1024).toFixed(1)} KiB`,
    },
    {
      figure: `  label change renaming the set every node names (${concernedLabel} nodes concerned), p50 / p99`,
      value: `${ms(p(label, 50))} / ${ms(p(label, 99))}`,
      baseline: beside(anchor.label),
    },
    {
      figure: `  pod attached on one node (${concernedAttach} concerned), p50 / p99`,
      value: `${ms(p(attach, 50))} / ${ms(p(attach, 99))}`,
      baseline: beside(anchor.attach),
    },
  );
  const TRIAL_NAMES: [string, string][] = [
    ['np-tenant', 'NetworkPolicy added / removed in a namespace on 10 nodes (peer: namespaces team=blue)'],
    ['anp-tenant', 'AdminNetworkPolicy added / removed, subject: the namespace on 10 nodes by its label'],
    ['ns-peer', "namespace label change the tenant policy's peer selector tells apart (ns-5 team=blue)"],
    ['ns-other', 'namespace label change no selector tells apart (ns-5 env=...)'],
    ['np-everywhere', 'NetworkPolicy added / removed in a namespace with pods on every node (ns-3)'],
  ];
  for (const [key, what] of TRIAL_NAMES) {
    const c = changes.get(key)!;
    rows.push({
      figure: `  ${what}: ${c.concerned} compiled, ${c.woken} woken; p50 / p99`,
      value: `${ms(p(c.ms, 50))} / ${ms(p(c.ms, 99))}`,
    });
  }
  process.stderr.write(`bench/policy-fanout ${n} nodes done\n`);
}
printTable(`bench/policy-fanout — one replica's ClusterCompiler, ${PODS} pods per node, ${TRIALS} trials`, rows);
