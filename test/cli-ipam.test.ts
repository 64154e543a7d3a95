import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { createClient } from '../lib/grpc/client.js';
import pg from 'pg';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { RoutesServiceService } from '../gen/weft/routes/v1/routes.js';
import { bin } from './support/processes.js';
import { startTestControlPlane, type TestControlPlane } from './support/control-plane.js';

/** The `weft ipam` commands as an operator types them, against a real control plane. */
const run = promisify(execFile);
let cp: TestControlPlane;

before(async () => {
  cp = await startTestControlPlane();
});
after(async () => {
  await cp?.stop();
});

const weft = (...args: string[]) =>
  run(bin.weft, [...args, '--server', cp.address, '--tls-dir', cp.tlsDir], { timeout: 30_000 });

async function fails(args: string[]): Promise<{ code: number; stderr: string }> {
  try {
    await weft(...args);
  } catch (err) {
    const e = err as { code: number; stderr: string };
    return { code: e.code, stderr: e.stderr };
  }
  throw new Error(`weft ${args.join(' ')} succeeded`);
}

test('pools, utilization, show and history from the command line', async () => {
  await weft('ipam', 'pool', 'create', 'default', '10.244.0.0/16', '--block-prefix-length', '26', '--cooldown', '0');
  await weft('ipam', 'pool', 'create', 'v6', 'fd00:10:244::/48', '--block-prefix-length', '122');
  const pools = JSON.parse((await weft('ipam', 'pools', '--json')).stdout) as {
    name: string;
    cooldownSeconds: number;
  }[];
  assert.deepEqual(
    pools.map((p) => [p.name, p.cooldownSeconds]),
    [
      ['default', 0],
      ['v6', 30],
    ],
  );

  const ipam = createClient(IpamServiceService, cp.address, { security: cp.security });
  const { allocations } = await ipam.allocate({
    handle: 'c1/eth0',
    node: 'n1',
    podNamespace: 'shop',
    podName: 'cart-0',
    podUid: '5a1d-77',
  });
  ipam.close();
  assert.equal(allocations.length, 2, 'dual-stack: one address per family');
  const listed = JSON.parse((await weft('ipam', 'allocations', '--node', 'n1', '--json')).stdout) as {
    handle: string;
    podUid: string;
  }[];
  assert.deepEqual(
    listed.map((a) => [a.handle, a.podUid]),
    [
      ['c1/eth0', '5a1d-77'],
      ['c1/eth0', '5a1d-77'],
    ],
    'the pod UID is listed',
  );

  const util = JSON.parse((await weft('ipam', 'utilization', '--pool', 'default', '--json')).stdout);
  assert.deepEqual(util[0].counts, { total: '65536', allocated: 1, coolingDown: 0, reserved: '0', free: '65535' });
  assert.equal(util[0].nodes[0].node, 'n1');

  const shown = JSON.parse((await weft('ipam', 'show', allocations[0]!.address, '--json')).stdout);
  assert.equal(shown[0].allocation.podName, 'cart-0');
  const text = (await weft('ipam', 'history', '--pod', 'shop/cart-0')).stdout;
  for (const a of allocations) assert.ok(text.includes(a.address), `history lists ${a.address}:\n${text}`);
});

test("bad input: exit status 2 for usage, 1 with the server's message for a refused request", async () => {
  const usage = await fails(['ipam', 'history']);
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /usage: weft ipam history/);
  const badTime = await fails(['ipam', 'show', '10.244.0.1', '--at', 'yesterday-ish']);
  assert.equal(badTime.code, 2);
  assert.match(badTime.stderr, /not a time/);
  const overlap = await fails(['ipam', 'pool', 'create', 'inner', '10.244.1.0/24', '--block-prefix-length', '26']);
  assert.equal(overlap.code, 1);
  assert.match(overlap.stderr, /overlaps existing pool default/);
  const unknown = await fails(['ipam', 'frobnicate']);
  assert.equal(unknown.code, 2);
});

