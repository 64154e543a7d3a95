/**
 * attachPod and detachPod in the kernel: a throwaway "node" namespace (where the code runs, as the agent runs in its
 * node's) and a "pod" namespace, both named with a per-run prefix and removed afterwards, also on failure. The code
 * runs in a child process started with `ip netns exec <node>`, so this process never leaves its own namespace.
 * Needs root (and iproute2, nsenter); skipped otherwise.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { privilegedOrSkip } from '../../test/support/privileges.js';

const sh = promisify(execFile);
const prefix = `wpn${process.pid.toString(36)}`;
const nodeNs = `${prefix}-node`;
const podNs = `${prefix}-pod`;
const podPath = `/var/run/netns/${podNs}`;
const moduleUrl = new URL('./pod-network.js', import.meta.url).href;

/** Runs `body` (an async function's body, with attachPod, detachPod, hostIfnameFor and sh in scope) inside the node namespace; returns what it prints as JSON. */
async function inNode(dir: string, body: string): Promise<unknown> {
  const file = path.join(dir, `step-${Math.random().toString(36).slice(2)}.mjs`);
  writeFileSync(file, `
import { attachPod, detachPod, hostIfnameFor } from ${JSON.stringify(moduleUrl)};
import { execFileSync } from 'node:child_process';
const sh = (...args) => execFileSync(args[0], args.slice(1), { encoding: 'utf8' });
const out = await (async () => { ${body} })();
process.stdout.write(JSON.stringify(out));
`);
  const { stdout } = await sh('ip', ['netns', 'exec', nodeNs, process.execPath, file]);
  return JSON.parse(stdout);
}

