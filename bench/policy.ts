import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parseIp, parsePolicyObject, type NetworkPolicy, type Protocol } from '../services/policy/domain/model.js';
import { compileNodePolicy, type NodePolicy, type PlacedPod } from '../services/policy/domain/compile.js';
import type { World } from '../services/policy/domain/evaluate.js';
import { desiredPolicy, planPolicy, readPolicyActual, type NodeRules, type PolicyActual } from '../node-dataplane/domain/network-policy.js';
import { median, ms, printTable, type Row } from './support.js';

/**
 * bench/policy: what a node's agent does to program network policy, in a network namespace of its own, beside the
 * floor from ../shared/baselines/iptables-floor.sh in the same run:
 *  - 1,000 local pods × 10 rules from scratch: compile (policy service) + render and plan (agent) + `ipset restore`
 *    and `iptables-restore --noflush` (kernel), beside iptables-restore of 10,000 rules laid out per endpoint;
 *  - one pod's label change: compile, read the kernel back, plan, apply, beside an incremental restore of 10 rules.
 * Medians of WEFT_BENCH_RUNS (3). Not measured here yet: pod-to-pod throughput with 10,000 entries (needs pods and
 * iperf3 through the chains), and the stream from commit to agent (measured in test/policy.e2e.test.ts: 8 ms).
 */
const run = promisify(execFile);
const RUNS = Number(process.env.WEFT_BENCH_RUNS ?? 3);
const PODS = Number(process.env.WEFT_BENCH_POLICY_PODS ?? 1000);
const here = path.dirname(fileURLToPath(import.meta.url));
const FLOOR = path.resolve(here, '../../../shared/baselines/iptables-floor.sh');

function world(objects: unknown[]): World {
  return {
    namespaces: new Map(Array.from({ length: 10 }, (_, i) => [`ns${i}`, { team: i % 2 ? 'odd' : 'even' }])),
    networkPolicies: objects.map((o) => parsePolicyObject(o) as NetworkPolicy),
    adminPolicies: [],
    baseline: null,
  };
}

/** PODS pods on one node, in 10 namespaces; each selected by its own policy with one rule of 10 ports from a namespace. */
function cluster(labelOf: (i: number) => string) {
  const pods: PlacedPod[] = Array.from({ length: PODS }, (_, i) => ({
    namespace: `ns${i % 10}`, name: `p${i}`, node: 'n1', labels: { app: labelOf(i) },
    addresses: [parseIp(`10.${100 + Math.floor(i / 65536)}.${Math.floor(i / 256) % 256}.${i % 256}`, 'ip')],
    ports: [{ name: 'http', port: 8080, protocol: 'TCP' as Protocol }],
  }));
  const objects = pods.map((p, i) => ({
    kind: 'NetworkPolicy', metadata: { namespace: p.namespace, name: `np${i}` },
    spec: { podSelector: { matchLabels: { app: `p${i}` } }, ingress: [{ from: [{ namespaceSelector: { matchLabels: { team: i % 2 ? 'even' : 'odd' } } }], ports: Array.from({ length: 10 }, (_, j) => ({ port: 1000 + j })) }] },
  }));
  return { pods, objects };
}

const rulesOf = (c: NodePolicy, revision: number): NodeRules => ({ revision, pods: c.pods, sets: c.sets });
const vethsOf = (pods: PlacedPod[]) => new Map(pods.map((p, i) => [`10.${100 + Math.floor(i / 65536)}.${Math.floor(i / 256) % 256}.${i % 256}`, `weft${i.toString(16).padStart(11, '0')}`]));

async function inNs(ns: string, file: string, args: string[], input?: string): Promise<string> {
  const p = run('ip', ['netns', 'exec', ns, file, ...args], { maxBuffer: 256 * 1024 * 1024 });
  if (input !== undefined) p.child.stdin!.end(input);
  return (await p).stdout;
}

