/**
 * The overlay's drivers on the real kernel: the VXLAN device (iproute2) and the neighbour, FDB and route entries
 * (rtnetlink), run by the real dataplane in the real order, inside a throwaway namespace named with a per-run prefix
 * and removed afterwards, also on failure. The code runs in a child process started with `ip netns exec`, so this
 * process never leaves its own namespace. Needs root (and iproute2); skipped otherwise.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { privilegedOrSkip } from '../../test/support/privileges.js';

const sh = promisify(execFile);
const ns = `wod${process.pid.toString(36)}-node`;
const url = (rel: string) => JSON.stringify(new URL(rel, import.meta.url).href);

/** Runs `body` inside the namespace with `node` (a fresh agent's drivers: new tables) and `sh` in scope; returns what it returns, as JSON. */
async function inNode(dir: string, body: string): Promise<any> {
  const file = path.join(dir, `step-${Math.random().toString(36).slice(2)}.mjs`);
  writeFileSync(
    file,
    `
import { execFileSync } from 'node:child_process';
import { createDataplane } from ${url('../kernel-table/dataplane.js')};
import { createVxlanDeviceDriver } from ${url('../drivers/vxlan-device.js')};
import { createNeighbourDriver } from ${url('../drivers/neighbours.js')};
import { createFdbDriver } from ${url('../drivers/fdb.js')};
import { createRouteDriver } from ${url('../drivers/routes.js')};
import { ORDER, DEPENDENTS } from ${url('../drivers/registry.js')};
import { computeDesired } from ${url('../domain/desired.js')};
import { createOverlayNetlink } from ${url('./netlink-overlay.js')};
import { createVxlanDeviceAccess, vxlanStateFor } from ${url('./vxlan-device.js')};
const sh = (...args) => execFileSync(args[0], args.slice(1), { encoding: 'utf8' });
const logger = { debug() {}, info() {}, warn() {}, error() {}, child() { return logger; } };
const underlayIfindex = JSON.parse(sh('ip', '-j', 'link', 'show', 'dev', 'under0'))[0].ifindex;
/** A fresh agent's drivers (new tables: the first apply reads everything back), wanting the given peers. */
function node(peers, spec = { name: 'weft.vxlan', vni: 4096, port: 4789, localAddress: '192.0.2.10', underlayInterface: 'under0', mtu: 1450 }) {
  const device = createVxlanDeviceDriver(createVxlanDeviceAccess('weft.vxlan', logger));
  const nl = createOverlayNetlink({ routeProtocol: 87, logger, devices: () => ({ vxlan: device.ifindex(), underlay: underlayIfindex }) });
  const drivers = [device, createNeighbourDriver(nl.neighbours, 'weft.vxlan'), createFdbDriver(nl.fdb, 'weft.vxlan'), createRouteDriver(nl.routes, 'weft.vxlan')];
  const dataplane = createDataplane({ drivers, order: ORDER.filter((p) => drivers.some((d) => d.kind === p.kind)), dependents: DEPENDENTS });
  const want = (peers) => {
    const d = computeDesired('self', peers, { mode: 'auto', underlay: { address: '192.0.2.10', prefixLength: 24 } });
    device.table.replaceDesired(new Map([[spec.name, vxlanStateFor(spec)]]));
    drivers[1].table.replaceDesired(d.neighbours);
    drivers[2].table.replaceDesired(d.fdb);
    drivers[3].table.replaceDesired(d.routes);
  };
  want(peers);
  return { dataplane, want, nl, device, close: () => nl.close() };
}
const lines = (text) => text.split('\\n').map((l) => l.trim()).filter(Boolean);
const kernel = () => ({
  routes: lines(sh('ip', 'route', 'show', 'proto', '87')),
  neighbours: lines(sh('ip', 'neigh', 'show', 'dev', 'weft.vxlan', 'nud', 'permanent')),
  fdb: lines(sh('bridge', 'fdb', 'show', 'dev', 'weft.vxlan')).filter((l) => !l.startsWith('00:00:00:00:00:00')),
});
const summary = (r) => ({ reads: r.reads.sort(), changes: r.changes.map((c) => c.op + ' ' + c.kind + ' ' + c.key), failed: r.failed.map((f) => f.kind + ' ' + f.key), held: r.held.map((h) => h.op + ' ' + h.kind + ' ' + h.key) });
const out = await (async () => { ${body} })();
process.stdout.write(JSON.stringify(out));
process.exit(0);
`,
  );
  const { stdout } = await sh('ip', ['netns', 'exec', ns, process.execPath, file]);
  return JSON.parse(stdout);
}

const far = {
  node: 'far',
  underlayAddress: '198.51.100.12',
  vtepMac: '02:57:c6:33:64:0c',
  blockCidrs: ['10.244.1.0/26'],
};
const near = {
  node: 'near',
  underlayAddress: '192.0.2.13',
  vtepMac: '02:57:c0:00:02:0d',
  blockCidrs: ['10.244.3.0/26'],
};