test('reserve, pool update, check and release --leaked from the command line', async () => {
  const ipam = createClient(IpamServiceService, cp.address, { security: cp.security });
  const routes = createClient(RoutesServiceService, cp.address, { security: cp.security });
  const sql = new pg.Client({ connectionString: cp.databaseUrl });
  await sql.connect();
  try {
    await weft('ipam', 'pool', 'create', 'ops', '10.250.0.0/24', '--block-prefix-length', '28');
    const r = JSON.parse(
      (await weft('ipam', 'reserve', 'ops', '10.250.0.0-10.250.0.3', '--reason', 'gateways', '--json')).stdout,
    );
    assert.match(r.name, /^pools\/ops\/reservations\/\d+$/);
    assert.match(
      (await weft('ipam', 'reservations', '--pool', 'ops')).stdout,
      /10\.250\.0\.0\.\.10\.250\.0\.3\s+gateways/,
    );

    await routes.registerNode({ name: 'live-node', underlayAddress: '192.0.2.50', vtepMac: '02:00:00:00:00:50' });
    const first = (await ipam.allocate({ handle: 'ok/eth0', node: 'live-node', pool: 'ops' })).allocation!;
    assert.equal(first.address, '10.250.0.4', 'the reservation is skipped');
    await ipam.allocate({ handle: 'ghost/eth0', node: 'ghost-node', pool: 'ops' });
    const lb = (await weft('ipam', 'check', '--json')).stdout;
    assert.deepEqual(
      JSON.parse(lb).leaked,
      [],
      "an allocation on a name that never registered (an external system's) is not a leak",
    );
    assert.ok(
      JSON.parse(lb).unregistered.some((l: { handle: string }) => l.handle === 'ghost/eth0'),
      'but it is listed',
    );
    await routes.registerNode({ name: 'left-node', underlayAddress: '192.0.2.51', vtepMac: '02:00:00:00:00:51' });
    await ipam.allocate({ handle: 'left/eth0', node: 'left-node', pool: 'ops' });
    await routes.deregisterNode({ name: 'left-node' });

    // Just departed: within the sweeper's grace it is not yet a leak (its agent may still be coming back).
    const fresh = JSON.parse((await weft('ipam', 'check', '--json')).stdout);
    assert.deepEqual(fresh.leaked, []);
    assert.deepEqual(
      fresh.departedRecently.map((l: { handle: string }) => l.handle),
      ['left/eth0'],
    );
    assert.deepEqual(
      JSON.parse((await weft('ipam', 'release', '--leaked', '--json')).stdout).wouldRelease,
      [],
      'nothing to release yet',
    );

    const dirty = await fails(['ipam', 'check', '--older-than', '0']);
    assert.equal(dirty.code, 1, 'leaked allocations make check fail');
    const report = JSON.parse(
      await weft('ipam', 'check', '--older-than', '0', '--json').then(
        (r) => r.stdout,
        (e: { stdout: string }) => e.stdout,
      ),
    );
    assert.deepEqual(report.problems, []);
    assert.deepEqual(
      report.leaked.map((l: { handle: string }) => l.handle),
      ['left/eth0'],
    );
    const dry = JSON.parse((await weft('ipam', 'release', '--leaked', '--older-than', '0', '--json')).stdout);
    assert.ok(dry.dryRun && dry.wouldRelease.includes('left/eth0') && !dry.wouldRelease.includes('ghost/eth0'));
    assert.ok(
      (await ipam.listAllocations({ node: 'left-node' })).allocations.length === 1,
      'a dry run changes nothing',
    );
    await weft('ipam', 'release', '--leaked', '--older-than', '0', '--yes');
    assert.equal((await ipam.listAllocations({ node: 'left-node' })).allocations.length, 0);
    assert.equal(
      (await ipam.listAllocations({ node: 'ghost-node' })).allocations.length,
      1,
      'names that never registered keep theirs',
    );
    assert.equal(
      (await ipam.listAllocations({ node: 'live-node' })).allocations.length,
      1,
      'registered nodes keep theirs',
    );
    const refused = await fails(['ipam', 'release', '--node', 'live-node', '--yes']);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /live-node is a registered node/);
    assert.equal(
      (await ipam.listAllocations({ node: 'live-node' })).allocations.length,
      1,
      'a registered node is never released by name',
    );
    assert.deepEqual(
      JSON.parse((await weft('ipam', 'release', '--node', 'ghost-node', '--json')).stdout).wouldRelease,
      ['ghost/eth0'],
    );
    await weft('ipam', 'release', '--node', 'ghost-node', '--yes');
    assert.equal((await ipam.listAllocations({ node: 'ghost-node' })).allocations.length, 0, 'released when named');

    // Corruption that the database cannot forbid is found and named.
    await sql.query(`UPDATE ipam.blocks SET live_count = live_count + 5 WHERE node = 'live-node'`);
    const corrupt = JSON.parse(
      await weft('ipam', 'check', '--json').then(
        (r) => r.stdout,
        (e: { stdout: string }) => e.stdout,
      ),
    );
    assert.equal(corrupt.problems[0].kind, 'live_count_mismatch');
    await sql.query(`UPDATE ipam.blocks SET live_count = live_count - 5 WHERE node = 'live-node'`);

    await weft('ipam', 'pool', 'update', 'ops', '--disable');
    await assert.rejects(ipam.allocate({ handle: 'late/eth0', node: 'live-node', pool: 'ops' }), /disabled/);
    await weft('ipam', 'pool', 'update', 'ops', '--enable');
    await ipam.allocate({ handle: 'late/eth0', node: 'live-node', pool: 'ops' });
    await weft('ipam', 'unreserve', r.name);
    assert.doesNotMatch((await weft('ipam', 'reservations')).stdout, /gateways/);
    const bad = await fails(['ipam', 'pool', 'update', 'ops', '--disable', '--enable']);
    assert.equal(bad.code, 2);
  } finally {
    ipam.close();
    routes.close();
    await sql.end();
  }
});

