import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { freePort } from './ports.js';

/**
 * A real Kubernetes API server for tests: etcd and kube-apiserver 1.20.2 (built once by scripts/kube/build.sh into
 * a cache outside the clone), both on 127.0.0.1 only, on free ports, with their data in a temporary folder.
 * Authentication by a static token file (one admin token, group system:masters), authorization Node,RBAC,
 * service-account tokens signed with keys made here, default admission plugins. `stop()` kills both processes and
 * removes the folder; so does a failed start, and so does the test process's exit if a test forgot to stop.
 */

const run = promisify(execFile);

/** Where scripts/kube/build.sh puts kube-apiserver and the matching kubectl. */
export const KUBE_CACHE = process.env.WEFT_KUBE_CACHE || '/var/cache/weft/kube-1.20.2-b2';
export const kubeBinaries = {
  apiserver: path.join(KUBE_CACHE, 'bin/kube-apiserver'),
  kubectl: path.join(KUBE_CACHE, 'bin/kubectl'),
  etcd: '/usr/bin/etcd',
};

/** Why the API server cannot be started here (missing build or package), or null when it can. */
export function kubeApiserverSkipReason(): string | null {
  if (!existsSync(kubeBinaries.apiserver)) return `needs ${kubeBinaries.apiserver} (run scripts/kube/build.sh)`;
  if (!existsSync(kubeBinaries.kubectl)) return `needs ${kubeBinaries.kubectl} (run scripts/kube/build.sh)`;
  if (!existsSync(kubeBinaries.etcd)) return 'needs etcd (run scripts/install-deps.sh: etcd-server)';
  try {
    execFileSync('sh', ['-c', 'command -v openssl'], { stdio: 'ignore' });
  } catch {
    return 'needs openssl';
  }
  return null;
}

export interface KubeApiserver {
  /** https://127.0.0.1:PORT */
  server: string;
  /** A kubeconfig for the admin token. */
  kubeconfig: string;
  adminToken: string;
  /** Milliseconds from launching kube-apiserver to /readyz answering ok. */
  readyMs: number;
  /** Runs the cache's kubectl against this server; rejects with kubectl's stderr when it exits non-zero. */
  kubectl(args: string[], opts?: { input?: string }): Promise<{ stdout: string; stderr: string }>;
  /** Kills kube-apiserver and etcd and removes their folder. */
  stop(): Promise<void>;
  /** Kills kube-apiserver (etcd and its data stay) and starts it again on the same port; resolves once it is ready. */
  restartApiserver(): Promise<void>;
  /**
   * Compacts etcd's history up to its current revision: a watch that resumes from an older resource version is then
   * answered 410 Gone (with `--watch-cache=false`, which sends watches to etcd), as after a long disconnection.
   */
  compactEtcd(): Promise<number>;
  /** The last lines of both processes' output, for failure messages. */
  logs(): string;
}

const SERVICE_CIDR = '10.96.0.0/16';
const live = new Set<ChildProcess>();
const liveDirs = new Set<string>();
let exitHookInstalled = false;

function launch(file: string, args: string[], name: string): { child: ChildProcess; output: () => string } {
  const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  child.once('exit', () => live.delete(child));
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    // A test that crashed before its after() hook ran, or was interrupted, must not leave a server behind.
    const cleanUp = () => {
      for (const c of live) c.kill('SIGKILL');
      for (const d of liveDirs) rmSync(d, { recursive: true, force: true });
    };
    process.once('exit', cleanUp);
    for (const sig of ['SIGINT', 'SIGTERM'] as const) {
      process.once(sig, () => {
        cleanUp();
        process.kill(process.pid, sig);
      });
    }
  }
  let out = '';
  const keep = (d: Buffer) => {
    out = (out + d.toString()).slice(-20_000);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  return { child, output: () => `--- ${name} ---\n${out.split('\n').slice(-40).join('\n')}` };
}

