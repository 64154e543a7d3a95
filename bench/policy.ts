import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run as runHere } from '../lib/exec.js';
import { parseIp, parsePolicyObject, type NetworkPolicy, type Protocol } from '../services/policy/domain/model.js';
import {
  compileNodePolicy,
  createCompileCache,
  diffNodePolicy,
  type CompileCache,
  type NodePolicy,
  type PlacedPod,
} from '../services/policy/domain/compile.js';
import type { World } from '../services/policy/domain/evaluate.js';
import { toPbWatchResponse } from '../services/policy/rpc/policy.rpc.js';
import { WatchNodePolicyResponse } from '../gen/weft/policy/v1/policy.js';
import type { NodeRules } from '../node-dataplane/domain/network-policy.js';
import { ORDER } from '../node-dataplane/drivers/registry.js';
import { createPolicyDrivers, policyKinds } from '../node-dataplane/drivers/policy.js';
import { createDataplane, type ApplyReport } from '../node-dataplane/kernel-table/dataplane.js';
import { createFilterAccess, createIpsetAccess, readPodVeths } from '../node-dataplane/kernel/iptables-policy.js';
import { applyPolicyMessage } from '../node-dataplane/sources/policy-watch.js';
import { median, ms, printTable, type Row } from './support.js';

/**
 * bench/policy: network policy from the policy service's compile input to the node's kernel, in network namespaces of
 * its own, beside the floor from ../shared/baselines/iptables-floor.sh in the same run. Each path is the code the
 * service and the agent run: compile (with the stream's compile cache), the stream message (complete or delta)
 * encoded and decoded as protobuf, the agent applying it to the rules held, then the agent's policy manager and
 * drivers (render into the ipset and filter tables, apply what is pending: `ipset restore`, `iptables-restore
 * --noflush`). Not included: the service's snapshot read from PostgreSQL
 * and the network hop (test/policy.rpc.test.ts measures ApplyPolicies to a watching node at the local scale).
 *  - 1,000 local pods × 10 rules from scratch (the agent's first pass: it reads the empty kernel back), beside
 *    iptables-restore of 10,000 rules laid out per endpoint;
 *  - one pod's label change, beside an incremental restore of 10 rules: to another policy of its namespace and back
 *    (its entries change), and out of every policy and back (its anchor goes to RETURN and comes back); timed to the
 *    moment the new rules are in force, and to the end of the pass (old rule and chain removed);
 *  - pod-to-pod TCP throughput (iperf3, two pods on veths through the node's forward path) with the 1,000 pods'
 *    10,000 entries installed and the traffic's destination among them (its ingress chain matches a set of 500
 *    addresses; the connection's first packet walks the dispatch chain of 1,000 pods), beside the same path with the
 *    agent's rules but no policy entry (the same chains, every anchor RETURNing), and beside bare forwarding with no
 *    Weft rule at all; WEFT_BENCH_IPERF_ROUNDS (6) rounds of the three in rotating order, ratios taken per round.
 *    Established traffic is accepted by WEFT-FORWARD's first rule (conntrack) in both Weft configurations, so only a
 *    connection's first packets meet the entries: the ratio is expected at 100% within the machine's noise.
 * Medians of WEFT_BENCH_RUNS (3) runs, each with WEFT_BENCH_POLICY_CHANGES (5) changes of each kind.
 * WEFT_BENCH_DEBUG=1 prints each run's from-scratch figures (in force, service, kernel) and floor on stderr.
 * Parts: WEFT_BENCH_POLICY_PARTS (comma-separated; default programming,throughput): `programming` is the from-scratch
 * and label-change figures with their floor, `throughput` the iperf3 rounds.
 */
