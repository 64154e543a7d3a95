/**
 * The pod drivers' kernel access (pod-host.ts) in the kernel: a throwaway "node" namespace (where the code runs, as
 * the agent runs in its node's) and a "pod" namespace, both named with a per-run prefix and removed afterwards, also
 * on failure. A pod is attached with the real attachPod; the access then reads it back, finds what was changed by
 * hand, repairs it, and removes a stale veth only while its name still denotes the device it read.
 * Needs root (and iproute2, nsenter); skipped otherwise.
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
const prefix = `wph${process.pid.toString(36)}`;
const nodeNs = `${prefix}-node`;
const podNs = `${prefix}-pod`;
const podPath = `/var/run/netns/${podNs}`;
const here = (f: string) => JSON.stringify(new URL(f, import.meta.url).href);

/** Runs `body` inside the node namespace with attachPod, the access (`pods`) and sh in scope; returns what it gives back. */
async function inNode(dir: string, body: string): Promise<unknown> {
  const file = path.join(dir, `step-${Math.random().toString(36).slice(2)}.mjs`);
  writeFileSync(
    file,
    `
import { attachPod } from ${here('./pod-network.js')};
import { createPodHostAccess } from ${here('./pod-host.js')};
import { silentLogger } from ${here('../../lib/logger.js')};
import { execFileSync } from 'node:child_process';
const sh = (...args) => execFileSync(args[0], args.slice(1), { encoding: 'utf8' });
const pods = createPodHostAccess({ routeProtocol: 87, paths: { procSysNet: '/proc/sys/net', sysDir: '/sys' }, logger: silentLogger });
const obj = (m) => Object.fromEntries(m);
const out = await (async () => { ${body} })();
pods.close();
process.stdout.write(JSON.stringify(out));
`,
  );
  const { stdout } = await sh('ip', ['netns', 'exec', nodeNs, process.execPath, file]);
  return JSON.parse(stdout);
}

describe('the pod drivers\u2019 kernel access', privilegedOrSkip(), () => {
  let dir = '';
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'weft-pod-host-'));
    await sh('ip', ['netns', 'add', nodeNs]);
    await sh('ip', ['netns', 'add', podNs]);
  });
  after(async () => {
    for (const ns of [podNs, nodeNs]) await sh('ip', ['netns', 'del', ns]).catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  });

  it('reads back what attachPod made, and nothing that is not a pod link or not Weft\u2019s route', async () => {
    const out = (await inNode(
      dir,
      `
      const a = await attachPod({ containerId: 'c1', nsPath: ${JSON.stringify(podPath)}, ifname: 'eth0', mtu: 1400, routeProtocol: 87, ipv6: true,
        address: Promise.resolve({ ipv4: '10.244.9.9', ipv6: 'fd00:10:244::9' }) });
      // Not Weft's: another veth, a route of another protocol on the pod link.
      sh('ip', 'link', 'add', 'other0', 'type', 'veth', 'peer', 'name', 'other1');
      sh('ip', 'route', 'add', '10.244.9.99/32', 'dev', a.hostIfname, 'proto', 'static');
      return { host: a.hostIfname, index: Number(sh('cat', '/sys/class/net/' + a.hostIfname + '/ifindex')),
        links: obj(await pods.links.read()), routes: obj(await pods.routes.read()) };
    `,
    )) as { host: string; index: number; links: object; routes: object };
    assert.deepEqual(out.links, {
      [out.host]: { name: out.host, proxyArp: true, proxyDelay: 0, gateway6: true, ifindex: out.index },
    });
    assert.deepEqual(out.routes, {
      '10.244.9.9/32': { cidr: '10.244.9.9/32', dev: out.host, ifindex: out.index },
      'fd00:10:244::9/128': { cidr: 'fd00:10:244::9/128', dev: out.host, ifindex: out.index },
    });
  });

  it('repairs a host route and proxy ARP changed by hand; a veth that is gone waits, it is no failure', async () => {
    const out = (await inNode(
      dir,
      `
      const host = Object.keys(obj(await pods.links.read()))[0];
      sh('ip', 'route', 'del', '10.244.9.9/32', 'dev', host);
      sh('sh', '-c', 'echo 0 > /proc/sys/net/ipv4/conf/' + host + '/proxy_arp');
      const drifted = { links: obj(await pods.links.read()), routes: Object.keys(obj(await pods.routes.read())) };
      const link = drifted.links[host];
      await pods.links.write(host, { ...link, proxyArp: true, gateway6: true }, link);
      await pods.routes.write('10.244.9.9/32', { cidr: '10.244.9.9/32', dev: host });
      const absent = await pods.routes.write('10.244.9.50/32', { cidr: '10.244.9.50/32', dev: 'weft0000000dead' }).then(() => null, (e) => e.name);
      const absentLink = await pods.links.write('weft0000000dead', { name: 'weft0000000dead', proxyArp: true, proxyDelay: 0, gateway6: false }).then(() => null, (e) => e.name);
      return { drifted, absent, absentLink, route: sh('ip', 'route', 'show', '10.244.9.9/32', 'proto', '87').trim(),
        proxyArp: sh('cat', '/proc/sys/net/ipv4/conf/' + host + '/proxy_arp').trim(), host };
    `,
    )) as Record<string, any>;
    assert.equal(out.drifted.links[out.host].proxyArp, false);
    assert.deepEqual(out.drifted.routes, ['fd00:10:244::9/128']);
    assert.equal(out.route, `10.244.9.9 dev ${out.host} scope link`);
    assert.equal(out.proxyArp, '1');
    assert.equal(out.absent, 'EntryWaiting');
    assert.equal(out.absentLink, 'EntryWaiting');
  });

  it('removes a stale veth only while its name denotes the device read back; its host route goes with it', async () => {
    const out = (await inNode(
      dir,
      `
      sh('ip', 'link', 'add', 'weft000000000ff', 'type', 'veth', 'peer', 'name', 'stalepeer');
      const stale = obj(await pods.links.read())['weft000000000ff'];
      // The veth is re-made under the same name (a newer ADD's): not the one read back, so it stays.
      sh('ip', 'link', 'del', 'weft000000000ff');
      sh('ip', 'link', 'add', 'weft000000000ff', 'type', 'veth', 'peer', 'name', 'stalepeer');
      await pods.links.remove('weft000000000ff', stale);
      const kept = sh('ip', '-br', 'link', 'show', 'weft000000000ff').includes('weft000000000ff');
      const now = obj(await pods.links.read())['weft000000000ff'];
      await pods.links.remove('weft000000000ff', now);
      await pods.links.remove('weft000000000ff', now);
      return { kept, gone: !sh('ip', '-br', 'link', 'show', 'type', 'veth').includes('weft000000000ff') };
    `,
    )) as Record<string, unknown>;
    assert.deepEqual(out, { kept: true, gone: true });
  });
});
