/**
 * weft-cni-static (scripts/sea.mjs, `npm run build:cni-static`): the CNI plugin as one self-contained executable for
 * hosts without Node, and the DaemonSet's init step (`weft cni install --bin-dir DIR`) that installs it into the
 * host's CNI bin folder. Against a scratch host folder holding other plugins' files: the install is one rename
 * (never a partial file under the final name), other plugins' files stay byte-identical with their mtimes, and the
 * installed file runs as a runtime runs it with no Node on its PATH and no node_modules anywhere near it.
 */
import { clusterAdminSecurity } from '../cli/cluster/cluster.js';
import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync } from 'node:child_process';
import {
  chmodSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { ClusterState } from '../cli/cluster/cluster.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { createClient } from '../lib/grpc/client.js';
import { AgentServiceService, type AttachRequest, type DetachRequest } from '../gen/weft/agent/v1/agent.js';
import { listenUnixSocket, type UnixSocketServer } from '../lib/grpc/frame-server.js';
import { addService, createServer, type UnaryMethods } from '../lib/grpc/server.js';
import { silentLogger } from '../lib/logger.js';
import { privilegedOrSkip } from './support/privileges.js';
import { bringUpTestCluster, takeDownTestCluster, type TestCluster } from './support/local-cluster.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const staticPlugin = path.join(root, 'dist/bin/weft-cni-static');
const weft = path.join(root, 'dist/bin/weft');
const VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'];
const sh = promisify(execFile);

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `file` as a runtime does: only the given environment (nothing inherited), the config on stdin, cwd /. */
function runAsRuntime(file: string, env: Record<string, string>, stdin: string, args: string[] = []): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child =
      args.length > 0
        ? spawn(file, args, { env, cwd: '/', stdio: 'pipe' })
        : spawn(file, [], { env, cwd: '/', stdio: 'pipe' });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.stdin.on('error', () => {});
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
    child.stdin.end(stdin);
  });
}

function snapshot(file: string): { bytes: Buffer; mtimeMs: number; ino: number; mode: number } {
  const st = statSync(file);
  return { bytes: readFileSync(file), mtimeMs: st.mtimeMs, ino: st.ino, mode: st.mode & 0o7777 };
}