const RUNS = Number(process.env.WEFT_BENCH_RUNS ?? 3);
const PODS = Number(process.env.WEFT_BENCH_POLICY_PODS ?? 1000);
const CHANGES = Number(process.env.WEFT_BENCH_POLICY_CHANGES ?? 5);
const IPERF_SECONDS = Number(process.env.WEFT_BENCH_IPERF_SECONDS ?? 3);
/** iperf3 rounds (each: bare, none and with, in rotating order). */
const IPERF_ROUNDS = Number(process.env.WEFT_BENCH_IPERF_ROUNDS ?? 6);
const PARTS = (process.env.WEFT_BENCH_POLICY_PARTS ?? 'programming,throughput').split(',').map((p) => p.trim());
const here = path.dirname(fileURLToPath(import.meta.url));
/** The floor script (WEFT_BENCH_FLOOR: its path when the checkout is not beside `shared/`, a worktree say). */
const FLOOR = process.env.WEFT_BENCH_FLOOR ?? path.resolve(here, '../../../shared/baselines/iptables-floor.sh');
/** iperf3's port: inside the 10 ports every pod's policy allows. */
const PORT = 1005;

const addressOf = (i: number) => `10.100.${(i + 1) >> 8}.${(i + 1) & 255}`;
const vethOf = (i: number, tag: string) => `weft${tag}${i.toString(16).padStart(7, '0')}`;

/** The service's compile input: 10 namespaces; policy i selects pod i, with one rule of 10 ports from the namespaces of the other parity. */
function worldOf(): World {
  const objects = Array.from({ length: PODS }, (_, i) => ({
    kind: 'NetworkPolicy',
    metadata: { namespace: `ns${i % 10}`, name: `np${i}` },
    spec: {
      podSelector: { matchLabels: { app: `p${i}` } },
      ingress: [
        {
          from: [{ namespaceSelector: { matchLabels: { team: i % 2 ? 'even' : 'odd' } } }],
          ports: Array.from({ length: 10 }, (_, j) => ({ port: 1000 + j })),
        },
      ],
    },
  }));
  return {
    namespaces: new Map(Array.from({ length: 10 }, (_, i) => [`ns${i}`, { team: i % 2 ? 'odd' : 'even' }])),
    networkPolicies: objects.map((o) => parsePolicyObject(o) as NetworkPolicy),
    adminPolicies: [],
    baseline: null,
  };
}
const podOf = (i: number, app = `p${i}`): PlacedPod => ({
  namespace: `ns${i % 10}`,
  name: `p${i}`,
  node: 'n1',
  labels: { app },
  addresses: [parseIp(addressOf(i), 'ip')],
  ports: [{ name: 'http', port: 8080, protocol: 'TCP' as Protocol }],
});

/** Runs commands inside a namespace, as the agent runs them inside its node's. */
const inNs =
  (ns: string): typeof runHere =>
  (file, args, opts) =>
    runHere('ip', ['netns', 'exec', ns, file, ...args], { ...opts, timeoutMs: 120_000 });

/**
 * The policy service's side of one stream and the agent's, joined by the encoded message. The agent's side is its
 * IPv4 policy manager and drivers on the real ipset and iptables of `ns`; the pods' veths are the real ones (host
 * routes) plus made-up names for the pods that have none (`fake`). `kernel` gets, per pass, the time from the first
 * restore to the new rules in force.
 */