async function main() {
  if (process.getuid?.() !== 0) throw new Error('bench/policy needs root (network namespaces)');
  const ns = `wbp${randomBytes(3).toString('hex')}`;
  const rows: Row[] = [];
  const full: number[] = [], fullKernel: number[] = [], change: number[] = [], floorFull: number[] = [], floorInc: number[] = [];
  let entries = 0;
  try {
    for (let r = 0; r < RUNS; r++) {
      await run('ip', ['netns', 'add', ns]);
      try {
        const base = cluster((i) => `p${i}`);
        const veths = vethsOf(base.pods);
        const empty: PolicyActual = { chains: new Map(), jumps: 0, sets: new Map() };
        const t0 = performance.now();
        const compiled = compileNodePolicy(world(base.objects), base.pods, 'n1');
        const plan = planPolicy(desiredPolicy(rulesOf(compiled, 1), veths), empty);
        const t1 = performance.now();
        if (plan.setsBefore) await inNs(ns, 'ipset', ['restore', '-exist'], plan.setsBefore);
        if (plan.filter) await inNs(ns, 'iptables-restore', ['--noflush'], plan.filter);
        const t2 = performance.now();
        full.push(t2 - t0);
        fullKernel.push(t2 - t1);
        entries = (plan.filter ?? '').split('\n').filter((l) => l.startsWith('-A ')).length;
        // One pod's label changes: its policy no longer selects it.
        const moved = cluster((i) => (i === 7 ? 'moved' : `p${i}`));
        const s0 = performance.now();
        const again = compileNodePolicy(world(moved.objects), moved.pods, 'n1');
        const [filterSave, ipsetSave] = await Promise.all([inNs(ns, 'iptables-save', ['-t', 'filter']), inNs(ns, 'ipset', ['save'])]);
        const p2 = planPolicy(desiredPolicy(rulesOf(again, 2), veths), readPolicyActual(filterSave, ipsetSave));
        if (p2.setsBefore) await inNs(ns, 'ipset', ['restore', '-exist'], p2.setsBefore);
        if (p2.filter) await inNs(ns, 'iptables-restore', ['--noflush'], p2.filter);
        if (p2.setsAfter) await inNs(ns, 'ipset', ['restore', '-exist'], p2.setsAfter);
        change.push(performance.now() - s0);
        if (!p2.filter || p2.changed.length > 4) throw new Error(`one pod's change should rewrite a few chains, not ${p2.changed.length}: ${p2.changed.slice(0, 5).join(', ')}`);
      } finally {
        await run('ip', ['netns', 'del', ns]).catch(() => {});
      }
      const { stdout } = await run('bash', [FLOOR, String(PODS * 10)]);
      const f = JSON.parse(stdout.trim().split('\n').at(-1)!) as { full_s: number; incremental10_s: number };
      floorFull.push(f.full_s * 1000);
      floorInc.push(f.incremental10_s * 1000);
    }
    rows.push({ figure: `${PODS} pods × 10 rules from scratch (${entries} iptables rules): compile + render + apply`, value: ms(median(full)), baseline: `iptables-restore ${PODS * 10} rules ${ms(median(floorFull))}`, ratio: `${(median(full) / median(floorFull)).toFixed(2)}x`, goal: '<= 500 ms' });
    rows.push({ figure: '  of which ipset restore + iptables-restore', value: ms(median(fullKernel)) });
    rows.push({ figure: 'one pod\'s label change: compile + read back + plan + apply', value: ms(median(change)), baseline: `incremental restore of 10 rules ${ms(median(floorInc))}`, ratio: `${(median(change) / median(floorInc)).toFixed(2)}x`, goal: '<= 20 ms (commit to kernel)' });
    printTable(`bench/policy — medians of ${RUNS} runs; one node, its own network namespace`, rows);
  } finally {
    await run('ip', ['netns', 'del', ns]).catch(() => {});
  }
}

main().then(() => process.exit(0), (err) => {
  process.stderr.write(`bench/policy: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
