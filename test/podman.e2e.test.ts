import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { cniDirs, readState, type ClusterState, type NodeState, type PodState } from '../cli/cluster/cluster.js';
import { eventually } from './support/eventually.js';
import { privilegedSkipReason, skipOutsideCi } from './support/privileges.js';
import { bin } from './support/processes.js';

/**
 * podman 4.3 (Debian) with its CNI network backend, on the local cluster: each node's agent has installed `weft` and
 * `10-weft.conflist` (weft, then portmap) into the node's CNI folders, and podman, run inside the node's network
 * namespace with its own root, runroot, tmp_dir and containers.conf (runc, cgroupfs, the `file` events logger,
 * explicit default ulimits, `network_backend = "cni"` pointed at those folders), starts containers from an image
 * imported from a root filesystem the test assembles from the host's busybox (no registry is reachable).
 */
const sh = promisify(execFile);
const referencePlugins = '/usr/lib/cni';
/** Host paths podman and libcni use whatever the flags say; removed afterwards when this run created them. */
const HOST_LEFTOVERS = ['/var/lib/cni', '/var/lib/containers', '/run/xtables.lock'];

function skipReason(): string | null {
  const privileged = privilegedSkipReason();
  if (privileged) return privileged;
  for (const tool of ['podman', 'runc', 'conmon', 'busybox', 'iptables', 'nsenter']) {
    if (!['/usr/bin', '/usr/sbin', '/bin', '/sbin'].some((d) => existsSync(path.join(d, tool))))
      return `needs ${tool} (scripts/install-deps.sh installs it)`;
  }
  if (!existsSync(path.join(referencePlugins, 'portmap')))
    return 'needs containernetworking-plugins (scripts/install-deps.sh)';
  return null;
}

