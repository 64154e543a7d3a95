import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createClient } from '../lib/grpc/client.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { RoutesServiceService } from '../gen/weft/routes/v1/routes.js';
import { bin } from './support/processes.js';
import { startTestControlPlane, type TestControlPlane } from './support/control-plane.js';

/** `weft nodes --watch` and `weft ipam allocations --watch` against a real control plane, stopped as a person would. */
let cp: TestControlPlane;
const children: ChildProcess[] = [];

before(async () => {
  cp = await startTestControlPlane();
});
after(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await cp?.stop();
});

/** Starts `weft ARGS`; `lines` grows as it prints; `until` waits for a line that matches. */
function watch(args: string[]) {
  const child = spawn(bin.weft, [...args, '--server', cp.address, '--tls-dir', cp.tlsDir], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  const lines: string[] = [];
  let stderr = '';
  let partial = '';
  const waiters: (() => void)[] = [];
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    const parts = (partial + d).split('\n');
    partial = parts.pop()!;
    lines.push(...parts);
    for (const w of waiters.splice(0)) w();
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => void (stderr += d));
  const until = async (match: (line: string) => boolean, what: string): Promise<string> => {
    const deadline = Date.now() + 20_000;
    for (;;) {
      const hit = lines.find(match);
      if (hit !== undefined) return hit;
      if (Date.now() > deadline || child.exitCode !== null)
        throw new Error(`no ${what} from weft ${args.join(' ')}; printed:\n${lines.join('\n')}\nstderr: ${stderr}`);
      await new Promise<void>((resolve) => {
        waiters.push(resolve);
        setTimeout(resolve, 200);
      });
    }
  };
  const stop = async (signal: NodeJS.Signals) => {
    const exited = once(child, 'exit');
    child.kill(signal);
    const [code] = (await exited) as [number | null];
    return { code, stderr };
  };
  return { lines, until, stop };
}

test('weft ipam allocations --watch prints each allocation and release as it happens, and ends with status 0 on Ctrl-C', async () => {
  const ipam = createClient(IpamServiceService, cp.address, { security: cp.security });
  try {
    await ipam.createPool({ name: 'w', cidr: '10.60.0.0/16', blockPrefixLength: 26 });
    await ipam.allocate({ handle: 'before/eth0', node: 'n1', podNamespace: 'shop', podName: 'old' });
    const w = watch(['ipam', 'allocations', '--watch', '--interval', '0.2', '-o', 'json']);
    const listed = JSON.parse(await w.until((l) => l.includes('before/eth0'), 'the allocation that was there')) as {
      type: string;
      allocation: { family: string };
    };
    assert.equal(listed.type, 'ADDED');
    assert.equal(listed.allocation.family, 'IPv4', 'the family by name, not its number');
    const { allocation } = await ipam.allocate({
      handle: 'later/eth0',
      node: 'n2',
      podNamespace: 'shop',
      podName: 'new',
    });
    const added = JSON.parse(await w.until((l) => l.includes('later/eth0'), 'the new allocation')) as {
      type: string;
      allocation: { address: string };
    };
    assert.deepEqual([added.type, added.allocation.address], ['ADDED', allocation!.address]);
    await ipam.release({ handle: 'later/eth0' });
    await w.until((l) => l.includes('later/eth0') && l.includes('"DELETED"'), 'the release');
    assert.deepEqual(await w.stop('SIGINT'), { code: 0, stderr: '' });
    assert.equal(w.lines.filter((l) => l.includes('before/eth0')).length, 1, 'an unchanged allocation is printed once');
  } finally {
    ipam.close();
  }
});

test('weft nodes --watch streams route-table changes (ADDED, DELETED) after the table, until SIGTERM', async () => {
  const routes = createClient(RoutesServiceService, cp.address, { security: cp.security });
  try {
    await routes.registerNode({ name: 'watch-a', underlayAddress: '192.0.2.41', vtepMac: '02:00:c0:00:02:29' });
    const w = watch(['nodes', '--watch']);
    await w.until((l) => /^watch-a\s+Ready\s+192\.0\.2\.41\s/.test(l), 'the table row of watch-a');
    assert.match(w.lines[0]!, /^NAME\s+STATE\s+UNDERLAY\s+LEASE\s+AGENT$/);
    await routes.registerNode({ name: 'watch-b', underlayAddress: '192.0.2.42', vtepMac: '02:00:c0:00:02:2a' });
    await w.until((l) => /^ADDED\s+watch-b\s+192\.0\.2\.42\s/.test(l), 'watch-b ADDED');
    await routes.deregisterNode({ name: 'watch-b' });
    await w.until((l) => /^DELETED\s+watch-b\s/.test(l), 'watch-b DELETED');
    assert.deepEqual(await w.stop('SIGTERM'), { code: 0, stderr: '' });
    assert.ok(
      !w.lines.some((l) => /^(ADDED|MODIFIED)\s+watch-a\s/.test(l)),
      'a node already listed is not printed again while unchanged',
    );
  } finally {
    routes.close();
  }
});