async function kill(child: ChildProcess, graceMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  await new Promise<void>((resolve) => {
    const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

/** GET `url` over HTTP(S); resolves with the status code and body, or rejects on a connection error. */
function get(url: string, opts: https.RequestOptions = {}): Promise<{ status: number; body: string }> {
  const mod = url.startsWith('https:') ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.get(url, { ...opts, timeout: 2000 }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

async function waitFor(
  what: string,
  deadline: number,
  check: () => Promise<boolean>,
  died: () => string | null,
): Promise<void> {
  for (;;) {
    const dead = died();
    if (dead) throw new Error(`${what}: ${dead}`);
    if (await check().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`${what}: not ready in time`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** POST a JSON body to etcd's gRPC gateway (v3 API over HTTP). */
function etcdPost(url: string, body: object): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      { method: 'POST', headers: { 'content-type': 'application/json' }, timeout: 5000 },
      (res) => {
        let text = '';
        res.on('data', (d) => (text += d));
        res.on('end', () =>
          res.statusCode === 200
            ? resolve(JSON.parse(text) as Record<string, unknown>)
            : reject(new Error(`etcd ${url}: ${res.statusCode} ${text}`)),
        );
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

/** `extraArgs`: more kube-apiserver flags (e.g. `--watch-cache=false`). */
export async function startKubeApiserver(
  opts: { timeoutMs?: number; extraArgs?: string[] } = {},
): Promise<KubeApiserver> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'weft-kube-'));
  liveDirs.add(dir);
  const procs: { child: ChildProcess; output: () => string }[] = [];
  const logs = () => procs.map((p) => p.output()).join('\n');
  const stop = async () => {
    for (const p of procs.reverse()) await kill(p.child);
    rmSync(dir, { recursive: true, force: true });
    liveDirs.delete(dir);
  };
  const died = (p: { child: ChildProcess }, name: string) => () =>
    p.child.exitCode !== null || p.child.signalCode !== null
      ? `${name} exited (${p.child.exitCode ?? p.child.signalCode})\n${logs()}`
      : null;
  try {
    const deadline = Date.now() + (opts.timeoutMs ?? 60_000);
    const [etcdClient, etcdPeer, securePort] = await Promise.all([freePort(), freePort(), freePort()]);

    // etcd: one member, loopback only, data in the temporary folder.
    const etcdUrl = `http://127.0.0.1:${etcdClient}`;
    const peerUrl = `http://127.0.0.1:${etcdPeer}`;
    const etcd = launch(
      kubeBinaries.etcd,
      [
        '--name=weft-test',
        `--data-dir=${path.join(dir, 'etcd')}`,
        `--listen-client-urls=${etcdUrl}`,
        `--advertise-client-urls=${etcdUrl}`,
        `--listen-peer-urls=${peerUrl}`,
        `--initial-advertise-peer-urls=${peerUrl}`,
        `--initial-cluster=weft-test=${peerUrl}`,
        '--log-level=warn',
      ],
      'etcd',
    );
    procs.push(etcd);

    // Serving certificate for 127.0.0.1 (self-signed; the kubeconfig trusts exactly it), service-account keys,
    // and the token file: token,user,uid,"groups".
    const crt = path.join(dir, 'serving.crt');
    const key = path.join(dir, 'serving.key');
    await run('openssl', [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      key,
      '-out',
      crt,
      '-days',
      '1',
      '-subj',
      '/CN=127.0.0.1',
      '-addext',
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
    ]);
    const sa = generateKeyPairSync('rsa', { modulusLength: 2048 });
    writeFileSync(path.join(dir, 'sa.key'), sa.privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
    writeFileSync(path.join(dir, 'sa.pub'), sa.publicKey.export({ type: 'spki', format: 'pem' }));
    const adminToken = `weft-admin-${Math.random().toString(36).slice(2)}${Date.now().toString(36)}`;
    writeFileSync(path.join(dir, 'tokens.csv'), `${adminToken},weft-admin,weft-admin,"system:masters"\n`, {
      mode: 0o600,
    });

    await waitFor(
      'etcd',
      deadline,
      async () => (await get(`${etcdUrl}/health`)).body.includes('"health":"true"'),
      died(etcd, 'etcd'),
    );

    const apiserverArgs = [
      `--etcd-servers=${etcdUrl}`,
      '--bind-address=127.0.0.1',
      '--advertise-address=127.0.0.1',
      `--secure-port=${securePort}`,
      '--insecure-port=0', // 1.20 still serves plain HTTP on localhost:8080 unless told not to
      `--tls-cert-file=${crt}`,
      `--tls-private-key-file=${key}`,
      `--cert-dir=${path.join(dir, 'certs')}`,
      `--token-auth-file=${path.join(dir, 'tokens.csv')}`,
      '--authorization-mode=Node,RBAC',
      `--service-account-key-file=${path.join(dir, 'sa.pub')}`,
      `--service-account-signing-key-file=${path.join(dir, 'sa.key')}`,
      '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
      '--api-audiences=https://kubernetes.default.svc.cluster.local',
      `--service-cluster-ip-range=${SERVICE_CIDR}`,
      '--profiling=false',
      '--logtostderr=true',
      '--v=0',
      ...(opts.extraArgs ?? []),
    ];
    const server = `https://127.0.0.1:${securePort}`;
    const ca = readFileSync(crt);
    let apiserver: { child: ChildProcess; output: () => string };
    const startApiserver = async (until: number) => {
      const launchedAt = Date.now();
      apiserver = launch(kubeBinaries.apiserver, apiserverArgs, 'kube-apiserver');
      procs.push(apiserver);
      await waitFor(
        'kube-apiserver',
        until,
        async () => {
          const r = await get(`${server}/readyz`, { ca, headers: { authorization: `Bearer ${adminToken}` } });
          return r.status === 200 && r.body.trim() === 'ok';
        },
        died(apiserver, 'kube-apiserver'),
      );
      return Date.now() - launchedAt;
    };
    const readyMs = await startApiserver(deadline);
    const restartApiserver = async () => {
      await kill(apiserver.child);
      procs.splice(procs.indexOf(apiserver), 1);
      await startApiserver(Date.now() + (opts.timeoutMs ?? 60_000));
    };
    const compactEtcd = async () => {
      const r = await etcdPost(`${etcdUrl}/v3/kv/range`, { key: Buffer.from('/').toString('base64') });
      const revision = Number((r.header as { revision: string }).revision);
      await etcdPost(`${etcdUrl}/v3/kv/compaction`, { revision, physical: true });
      return revision;
    };

    const kubeconfig = path.join(dir, 'kubeconfig');
    writeFileSync(
      kubeconfig,
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Config',
        'current-context': 'weft-test',
        clusters: [{ name: 'weft-test', cluster: { server, 'certificate-authority': crt } }],
        users: [{ name: 'weft-admin', user: { token: adminToken } }],
        contexts: [{ name: 'weft-test', context: { cluster: 'weft-test', user: 'weft-admin' } }],
      }),
      { mode: 0o600 },
    );

    return {
      server,
      kubeconfig,
      adminToken,
      readyMs,
      logs,
      stop,
      restartApiserver,
      compactEtcd,
      kubectl: (args, o = {}) => {
        const p = run(kubeBinaries.kubectl, [`--kubeconfig=${kubeconfig}`, ...args], {
          maxBuffer: 64 << 20,
          timeout: 60_000,
        });
        if (o.input !== undefined) {
          p.child.stdin!.end(o.input);
        }
        return p.catch((err: Error & { stderr?: string; stdout?: string }) => {
          throw Object.assign(new Error(`kubectl ${args.join(' ')} failed: ${err.stderr || err.message}`), {
            stderr: err.stderr ?? '',
            stdout: err.stdout ?? '',
          });
        });
      },
    };
  } catch (err) {
    const out = logs();
    await stop();
    throw err instanceof Error && !err.message.includes('--- ')
      ? Object.assign(err, { message: `${err.message}\n${out}` })
      : err;
  }
}
