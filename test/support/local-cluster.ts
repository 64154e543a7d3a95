import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { isAlive, readState, type ClusterState } from '../../cli/cluster/cluster.js';
import { bin } from './processes.js';

const run = promisify(execFile);

/**
 * Takes a test's local cluster down (`weft cluster down`) and proves nothing of it is left: no namespace with the
 * run's prefix, no agent or control plane process, its state folder gone, and the xtables lock file (which iptables
 * inside a node's namespace creates on the shared /run) removed when it was not there before the test.
 */
export async function takeDownLocalCluster(opts: {
  weft: (...args: string[]) => Promise<string>;
  stateDir: string;
  state: ClusterState | null;
  xtablesLockExisted: boolean;
}): Promise<void> {
  const prefix = opts.state?.prefix;
  const pids = opts.state
    ? [opts.state.controlPlane.pid, ...readState(opts.stateDir).nodes.map((n) => n.agentPid)]
    : [];
  await opts.weft('cluster', 'down');
  rmSync(opts.stateDir, { recursive: true, force: true });
  if (!opts.xtablesLockExisted) rmSync('/run/xtables.lock', { force: true });
  if (prefix) {
    const { stdout } = await run('ip', ['netns', 'list']);
    assert.ok(!stdout.includes(prefix), `namespaces left behind:\n${stdout}`);
    for (const pid of pids) assert.ok(!isAlive(pid), `process ${pid} left running`);
  }
}

/** A local cluster of one test file, in a state folder of its own (`weft cluster up --state-dir`). */
export interface TestCluster {
  stateDir: string;
  /** Null when `cluster up` failed before it wrote its state. */
  state: ClusterState | null;
  xtablesLockExisted: boolean;
}

/**
 * Brings up a local cluster of `nodes` nodes in a fresh folder named after `label`. The cluster is returned even when
 * `cluster up` fails (then `up` rejects too: call `takeDownTestCluster` in `after` either way).
 */
export function bringUpTestCluster(
  label: string,
  nodes = 1,
  /** More arguments of `weft cluster up` (e.g. --control-plane-env FILE). */
  extraArgs: string[] = [],
): { cluster: TestCluster; up: Promise<ClusterState> } {
  const cluster: TestCluster = { stateDir: '', state: null, xtablesLockExisted: existsSync('/run/xtables.lock') };
  cluster.stateDir = mkdtempSync(path.join(tmpdir(), `weft-${label}-`));
  chmodSync(cluster.stateDir, 0o755); // the control plane's PostgreSQL runs as 'postgres' and keeps its data below
  const up = (async () => {
    try {
      await run(bin.weft, ['cluster', 'up', '--nodes', String(nodes), '--state-dir', cluster.stateDir, ...extraArgs], {
        timeout: 180_000,
      });
    } finally {
      if (existsSync(path.join(cluster.stateDir, 'state.json'))) cluster.state = readState(cluster.stateDir);
    }
    return cluster.state!;
  })();
  return { cluster, up };
}

/** `weft cluster down` for a TestCluster, its folder removed, and proof that no namespace of its prefix is left. */
export async function takeDownTestCluster(cluster: TestCluster | undefined): Promise<void> {
  if (!cluster) return;
  const prefix = cluster.state?.prefix;
  await run(bin.weft, ['cluster', 'down', '--state-dir', cluster.stateDir], { timeout: 120_000 }).catch((err) =>
    console.error(err),
  );
  rmSync(cluster.stateDir, { recursive: true, force: true });
  // iptables inside a node's namespace creates its lock file on the shared /run.
  if (!cluster.xtablesLockExisted) rmSync('/run/xtables.lock', { force: true });
  if (prefix) {
    const { stdout } = await run('ip', ['netns', 'list']);
    assert.ok(!stdout.includes(prefix), `namespaces left behind:\n${stdout}`);
  }
}
