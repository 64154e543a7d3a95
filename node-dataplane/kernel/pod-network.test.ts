/**
 * attachPod and detachPod in the kernel: a throwaway "node" namespace (where the code runs, as the agent runs in its
 * node's) and a "pod" namespace, both named with a per-run prefix and removed afterwards, also on failure. The code
 * runs in a child process started with `ip netns exec <node>`, so this process never leaves its own namespace.
 * Needs root (and iproute2, nsenter); skipped otherwise.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
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
  writeFileSync(
    file,
    `
import { attachPod, detachPod, hostIfnameFor } from ${JSON.stringify(moduleUrl)};
import { execFileSync } from 'node:child_process';
const sh = (...args) => execFileSync(args[0], args.slice(1), { encoding: 'utf8' });
const out = await (async () => { ${body} })();
process.stdout.write(JSON.stringify(out));
`,
  );
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
    const out = (await inNode(
      dir,
      `
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
    `,
    )) as Record<string, any>;
    assert.equal(out.a.address, '10.244.9.9');
    assert.equal(out.a.podMac, '0a:58:0a:f4:09:09');
    assert.equal(out.host.mtu, 1400);
    assert.ok(out.host.flags.includes('UP'));
    assert.equal(out.hostRoutes, `10.244.9.9 dev ${out.a.hostIfname} scope link`);
    assert.equal(out.proxyArp, '1');
    assert.equal(out.pod.address, '0a:58:0a:f4:09:09');
    assert.equal(out.pod.mtu, 1400);
    assert.ok(out.pod.flags.includes('UP'));
    assert.deepEqual(
      out.pod.addr_info
        .filter((x: { family: string }) => x.family === 'inet')
        .map((x: { local: string; prefixlen: number }) => `${x.local}/${x.prefixlen}`),
      ['10.244.9.9/32'],
    );
    assert.equal(out.podRoutes, 'default via 169.254.1.1 dev eth0 \n169.254.1.1 dev eth0 scope link');
    assert.deepEqual(out.after, { links: '', routes: '', pod: out.after.pod });
    assert.doesNotMatch(out.after.pod, /eth0/);
  });

  it('rolls back when the interface name is taken in the pod, only after the address settled, without crashing the process', async () => {
    await sh('ip', ['-n', podNs, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0peer']);
    try {
      const out = (await inNode(
        dir,
        `
        let settled = false;
        const err = await attachPod({ containerId: 'c2', nsPath: ${JSON.stringify(podPath)}, ifname: 'eth0', mtu: 1400, routeProtocol: 87,
          address: new Promise((r) => setTimeout(() => { settled = true; r({ ipv4: '10.244.9.10' }); }, 50)) }).then(() => null, (e) => e.message);
        await new Promise((r) => setTimeout(r, 100)); // an unhandled rejection would have ended the process by now
        return { err, settledFirst: settled, links: sh('ip', '-br', 'link', 'show', 'type', 'veth').trim(), routes: sh('ip', 'route', 'show', 'proto', '87').trim() };
      `,
      )) as Record<string, unknown>;
      assert.match(
        String(out.err),
        new RegExp(`an interface named eth0 already exists in network namespace ${podPath}`),
      );
      assert.equal(out.settledFirst, true, 'attachPod threw only once the address had settled');
      assert.deepEqual({ links: out.links, routes: out.routes }, { links: '', routes: '' });
    } finally {
      await sh('ip', ['-n', podNs, 'link', 'del', 'eth0']).catch(() => {});
    }
  });

  it("removes the veth in the node and the pod when the allocation fails, and throws the allocation's own error", async () => {
    const out = (await inNode(
      dir,
      `
      const cause = new Error('pool "default" has no free address');
      const err = await attachPod({ containerId: 'c3', nsPath: ${JSON.stringify(podPath)}, ifname: 'eth1', mtu: 1400, routeProtocol: 87,
        address: new Promise((_r, reject) => setTimeout(() => reject(cause), 30)) }).then(() => null, (e) => e);
      await new Promise((r) => setTimeout(r, 100));
      return { same: err === cause, links: sh('ip', '-br', 'link', 'show', 'type', 'veth').trim(),
        pod: sh('nsenter', '--net=${podPath}', 'ip', '-br', 'link').trim() };
    `,
    )) as Record<string, unknown>;
    assert.equal(out.same, true);
    assert.equal(out.links, '');
    assert.doesNotMatch(String(out.pod), /eth1/);
  });

  it('dual-stack: the IPv6 /128 (nodad), fe80::1 on the host end, ::/0 via it in the pod, the /128 route on the node; the pod reaches the node over IPv6; detach removes it all', async () => {
    const out = (await inNode(
      dir,
      `
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
    `,
    )) as Record<string, any>;
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
      const out = (await inNode(
        dir,
        `
        const err = await attachPod({ containerId: 'c5', nsPath: ${JSON.stringify(podPath)}, ifname: 'eth0', mtu: 1400, routeProtocol: 87, ipv6: true,
          address: Promise.resolve({ ipv4: '10.244.9.12', ipv6: 'fd00:10:244::c' }) }).then(() => null, (e) => e.message);
        return { err, links: sh('ip', '-br', 'link', 'show', 'type', 'veth').trim(), routes: sh('ip', 'route', 'show', 'proto', '87').trim(),
          routes6: sh('ip', '-6', 'route', 'show', 'proto', '87').trim(), pod: sh('nsenter', '--net=${podPath}', 'ip', '-br', 'link').trim() };
      `,
      )) as Record<string, unknown>;
      assert.ok(out.err, 'attach failed');
      assert.deepEqual(
        { links: out.links, routes: out.routes, routes6: out.routes6 },
        { links: '', routes: '', routes6: '' },
      );
      assert.doesNotMatch(String(out.pod), /eth0/);
    } finally {
      await sh('ip', ['netns', 'exec', podNs, 'sysctl', '-qw', 'net.ipv6.conf.default.disable_ipv6=0']);
    }
  });
});

/**
 * The agent as a container that is not privileged sees it: its own /proc/sys and /sys read-only, the host's mounted
 * elsewhere read-write (deploy/base/agent.yaml mounts /proc/sys/net at /host/proc/sys/net and /sys at /host/sys). The child
 * runs in the node namespace under `unshare --mount` (a private mount namespace, gone with it): there /proc/sys/net
 * is bind-mounted at <dir>/proc-sys-net and /sys at <dir>/sys, as hostPath volumes are, and then /proc/sys and /sys
 * are remounted read-only, as a container runtime does. Code that writes to /proc/sys or /sys fails with EROFS.
 */