describe('the overlay drivers on the real kernel', privilegedOrSkip(), () => {
  let dir = '';
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'weft-overlay-drivers-'));
    await sh('ip', ['netns', 'add', ns]);
    await sh('ip', ['-n', ns, 'link', 'add', 'under0', 'type', 'veth', 'peer', 'name', 'under1']);
    await sh('ip', ['-n', ns, 'link', 'set', 'under1', 'up']);
    await sh('ip', ['-n', ns, 'addr', 'add', '192.0.2.10/24', 'dev', 'under0']);
    await sh('ip', ['-n', ns, 'link', 'set', 'under0', 'up']);
  });
  after(async () => {
    await sh('ip', ['netns', 'del', ns]).catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  });

  it('makes the device and the entries in order; a restarted agent adopts them all; a withdrawn peer is removed; a gone entry deletes as success', async () => {
    const first = await inNode(
      dir,
      `
      const n = node(${JSON.stringify([far, near])});
      const r = summary(await n.dataplane.apply());
      n.close();
      return { r, kernel: kernel() };
    `,
    );
    assert.equal(first.r.changes[0], 'update device weft.vxlan', 'the device first, then neighbour, FDB and routes');
    assert.deepEqual(first.r.changes.slice(1, 3), ['update neighbour 10.244.1.0', 'update fdb 02:57:c6:33:64:0c']);
    assert.deepEqual(first.r.changes.slice(3).sort(), ['update route 10.244.1.0/26', 'update route 10.244.3.0/26']);
    assert.deepEqual(first.kernel.routes.sort(), [
      '10.244.1.0/26 via 10.244.1.0 dev weft.vxlan onlink',
      '10.244.3.0/26 via 192.0.2.13 dev under0',
    ]);
    assert.deepEqual(first.kernel.neighbours, ['10.244.1.0 lladdr 02:57:c6:33:64:0c PERMANENT']);
    assert.match(first.kernel.fdb.join('\n'), /^02:57:c6:33:64:0c dst 198\.51\.100\.12 self permanent$/m);

    const restart = await inNode(
      dir,
      `
      const n = node(${JSON.stringify([far, near])});
      const r = summary(await n.dataplane.apply());
      const again = summary(await n.dataplane.apply());
      n.close();
      return { r, again, kernel: kernel() };
    `,
    );
    assert.deepEqual(
      restart.r,
      { reads: ['device', 'fdb', 'neighbour', 'route'], changes: [], failed: [], held: [] },
      'everything read back, nothing deleted or re-added',
    );
    assert.deepEqual(
      restart.again,
      { reads: [], changes: [], failed: [], held: [] },
      'not marked for resync: nothing read',
    );
    assert.deepEqual(restart.kernel, first.kernel);

    const withdrawn = await inNode(
      dir,
      `
      const n = node(${JSON.stringify([near])});
      const r = summary(await n.dataplane.apply());
      // Deleting what is already gone is success.
      await n.nl.neighbours.remove('10.244.1.0', { kind: 'neighbour', key: '10.244.1.0', ip: '10.244.1.0', mac: '02:57:c6:33:64:0c' });
      await n.nl.routes.remove('10.244.1.0/26', { kind: 'route', key: '10.244.1.0/26', cidr: '10.244.1.0/26', gateway: '10.244.1.0', mode: 'vxlan' });
      n.close();
      return { r, kernel: kernel() };
    `,
    );
    assert.deepEqual(
      withdrawn.r.changes,
      ['delete route 10.244.1.0/26', 'delete fdb 02:57:c6:33:64:0c', 'delete neighbour 10.244.1.0'],
      'the route first',
    );
    assert.deepEqual(withdrawn.kernel, {
      routes: ['10.244.3.0/26 via 192.0.2.13 dev under0'],
      neighbours: [],
      fdb: [],
    });
  });

  it('a device that cannot be made holds back everything that lives on it; a direct route goes on', async () => {
    const out = await inNode(
      dir,
      `
      sh('ip', 'link', 'del', 'weft.vxlan');
      sh('ip', 'route', 'flush', 'proto', '87');
      const n = node(${JSON.stringify([far, near])}, { name: 'weft.vxlan', vni: 4096, port: 4789, localAddress: '192.0.2.10', underlayInterface: 'nosuchdev0', mtu: 1450 });
      const r = summary(await n.dataplane.apply());
      n.close();
      return { r, routes: sh('ip', 'route', 'show', 'proto', '87').trim() };
    `,
    );
    assert.deepEqual(out.r.failed, ['device weft.vxlan']);
    assert.deepEqual(out.r.held.sort(), [
      'update fdb 02:57:c6:33:64:0c',
      'update neighbour 10.244.1.0',
      'update route 10.244.1.0/26',
    ]);
    assert.deepEqual(out.r.changes, ['update route 10.244.3.0/26']);
    assert.equal(out.routes, '10.244.3.0/26 via 192.0.2.13 dev under0');
  });
});