function pipeline(world: World, ns: string, tag: string, fake: boolean, kernel: number[]) {
  const cache: CompileCache = createCompileCache();
  let sent: NodePolicy | null = null;
  let held: NodeRules | null = null;
  let revision = 0;
  let firstRestore = NaN;
  let inForceAt = NaN;
  const onRestore = (what: 'ipset' | 'filter', op: 'update' | 'delete', done: boolean) => {
    if (op !== 'update') return;
    if (!done && Number.isNaN(firstRestore)) firstRestore = performance.now();
    if (done && what === 'filter') inForceAt = performance.now();
  };
  const run = inNs(ns);
  const policy = createPolicyDrivers({
    family: 4,
    ipsets: createIpsetAccess({ family: 4, run, onRestore }),
    filter: createFilterAccess({ family: 4, run, onRestore }),
  });
  const kinds = policyKinds(4);
  const dataplane = createDataplane({
    drivers: [policy.ipsets, policy.filter],
    order: ORDER.filter((p) => kinds.includes(p.kind)),
  });
  let veths: Map<string, string> | null = null;
  const readVeths = async () => {
    const out = await readPodVeths({ routeProtocol: 87, family: 4, run });
    if (fake) for (let i = 0; i < PODS; i++) if (!out.has(addressOf(i))) out.set(addressOf(i), vethOf(i, tag));
    return out;
  };
  return {
    held: () => held,
    /** One agent pass over the rules held (`readBack`: marked for resync, as at the first pass and the periodic one). */
    async pass(readBack: boolean) {
      if (readBack) {
        dataplane.markForResync();
        veths = null;
      }
      veths ??= await readVeths();
      // As the agent's pass: the read-backs run while the manager computes.
      dataplane.prefetch();
      policy.compute(held, veths);
      firstRestore = inForceAt = NaN;
      const report = await dataplane.apply();
      if (report.failed.length > 0 || report.held.length > 0 || report.readFailures.length > 0)
        throw new Error(`the policy pass failed: ${JSON.stringify(report).slice(0, 500)}`);
      if (!Number.isNaN(inForceAt)) kernel.push(inForceAt - firstRestore);
      return report;
    },
    /** From the compile input to the kernel; returns what changed and where the time went (in force: the new rules applied, before the old ones are removed). */
    async push(pods: PlacedPod[], readBack: boolean) {
      const t0 = performance.now();
      const compiled = compileNodePolicy(world, pods, 'n1', cache);
      const delta = sent ? diffNodePolicy(sent, compiled) : null;
      const message = toPbWatchResponse(
        sent
          ? { revision: ++revision, bookmark: false, policy: null, delta }
          : { revision: ++revision, bookmark: false, policy: compiled, delta: null },
      );
      sent = compiled;
      const bytes = WatchNodePolicyResponse.encode(message).finish();
      const t1 = performance.now();
      held = applyPolicyMessage(held, WatchNodePolicyResponse.decode(bytes));
      const report = await this.pass(readBack);
      const t2 = performance.now();
      return {
        report,
        /** Rules in the filter table after the pass. */
        rules: [...policy.filter.table.cache.values()].reduce((n, r) => n + r.length, 0),
        service: t1 - t0,
        inForce: inForceAt - t0,
        total: t2 - t0,
        bytes: bytes.length,
      };
    },
  };
}

type Figures = {
  full: number[];
  fullKernel: number[];
  fullService: number[];
  rules: number[];
  moved: Change;
  dropped: Change;
};
type Change = {
  inForce: number[];
  service: number[];
  agent: number[];
  kernel: number[];
  total: number[];
  bytes: number[];
};
const change = (): Change => ({ inForce: [], service: [], agent: [], kernel: [], total: [], bytes: [] });
const changed = (r: ApplyReport) => r.changes.map((c) => `${c.op} ${c.kind} ${c.key}`);

async function programming(f: Figures) {
  const tag = randomBytes(2).toString('hex');
  const ns = `wbp${tag}`;
  await runHere('ip', ['netns', 'add', ns]);
  try {
    const kernel: number[] = [];
    const world = worldOf();
    const p = pipeline(world, ns, tag, true, kernel);
    let pods = Array.from({ length: PODS }, (_, i) => podOf(i));
    const first = await p.push(pods, true);
    f.full.push(first.inForce);
    f.fullKernel.push(kernel.at(-1)!);
    f.fullService.push(first.service);
    f.rules.push(first.rules);
    if (process.env.WEFT_BENCH_DEBUG)
      process.stderr.write(
        `from scratch: ${JSON.stringify({ inForce: first.inForce, service: first.service, kernel: kernel.at(-1) })}\n`,
      );
    const relabel = async (i: number, app: string, into: Change) => {
      pods = pods.map((q, j) => (j === i ? podOf(i, app) : q));
      kernel.length = 0;
      const r = await p.push(pods, false);
      if (r.report.changes.length === 0 || r.report.changes.length > 6)
        throw new Error(
          `one pod's change should rewrite a few chains, not ${r.report.changes.length}: ${changed(r.report).slice(0, 5).join(', ')}`,
        );
      into.inForce.push(r.inForce);
      into.service.push(r.service);
      into.kernel.push(kernel[0] ?? 0);
      into.agent.push(r.inForce - r.service - (kernel[0] ?? 0));
      into.total.push(r.total);
      into.bytes.push(r.bytes);
    };
    for (let k = 0; k < CHANGES; k++) {
      const i = 7 + 10 * k;
      // Its label moves it to another policy of its namespace (policy i+10 selects it; same rule, other source)...
      await relabel(i, `p${i + 10}`, f.moved);
      await relabel(i, `p${i}`, f.moved);
      // ...or out of every policy (its ingress anchor RETURNs, and comes back).
      await relabel(i, 'moved', f.dropped);
      await relabel(i, `p${i}`, f.dropped);
    }
    // The drivers' caches match the kernel: a read-back pass finds nothing to do.
    const check = await p.pass(true);
    if (check.changes.length > 0)
      throw new Error(`the kernel differs from the drivers' caches: ${changed(check).slice(0, 5).join(', ')}`);
  } finally {
    await runHere('ip', ['netns', 'del', ns]).catch(() => {});
  }
}