describe(
  'pod interfaces and forwarding when /proc/sys and /sys are read-only (WEFT_PROC_SYS_NET, WEFT_SYS_DIR)',
  privilegedOrSkip(),
  () => {
    const roNode = `${prefix}-ronode`;
    const roPod = `${prefix}-ropod`;
    const roPodPath = `/var/run/netns/${roPod}`;
    const hostPathsUrl = new URL('./host-paths.js', import.meta.url).href;
    const recordUrl = new URL('../domain/attachment-record.js', import.meta.url).href;
    let dir = '';
    before(async () => {
      dir = mkdtempSync(path.join(tmpdir(), 'weft-pod-network-ro-'));
      await sh('ip', ['netns', 'add', roNode]);
      await sh('ip', ['netns', 'add', roPod]);
    });
    after(async () => {
      for (const ns of [roPod, roNode]) await sh('ip', ['netns', 'del', ns]).catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    });

    it('switches forwarding on and sets up a pod veth (proxy_arp, proxy_delay, IPv6 on, its record) through the host paths; CHECK reads them there; detach removes it', async () => {
      const procSysNet = path.join(dir, 'proc-sys-net');
      const sysDir = path.join(dir, 'sys');
      mkdirSync(procSysNet);
      mkdirSync(sysDir);
      const file = path.join(dir, 'ro-step.mjs');
      writeFileSync(
        file,
        `
import { attachPod, containerAttachments, detachPod, hostLinkExists, observeAttachment } from ${JSON.stringify(moduleUrl)};
import { enableForwarding } from ${JSON.stringify(hostPathsUrl)};
import { formatAttachmentRecord } from ${JSON.stringify(recordUrl)};
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
const sh = (...args) => execFileSync(args[0], args.slice(1), { encoding: 'utf8' });
const read = (f) => readFileSync(f, 'utf8').trim();
const writeError = (f) => { try { writeFileSync(f, '1'); return null; } catch (e) { return e.code; } };
const paths = { procSysNet: ${JSON.stringify(procSysNet)}, sysDir: ${JSON.stringify(sysDir)} };
const out = {};
// The container's own view is read-only (what the old code wrote to).
out.readOnly = { procSys: writeError('/proc/sys/net/ipv4/ip_forward'), sys: writeError('/sys/class/net/lo/ifalias') };
out.forwardingBefore = [read('/proc/sys/net/ipv4/ip_forward'), read('/proc/sys/net/ipv6/conf/all/forwarding')];
out.forwarding = enableForwarding(paths);
out.forwardingAfter = [read('/proc/sys/net/ipv4/ip_forward'), read('/proc/sys/net/ipv6/conf/all/forwarding')];
const eth0 = { network: 'weft', containerId: 'c9', defaultRoute: true };
const net1 = { network: 'weft', containerId: 'c9', defaultRoute: false };
const a = await attachPod({ containerId: 'c9', nsPath: ${JSON.stringify(roPodPath)}, ifname: 'eth0', mtu: 1400, routeProtocol: 87, ipv6: true, record: eth0, paths,
  address: Promise.resolve({ ipv4: '10.244.8.8', ipv6: 'fd00:10:244::8' }) });
const b = await attachPod({ containerId: 'c9', nsPath: ${JSON.stringify(roPodPath)}, ifname: 'net1', mtu: 1400, routeProtocol: 87, record: net1, paths,
  address: Promise.resolve({ ipv4: '10.244.8.9' }) });
const sysctls = (dev) => ({
  proxyArp: read('/proc/sys/net/ipv4/conf/' + dev + '/proxy_arp'),
  proxyDelay: read('/proc/sys/net/ipv4/neigh/' + dev + '/proxy_delay'),
  disableIpv6: read('/proc/sys/net/ipv6/conf/' + dev + '/disable_ipv6'),
});
const pair = JSON.parse(sh('nsenter', '--net=${roPodPath}', 'ip', '-j', 'link', 'show', 'net1'))[0];
out.host = {
  eth0: { ...sysctls(a.hostIfname), alias: JSON.parse(sh('ip', '-j', 'link', 'show', a.hostIfname))[0].ifalias ?? null },
  net1: { ...sysctls(b.hostIfname), alias: JSON.parse(sh('ip', '-j', 'link', 'show', b.hostIfname))[0].ifalias ?? null },
};
out.expectedAlias = { eth0: formatAttachmentRecord(eth0), net1: formatAttachmentRecord({ ...net1, table: 10000 + pair.ifindex }) };
out.gateway6 = JSON.parse(sh('ip', '-j', '-6', 'addr', 'show', 'dev', a.hostIfname))[0].addr_info.map((x) => x.local + '/' + x.prefixlen);
out.attachments = containerAttachments('c9', paths);
out.exists = await hostLinkExists('c9', 'eth0', paths);
const seen = await observeAttachment({ nsPath: ${JSON.stringify(roPodPath)}, ifname: 'eth0', hostIfname: a.hostIfname, paths });
out.observed = { hostProxyArp: seen.hostProxyArp, hostRecord: seen.hostRecord };
await detachPod({ containerId: 'c9', ifname: 'net1', nsPath: ${JSON.stringify(roPodPath)}, paths });
await detachPod({ containerId: 'c9', ifname: 'eth0', nsPath: ${JSON.stringify(roPodPath)}, paths });
out.afterDetach = { exists: await hostLinkExists('c9', 'eth0', paths), attachments: containerAttachments('c9', paths), veths: sh('ip', '-br', 'link', 'show', 'type', 'veth').trim(),
  rules: sh('nsenter', '--net=${roPodPath}', 'ip', 'rule').includes('lookup 1') };
process.stdout.write(JSON.stringify(out));
`,
      );
      // As a runtime sets up the container: the hostPath mounts first (bind mounts of the rw originals), then its own
      // /proc/sys and /sys read-only. Forwarding starts off, and new devices in the node with IPv6 off, so the agent
      // must switch them on.
      const setup = [
        'sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0 net.ipv6.conf.default.disable_ipv6=1',
        `mount --bind /proc/sys/net ${procSysNet}`,
        `mount --rbind /sys ${sysDir}`,
        'mount --bind /proc/sys /proc/sys',
        'mount -o remount,ro,bind /proc/sys',
        'mount -o remount,ro,bind /sys',
        `exec ${process.execPath} ${file}`,
      ].join(' && ');
      const { stdout } = await sh('ip', [
        'netns',
        'exec',
        roNode,
        'unshare',
        '--mount',
        '--propagation',
        'private',
        'sh',
        '-c',
        setup,
      ]);
      const out = JSON.parse(stdout) as Record<string, any>;
      assert.deepEqual(
        out.readOnly,
        { procSys: 'EROFS', sys: 'EROFS' },
        "the container's own /proc/sys and /sys are read-only",
      );
      assert.deepEqual(out.forwardingBefore, ['0', '0']);
      assert.deepEqual(out.forwarding, { ipv6: true });
      assert.deepEqual(out.forwardingAfter, ['1', '1'], "forwarding switched on in the agent's network namespace");
      for (const dev of ['eth0', 'net1']) {
        assert.equal(out.host[dev].proxyArp, '1', `${dev}: proxy_arp`);
        assert.equal(out.host[dev].proxyDelay, '0', `${dev}: proxy_delay`);
        assert.equal(out.host[dev].alias, out.expectedAlias[dev], `${dev}: the attachment record`);
      }
      assert.equal(out.host.eth0.disableIpv6, '0', 'IPv6 switched on for the dual-stack host end');
      assert.ok(out.gateway6.includes('fe80::1/64'), `the host end has the IPv6 gateway: ${out.gateway6}`);
      assert.deepEqual(out.attachments, { count: 2, defaultRoute: true });
      assert.equal(out.exists, true);
      assert.deepEqual(out.observed, {
        hostProxyArp: true,
        hostRecord: { network: 'weft', containerId: 'c9', defaultRoute: true },
      });
      assert.deepEqual(out.afterDetach, {
        exists: false,
        attachments: { count: 0, defaultRoute: false },
        veths: '',
        rules: false,
      });
    });
  },
);