test('clusters get pod CIDRs carved from a shared aggregate from the command line', async () => {
  await weft('ipam', 'aggregate', 'create', 'fleet', '10.128.0.0/9');
  for (const c of ['prod-eu', 'prod-us']) await weft('ipam', 'cluster', 'register', c);
  const eu = JSON.parse(
    (await weft('ipam', 'prefix', 'allocate', 'prod-eu', 'fleet', '--length', '14', '--json')).stdout,
  );
  const us = JSON.parse(
    (await weft('ipam', 'prefix', 'allocate', 'prod-us', 'fleet', '--length', '14', '--json')).stdout,
  );
  assert.deepEqual([eu.cidr, us.cidr], ['10.128.0.0/14', '10.132.0.0/14']);
  assert.match((await weft('ipam', 'prefixes', '--cluster', 'prod-us')).stdout, /10\.132\.0\.0\/14\s+prod-us\s+pods/);
  const bad = await fails(['ipam', 'prefix', 'allocate', 'prod-eu', 'fleet']);
  assert.equal(bad.code, 2);
});

test('weft ipam history follows the pages: a node that held 1,200 addresses lists all 1,200', async () => {
  const ipam = createClient(IpamServiceService, cp.address, { security: cp.security });
  try {
    await ipam.createPool({ name: 'busy', cidr: '10.251.0.0/16', blockPrefixLength: 26 });
    for (let b = 0; b < 1200; b += 600) {
      const requests = Array.from({ length: 600 }, (_, k) => ({
        handle: `h${b + k}/eth0`,
        node: 'busy-node',
        pool: 'busy',
        podNamespace: 'batch',
        podName: `job-${b + k}`,
        containerId: `h${b + k}`,
        families: [],
        addresses: [],
        owner: '',
        namespacePool: '',
        nodeLabels: {},
        namespaceLabels: {},
        use: '',
        cluster: '',
        attemptId: '',
        podUid: '',
      }));
      const { results } = await ipam.batchAllocate({ requests });
      const failed = results.filter((r) => r.allocations.length !== 1);
      assert.equal(failed.length, 0, JSON.stringify(failed.slice(0, 2)));
    }
  } finally {
    ipam.close();
  }
  const entries = JSON.parse(
    (
      await run(
        bin.weft,
        ['ipam', 'history', '--node', 'busy-node', '--json', '--server', cp.address, '--tls-dir', cp.tlsDir],
        { timeout: 30_000, maxBuffer: 64 * 1024 * 1024 },
      )
    ).stdout,
  ) as unknown[];
  assert.equal(entries.length, 1200, 'every entry, not the first page of 1,000');
});