/** Two pods (veths into namespaces, as the CNI plugin makes them) on one node; iperf3 from a to b. */
async function throughput(pairs: { bare: number[]; none: number[]; with: number[]; entries: number[] }) {
  const tag = randomBytes(2).toString('hex');
  const [node, a, b] = [`wbt${tag}n`, `wbt${tag}a`, `wbt${tag}b`];
  const A = 1,
    B = 2; // pod 1 (ns1, team odd) may reach pod 2 (its policy admits team odd) on ports 1000-1009
  const made: string[] = [];
  const ipn = (ns: string, args: string[]) => runHere('ip', ['-n', ns, ...args]);
  try {
    for (const ns of [node, a, b]) {
      await runHere('ip', ['netns', 'add', ns]);
      made.push(ns);
      await ipn(ns, ['link', 'set', 'lo', 'up']);
    }
    await inNs(node)('sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
    // Proxy ARP answers for the pods' gateway only if the node has a route to it: a default route on an underlay
    // stand-in (a veth pair inside the node, leading nowhere).
    await ipn(node, ['link', 'add', 'wbu0', 'type', 'veth', 'peer', 'name', 'wbu1']);
    await ipn(node, ['addr', 'add', '192.0.2.1/24', 'dev', 'wbu0']);
    await ipn(node, ['link', 'set', 'wbu0', 'up']);
    await ipn(node, ['link', 'set', 'wbu1', 'up']);
    await ipn(node, ['route', 'add', 'default', 'via', '192.0.2.254']);
    for (const [i, ns] of [
      [A, a],
      [B, b],
    ] as const) {
      const veth = vethOf(i, tag);
      await ipn(node, ['link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
      await ipn(ns, ['addr', 'add', `${addressOf(i)}/32`, 'dev', 'eth0']);
      await ipn(ns, ['link', 'set', 'eth0', 'up']);
      await ipn(ns, ['route', 'add', '169.254.1.1', 'dev', 'eth0', 'scope', 'link']);
      await ipn(ns, ['route', 'add', 'default', 'via', '169.254.1.1', 'dev', 'eth0']);
      await ipn(node, ['link', 'set', veth, 'up']);
      await inNs(node)('sysctl', ['-qw', `net.ipv4.conf.${veth}.proxy_arp=1`, `net.ipv4.neigh.${veth}.proxy_delay=0`]);
      await ipn(node, ['route', 'add', `${addressOf(i)}/32`, 'dev', veth, 'scope', 'link', 'proto', '87']);
    }
    const iperf = async (port: number): Promise<{ bps: number | null; error: string | null }> => {
      const server = spawn('ip', ['netns', 'exec', b, 'iperf3', '-s', '-1', '-p', String(PORT)], { stdio: 'ignore' });
      try {
        await new Promise((r) => setTimeout(r, 300));
        // iperf3 -J reports its errors on stdout too, with a non-zero exit.
        const out = await new Promise<string>((resolve) =>
          execFile(
            'ip',
            [
              'netns',
              'exec',
              a,
              'iperf3',
              '-c',
              addressOf(B),
              '-p',
              String(port),
              '-t',
              String(IPERF_SECONDS),
              '-J',
              '--connect-timeout',
              '1000',
            ],
            { timeout: (IPERF_SECONDS + 30) * 1000 },
            (err, stdout) => resolve(stdout || JSON.stringify({ error: err?.message ?? 'no output' })),
          ),
        );
        const j = JSON.parse(out.slice(out.indexOf('{'))) as {
          error?: string;
          end?: { sum_received?: { bits_per_second: number } };
        };
        return { bps: j.end?.sum_received?.bits_per_second ?? null, error: j.error ?? null };
      } finally {
        server.kill();
      }
    };
    const pods = Array.from({ length: PODS }, (_, i) => podOf(i));
    const bps = (r: { bps: number | null; error: string | null }, what: string) => {
      if (r.bps === null) throw new Error(`iperf3 ${what} failed: ${r.error}`);
      return r.bps;
    };
    // The three configurations, each programmed from scratch before its measurement. "none" and "with" differ only
    // in the policy entries: the same FORWARD jump, the same WEFT-FORWARD (conntrack first), the same dispatch chains
    // of 1,000 pods and the same anchors; in "none" every anchor RETURNs, in "with" b's anchor goes to its entries.
    const configure = {
      // Bare: no Weft rule or set at all in the node (and so no connection tracking).
      bare: async () => {
        await inNs(node)('iptables', ['-F']);
        await inNs(node)('iptables', ['-X']);
        await inNs(node)('ipset', ['destroy']);
      },
      none: async () => {
        await configure.bare();
        await pipeline({ ...worldOf(), networkPolicies: [] }, node, tag, true, []).push(pods, true);
      },
      with: async () => {
        await configure.bare();
        const full = await pipeline(worldOf(), node, tag, true, []).push(pods, true);
        if (!full.report.changes.some((c) => c.key.startsWith(`WEFT-I-${vethOf(B, tag)}-`)))
          throw new Error(`b's ingress entries were not installed: ${changed(full.report).slice(0, 5).join(', ')}`);
      },
    };
    await configure.with();
    // The policy is in force: a port the rule does not admit is dropped (no answer), not refused.
    const blocked = await iperf(2000);
    if (blocked.bps !== null || !/timed out|timeout/i.test(blocked.error ?? ''))
      throw new Error(`port 2000 should be dropped by b's policy, got ${blocked.bps ?? blocked.error}`);
    // Rounds in rotating order (the machine's load drifts: no configuration always goes first or last); each round's
    // ratios are taken within the round, and their medians reported.
    const orders = [
      ['bare', 'none', 'with'],
      ['with', 'bare', 'none'],
      ['none', 'with', 'bare'],
      ['bare', 'with', 'none'],
      ['none', 'bare', 'with'],
      ['with', 'none', 'bare'],
    ] as const;
    for (let r = 0; r < IPERF_ROUNDS; r++) {
      const got: Record<string, number> = {};
      for (const c of orders[r % orders.length]!) {
        await configure[c]();
        got[c] = bps(
          await iperf(PORT),
          c === 'bare' ? 'without rules' : c === 'none' ? 'with no policy entries' : 'through the policy',
        );
      }
      pairs.bare.push(got.bare!);
      pairs.none.push(got.none!);
      pairs.with.push(got.with!);
      pairs.entries.push(PODS * 10);
    }
  } finally {
    for (const ns of made.reverse()) await runHere('ip', ['netns', 'del', ns]).catch(() => {});
  }
}

async function main() {
  if (process.getuid?.() !== 0) throw new Error('bench/policy needs root (network namespaces)');
  const unknown = PARTS.filter((p) => p !== 'programming' && p !== 'throughput');
  if (unknown.length > 0)
    throw new Error(`WEFT_BENCH_POLICY_PARTS: unknown ${unknown.join(', ')}; expected some of programming, throughput`);
  const f: Figures = { full: [], fullKernel: [], fullService: [], rules: [], moved: change(), dropped: change() };
  const floorFull: number[] = [],
    floorInc: number[] = [];
  for (let r = 0; PARTS.includes('programming') && r < RUNS; r++) {
    await programming(f);
    const stdout = await runHere('bash', [FLOOR, String(PODS * 10)]);
    const fl = JSON.parse(stdout.trim().split('\n').at(-1)!) as { full_s: number; incremental10_s: number };
    floorFull.push(fl.full_s * 1000);
    floorInc.push(fl.incremental10_s * 1000);
    if (process.env.WEFT_BENCH_DEBUG)
      process.stderr.write(
        `floor: ${JSON.stringify({ full: fl.full_s * 1000, incremental10: fl.incremental10_s * 1000 })}\n`,
      );
  }
  const pairs = { bare: [] as number[], none: [] as number[], with: [] as number[], entries: [] as number[] };
  if (PARTS.includes('throughput')) await throughput(pairs);
  const gbps = (x: number) => `${(x / 1e9).toFixed(2)} Gbit/s`;
  /** Per round, a configuration's rate over another's (measured seconds apart); ratios are medians of these. */
  const ratios = (a: number[], b: number[]) => a.map((x, i) => x / b[i]!);
  const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
  const range = (xs: number[]) => `${pct(Math.min(...xs))}-${pct(Math.max(...xs))}`;
  const changeRows = (c: Change, what: string): Row[] => [
    {
      figure: `one pod's label change, ${what}: compile input to rules in force`,
      value: ms(median(c.inForce)),
      baseline: `incremental restore of 10 rules ${ms(median(floorInc))}`,
      ratio: `${(median(c.inForce) / median(floorInc)).toFixed(2)}x`,
      goal: '<= 20 ms (commit to kernel)',
    },
    { figure: '  service: compile (cached) + delta + encode', value: ms(median(c.service)) },
    {
      figure: `  agent: decode + apply delta + render + plan (message ${median(c.bytes)} bytes)`,
      value: ms(median(c.agent)),
    },
    { figure: '  kernel: iptables-restore --noflush of the new rules', value: ms(median(c.kernel)) },
    { figure: '  then the old rule and chain removed (in force meanwhile); whole pass', value: ms(median(c.total)) },
  ];
  const programmingRows: Row[] = [
    {
      figure: `${PODS} pods × 10 rules from scratch (${median(f.rules)} iptables rules): compile + message + render + plan + apply`,
      value: ms(median(f.full)),
      baseline: `iptables-restore ${PODS * 10} rules ${ms(median(floorFull))}`,
      ratio: `${(median(f.full) / median(floorFull)).toFixed(2)}x`,
      goal: '<= 500 ms',
    },
    { figure: '  of which service: compile + encode', value: ms(median(f.fullService)) },
    {
      figure: '  of which agent: decode, read the kernel back (first pass), render, plan',
      value: ms(median(f.full.map((x, i) => x - f.fullService[i]! - f.fullKernel[i]!))),
    },
    { figure: '  of which ipset restore + iptables-restore', value: ms(median(f.fullKernel)) },
    ...changeRows(f.moved, 'to another policy'),
    ...changeRows(f.dropped, 'out of every policy'),
  ];
  const throughputRows: Row[] = [
    {
      figure: `pod-to-pod TCP (iperf3, ${IPERF_SECONDS} s × ${IPERF_ROUNDS} rounds) with ${median(pairs.entries)} policy entries installed`,
      value: gbps(median(pairs.with)),
      baseline: `no policy entries ${gbps(median(pairs.none))}`,
      ratio: `${pct(median(ratios(pairs.with, pairs.none)))} (rounds ${range(ratios(pairs.with, pairs.none))})`,
      goal: '>= 95%',
    },
    {
      figure: '  the same, beside no Weft rules at all (no connection tracking)',
      value: gbps(median(pairs.with)),
      baseline: `bare forwarding ${gbps(median(pairs.bare))}`,
      ratio: `${pct(median(ratios(pairs.with, pairs.bare)))} (rounds ${range(ratios(pairs.with, pairs.bare))})`,
    },
    {
      figure: '  no policy entries beside bare forwarding (what connection tracking costs)',
      value: gbps(median(pairs.none)),
      baseline: `bare forwarding ${gbps(median(pairs.bare))}`,
      ratio: `${pct(median(ratios(pairs.none, pairs.bare)))} (rounds ${range(ratios(pairs.none, pairs.bare))})`,
    },
  ];
  const rows = [
    ...(PARTS.includes('programming') ? programmingRows : []),
    ...(PARTS.includes('throughput') ? throughputRows : []),
  ];
  printTable(
    `bench/policy — medians of ${RUNS} runs (${RUNS * CHANGES * 2} changes of each kind), ${IPERF_ROUNDS} throughput rounds; one node, namespaces of its own`,
    rows,
  );
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`bench/policy: ${(err as Error).stack ?? err}\n`);
    process.exit(1);
  },
);