describe('podman with its CNI backend on Weft', skipOutsideCi(skipReason()), () => {
  const stateDir = mkdtempSync(path.join(tmpdir(), 'weft-podman-cluster-'));
  const work = mkdtempSync(path.join(tmpdir(), 'weft-podman-'));
  const existedBefore = new Map(HOST_LEFTOVERS.map((p) => [p, existsSync(p)]));
  const servers: ChildProcess[] = [];
  let state: ClusterState | null = null;
  let image = '';
  let netnsBefore = '';

  const weft = async (...args: string[]) =>
    (await sh(bin.weft, [...args, '--state-dir', stateDir], { timeout: 180_000 })).stdout;
  const nodeNamed = (name: string): NodeState => state!.nodes.find((n) => n.name === name)!;

  /** podman inside the node's network namespace, with everything it keeps under this run's folder. */
  async function podman(node: NodeState, ...args: string[]): Promise<string> {
    const dir = path.join(work, node.name);
    const { stdout } = await sh(
      'nsenter',
      [
        `--net=${`/var/run/netns/${node.netns}`}`,
        'podman',
        '--root',
        path.join(dir, 'root'),
        '--runroot',
        path.join(dir, 'runroot'),
        '--storage-driver',
        'vfs',
        '--cgroup-manager',
        'cgroupfs',
        '--events-backend',
        'file',
        '--cni-config-dir',
        cniDirs(node).conf,
        ...args,
      ],
      {
        env: {
          ...process.env,
          CONTAINERS_CONF: path.join(dir, 'containers.conf'),
          CONTAINERS_STORAGE_CONF: path.join(dir, 'storage.conf'),
          CONTAINERS_REGISTRIES_CONF: path.join(dir, 'registries.conf'),
        },
        timeout: 120_000,
      },
    );
    return stdout;
  }

  /** busybox and the libraries it links, a page to serve, and nothing else. */
  async function buildRootfs(): Promise<string> {
    const rootfs = path.join(work, 'rootfs');
    for (const d of ['bin', 'tmp', 'proc', 'sys', 'dev', 'etc', 'www'])
      mkdirSync(path.join(rootfs, d), { recursive: true });
    copyFileSync('/usr/bin/busybox', path.join(rootfs, 'bin', 'busybox'));
    chmodSync(path.join(rootfs, 'bin', 'busybox'), 0o755);
    for (const applet of ['sh', 'ip', 'ping', 'nc', 'httpd', 'cat', 'sleep', 'echo'])
      symlinkSync('busybox', path.join(rootfs, 'bin', applet));
    const libs = (await sh('ldd', ['/usr/bin/busybox'])).stdout
      .split('\n')
      .map((l) => /(\/\S+) \(0x/.exec(l)?.[1])
      .filter((l): l is string => !!l);
    for (const lib of libs) {
      mkdirSync(path.join(rootfs, path.dirname(lib)), { recursive: true });
      copyFileSync(lib, path.join(rootfs, lib));
    }
    writeFileSync(path.join(rootfs, 'www', 'index.html'), 'served by a podman container on weft\n');
    const tarball = path.join(work, 'rootfs.tar');
    await sh('tar', ['-C', rootfs, '-cf', tarball, '.']);
    return tarball;
  }

  function writePodmanConfig(node: NodeState): void {
    const dir = path.join(work, node.name);
    mkdirSync(path.join(dir, 'tmp'), { recursive: true });
    // Podman (through conmon) starts runc with RLIMIT_NPROC at 32768, and its default for containers is higher:
    // runc, no longer privileged for it, then fails "error setting rlimit type 6: operation not permitted". So the
    // default ulimits are explicit and within that.
    writeFileSync(
      path.join(dir, 'containers.conf'),
      [
        '[containers]',
        'default_ulimits = ["nofile=1024:1024", "nproc=32768:32768"]',
        '[engine]',
        'cgroup_manager = "cgroupfs"',
        'events_logger = "file"',
        `events_logfile_path = "${path.join(dir, 'events.log')}"`,
        `tmp_dir = "${path.join(dir, 'tmp')}"`,
        'runtime = "runc"',
        '[network]',
        'network_backend = "cni"',
        `network_config_dir = "${cniDirs(node).conf}"`,
        `cni_plugin_dirs = ["${cniDirs(node).bin}", "${referencePlugins}"]`,
        '',
      ].join('\n'),
    );
    writeFileSync(
      path.join(dir, 'storage.conf'),
      `[storage]\ndriver = "vfs"\ngraphroot = "${path.join(dir, 'root')}"\nrunroot = "${path.join(dir, 'runroot')}"\n`,
    );
    writeFileSync(path.join(dir, 'registries.conf'), '');
  }

  async function allocations(): Promise<{ handle: string; address: string; node: string }[]> {
    return JSON.parse(await weft('ipam', 'allocations', '--json'));
  }

  /** An HTTP GET from inside a namespace with Node's client (busybox's wget segfaults on this machine); the body. */
  async function httpGet(netns: string, url: string): Promise<string> {
    const script = `require('http').get(process.argv[1], { timeout: 3000 }, (r) => { let d = ''; r.on('data', (x) => (d += x)); r.on('end', () => console.log(d)); })
      .on('timeout', function () { this.destroy(new Error('timeout')); }).on('error', (e) => { console.error(e.code || e.message); process.exit(1); });`;
    return (await sh('ip', ['netns', 'exec', netns, process.execPath, '-e', script, url], { timeout: 10_000 })).stdout;
  }

  /** The first answer of `fetch` that is not empty or an error, within 2.5 s (tries 500 ms apart). */
  const answer = (what: string, fetch: () => Promise<string>) =>
    eventually(what, async () => (await fetch()).trim(), 2500, 500);

  before(async () => {
    chmodSync(stateDir, 0o755); // the control plane's PostgreSQL runs as 'postgres' and keeps its data below
    netnsBefore = (await sh('ip', ['netns', 'list'])).stdout;
    try {
      await weft('cluster', 'up', '--nodes', '3');
    } finally {
      if (existsSync(path.join(stateDir, 'state.json'))) state = readState(stateDir);
    }
    const tarball = await buildRootfs();
    image = `localhost/${state!.prefix}-busybox:test`;
    for (const node of [nodeNamed('node1')]) {
      writePodmanConfig(node);
      await podman(node, 'import', tarball, image);
    }
  });

  after(async () => {
    for (const s of servers) s.kill('SIGKILL');
    if (state)
      await podman(nodeNamed('node1'), 'rm', '--all', '--force', '--time', '2').catch((err) => console.error(err));
    const prefix = state?.prefix;
    await weft('cluster', 'down').catch((err) => console.error(err));
    rmSync(stateDir, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
    for (const [p, existed] of existedBefore) if (!existed) rmSync(p, { recursive: true, force: true });
    const netnsAfter = (await sh('ip', ['netns', 'list'])).stdout;
    const left = netnsAfter.split('\n').filter((l) => l && !netnsBefore.includes(l.split(' ')[0]!));
    assert.deepEqual(left, [], "no namespace left behind (neither the cluster's nor podman's)");
    if (prefix) assert.ok(!netnsAfter.includes(prefix));
    const { stdout } = await sh('sh', ['-c', `pgrep -af conmon || true`]);
    assert.ok(!stdout.includes(work), `conmon left running:\n${stdout}`);
  });

  it('a podman container gets a Weft address from IPAM and reaches a pod on another node over VXLAN', async () => {
    const node1 = nodeNamed('node1');
    const target = JSON.parse(
      await weft('cluster', 'pod', 'add', 'node3', 'target', '--namespace', 'podman', '--json'),
    ) as PodState;
    const targetAddress = target.addresses[0]!;
    servers.push(
      spawn(
        'ip',
        [
          'netns',
          'exec',
          path.basename(target.netns),
          process.execPath,
          '-e',
          `require('net').createServer((s) => s.end('target on node3')).listen(8080, '0.0.0.0')`,
        ],
        { stdio: 'ignore' },
      ),
    );
    const out = await podman(
      node1,
      'run',
      '--rm',
      '--network',
      'weft',
      '--name',
      `${state!.prefix}-client`,
      image,
      'sh',
      '-c',
      `ip -o -4 addr show dev eth0; for i in 1 2 3 4 5; do ping -c 1 -W 1 ${targetAddress} >/dev/null && break; sleep 0.3; done; ` +
        `ping -c 1 -W 2 ${targetAddress} >/dev/null && echo ping-ok; nc -w 3 ${targetAddress} 8080 </dev/null`,
    );
    const address = /inet (\d+\.\d+\.\d+\.\d+)\/32/.exec(out)?.[1];
    assert.ok(address?.startsWith('10.244.'), `the container's eth0 has a /32 from the cluster's pool:\n${out}`);
    assert.match(out, /ping-ok/, `the container pings the pod on node3:\n${out}`);
    assert.match(out, /target on node3/, `a TCP connection to the pod on node3 is answered:\n${out}`);
    // The container is gone (--rm): podman ran DEL, and its address is released.
    assert.equal(
      (await allocations()).find((a) => a.address === address),
      undefined,
      'the address is released when the container goes',
    );
    await weft('cluster', 'pod', 'del', 'podman/target');
  });

  it("a container publishes a port through the chained portmap: reached at the node's address from the node and from another machine", async () => {
    const node1 = nodeNamed('node1');
    const name = `${state!.prefix}-web`;
    const id = (
      await podman(
        node1,
        'run',
        '-d',
        '--network',
        'weft',
        '--name',
        name,
        '-p',
        '18090:8080',
        image,
        'httpd',
        '-f',
        '-p',
        '8080',
        '-h',
        '/www',
      )
    ).trim();
    try {
      const info = JSON.parse(await podman(node1, 'inspect', id)) as {
        NetworkSettings: { Networks: Record<string, { IPAddress: string }> };
      }[];
      const address = info[0]!.NetworkSettings.Networks.weft!.IPAddress;
      const held = (await allocations()).find((a) => a.address === address);
      assert.equal(held?.node, 'node1', `IPAM holds ${address} for node1`);
      assert.equal(held?.handle, `${id}/eth0`, 'under the container id podman gave the plugin');
      const rules = (await sh('ip', ['netns', 'exec', node1.netns, 'iptables', '-w', '5', '-t', 'nat', '-S'])).stdout;
      assert.match(rules, new RegExp(`--dport 18090 .*--to-destination ${address.replace(/\./g, '\\.')}:8080`), rules);
      const get =
        (ns: string, url = `http://${node1.address}:18090/`) =>
        () =>
          httpGet(ns, url);
      assert.equal(
        await answer('the container from node1, at its address', get(node1.netns, `http://${address}:8080/`)),
        'served by a podman container on weft',
        'the node reaches the container at its address',
      );
      assert.equal(await answer('the host port from node1', get(node1.netns)), 'served by a podman container on weft');
      assert.equal(
        await answer('the host port from the control plane', get(state!.controlPlane.netns)),
        'served by a podman container on weft',
      );
      assert.equal(
        await answer('the host port from node3', get(nodeNamed('node3').netns)),
        'served by a podman container on weft',
        'from a node on the other underlay subnet',
      );
    } finally {
      await podman(node1, 'rm', '--force', '--time', '2', id);
    }
    const rules = (await sh('ip', ['netns', 'exec', node1.netns, 'iptables', '-w', '5', '-t', 'nat', '-S'])).stdout;
    assert.ok(!rules.includes('--dport 18090'), `portmap's rules went with the container:\n${rules}`);
    assert.equal(
      (await allocations()).find((a) => a.handle === `${id}/eth0`),
      undefined,
      'its address is released',
    );
  });
});
