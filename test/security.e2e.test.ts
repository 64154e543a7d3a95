import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { status } from '@grpc/grpc-js';
import {
  clusterAdminSecurity,
  clusterPkiDir,
  controlPlaneTarget,
  isAlive,
  nodeTlsDir,
  type ClusterState,
  type PodState,
} from '../cli/cluster/cluster.js';
import { CONTROL_PLANE_ADDRESS, CONTROL_PLANE_PORT } from '../cli/cluster/topology.js';
import { listAllNodes } from '../cli/node-status.js';
import { writeFileAtomic } from '../lib/atomic-file.js';
import { createClient } from '../lib/grpc/client.js';
import { clientTlsDir } from '../lib/grpc/credentials.js';
import { describeCertificate, issueCertificate, PKI_FILES, readCa, serverSubject } from '../lib/pki.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { PolicyServiceService } from '../gen/weft/policy/v1/policy.js';
import { RoutesServiceService } from '../gen/weft/routes/v1/routes.js';
import { bringUpTestCluster, takeDownTestCluster, type TestCluster } from './support/local-cluster.js';
import { bin } from './support/processes.js';
import { privilegedOrSkip } from './support/privileges.js';

/**
 * Issue 14 on the local cluster (two nodes): a node's own certificate lets it act only as itself; a pod without a
 * certificate gets nothing from the control plane; certificates of a node and of the control plane are replaced on
 * disk while a TCP stream between pods keeps flowing, and the new ones are what new connections use.
 */
const exec = promisify(execFile);
const opts = privilegedOrSkip();
const DIST = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/** Certificate files are re-read this often by every process of the cluster (inherited through `weft cluster up`). */
const REFRESH_MS = 1000;
const STREAM_MS = 25_000;
const STALL_BOUND_MS = 2000;

let cluster: TestCluster | undefined;
let state: ClusterState;
const pods: Record<string, PodState> = {};
const children: ChildProcess[] = [];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const podNs = (p: PodState) => path.basename(p.netns);
const nodeOf = (name: string) => state.nodes.find((n) => n.name === name)!;

async function weft(...args: string[]): Promise<string> {
  const { stdout } = await exec(bin.weft, [...args, '--state-dir', cluster!.stateDir], { timeout: 60_000 });
  return stdout;
}

/** Runs a node script inside a namespace and parses the JSON line it prints last. */
async function nodeIn<T>(netns: string, script: string): Promise<T> {
  const { stdout } = await exec('ip', ['netns', 'exec', netns, process.execPath, '-e', script], { timeout: 20_000 });
  return JSON.parse(stdout.trim().split('\n').pop()!) as T;
}

/** How a gRPC call failed: its status code and message (or 'OK'). */
async function outcome(call: Promise<unknown>): Promise<{ code: number; details: string }> {
  try {
    await call;
    return { code: status.OK, details: '' };
  } catch (err) {
    const e = err as { code?: number; details?: string; message: string };
    return { code: e.code ?? -1, details: e.details ?? e.message };
  }
}

/**
 * From `netns`, a TLS handshake with the control plane's TCP listener verifying it against the cluster's CA,
 * presenting `client` (cert and key files) or no certificate; reports the served certificate's serial, whether any
 * application data came back, and how the connection ended.
 */
function tlsProbe(
  netns: string,
  client: { cert: string; key: string } | null,
): Promise<{ serial?: string; error?: string; data: boolean; secure: boolean }> {
  const ca = path.join(clusterPkiDir(state), PKI_FILES.caCert);
  return nodeIn(
    netns,
    `
    const tls = require('tls'), fs = require('fs');
    const r = { secure: false, data: false };
    const done = () => { console.log(JSON.stringify(r)); process.exit(0); };
    const s = tls.connect({ host: ${JSON.stringify(CONTROL_PLANE_ADDRESS)}, port: ${CONTROL_PLANE_PORT}, servername: 'weft-control-plane',
      ALPNProtocols: ['h2'], ca: fs.readFileSync(${JSON.stringify(ca)}),
      ${client ? `cert: fs.readFileSync(${JSON.stringify(client.cert)}), key: fs.readFileSync(${JSON.stringify(client.key)}),` : ''} });
    s.on('secureConnect', () => {
      r.secure = true; r.serial = s.getPeerCertificate().serialNumber;
      // The HTTP/2 client preface and an empty SETTINGS frame: a server that accepted us answers with its SETTINGS.
      s.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n'), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])]));
      ${client ? 'setTimeout(() => { s.destroy(); done(); }, 300);' : ''}
    });
    s.on('data', () => { r.data = true; });
    s.on('error', (e) => { r.error = e.code || e.message; });
    s.on('close', done);
    setTimeout(() => { r.error = r.error || 'timeout'; done(); }, 4000);`,
  );
}

