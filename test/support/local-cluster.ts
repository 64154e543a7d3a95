import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { rmSync } from 'node:fs';
import { promisify } from 'node:util';
import { isAlive, readState, type ClusterState } from '../../cli/cluster/cluster.js';

const run = promisify(execFile);

/**
 * Takes a test's local cluster down (`weft cluster down`) and proves nothing of it is left: no namespace with the
 * run's prefix, no agent or control plane process, its state folder gone, and the xtables lock file (which iptables
 * inside a node's namespace creates on the shared /run) removed when it was not there before the test.
 */
export async function takeDownLocalCluster(opts: { weft: (...args: string[]) => Promise<string>; stateDir: string; state: ClusterState | null; xtablesLockExisted: boolean }): Promise<void> {
  const prefix = opts.state?.prefix;
  const pids = opts.state ? [opts.state.controlPlane.pid, ...readState(opts.stateDir).nodes.map((n) => n.agentPid)] : [];
  await opts.weft('cluster', 'down');
  rmSync(opts.stateDir, { recursive: true, force: true });
  if (!opts.xtablesLockExisted) rmSync('/run/xtables.lock', { force: true });
  if (prefix) {
    const { stdout } = await run('ip', ['netns', 'list']);
    assert.ok(!stdout.includes(prefix), `namespaces left behind:\n${stdout}`);
    for (const pid of pids) assert.ok(!isAlive(pid), `process ${pid} left running`);
  }
}
