import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  AGENT_METRICS_PORT,
  clusterDown,
  clusterUp,
  networkConfig,
  runCni,
  runPluginInNetns,
  type NodeState,
} from '../cli/cluster/cluster.js';
import { run } from '../lib/exec.js';
import { median, ms, percentile, printTable, type Row } from './support.js';

/**
 * bench/cni: weft-cni ADD and DEL latency per pod (p50, p99), run exactly as a runtime runs it on a node of the local
 * cluster, beside the bare start-up of `node -e 0` and beside Debian's reference bridge + host-local plugins on the
 * same node, in the same run. Beside ADD it times the phases: `weft-cni` VERSION (Node start-up plus loading the
 * bundle, no agent call) and the agent's own time per Attach/Detach (weft_agent_cni_call_duration_seconds, read from
 * the node agent's metrics before and after each run: a mean, not a percentile). A second table breaks ADD down: the
 * plugin's phases (WEFT_CNI_TIMING=1 makes weft-cni print its phase marks on stderr: Node start-up and the bundle,
 * stdin, config, loading the agent client, connecting, the call, writing the result, and what remains of the wall
 * time: exit and `ip netns exec`), the agent's Attach steps (weft_agent_attach_phase_duration_seconds) and its Detach
 * steps (weft_agent_detach_phase_duration_seconds: deleting the veth, IPAM's Release). Knobs: WEFT_BENCH_PODS (30), WEFT_BENCH_RUNS (3), WEFT_BENCH_CNI (the
 * plugin file, e.g. dist/bin/weft-cni-static; default the local cluster's dist/bin/weft-cni). Needs root and
 * containernetworking-plugins (bench/install-deps.sh installs it).
 */
const PODS = Number(process.env.WEFT_BENCH_PODS ?? 30);
const RUNS = Number(process.env.WEFT_BENCH_RUNS ?? 3);
const REF = '/usr/lib/cni';
const PLUGIN = process.env.WEFT_BENCH_CNI ? path.resolve(process.env.WEFT_BENCH_CNI) : '';
/** Runs the plugin under test in the node's namespace, as the node's runtime would. */
const runWeft = (node: NodeState, env: Record<string, string>, stdin: string) =>
  PLUGIN ? runPluginInNetns(node.netns, PLUGIN, { CNI_PATH: REF, ...env }, stdin) : runCni(node, env, stdin);

function timed(
  file: string,
  args: string[],
  env: Record<string, string>,
  stdin = '',
): Promise<{ ms: number; code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(file, args, {
      env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', ...env },
      stdio: ['pipe', 'pipe', 'ignore'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ ms: performance.now() - t0, code, out }));
    child.stdin.on('error', () => {});
    child.stdin.end(stdin);
  });
}

/** Sum and count of one series of an agent histogram whose labels include all of `labels` ('rpc="attach"', …). */
async function agentHistogram(
  node: NodeState,
  metric: string,
  labels: string[],
): Promise<{ sum: number; count: number }> {
  const stdout = await run('ip', [
    'netns',
    'exec',
    node.netns,
    'curl',
    '-sf',
    `http://127.0.0.1:${AGENT_METRICS_PORT}/metrics`,
  ]);
  const value = (suffix: string) => {
    const line = stdout
      .split('\n')
      .find((l) => l.startsWith(`${metric}_${suffix}{`) && labels.every((x) => l.includes(x)));
    return line ? Number(line.split(' ').at(-1)) : 0;
  };
  return { sum: value('sum'), count: value('count') };
}

/** The agent's own time per successful call of `rpc` (weft_agent_cni_call_duration_seconds). */
const agentCallSeconds = (node: NodeState, rpc: string) =>
  agentHistogram(node, 'weft_agent_cni_call_duration_seconds', [`rpc="${rpc}"`, 'result="ok"']);
/** Steps of the agent's Attach (weft_agent_attach_phase_duration_seconds). */
const AGENT_PHASES = ['allocate', 'host', 'pod'] as const;
/** Steps of the agent's Detach (weft_agent_detach_phase_duration_seconds). */
const DETACH_PHASES = ['link', 'release'] as const;