describe('attachPod and detachPod in the kernel', privilegedOrSkip(), () => {
  let dir = '';
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'weft-pod-network-'));
    await sh('ip', ['netns', 'add', nodeNs]);
    await sh('ip', ['netns', 'add', podNs]);
  });
  after(async () => {
    for (const ns of [podNs, nodeNs]) await sh('ip', ['netns', 'del', ns]).catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  });

  it('makes the veth while the address is allocated, then the address, routes, MAC and host route; detach removes it all, twice', async () => {
    const out = await inNode(dir, `
      const a = await attachPod({ containerId: 'c1', nsPath: ${JSON.stringify(podPath)}, ifname: 'eth0', mtu: 1400, routeProtocol: 87,
        address: new Promise((r) => setTimeout(() => r({ ipv4: '10.244.9.9' }), 30)) });
      const state = {
        a,
        host: JSON.parse(sh('ip', '-j', '-d', 'link', 'show', a.hostIfname))[0],
        hostRoutes: sh('ip', 'route', 'show', 'proto', '87').trim(),
        proxyArp: sh('cat', '/proc/sys/net/ipv4/conf/' + a.hostIfname + '/proxy_arp').trim(),
        pod: JSON.parse(sh('nsenter', '--net=${podPath}', 'ip', '-j', 'addr', 'show', 'eth0'))[0],
        podRoutes: sh('nsenter', '--net=${podPath}', 'ip', 'route').trim(),
      };
      await detachPod({ containerId: 'c1', ifname: 'eth0' });
      await detachPod({ containerId: 'c1', ifname: 'eth0' });
      state.after = { links: sh('ip', '-br', 'link', 'show', 'type', 'veth').trim(), routes: sh('ip', 'route', 'show', 'proto', '87').trim(),
        pod: sh('nsenter', '--net=${podPath}', 'ip', '-br', 'link').trim() };
      return state;
    `) as Record<string, any>;
    assert.equal(out.a.address, '10.244.9.9');
    assert.equal(out.a.podMac, '0a:58:0a:f4:09:09');
    assert.equal(out.host.mtu, 1400);
    assert.ok(out.host.flags.includes('UP'));
    assert.equal(out.hostRoutes, `10.244.9.9 dev ${out.a.hostIfname} scope link`);
    assert.equal(out.proxyArp, '1');
    assert.equal(out.pod.address, '0a:58:0a:f4:09:09');
    assert.equal(out.pod.mtu, 1400);
    assert.ok(out.pod.flags.includes('UP'));
    assert.deepEqual(out.pod.addr_info.filter((x: { family: string }) => x.family === 'inet').map((x: { local: string; prefixlen: number }) => `${x.local}/${x.prefixlen}`), ['10.244.9.9/32']);
    assert.equal(out.podRoutes, 'default via 169.254.1.1 dev eth0 \n169.254.1.1 dev eth0 scope link');
    assert.deepEqual(out.after, { links: '', routes: '', pod: out.after.pod });
    assert.doesNotMatch(out.after.pod, /eth0/);
  });

  it('rolls back when the interface name is taken in the pod, only after the address settled, without crashing the process', async () => {
    await sh('ip', ['-n', podNs, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0peer']);
    try {
      const out = await inNode(dir, `
        let settled = false;
        const err = await attachPod({ containerId: 'c2', nsPath: ${JSON.stringify(podPath)}, ifname: 'eth0', mtu: 1400, routeProtocol: 87,
          address: new Promise((r) => setTimeout(() => { settled = true; r({ ipv4: '10.244.9.10' }); }, 50)) }).then(() => null, (e) => e.message);
        await new Promise((r) => setTimeout(r, 100)); // an unhandled rejection would have ended the process by now
        return { err, settledFirst: settled, links: sh('ip', '-br', 'link', 'show', 'type', 'veth').trim(), routes: sh('ip', 'route', 'show', 'proto', '87').trim() };
      `) as Record<string, unknown>;
      assert.match(String(out.err), new RegExp(`an interface named eth0 already exists in network namespace ${podPath}`));
      assert.equal(out.settledFirst, true, 'attachPod threw only once the address had settled');
      assert.deepEqual({ links: out.links, routes: out.routes }, { links: '', routes: '' });
    } finally {
      await sh('ip', ['-n', podNs, 'link', 'del', 'eth0']).catch(() => {});
    }
  });

  it('removes the veth in the node and the pod when the allocation fails, and throws the allocation\'s own error', async () => {
    const out = await inNode(dir, `
      const cause = new Error('pool "default" has no free address');
      const err = await attachPod({ containerId: 'c3', nsPath: ${JSON.stringify(podPath)}, ifname: 'eth1', mtu: 1400, routeProtocol: 87,
        address: new Promise((_r, reject) => setTimeout(() => reject(cause), 30)) }).then(() => null, (e) => e);
      await new Promise((r) => setTimeout(r, 100));
      return { same: err === cause, links: sh('ip', '-br', 'link', 'show', 'type', 'veth').trim(),
        pod: sh('nsenter', '--net=${podPath}', 'ip', '-br', 'link').trim() };
    `) as Record<string, unknown>;
    assert.equal(out.same, true);
    assert.equal(out.links, '');
    assert.doesNotMatch(String(out.pod), /eth1/);
  });

  it('dual-stack: the IPv6 /128 (nodad), fe80::1 on the host end, ::/0 via it in the pod, the /128 route on the node; the pod reaches the node over IPv6; detach removes it all', async () => {
    const out = await inNode(dir, `
      const a = await attachPod({ containerId: 'c4', nsPath: ${JSON.stringify(podPath)}, ifname: 'eth0', mtu: 1400, routeProtocol: 87, ipv6: true,
        address: new Promise((r) => setTimeout(() => r({ ipv4: '10.244.9.11', ipv6: 'fd00:10:244::b' }), 30)) });
      // Something on the node for the pod to reach: an address on the node's loopback.
      sh('ip', 'addr', 'add', 'fd00:99::1/128', 'dev', 'lo');
      sh('ip', 'link', 'set', 'lo', 'up');
      const state = {
        a,
        hostAddrs: JSON.parse(sh('ip', '-j', '-6', 'addr', 'show', 'dev', a.hostIfname))[0].addr_info.map((x) => x.local + '/' + x.prefixlen),
        hostRoutes6: sh('ip', '-6', 'route', 'show', 'proto', '87').trim(),
        podAddrs: JSON.parse(sh('nsenter', '--net=${podPath}', 'ip', '-j', '-6', 'addr', 'show', 'eth0'))[0].addr_info.map((x) => x.local + '/' + x.prefixlen + (x.tentative ? ' tentative' : '')),
        podRoutes6: sh('nsenter', '--net=${podPath}', 'ip', '-6', 'route', 'show', 'default').trim(),
        ping: sh('nsenter', '--net=${podPath}', 'ping', '-6', '-c1', '-W2', 'fd00:99::1').includes('1 received'),
      };
      await detachPod({ containerId: 'c4', ifname: 'eth0' });
      state.after = { links: sh('ip', '-br', 'link', 'show', 'type', 'veth').trim(), routes6: sh('ip', '-6', 'route', 'show', 'proto', '87').trim() };
      return state;
    `) as Record<string, any>;
    assert.equal(out.a.address, '10.244.9.11');
    assert.equal(out.a.address6, 'fd00:10:244::b');
    assert.ok(out.hostAddrs.includes('fe80::1/64'), `host end has the gateway: ${out.hostAddrs}`);
    assert.equal(out.hostRoutes6, `fd00:10:244::b dev ${out.a.hostIfname} metric 1024 pref medium`);
    assert.ok(out.podAddrs.includes('fd00:10:244::b/128'), `pod has its /128, usable at once: ${out.podAddrs}`);
    assert.match(out.podRoutes6, /^default via fe80::1 dev eth0 /);
    assert.equal(out.ping, true, 'the pod reaches the node over IPv6 through its gateway');
    assert.deepEqual(out.after, { links: '', routes6: '' });
  });

  it('dual-stack: when the pod refuses IPv6, everything is rolled back (veth, host routes of both families)', async () => {
    await sh('ip', ['netns', 'exec', podNs, 'sysctl', '-qw', 'net.ipv6.conf.default.disable_ipv6=1']);
    try {
      const out = await inNode(dir, `
        const err = await attachPod({ containerId: 'c5', nsPath: ${JSON.stringify(podPath)}, ifname: 'eth0', mtu: 1400, routeProtocol: 87, ipv6: true,
          address: Promise.resolve({ ipv4: '10.244.9.12', ipv6: 'fd00:10:244::c' }) }).then(() => null, (e) => e.message);
        return { err, links: sh('ip', '-br', 'link', 'show', 'type', 'veth').trim(), routes: sh('ip', 'route', 'show', 'proto', '87').trim(),
          routes6: sh('ip', '-6', 'route', 'show', 'proto', '87').trim(), pod: sh('nsenter', '--net=${podPath}', 'ip', '-br', 'link').trim() };
      `) as Record<string, unknown>;
      assert.ok(out.err, 'attach failed');
      assert.deepEqual({ links: out.links, routes: out.routes, routes6: out.routes6 }, { links: '', routes: '', routes6: '' });
      assert.doesNotMatch(String(out.pod), /eth0/);
    } finally {
      await sh('ip', ['netns', 'exec', podNs, 'sysctl', '-qw', 'net.ipv6.conf.default.disable_ipv6=0']);
    }
  });
});