describe('security on the local cluster (issue 14)', opts, () => {
  before(async () => {
    // Every process of the cluster inherits this through `weft cluster up` (cluster.ts passes its environment on).
    process.env.WEFT_TLS_REFRESH_MS = String(REFRESH_MS);
    const b = bringUpTestCluster('sec', 2);
    cluster = b.cluster;
    state = await b.up;
    delete process.env.WEFT_TLS_REFRESH_MS;
    for (const [node, pod] of [
      ['node1', 'tx'],
      ['node2', 'rx'],
    ] as const) {
      pods[pod] = JSON.parse(
        await weft('cluster', 'pod', 'add', node, pod, '--namespace', 'sec', '--json'),
      ) as PodState;
    }
  });

  after(async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await takeDownTestCluster(cluster);
  });

  test("with node1's own certificate a client acts only as node1: node2's registration, handles, policy and pods are refused, naming the rule", async (t) => {
    const node1 = clientTlsDir(nodeTlsDir(state, 'node1'), 500);
    const admin = clusterAdminSecurity(state);
    const target = controlPlaneTarget(state);
    const routes = createClient(RoutesServiceService, target, { security: node1 });
    const ipam = createClient(IpamServiceService, target, { security: node1 });
    const policy = createClient(PolicyServiceService, target, { security: node1 });
    const adminRoutes = createClient(RoutesServiceService, target, { security: admin });
    const adminIpam = createClient(IpamServiceService, target, { security: admin });
    const stop = new AbortController();
    try {
      const n2Before = (await listAllNodes(adminRoutes)).find((n) => n.name === 'node2')!;
      const n2Alloc = (await adminIpam.listAllocations({ node: 'node2' }, { timeoutMs: 5000 })).allocations.find(
        (a) => a.podName === 'rx',
      );
      assert.ok(n2Alloc, "node2's pod holds an address");

      const refused = {
        RegisterNode: await outcome(
          routes.registerNode(
            { name: 'node2', underlayAddress: nodeOf('node1').address, vtepMac: '02:00:00:00:00:66' },
            { timeoutMs: 5000 },
          ),
        ),
        Release: await outcome(ipam.release({ handle: n2Alloc.handle }, { timeoutMs: 5000 })),
        WatchNodePolicy: await outcome(
          policy
            .watchNodePolicy({ node: 'node2' }, { signal: stop.signal, timeoutMs: 5000 })
            [Symbol.asyncIterator]()
            .next(),
        ),
        AttachPod: await outcome(
          policy.attachPod(
            {
              namespace: 'sec',
              name: 'rx',
              node: 'node2',
              containerId: pods.rx!.containerId,
              addresses: pods.rx!.addresses,
            },
            { timeoutMs: 5000 },
          ),
        ),
      };
      for (const [rpc, r] of Object.entries(refused)) t.diagnostic(`${rpc} as node2: ${status[r.code]}: ${r.details}`);
      const rules: Record<keyof typeof refused, RegExp> = {
        RegisterNode: /node node1 may only register itself \(the request names "node2" in name\)/,
        Release: new RegExp(
          `node node1 may only release handles it holds \\(handle "${n2Alloc.handle}" is held by node node2\\)`,
        ),
        WatchNodePolicy: /node node1 may only watch its own policy \(the request names "node2" in node\)/,
        AttachPod: /node node1 may only report pods attached on itself \(the request names "node2" in node\)/,
      };
      for (const [rpc, r] of Object.entries(refused) as [keyof typeof refused, { code: number; details: string }][]) {
        assert.equal(r.code, status.PERMISSION_DENIED, `${rpc}: ${status[r.code]} ${r.details}`);
        assert.match(r.details, rules[rpc], rpc);
      }
      // Nothing of node2's changed: its registration and its pod's address are as they were.
      const n2After = (await listAllNodes(adminRoutes)).find((n) => n.name === 'node2')!;
      assert.deepEqual([n2After.underlayAddress, n2After.vtepMac], [n2Before.underlayAddress, n2Before.vtepMac]);
      assert.ok(
        (await adminIpam.listAllocations({ node: 'node2' }, { timeoutMs: 5000 })).allocations.some(
          (a) => a.handle === n2Alloc.handle,
        ),
        "node2's address is still allocated",
      );

      // The same certificate acts as node1 itself.
      const own = policy.watchNodePolicy({ node: 'node1' }, { signal: stop.signal })[Symbol.asyncIterator]();
      const first = await own.next();
      assert.equal(first.done, false, 'WatchNodePolicy for node1 yields a message');
      assert.ok(
        (await routes.renewLease({ name: 'node1' }, { timeoutMs: 5000 })).leaseMillis > 0,
        'node1 renews its own lease',
      );
      const n1Alloc = (await adminIpam.listAllocations({ node: 'node1' }, { timeoutMs: 5000 })).allocations.find(
        (a) => a.podName === 'tx',
      )!;
      // Its own pod's report is accepted (the same sandbox and addresses as its agent reported: nothing changes).
      await policy.attachPod(
        {
          namespace: 'sec',
          name: 'tx',
          node: 'node1',
          containerId: pods.tx!.containerId,
          addresses: pods.tx!.addresses,
          resync: true,
        },
        { timeoutMs: 5000 },
      );
      assert.ok(n1Alloc, "node1's pod holds an address");
    } finally {
      stop.abort();
      for (const c of [routes, ipam, policy, adminRoutes, adminIpam]) c.close();
    }
  });

  test('a pod without a certificate gets nothing: the TLS handshake is refused, gRPC is UNAVAILABLE, the HTTP gateway is not on the fabric', async (t) => {
    const pod = podNs(pods.tx!);
    // A bare TLS client (it verifies the server, presents no certificate): the server ends the handshake.
    const bare = await tlsProbe(pod, null);
    t.diagnostic(`TLS without a client certificate from a pod: ${JSON.stringify(bare)}`);
    assert.equal(bare.data, false, 'no HTTP/2 frame came back');
    assert.match(String(bare.error), /CERTIFICATE_REQUIRED|HANDSHAKE_FAILURE|ECONNRESET/);
    // A gRPC client from the same pod, TLS with the CA but no certificate of its own.
    const script = path.join(cluster!.stateDir, 'no-cert-client.mjs');
    writeFileSync(
      script,
      `
      import { createClient } from ${JSON.stringify(path.join(DIST, 'lib/grpc/client.js'))};
      import { IpamServiceService } from ${JSON.stringify(path.join(DIST, 'gen/weft/ipam/v1/ipam.js'))};
      const c = createClient(IpamServiceService, ${JSON.stringify(`${CONTROL_PLANE_ADDRESS}:${CONTROL_PLANE_PORT}`)}, { security: { mode: 'tls', caFile: ${JSON.stringify(path.join(clusterPkiDir(state), PKI_FILES.caCert))} } });
      try { await c.listPools({}, { timeoutMs: 3000 }); console.log(JSON.stringify({ code: 0 })); }
      catch (e) { console.log(JSON.stringify({ code: e.code, details: e.details })); }
      c.close(); process.exit(0);`,
    );
    const { stdout } = await exec('ip', ['netns', 'exec', pod, process.execPath, script], { timeout: 20_000 });
    const grpc = JSON.parse(stdout.trim().split('\n').pop()!) as { code: number; details: string };
    t.diagnostic(`gRPC ListPools without a client certificate from a pod: ${status[grpc.code]}: ${grpc.details}`);
    assert.ok(
      grpc.code === status.UNAVAILABLE || grpc.code === status.DEADLINE_EXCEEDED,
      `refused, got ${status[grpc.code]} ${grpc.details}`,
    );
    // Plain HTTP: to the gRPC port it gets no HTTP answer; the gateway's port is not bound on the fabric.
    const plain = await nodeIn<Record<string, string>>(
      pod,
      `
      const net = require('net'); const r = {};
      const probe = (port) => new Promise((res) => {
        const s = net.connect({ host: ${JSON.stringify(CONTROL_PLANE_ADDRESS)}, port, timeout: 2000 }); let data = '';
        s.on('connect', () => s.write('GET /v1/pools HTTP/1.1\\r\\nHost: weft\\r\\n\\r\\n'));
        s.on('data', (d) => data += d); s.on('timeout', () => { s.destroy(); res('timeout' + (data ? ':' + data.slice(0, 12) : '')); });
        s.on('error', (e) => res(e.code)); s.on('close', () => res(data.startsWith('HTTP/') ? 'http ' + data.split('\\r\\n')[0] : 'closed, no HTTP answer'));
      });
      (async () => { r.grpcPort = await probe(${CONTROL_PLANE_PORT}); r.gatewayPort = await probe(7401); console.log(JSON.stringify(r)); })();`,
    );
    t.diagnostic(`plain HTTP from a pod: ${JSON.stringify(plain)}`);
    assert.doesNotMatch(plain.grpcPort!, /^http /, 'the gRPC port answers no plain HTTP');
    assert.equal(plain.gatewayPort, 'ECONNREFUSED', "nothing listens for HTTP on the control plane's fabric address");
    const { stdout: listening } = await exec(
      'ip',
      ['netns', 'exec', state.controlPlane.netns, 'ss', '-Hltn', 'sport', '= :7401'],
      { timeout: 5000 },
    );
    assert.match(listening, /127\.0\.0\.1:7401/, "the gateway is bound on the control plane's loopback only");
    assert.doesNotMatch(listening, /0\.0\.0\.0:7401|\*:7401|192\.0\.2/);
  });

  test("node1's and the control plane's certificates replaced on disk: new connections use them, the agent keeps its lease, a pod stream never stalls", async (t) => {
    // Receiver on node2 counts bytes and the longest silence between arrivals; sender on node1 writes 4 KiB every 20 ms.
    const rx = spawn(
      'ip',
      [
        'netns',
        'exec',
        podNs(pods.rx!),
        process.execPath,
        '-e',
        `
      let bytes = 0, last = 0, maxGapMs = 0, start = 0;
      require('net').createServer((s) => {
        s.on('data', (d) => { const now = Date.now(); if (last) maxGapMs = Math.max(maxGapMs, now - last); else start = now; last = now; bytes += d.length; });
        s.on('error', (e) => { console.log(JSON.stringify({ error: e.code })); process.exit(0); });
        s.on('end', () => { console.log(JSON.stringify({ bytes, maxGapMs, ms: last - start })); process.exit(0); });
      }).listen(9100, '0.0.0.0', () => console.log('listening'));
      setTimeout(() => { console.log(JSON.stringify({ bytes, maxGapMs, error: 'timeout' })); process.exit(0); }, ${STREAM_MS + 30_000}).unref();`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    children.push(rx);
    let rxOut = '';
    rx.stdout!.on('data', (d) => (rxOut += d));
    const rxDone = new Promise<void>((r) => rx.once('exit', () => r()));
    for (let i = 0; i < 100 && !rxOut.includes('listening'); i++) await sleep(100);
    assert.ok(rxOut.includes('listening'), 'the receiver listens');
    const tx = spawn(
      'ip',
      [
        'netns',
        'exec',
        podNs(pods.tx!),
        process.execPath,
        '-e',
        `
      const s = require('net').connect({ host: ${JSON.stringify(pods.rx!.addresses[0])}, port: 9100 });
      let sentBytes = 0, error = null; const chunk = Buffer.alloc(4096, 120);
      s.on('connect', () => {
        const start = Date.now();
        const timer = setInterval(() => { if (Date.now() - start >= ${STREAM_MS}) { clearInterval(timer); s.end(); return; } s.write(chunk); sentBytes += chunk.length; }, 20);
      });
      s.on('error', (e) => { error = e.code || e.message; });
      s.on('close', () => { console.log(JSON.stringify({ sentBytes, error })); process.exit(0); });
      setTimeout(() => { console.log(JSON.stringify({ sentBytes, error: 'timeout' })); process.exit(0); }, ${STREAM_MS + 30_000}).unref();`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    children.push(tx);
    let txOut = '';
    tx.stdout!.on('data', (d) => (txOut += d));
    const txDone = new Promise<void>((r) => tx.once('exit', () => r()));
    const t0 = Date.now();
    await sleep(2000);

    const pki = clusterPkiDir(state);
    const adminFiles = { cert: path.join(pki, PKI_FILES.adminCert), key: path.join(pki, PKI_FILES.adminKey) };
    const node1Dir = nodeTlsDir(state, 'node1');
    const servedBefore = (await tlsProbe(nodeOf('node1').netns, adminFiles)).serial!;
    assert.equal(
      servedBefore.toLowerCase(),
      describeCertificate(readFileSync(path.join(pki, PKI_FILES.serverCert), 'utf8')).serialNumber.toLowerCase(),
    );
    const node1Before = describeCertificate(readFileSync(path.join(node1Dir, 'tls.crt'), 'utf8')).serialNumber;

    // (a) node1's certificate: a new one from the same CA, with the CLI an operator would use.
    await exec(bin.weft, ['ca', 'issue', '--node', 'node1', '--out', node1Dir, '--data-dir', path.dirname(pki)], {
      timeout: 20_000,
    });
    const node1After = describeCertificate(readFileSync(path.join(node1Dir, 'tls.crt'), 'utf8'));
    assert.notEqual(node1After.serialNumber, node1Before, 'node1 has a new certificate');
    assert.match(String(node1After.subjectAltName), /weft:node:node1/);
    // (b) the control plane's server certificate: a new one from the same CA, each file written atomically.
    const ca = await readCa(pki);
    const server = await issueCertificate(ca, serverSubject([CONTROL_PLANE_ADDRESS]));
    await writeFileAtomic(path.join(pki, PKI_FILES.serverKey), server.key, 0o600);
    await writeFileAtomic(path.join(pki, PKI_FILES.serverCert), server.cert, 0o644);
    const newServerSerial = describeCertificate(server.cert).serialNumber;
    const rotatedAt = Date.now() - t0;

    // Past the refresh interval, a new connection is served the new certificate.
    let served = '';
    for (let i = 0; i < 20 && served.toLowerCase() !== newServerSerial.toLowerCase(); i++) {
      await sleep(REFRESH_MS / 2);
      served = (await tlsProbe(nodeOf('node1').netns, adminFiles)).serial ?? '';
    }
    t.diagnostic(
      `served serial before ${servedBefore}, after ${served} (new certificate ${newServerSerial}), rotated ${rotatedAt} ms into the stream`,
    );
    assert.equal(served.toLowerCase(), newServerSerial.toLowerCase(), 'new connections get the new server certificate');
    // node1's new files make a connection that the control plane accepts as node1 (a fresh client reads them now).
    const routesAsNode1 = createClient(RoutesServiceService, controlPlaneTarget(state), {
      security: clientTlsDir(node1Dir, 250),
    });
    const adminRoutes = createClient(RoutesServiceService, controlPlaneTarget(state), {
      security: clusterAdminSecurity(state),
    });
    try {
      assert.ok(
        (await routesAsNode1.renewLease({ name: 'node1' }, { timeoutMs: 5000 })).leaseMillis > 0,
        "node1's new certificate is accepted",
      );
      // node1's agent loses its connection (killed in the kernel, as a network blip would): it reconnects with the files
      // now on disk, its new certificate and the control plane's new one, and renews its lease over the new connection.
      const agentConnections = async () =>
        (
          await exec(
            'ip',
            [
              'netns',
              'exec',
              nodeOf('node1').netns,
              'ss',
              '-Htn',
              'state',
              'established',
              'dst',
              `${CONTROL_PLANE_ADDRESS}:${CONTROL_PLANE_PORT}`,
            ],
            { timeout: 5000 },
          )
        ).stdout
          .trim()
          .split('\n')
          .filter(Boolean)
          .map((l) => l.trim().split(/\s+/).at(-2)!);
      const oldConnections = await agentConnections();
      assert.ok(oldConnections.length > 0, "node1's agent holds a connection to the control plane");
      await exec(
        'ip',
        ['netns', 'exec', nodeOf('node1').netns, 'ss', '-K', 'dst', `${CONTROL_PLANE_ADDRESS}:${CONTROL_PLANE_PORT}`],
        { timeout: 5000 },
      );
      let newConnections: string[] = [];
      for (let i = 0; i < 40 && !newConnections.some((c) => !oldConnections.includes(c)); i++) {
        await sleep(250);
        newConnections = await agentConnections();
      }
      t.diagnostic(
        `node1's agent connections before the kill ${oldConnections.join(', ')}, after ${newConnections.join(', ')}`,
      );
      assert.ok(
        newConnections.some((c) => !oldConnections.includes(c)),
        "node1's agent connected again, with the rotated files",
      );
      // Node1's agent keeps renewing its lease: the expiry moves past where it was after the rotation.
      const leaseOf = async () =>
        (await listAllNodes(adminRoutes)).find((n) => n.name === 'node1')!.leaseExpireTime!.getTime();
      await sleep(500);
      const afterRotation = await leaseOf();
      let latest = afterRotation;
      for (let i = 0; i < 30 && latest <= afterRotation; i++) {
        await sleep(500);
        latest = await leaseOf();
      }
      t.diagnostic(`node1's lease expiry moved ${latest - afterRotation} ms after the rotation`);
      assert.ok(latest > afterRotation, "node1's agent renewed its lease after both certificates were replaced");
      assert.ok(latest > Date.now(), "node1's lease is live");
      assert.ok(isAlive(nodeOf('node1').agentPid), 'the agent was not restarted');
    } finally {
      routesAsNode1.close();
      adminRoutes.close();
    }

    await Promise.all([txDone, rxDone]);
    const sent = JSON.parse(txOut.trim().split('\n').pop()!) as { sentBytes: number; error: string | null };
    const got = JSON.parse(rxOut.trim().split('\n').pop()!) as {
      bytes: number;
      maxGapMs: number;
      ms: number;
      error?: string;
    };
    t.diagnostic(
      `stream node1 → node2: ${got.ms} ms, ${sent.sentBytes} bytes sent, ${got.bytes} received, longest silence ${got.maxGapMs} ms`,
    );
    assert.equal(sent.error, null);
    assert.equal(got.error, undefined);
    assert.ok(got.ms >= STREAM_MS - 1000, `the stream ran its ${STREAM_MS} ms (${got.ms})`);
    assert.equal(got.bytes, sent.sentBytes, 'every byte arrived');
    assert.ok(got.maxGapMs < STALL_BOUND_MS, `no stall over ${STALL_BOUND_MS} ms (longest ${got.maxGapMs} ms)`);
  });

  test("node2's certificate revoked: its agent's watches end and its calls are refused (audited, with its address); a new certificate brings it back without a restart", async (t) => {
    const node2Dir = nodeTlsDir(state, 'node2');
    const adminRoutes = createClient(RoutesServiceService, controlPlaneTarget(state), {
      security: clusterAdminSecurity(state),
    });
    const leaseOf = async () =>
      (await listAllNodes(adminRoutes)).find((n) => n.name === 'node2')!.leaseExpireTime!.getTime();
    try {
      const revoked = await weft('ca', 'revoke', '--node', 'node2', '--reason', 'e2e');
      t.diagnostic(revoked.trim());
      assert.match(
        revoked,
        /revoked [0-9a-f]+ \(node:node2/,
        'the certificate the cluster issued node2 is recorded, so its identity finds it',
      );
      // The agent's two watch streams end, and what it calls now is refused: both in the audit log as node:node2.
      type Event = { method: string; result: string; message: string };
      let denied: Event[] = [];
      for (let i = 0; i < 40; i++) {
        denied = JSON.parse(await weft('audit', '--actor', 'node:node2', '--result', 'denied', '--json')) as Event[];
        const ended = (rpc: string) =>
          denied.some(
            (e) => e.method.endsWith(rpc) && /stream ended: the client certificate with serial/.test(e.message),
          );
        if (ended('WatchRoutes') && ended('WatchNodePolicy')) break;
        await sleep(250);
      }
      t.diagnostic(`node2's refusals: ${denied.map((e) => `${e.method.split('/').pop()} ${e.result}`).join(', ')}`);
      for (const rpc of ['WatchRoutes', 'WatchNodePolicy']) {
        assert.ok(
          denied.some((e) => e.method.endsWith(rpc) && /stream ended/.test(e.message)),
          `node2's ${rpc} stream was ended`,
        );
      }
      assert.ok(
        denied.every(
          (e) =>
            e.result === 'UNAUTHENTICATED' && new RegExp(`^from ${nodeOf('node2').address}:\\d+: `).test(e.message),
        ),
        JSON.stringify(denied.slice(0, 3)),
      );

      // A new certificate on disk: the agent's next connection presents it, and it renews its lease again.
      await exec(
        bin.weft,
        ['ca', 'issue', '--node', 'node2', '--out', node2Dir, '--data-dir', path.dirname(clusterPkiDir(state))],
        { timeout: 20_000 },
      );
      // Refused since the revocation, the agent has not renewed: its lease moves again only once it is let in.
      const frozen = await leaseOf();
      let moved = frozen;
      const t0 = Date.now();
      for (let i = 0; i < 80 && moved <= frozen; i++) {
        await sleep(500);
        moved = await leaseOf();
      }
      t.diagnostic(`node2's lease renewed ${Date.now() - t0} ms after its new certificate was written`);
      assert.ok(moved > frozen, "node2's agent renews its lease with the new certificate");
      assert.ok(isAlive(nodeOf('node2').agentPid), 'the agent was not restarted');
    } finally {
      adminRoutes.close();
    }
  });
});