/**
 * The plugin's own phases of one ADD, from its WEFT_CNI_TIMING line (ms since the process started), and what is
 * left of the wall time measured here (process exit, `ip netns exec`, spawning).
 */
const PLUGIN_PHASES = [
  'start-up',
  'stdin',
  'config',
  'load client',
  'connect',
  'call',
  'result',
  'exit and exec',
] as const;
type PluginPhase = (typeof PLUGIN_PHASES)[number];
function pluginPhases(stderr: string, wallMs: number): Record<PluginPhase, number> {
  const line = stderr.split('\n').find((l) => l.includes('"weft-cni timing"'));
  if (!line) throw new Error(`weft-cni printed no timing line (WEFT_CNI_TIMING=1): ${stderr}`);
  const m = (JSON.parse(line) as { marks: Record<string, number> }).marks;
  return {
    'start-up': m.started!,
    stdin: m.read! - m.started!,
    config: m.parsed! - m.read!,
    'load client': m.loaded! - m.parsed!,
    connect: m.connected! - m.loaded!,
    call: m.answered! - m.connected!,
    result: m.written! - m.answered!,
    'exit and exec': wallMs - m.written!,
  };
}

async function main() {
  if (!existsSync(`${REF}/bridge`))
    throw new Error(
      `${REF}/bridge not found: run \`bash bench/install-deps.sh\` (Debian package containernetworking-plugins)`,
    );
  const dir = mkdtempSync(path.join(tmpdir(), 'weft-bench-cni-'));
  chmodSync(dir, 0o755);
  const state = await clusterUp({ stateDir: path.join(dir, 'cluster'), nodes: 1 });
  const node: NodeState = state.nodes[0]!;
  const results = {
    weftAdd: [] as number[],
    weftDel: [] as number[],
    refAdd: [] as number[],
    refDel: [] as number[],
    bare: [] as number[],
    version: [] as number[],
  };
  const p = {
    weftAdd: [] as number[],
    weftDel: [] as number[],
    refAdd: [] as number[],
    refDel: [] as number[],
    bare: [] as number[],
    version: [] as number[],
  };
  /** Per run: the agent's mean time per Attach and per Detach, in ms. */
  const agentAttach: number[] = [];
  const agentDetach: number[] = [];
  /** Per run: the agent's mean time per Attach phase, and the median of each plugin phase, in ms. */
  const agentPhase: Record<string, number[]> = Object.fromEntries(AGENT_PHASES.map((k) => [k, []]));
  const detachPhase: Record<string, number[]> = Object.fromEntries(DETACH_PHASES.map((k) => [k, []]));
  const pluginPhase: Record<string, number[]> = Object.fromEntries(PLUGIN_PHASES.map((k) => [k, []]));
  try {
    const refConf = JSON.stringify({
      cniVersion: '1.0.0',
      name: 'bench',
      type: 'bridge',
      bridge: 'cnibench0',
      isGateway: true,
      ipam: { type: 'host-local', subnet: '10.99.0.0/16', dataDir: path.join(dir, 'host-local') },
    });
    for (let r = 0; r < RUNS; r++) {
      const run1 = {
        weftAdd: [] as number[],
        weftDel: [] as number[],
        refAdd: [] as number[],
        refDel: [] as number[],
        bare: [] as number[],
        version: [] as number[],
      };
      const attach0 = await agentCallSeconds(node, 'attach');
      const detach0 = await agentCallSeconds(node, 'detach');
      const phases0 = await Promise.all(
        AGENT_PHASES.map((ph) => agentHistogram(node, 'weft_agent_attach_phase_duration_seconds', [`phase="${ph}"`])),
      );
      const detachPhases0 = await Promise.all(
        DETACH_PHASES.map((ph) => agentHistogram(node, 'weft_agent_detach_phase_duration_seconds', [`phase="${ph}"`])),
      );
      const runPhases: Record<string, number[]> = Object.fromEntries(PLUGIN_PHASES.map((k) => [k, []]));
      for (let i = 0; i < PODS; i++) {
        const ns = `${state.prefix}-bench-${r}-${i}`;
        await run('ip', ['netns', 'add', ns]);
        try {
          const env = {
            CNI_CONTAINERID: `bench${r}x${i}`,
            CNI_NETNS: `/var/run/netns/${ns}`,
            CNI_IFNAME: 'eth0',
            CNI_PATH: REF,
          };
          let t = performance.now();
          const add = await runWeft(node, { ...env, CNI_COMMAND: 'ADD', WEFT_CNI_TIMING: '1' }, networkConfig(node));
          const addMs = performance.now() - t;
          run1.weftAdd.push(addMs);
          if (add.exitCode !== 0) throw new Error(`weft-cni ADD failed: ${add.stdout}`);
          for (const [k, v] of Object.entries(pluginPhases(add.stderr, addMs))) runPhases[k]!.push(v);
          t = performance.now();
          const del = await runWeft(node, { ...env, CNI_COMMAND: 'DEL' }, networkConfig(node));
          run1.weftDel.push(performance.now() - t);
          if (del.exitCode !== 0) throw new Error(`weft-cni DEL failed: ${del.stdout}`);
          const refEnv = { ...env, CNI_IFNAME: 'eth1', CNI_CONTAINERID: `ref${r}x${i}` };
          const radd = await timed(
            'ip',
            ['netns', 'exec', node.netns, `${REF}/bridge`],
            { ...refEnv, CNI_COMMAND: 'ADD' },
            refConf,
          );
          if (radd.code !== 0) throw new Error(`bridge ADD failed: ${radd.out}`);
          run1.refAdd.push(radd.ms);
          const rdel = await timed(
            'ip',
            ['netns', 'exec', node.netns, `${REF}/bridge`],
            { ...refEnv, CNI_COMMAND: 'DEL' },
            refConf,
          );
          if (rdel.code !== 0) throw new Error(`bridge DEL failed: ${rdel.out}`);
          run1.refDel.push(rdel.ms);
          run1.bare.push((await timed('ip', ['netns', 'exec', node.netns, process.execPath, '-e', '0'], {})).ms);
          t = performance.now();
          const version = await runWeft(node, { CNI_COMMAND: 'VERSION' }, networkConfig(node));
          run1.version.push(performance.now() - t);
          if (version.exitCode !== 0) throw new Error(`weft-cni VERSION failed: ${version.stdout}`);
        } finally {
          await run('ip', ['netns', 'del', ns]).catch(() => {});
        }
      }
      const attach1 = await agentCallSeconds(node, 'attach');
      const detach1 = await agentCallSeconds(node, 'detach');
      agentAttach.push(((attach1.sum - attach0.sum) / Math.max(1, attach1.count - attach0.count)) * 1000);
      agentDetach.push(((detach1.sum - detach0.sum) / Math.max(1, detach1.count - detach0.count)) * 1000);
      const phases1 = await Promise.all(
        AGENT_PHASES.map((ph) => agentHistogram(node, 'weft_agent_attach_phase_duration_seconds', [`phase="${ph}"`])),
      );
      AGENT_PHASES.forEach((ph, n) =>
        agentPhase[ph]!.push(
          ((phases1[n]!.sum - phases0[n]!.sum) / Math.max(1, phases1[n]!.count - phases0[n]!.count)) * 1000,
        ),
      );
      const detachPhases1 = await Promise.all(
        DETACH_PHASES.map((ph) => agentHistogram(node, 'weft_agent_detach_phase_duration_seconds', [`phase="${ph}"`])),
      );
      DETACH_PHASES.forEach((ph, n) =>
        detachPhase[ph]!.push(
          ((detachPhases1[n]!.sum - detachPhases0[n]!.sum) /
            Math.max(1, detachPhases1[n]!.count - detachPhases0[n]!.count)) *
            1000,
        ),
      );
      for (const k of PLUGIN_PHASES) pluginPhase[k]!.push(median(runPhases[k]!));
      for (const k of Object.keys(run1) as (keyof typeof run1)[]) {
        const sorted = [...run1[k]].sort((a, b) => a - b);
        results[k].push(percentile(sorted, 50));
        p[k].push(percentile(sorted, 99));
      }
    }
  } finally {
    await clusterDown({ stateDir: path.join(dir, 'cluster') });
    rmSync(dir, { recursive: true, force: true });
  }
  const m50 = (k: keyof typeof results) => median(results[k]);
  const m99 = (k: keyof typeof p) => median(p[k]);
  const rows: Row[] = [
    {
      figure: 'weft-cni ADD p50 / p99',
      value: `${ms(m50('weftAdd'))} / ${ms(m99('weftAdd'))}`,
      baseline: `node -e 0: ${ms(m50('bare'))}`,
      ratio: `+${ms(m50('weftAdd') - m50('bare'))}`,
      goal: '<= +30 ms at p50',
    },
    {
      figure: 'weft-cni DEL p50 / p99',
      value: `${ms(m50('weftDel'))} / ${ms(m99('weftDel'))}`,
      baseline: `node -e 0: ${ms(m50('bare'))}`,
      ratio: `+${ms(m50('weftDel') - m50('bare'))}`,
    },
    {
      figure: 'weft-cni VERSION p50 / p99 (start-up + bundle, no agent call)',
      value: `${ms(m50('version'))} / ${ms(m99('version'))}`,
      baseline: `node -e 0: ${ms(m50('bare'))}`,
      ratio: `+${ms(m50('version') - m50('bare'))}`,
    },
    {
      figure: 'agent time per Attach / Detach (mean)',
      value: `${ms(median(agentAttach))} / ${ms(median(agentDetach))}`,
      baseline: 'weft ADD p50 - VERSION p50',
      ratio: ms(m50('weftAdd') - m50('version')),
    },
    {
      figure: 'bridge + host-local ADD p50 / p99',
      value: `${ms(m50('refAdd'))} / ${ms(m99('refAdd'))}`,
      baseline: 'weft ADD p50',
      ratio: (m50('weftAdd') / m50('refAdd')).toFixed(2) + 'x',
    },
    {
      figure: 'bridge + host-local DEL p50 / p99',
      value: `${ms(m50('refDel'))} / ${ms(m99('refDel'))}`,
      baseline: 'weft DEL p50',
      ratio: (m50('weftDel') / m50('refDel')).toFixed(2) + 'x',
    },
  ];
  printTable(
    `bench/cni — medians of ${RUNS} runs of ${PODS} pods, sequential, each run through \`ip netns exec <node>\``,
    rows,
  );
  // Where an ADD's time goes: the plugin's phases (medians), then the agent's steps (means) inside the call.
  const phaseRows: Row[] = [
    ...PLUGIN_PHASES.map((k): Row => ({ figure: `plugin: ${k}`, value: ms(median(pluginPhase[k]!)) })),
    {
      figure: 'plugin: total (weft-cni ADD p50)',
      value: ms(m50('weftAdd')),
      baseline: `node -e 0: ${ms(m50('bare'))}`,
      ratio: `+${ms(m50('weftAdd') - m50('bare'))}`,
    },
    {
      figure: 'agent: Attach (mean, inside "call")',
      value: ms(median(agentAttach)),
      baseline: 'plugin: call',
      ratio: ms(median(pluginPhase.call!) - median(agentAttach)) + ' transport',
    },
    ...AGENT_PHASES.map((k): Row => ({ figure: `agent: ${k} (mean)`, value: ms(median(agentPhase[k]!)) })),
    {
      figure: 'agent: Detach (mean, inside DEL)',
      value: ms(median(agentDetach)),
      baseline: 'weft DEL p50',
      ratio: ms(m50('weftDel')),
    },
    ...DETACH_PHASES.map((k): Row => ({ figure: `agent: detach ${k} (mean)`, value: ms(median(detachPhase[k]!)) })),
  ];
  printTable(
    "Where weft-cni ADD spends its time: plugin phases (ms since process start for start-up; medians) and the agent's Attach steps (means; steps may overlap)",
    phaseRows,
  );
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`bench/cni: ${(err as Error).stack ?? err}\n`);
    process.exit(1);
  },
);