describe('weft-cni-static: the CNI plugin on a host without Node', () => {
  let dir = '';
  let binDir = '';
  let confDir = '';
  /** A PATH with nothing on it: no node, no shell tools. */
  let emptyPath = '';
  let netns = '';
  const others: Record<string, string> = {};

  before(() => {
    // The executable is built from the sources under test (a few seconds: postject rewrites a copy of Node).
    const built = spawnSync(process.execPath, ['scripts/sea.mjs'], { cwd: root, encoding: 'utf8' });
    assert.equal(built.status, 0, `npm run build:cni-static failed: ${built.stdout} ${built.stderr}`);
    dir = mkdtempSync(path.join(tmpdir(), 'weft-cni-static-'));
    binDir = path.join(dir, 'host/opt/cni/bin');
    confDir = path.join(dir, 'host/etc/cni/net.d');
    emptyPath = path.join(dir, 'empty-path');
    netns = path.join(dir, 'netns');
    for (const d of [binDir, confDir, emptyPath]) mkdirSync(d, { recursive: true });
    writeFileSync(netns, '');
    // Other plugins' files, as Multus and istio-cni leave them, dated in the past so a rewrite would show.
    const past = new Date('2026-01-02T03:04:05Z');
    const put = (file: string, content: string, mode: number) => {
      writeFileSync(file, content, { mode });
      chmodSync(file, mode);
      utimesSync(file, past, past);
      others[file] = content;
    };
    put(path.join(binDir, 'bridge'), '#!/bin/sh\necho another plugin\n', 0o755);
    put(path.join(binDir, 'multus'), 'ELF-ish bytes of another plugin\n', 0o755);
    put(
      path.join(confDir, '00-multus.conf'),
      '{"cniVersion":"1.0.0","name":"multus-cni-network","type":"multus"}\n',
      0o600,
    );
    put(
      path.join(confDir, '05-istio-cni.conflist'),
      '{"cniVersion":"1.0.0","name":"istio","plugins":[{"type":"istio-cni"}]}\n',
      0o644,
    );
    // An older Weft plugin already installed: the new one replaces it.
    writeFileSync(path.join(binDir, 'weft'), '#!/usr/bin/env node\nprocess.exit(1)\n', { mode: 0o755 });
  });
  after(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it("the init step installs weft-cni-static as <bin>/weft in one rename, leaving other plugins' files untouched", async () => {
    const target = path.join(binDir, 'weft');
    const before = snapshot(target);
    const final = readFileSync(staticPlugin);
    const othersBefore = Object.fromEntries(Object.keys(others).map((f) => [f, snapshot(f)]));
    // Watch the final name while the installer runs: every state seen must be the old file or the whole new one.
    const seen: { ino: number; size: number }[] = [];
    const child = spawn(process.execPath, [weft, 'cni', 'install', '--bin-dir', binDir, '--json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    let running = true;
    const exited = new Promise<number | null>((resolve) =>
      child.on('close', (code) => ((running = false), resolve(code))),
    );
    while (running) {
      const st = statSync(target, { throwIfNoEntry: false });
      assert.ok(st, 'the plugin file vanished while the installer ran');
      if (seen.at(-1)?.ino !== st.ino || seen.at(-1)?.size !== st.size) seen.push({ ino: st.ino, size: st.size });
      await new Promise((r) => setImmediate(r));
    }
    assert.equal(await exited, 0, `weft cni install failed: ${stdout} ${stderr}`);
    assert.deepEqual(JSON.parse(stdout), { path: target, outcome: 'written' });

    const after = snapshot(target);
    assert.ok(after.bytes.equals(final), 'the installed file is weft-cni-static');
    assert.equal(after.mode, 0o755);
    for (const s of seen) {
      const old = s.ino === before.ino && s.size === before.bytes.length;
      const whole = s.ino === after.ino && s.size === final.length;
      assert.ok(
        old || whole,
        `a runtime could have seen a partial plugin: ${JSON.stringify(s)} (old ${before.bytes.length} bytes, new ${final.length})`,
      );
    }
    assert.notEqual(after.ino, before.ino, 'replaced by a rename, not rewritten in place');
    assert.deepEqual(
      readdirSync(binDir).sort(),
      ['bridge', 'multus', 'weft'],
      'no temporary file left behind, nothing else added',
    );
    assert.deepEqual(
      readdirSync(confDir).sort(),
      ['00-multus.conf', '05-istio-cni.conflist'],
      'the init step writes no conflist',
    );
    for (const [file, was] of Object.entries(othersBefore))
      assert.deepEqual(snapshot(file), was, `${file} was touched`);

    // Run again (a restarted init container): nothing rewritten.
    const again = spawnSync(process.execPath, [weft, 'cni', 'install', '--bin-dir', binDir, '--json'], {
      encoding: 'utf8',
    });
    assert.equal(again.status, 0, again.stderr);
    assert.equal(JSON.parse(again.stdout).outcome, 'unchanged');
    assert.equal(statSync(target).ino, after.ino);
  });

  it('weft cni install refuses a missing folder and --conf-dir with what to fix, changing nothing', () => {
    const missing = spawnSync(process.execPath, [weft, 'cni', 'install', '--bin-dir', path.join(dir, 'absent')], {
      encoding: 'utf8',
    });
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /absent.* does not exist; create it/);
    const conf = spawnSync(process.execPath, [weft, 'cni', 'install', '--bin-dir', binDir, '--conf-dir', confDir], {
      encoding: 'utf8',
    });
    assert.equal(conf.status, 2);
    assert.match(conf.stderr, /the agent writes the conflist once it answers \(set WEFT_CNI_CONF_DIR/);
    assert.deepEqual(readdirSync(confDir).sort(), ['00-multus.conf', '05-istio-cni.conflist']);
  });

  describe('the installed executable, with no Node on its PATH', () => {
    let plugin = '';
    const env = (extra: Record<string, string>) => ({ PATH: emptyPath, ...extra });

    before(() => {
      plugin = path.join(binDir, 'weft');
      // The test means something only if nothing on this PATH is a node.
      const probe = spawnSync('/bin/sh', ['-c', 'command -v node'], { env: { PATH: emptyPath }, encoding: 'utf8' });
      assert.notEqual(probe.status, 0, `node is on the plugin's PATH: ${probe.stdout}`);
      assert.ok(readFileSync(plugin).equals(readFileSync(staticPlugin)), 'the first test installed weft-cni-static');
    });

    it('VERSION prints the supported versions', async () => {
      const run = await runAsRuntime(plugin, env({ CNI_COMMAND: 'VERSION' }), JSON.stringify({ cniVersion: '0.4.0' }));
      assert.equal(run.status, 0, run.stderr);
      assert.deepEqual(JSON.parse(run.stdout), { cniVersion: '0.4.0', supportedVersions: VERSIONS });
      assert.equal(run.stderr, '', 'no experimental-feature warning or other noise');
    });

    it('a bad config gives the CNI error JSON, the same as the Node script weft-cni', async () => {
      const base = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c0ffee', CNI_NETNS: netns, CNI_IFNAME: 'eth0' };
      const cases: [string, number][] = [
        ['{"cniVersion": ', 6],
        [JSON.stringify({ cniVersion: '9.9.9', name: 'weft', type: 'weft' }), 1],
        [JSON.stringify({ cniVersion: '1.0.0', type: 'weft' }), 7],
        // No agent yet: try again later.
        [
          JSON.stringify({ cniVersion: '1.0.0', name: 'weft', type: 'weft', agentSocket: path.join(dir, 'no.sock') }),
          11,
        ],
      ];
      for (const [stdin, code] of cases) {
        const run = await runAsRuntime(plugin, env(base), stdin);
        assert.equal(run.status, 1, `${stdin}: ${run.stdout} ${run.stderr}`);
        const doc = JSON.parse(run.stdout) as Record<string, unknown>;
        assert.equal(doc.code, code, `${stdin}: ${run.stdout}`);
        assert.ok(VERSIONS.includes(String(doc.cniVersion)) || doc.cniVersion === '9.9.9', `${stdin}: ${run.stdout}`);
        assert.ok(typeof doc.msg === 'string' && doc.msg.length > 0, `${stdin}: no msg`);
        const script = await runAsRuntime(
          path.join(root, 'dist/bin/weft-cni'),
          { ...base, PATH: process.env.PATH ?? '/usr/bin:/bin' },
          stdin,
        );
        assert.equal(run.stdout, script.stdout, `${stdin}: the script plugin answers otherwise`);
      }
    });

    describe('against an agent on its socket', () => {
      let socket = '';
      let listening: UnixSocketServer;
      let server: ReturnType<typeof createServer>;
      const attaches: AttachRequest[] = [];
      const detaches: DetachRequest[] = [];

      before(async () => {
        socket = path.join(dir, 'agent.sock');
        server = createServer();
        const unaryMethods: UnaryMethods = new Map();
        addService(
          server,
          AgentServiceService,
          {
            attach: async (req: AttachRequest) => {
              attaches.push(req);
              return {
                interfaces: [
                  { name: 'weftc0ffee', mac: 'ee:ee:ee:ee:ee:ee', sandbox: '' },
                  { name: 'eth0', mac: '0a:58:0a:f4:01:07', sandbox: netns },
                ],
                ips: [{ address: '10.244.1.7/32', gateway: '169.254.1.1', interface: 1 }],
                routes: [{ dst: '0.0.0.0/0', gw: '169.254.1.1' }],
              };
            },
            detach: async (req: DetachRequest) => (detaches.push(req), {}),
            check: async () => ({}),
            status: async () => ({ ipamReachable: true, detail: '' }),
            garbageCollect: async () => ({ released: [], removedInterfaces: [], failures: [] }),
          },
          silentLogger,
          { unaryMethods },
        );
        listening = await listenUnixSocket({ server, socketPath: socket, unaryMethods, logger: silentLogger });
      });
      after(async () => {
        await listening.close();
        server.forceShutdown();
      });

      it("ADD prints the result and DEL succeeds, on the Node it carries, with the SEA's code cache", async () => {
        const base = {
          CNI_CONTAINERID: 'c0ffee',
          CNI_NETNS: netns,
          CNI_IFNAME: 'eth0',
          CNI_ARGS: 'K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0',
        };
        const conf = JSON.stringify({ cniVersion: '1.0.0', name: 'weft', type: 'weft', agentSocket: socket });
        const add = await runAsRuntime(plugin, env({ ...base, CNI_COMMAND: 'ADD', WEFT_CNI_TIMING: '1' }), conf);
        assert.equal(add.status, 0, `stdout: ${add.stdout} stderr: ${add.stderr}`);
        assert.deepEqual(JSON.parse(add.stdout), {
          cniVersion: '1.0.0',
          interfaces: [
            { name: 'weftc0ffee', mac: 'ee:ee:ee:ee:ee:ee' },
            { name: 'eth0', mac: '0a:58:0a:f4:01:07', sandbox: netns },
          ],
          ips: [{ address: '10.244.1.7/32', gateway: '169.254.1.1', interface: 1 }],
          routes: [{ dst: '0.0.0.0/0', gw: '169.254.1.1' }],
          dns: {},
        });
        assert.equal(attaches.at(-1)?.podName, 'web-0');
        const timing = JSON.parse(add.stderr.split('\n').find((l) => l.includes('"weft-cni timing"')) ?? '{}') as {
          codeCache?: string;
          builtWith?: string;
          node?: string;
        };
        assert.equal(timing.codeCache, 'sea');
        assert.equal(timing.node, timing.builtWith, 'the executable carries the Node it was built with');
        const del = await runAsRuntime(plugin, env({ ...base, CNI_COMMAND: 'DEL' }), conf);
        assert.equal(del.status, 0, del.stderr);
        assert.equal(del.stdout, '');
        assert.equal(detaches.at(-1)?.containerId, 'c0ffee');
      });
    });

    describe('against a real agent on a local cluster', privilegedOrSkip(), () => {
      let cluster: TestCluster | undefined;
      let state: ClusterState | null = null;

      before(async () => {
        const started = bringUpTestCluster('cni-static-cluster');
        cluster = started.cluster;
        state = await started.up;
      });
      after(() => takeDownTestCluster(cluster));

      it("ADD gives the pod an address from IPAM and DEL releases it, run in the node's namespace as its runtime runs it", async () => {
        const node = state!.nodes[0]!;
        const podNs = `${state!.prefix}-pod-static`;
        await sh('ip', ['netns', 'add', podNs]);
        const ipam = createClient(IpamServiceService, `unix://${state!.controlPlane.socket}`, {
          security: clusterAdminSecurity(state!),
        });
        try {
          const base = {
            CNI_CONTAINERID: `static-${state!.prefix}`,
            CNI_NETNS: `/var/run/netns/${podNs}`,
            CNI_IFNAME: 'eth0',
            CNI_ARGS: 'K8S_POD_NAMESPACE=default;K8S_POD_NAME=static-0',
          };
          const conf = JSON.stringify({ cniVersion: '1.1.0', name: 'weft', type: 'weft', agentSocket: node.socket });
          // ip (by absolute path) enters the node's namespace and execs the plugin with only this environment.
          const inNode = (extra: Record<string, string>) =>
            runAsRuntime('/usr/sbin/ip', env({ ...base, ...extra }), conf, ['netns', 'exec', node.netns, plugin]);
          const add = await inNode({ CNI_COMMAND: 'ADD' });
          assert.equal(add.status, 0, `ADD failed: ${add.stdout} ${add.stderr}`);
          const result = JSON.parse(add.stdout) as {
            ips: { address: string }[];
            interfaces: { name: string; sandbox?: string }[];
          };
          const address = result.ips[0]!.address.split('/')[0]!;
          assert.equal(result.interfaces[1]!.sandbox, base.CNI_NETNS);
          const held = async () =>
            (await ipam.listAllocations({ pool: '', node: node.name }, { timeoutMs: 10_000 })).allocations.find(
              (a) => a.handle === `${base.CNI_CONTAINERID}/eth0`,
            );
          assert.equal((await held())?.address, address, 'IPAM holds the address under the handle');
          const { stdout } = await sh('ip', ['-n', podNs, '-j', 'addr', 'show', 'dev', 'eth0']);
          assert.ok(stdout.includes(`"${address}"`), `eth0 in the pod lacks ${address}: ${stdout}`);

          const del = await inNode({ CNI_COMMAND: 'DEL' });
          assert.equal(del.status, 0, `DEL failed: ${del.stdout} ${del.stderr}`);
          assert.equal(await held(), undefined, 'DEL released the address');
        } finally {
          ipam.close();
          await sh('ip', ['netns', 'del', podNs]).catch(() => {});
        }
      });
    });
  });
});
