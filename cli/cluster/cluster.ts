import { spawn } from 'node:child_process';
import { randomBytes, createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync, closeSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../../lib/exec.js';
import { createClient } from '../../lib/grpc/client.js';
import { clientTlsDir, type TransportSecurity } from '../../lib/grpc/credentials.js';
import { ensureControlPlanePki, issueClientTlsDir, PKI_FILES } from '../../lib/pki.js';
import { IpamServiceService } from '../../gen/weft/ipam/v1/ipam.js';
import { RoutesServiceService } from '../../gen/weft/routes/v1/routes.js';
import { CertificateServiceService } from '../../gen/weft/auth/v1/auth.js';
import { listAllNodes } from '../node-status.js';
import { embeddedDatabaseUrls } from '../../lib/db/embedded.js';
import { controlPlaneSettings } from '../control-plane.config.js';
import {
  CONTROL_PLANE_ADDRESS,
  CONTROL_PLANE_PORT,
  DEFAULT_POOL,
  DEFAULT_POOL6,
  SUBNETS,
  controlPlaneNetns,
  fabricNetns,
  parsePodRef,
  planNode,
  podNetns,
  validateNamespace,
  validatePodName,
  MAX_CONTROL_PLANE_REPLICAS,
  planControlPlaneReplica,
} from './topology.js';

/**
 * The local cluster: network namespaces as nodes on a fabric, the control plane in its own namespace, one agent
 * process per node, and pods attached by the real weft-cni. Its state lives in one folder (state.json, logs,
 * sockets); `down` removes everything it made, found by the run's prefix.
 */
const here = path.dirname(fileURLToPath(import.meta.url));
const DIST = path.resolve(here, '../..');
export const paths = {
  cli: path.join(DIST, 'cli/main.js'),
  /** The agent as one module (scripts/bundle.mjs): it starts faster than node-dataplane/main.js, the same code. */
  agent: path.join(DIST, 'bin/weft-agent.mjs'),
  cni: path.join(DIST, 'bin/weft-cni'),
};

export interface PodState {
  name: string;
  node: string;
  namespace: string;
  netns: string;
  containerId: string;
  ifname: string;
  addresses: string[];
}
export interface NodeState {
  name: string;
  netns: string;
  address: string;
  agentPid: number;
  socket: string;
  /** Where the agent reaches the control plane when not at its TCP address (nodes off the fabric: its unix socket). */
  controlPlane?: string;
}
export interface ClusterState {
  prefix: string;
  stateDir: string;
  controlPlane: {
    netns: string;
    pid: number;
    socket: string;
    address: string;
    /** A file of `weft up` settings (NAME=VALUE lines, e.g. DATABASE_URL) read at each start (`cluster up --control-plane-env`). */
    envFile?: string;
  };
  /**
   * Further replicas of the control plane (`cluster up --replicas N`), each `weft up` in a namespace of its own on the
   * first one's database (its embedded PostgreSQL, over its unix socket). Agents are given every replica's address.
   */
  replicas?: { netns: string; pid: number; socket: string; address: string; dataDir: string }[];
  nodes: NodeState[];
  pods: PodState[];
  /** Dual-stack pods (`cluster up --dual-stack`): the IPv6 pool exists and every agent runs with WEFT_POD_FAMILIES=ipv4,ipv6. */
  dualStack?: boolean;
}

const stateFile = (dir: string) => path.join(dir, 'state.json');

export function readState(stateDir: string): ClusterState {
  if (!existsSync(stateFile(stateDir)))
    throw new Error(`no local cluster in ${stateDir}; start one with \`weft cluster up\``);
  return JSON.parse(readFileSync(stateFile(stateDir), 'utf8')) as ClusterState;
}

function writeState(s: ClusterState): void {
  writeFileSync(stateFile(s.stateDir) + '.tmp', JSON.stringify(s, null, 2));
  writeFileSync(stateFile(s.stateDir), JSON.stringify(s, null, 2));
  rmSync(stateFile(s.stateDir) + '.tmp', { force: true });
}

const ipn = (ns: string, ...args: string[]) => run('ip', ['-n', ns, ...args]);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Starts a long-running process inside a namespace, detached, logging to a file. */
function spawnInNetns(ns: string, argv: string[], env: Record<string, string>, logFile: string): number {
  const fd = openSync(logFile, 'a');
  const child = spawn('ip', ['netns', 'exec', ns, ...argv], {
    env: { ...process.env, ...env },
    stdio: ['ignore', fd, fd],
    detached: true,
  });
  closeSync(fd);
  child.unref();
  if (!child.pid) throw new Error(`cannot start ${argv.join(' ')} in ${ns}`);
  return child.pid;
}

async function waitFor<T>(
  what: string,
  timeoutMs: number,
  probe: () => Promise<T | null>,
  logFile?: string,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown = null;
  while (Date.now() < deadline) {
    try {
      const v = await probe();
      if (v !== null) return v;
    } catch (err) {
      last = err;
    }
    await sleep(100);
  }
  const tail =
    logFile && existsSync(logFile)
      ? `\n--- ${logFile} ---\n${readFileSync(logFile, 'utf8').split('\n').slice(-20).join('\n')}`
      : '';
  throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}${tail}`);
}

/** Whether a process runs. A zombie has exited (only its parent, often a slow-reaping init, has yet to reap it). */
export function isAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

async function stopProcess(pid: number): Promise<void> {
  if (!isAlive(pid)) return;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  for (let i = 0; i < 50 && isAlive(pid); i++) await sleep(100);
  if (isAlive(pid))
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  for (let i = 0; i < 20 && isAlive(pid); i++) await sleep(50);
}

/**
 * Where the CLI and tests reach the local cluster's control plane: its unix socket, or with replicas the socket of the
 * first one still running (a unix socket names one process, so the CLI picks a live one itself).
 */
export function controlPlaneTarget(s: ClusterState): string {
  const live = [s.controlPlane, ...(s.replicas ?? [])].find((r) => r.pid === 0 || isAlive(r.pid));
  return `unix://${(live ?? s.controlPlane).socket}`;
}

/** Every replica's TCP address, as agents are given it (WEFT_CONTROL_PLANE: lib/grpc/endpoints.ts). */
export const controlPlaneEndpoints = (s: ClusterState) =>
  [s.controlPlane.address, ...(s.replicas ?? []).map((r) => r.address)].join(',');

/** The control plane's pki folder (its CA and the local admin's certificate): `weft up`'s data dir is <state-dir>/cp. */
export const clusterPkiDir = (s: Pick<ClusterState, 'stateDir'>) => path.join(s.stateDir, 'cp', 'pki');

/** The local admin's credentials (weft:admin:local), with which the CLI's cluster commands and tests call the control plane. */
export function clusterAdminSecurity(s: Pick<ClusterState, 'stateDir'>): TransportSecurity {
  const pki = clusterPkiDir(s);
  return {
    mode: 'mtls',
    caFile: path.join(pki, PKI_FILES.caCert),
    certFile: path.join(pki, PKI_FILES.adminCert),
    keyFile: path.join(pki, PKI_FILES.adminKey),
  };
}

/** A node's TLS folder (ca.crt, tls.crt, tls.key for weft:node:<name>), which its agent reads through WEFT_TLS_DIR. */
export const nodeTlsDir = (s: Pick<ClusterState, 'stateDir'>, node: string) => path.join(s.stateDir, node, 'tls');

/** Issues a client TLS folder from the local cluster's CA (a controller's, an extra admin's). */
export function issueClusterCredentials(
  s: Pick<ClusterState, 'stateDir'>,
  outDir: string,
  subject: { kind: 'node' | 'admin' | 'controller'; name: string },
): Promise<TransportSecurity> {
  return issueClientTlsDir(clusterPkiDir(s), outDir, subject).then(() => clientTlsDir(outDir));
}

export async function clusterUp(opts: {
  stateDir: string;
  nodes: number;
  dualStack?: boolean;
  /** A file of `weft up` settings for the control plane (see readControlPlaneEnv). */
  controlPlaneEnv?: string;
  /** Control-plane replicas, 1-3 (default 1). */
  replicas?: number;
}): Promise<ClusterState> {
  const replicas = opts.replicas ?? 1;
  if (!Number.isInteger(replicas) || replicas < 1 || replicas > MAX_CONTROL_PLANE_REPLICAS)
    throw new Error(`replicas must be 1-${MAX_CONTROL_PLANE_REPLICAS}`);
  const stateDir = path.resolve(opts.stateDir);
  if (existsSync(stateFile(stateDir)))
    throw new Error(`a local cluster already runs from ${stateDir}; run \`weft cluster down\` first`);
  if (!Number.isInteger(opts.nodes) || opts.nodes < 0 || opts.nodes > 50)
    throw new Error('nodes must be 0-50 (0: the control plane alone)');
  const envFile = opts.controlPlaneEnv ? path.resolve(opts.controlPlaneEnv) : undefined;
  if (envFile) readControlPlaneEnv(envFile); // a bad file stops here, before anything is made
  mkdirSync(stateDir, { recursive: true });
  // The control plane's PostgreSQL (run as 'postgres' under root) keeps its data below this folder.
  chmodSync(stateDir, 0o755);
  const prefix = `w${randomBytes(3).toString('hex')}`;
  const cpNs = controlPlaneNetns(prefix);
  const state: ClusterState = {
    prefix,
    stateDir,
    nodes: [],
    pods: [],
    ...(opts.dualStack ? { dualStack: true } : {}),
    controlPlane: {
      netns: cpNs,
      pid: 0,
      socket: path.join(stateDir, 'cp', 'weft.sock'),
      address: `${CONTROL_PLANE_ADDRESS}:${CONTROL_PLANE_PORT}`,
      ...(envFile ? { envFile } : {}),
    },
  };
  writeState(state);
  try {
    // Fabric: two bridges (one per underlay subnet) and the router between them.
    const fab = fabricNetns(prefix);
    await run('ip', ['netns', 'add', fab]);
    await ipn(fab, 'link', 'set', 'lo', 'up');
    await run('ip', ['netns', 'exec', fab, 'sysctl', '-qw', 'net.ipv4.ip_forward=1']);
    for (const s of SUBNETS) {
      await ipn(fab, 'link', 'add', s.bridge, 'type', 'bridge');
      await ipn(fab, 'addr', 'add', `${s.router}/24`, 'dev', s.bridge);
      await ipn(fab, 'link', 'set', s.bridge, 'up');
    }
    // Control plane namespace on the first subnet.
    await run('ip', ['netns', 'add', cpNs]);
    await attachToFabric(fab, cpNs, 'cp', `${CONTROL_PLANE_ADDRESS}/24`, SUBNETS[0].bridge, SUBNETS[0].router);
    mkdirSync(path.join(stateDir, 'cp'), { recursive: true });
    // The CA is made here rather than by `weft up` on its first start, so that node credentials can be issued
    // without waiting for it; `weft up` finds the folder and keeps it.
    await ensureControlPlanePki(clusterPkiDir(state), [CONTROL_PLANE_ADDRESS]);
    await startControlPlane(state);
    const ipam = createClient(IpamServiceService, controlPlaneTarget(state), { security: clusterAdminSecurity(state) });
    try {
      const pools = await ipam.listPools({}, { timeoutMs: 5000 });
      if (!pools.pools.some((p) => p.name === DEFAULT_POOL.name))
        await ipam.createPool(DEFAULT_POOL, { timeoutMs: 5000 });
      if (opts.dualStack && !pools.pools.some((p) => p.name === DEFAULT_POOL6.name))
        await ipam.createPool(DEFAULT_POOL6, { timeoutMs: 5000 });
    } finally {
      ipam.close();
    }
    for (let i = 1; i < replicas; i++) {
      const plan = planControlPlaneReplica(prefix, i);
      await run('ip', ['netns', 'add', plan.netns]);
      await attachToFabric(
        fab,
        plan.netns,
        plan.fabricIfname,
        `${plan.address}/24`,
        SUBNETS[0].bridge,
        SUBNETS[0].router,
      );
      const dataDir = path.join(stateDir, `cp${i + 1}`);
      mkdirSync(dataDir, { recursive: true });
      state.replicas = [
        ...(state.replicas ?? []),
        {
          netns: plan.netns,
          pid: 0,
          socket: path.join(dataDir, 'weft.sock'),
          address: `${plan.address}:${CONTROL_PLANE_PORT}`,
          dataDir,
        },
      ];
      await startControlPlaneReplica(state, state.replicas.at(-1)!);
    }
    for (let i = 1; i <= opts.nodes; i++) await addNode(state, i);
    return state;
  } catch (err) {
    await clusterDown({ stateDir }).catch(() => {});
    throw err;
  }
}

/** Starts the control plane (`weft up`: IPAM, routes, embedded PostgreSQL) in its namespace; resolves once it answers. */
async function startControlPlane(state: ClusterState): Promise<void> {
  const cpLog = path.join(state.stateDir, 'cp', 'control-plane.log');
  state.controlPlane.pid = spawnInNetns(
    state.controlPlane.netns,
    [
      process.execPath,
      paths.cli,
      'up',
      '--data-dir',
      path.join(state.stateDir, 'cp'),
      '--listen',
      `0.0.0.0:${CONTROL_PLANE_PORT}`,
    ],
    { WEFT_LOG_LEVEL: 'info', ...(state.controlPlane.envFile ? readControlPlaneEnv(state.controlPlane.envFile) : {}) },
    cpLog,
  );
  writeState(state);
  const ipam = createClient(IpamServiceService, controlPlaneTarget(state), { security: clusterAdminSecurity(state) });
  try {
    await waitFor(
      'the control plane',
      60_000,
      async () => (existsSync(state.controlPlane.socket) ? await ipam.listPools({}, { timeoutMs: 2000 }) : null),
      cpLog,
    );
  } finally {
    ipam.close();
  }
}

/**
 * The control plane's settings from a file of NAME=VALUE lines (blank lines and `#` comments skipped): only `weft up`'s
 * own settings (`weft up --help`), so that a typo is an error rather than a setting silently not applied. The local
 * cluster's control plane runs in a namespace of its own, so a database it uses must be reachable from there: a
 * unix socket (scripts/ha/up.sh writes socket.env for its HAProxy), not 127.0.0.1 of the machine.
 */
export function readControlPlaneEnv(file: string): Record<string, string> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read the control plane's settings file ${file}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const known = new Set(Object.values(controlPlaneSettings).map((s) => s.env));
  const env: Record<string, string> = {};
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const eq = line.indexOf('=');
    const name = eq > 0 ? line.slice(0, eq) : '';
    if (!known.has(name))
      throw new Error(
        `${file}:${i + 1}: ${name ? `${name} is not a setting of weft up` : 'expected NAME=VALUE'} (weft up --help lists them)`,
      );
    env[name] = line.slice(eq + 1);
  }
  return env;
}

/**
 * Stops the control plane, every replica of it, and leaves it stopped (agents and pods run on): SIGTERM, its clean
 * stop (streams ended, connections closed, its PostgreSQL stopped), or SIGKILL to every process of its namespaces at
 * once (`weft up` and its embedded PostgreSQL), as when its machines die. Stopping a stopped control plane does nothing.
 */
export async function stopControlPlane(
  stateDir: string,
  signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM',
): Promise<ClusterState> {
  const state = readState(stateDir);
  // The replicas first: the first one holds the embedded PostgreSQL they use.
  const all = [...(state.replicas ?? []), state.controlPlane];
  if (signal === 'SIGKILL')
    for (const cp of all) {
      const pids = (await run('ip', ['netns', 'pids', cp.netns]).catch(() => ''))
        .split('\n')
        .map(Number)
        .filter((p) => p > 0);
      for (const pid of new Set([cp.pid, ...pids].filter((p) => p > 0)))
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
    }
  for (const cp of all) {
    await stopProcess(cp.pid);
    cp.pid = 0;
  }
  writeState(state);
  return state;
}

/** Starts a stopped control plane (and its replicas) on its data; resolves once each answers. */
export async function startStoppedControlPlane(stateDir: string): Promise<ClusterState> {
  const state = readState(stateDir);
  if (isAlive(state.controlPlane.pid))
    throw new Error(`the control plane already runs (pid ${state.controlPlane.pid})`);
  await startControlPlane(state);
  for (const replica of state.replicas ?? []) if (!isAlive(replica.pid)) await startControlPlaneReplica(state, replica);
  return state;
}

/**
 * Starts a further replica (`weft up`) in its namespace on the first replica's database: the embedded server's unix
 * socket (reachable from any namespace), or the DATABASE_URL the first one was given; the same CA and certificates.
 * Resolves once it answers on its own socket.
 */
async function startControlPlaneReplica(state: ClusterState, replica: NonNullable<ClusterState['replicas']>[number]) {
  const log = path.join(replica.dataDir, 'control-plane.log');
  // The settings the first replica was given (`cluster up --control-plane-env`), its database among them.
  const settings = state.controlPlane.envFile ? readControlPlaneEnv(state.controlPlane.envFile) : {};
  const urls =
    settings.DATABASE_URL || process.env.DATABASE_URL
      ? null
      : embeddedDatabaseUrls(
          path.join(state.stateDir, 'cp'),
          Number(process.env.WEFT_PG_PORT) || controlPlaneSettings.pgPort.default,
        );
  replica.pid = spawnInNetns(
    replica.netns,
    [process.execPath, paths.cli, 'up', '--data-dir', replica.dataDir, '--listen', `0.0.0.0:${CONTROL_PLANE_PORT}`],
    {
      WEFT_LOG_LEVEL: 'info',
      ...settings,
      WEFT_PKI_DIR: clusterPkiDir(state),
      ...(urls ? { DATABASE_URL: urls.appUrl, WEFT_MIGRATION_DATABASE_URL: urls.ownerUrl } : {}),
    },
    log,
  );
  writeState(state);
  const ipam = createClient(IpamServiceService, `unix://${replica.socket}`, { security: clusterAdminSecurity(state) });
  try {
    await waitFor(
      `control-plane replica ${replica.address}`,
      60_000,
      async () => (existsSync(replica.socket) ? await ipam.listPools({}, { timeoutMs: 2000 }) : null),
      log,
    );
  } finally {
    ipam.close();
  }
}

/**
 * Restarts the control plane — the IPAM and routes services and their embedded PostgreSQL — on the same data, as an
 * operator's restart or a crash-and-restart by a supervisor would; agents are left alone to recover on their own.
 */
export async function restartControlPlane(stateDir: string): Promise<ClusterState> {
  const state = readState(stateDir);
  await stopProcess(state.controlPlane.pid);
  state.controlPlane.pid = 0;
  writeState(state);
  await startControlPlane(state);
  return state;
}

async function attachToFabric(
  fab: string,
  ns: string,
  fabricIfname: string,
  cidr: string,
  bridge: string,
  router: string,
): Promise<void> {
  await ipn(fab, 'link', 'add', fabricIfname, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
  await ipn(fab, 'link', 'set', fabricIfname, 'master', bridge, 'up');
  await ipn(ns, 'link', 'set', 'lo', 'up');
  await ipn(ns, 'addr', 'add', cidr, 'dev', 'eth0');
  await ipn(ns, 'link', 'set', 'eth0', 'up');
  await ipn(ns, 'route', 'add', 'default', 'via', router);
}

/**
 * A node forwards pods' packets, and nodes on one bridge route each other's pod blocks directly (via eth0, with pod
 * source addresses): forwarding on, reverse-path filtering loose rather than strict (a namespace may inherit strict
 * filtering from the host's defaults). Set inside the node's namespace only; the host's settings are not touched.
 */
async function allowDirectRouting(ns: string): Promise<void> {
  await run('ip', [
    'netns',
    'exec',
    ns,
    'sysctl',
    '-qw',
    'net.ipv4.ip_forward=1',
    'net.ipv4.conf.all.rp_filter=2',
    'net.ipv4.conf.default.rp_filter=2',
    'net.ipv4.conf.eth0.rp_filter=2',
  ]);
}

/** Adds node `index` (1-based) with its agent; waits until the node is registered. */
export async function addNode(state: ClusterState, index?: number): Promise<NodeState> {
  const i = index ?? Math.max(0, ...state.nodes.map((n) => Number(n.name.replace('node', '')))) + 1;
  const plan = planNode(state.prefix, i);
  if (state.nodes.some((n) => n.name === plan.name)) throw new Error(`${plan.name} already exists`);
  const node = await createNodeNetns(state, plan);
  await attachToFabric(
    fabricNetns(state.prefix),
    plan.netns,
    plan.fabricIfname,
    `${plan.address}/24`,
    plan.bridge,
    plan.router,
  );
  await startNodeAgent(state, node);
  return node;
}

/**
 * Two nodes joined by one veth pair, off the fabric (no bridge, no router): the topology of
 * ../shared/baselines/datapath-floor.sh, so that a throughput figure beside that floor measures what Weft adds to the
 * datapath, not the local cluster's bridge. Both sit on the first underlay subnet, each with a default route via
 * the other (as in the floor); their agents reach the control plane over its unix socket (the fallback), since the
 * pair has no path to the control plane's namespace.
 */
export async function addNodePair(state: ClusterState, indexes: [number, number]): Promise<[NodeState, NodeState]> {
  const plans = indexes.map((i) => planNode(state.prefix, i));
  for (const plan of plans) {
    if (state.nodes.some((n) => n.name === plan.name)) throw new Error(`${plan.name} already exists`);
    if (plan.bridge !== SUBNETS[0].bridge)
      throw new Error(`${plan.name} is not on the first underlay subnet; pick indexes that are not multiples of 3`);
  }
  const [a, b] = [await createNodeNetns(state, plans[0]!), await createNodeNetns(state, plans[1]!)];
  await ipn(a.netns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', b.netns);
  for (const [n, peer] of [
    [a, b],
    [b, a],
  ] as const) {
    await ipn(n.netns, 'link', 'set', 'lo', 'up');
    await ipn(n.netns, 'addr', 'add', `${n.address}/24`, 'dev', 'eth0');
    await ipn(n.netns, 'link', 'set', 'eth0', 'up');
    await ipn(n.netns, 'route', 'add', 'default', 'via', peer.address);
  }
  await startNodeAgent(state, a, controlPlaneTarget(state));
  await startNodeAgent(state, b, controlPlaneTarget(state));
  return [a, b];
}

async function createNodeNetns(state: ClusterState, plan: ReturnType<typeof planNode>): Promise<NodeState> {
  await run('ip', ['netns', 'add', plan.netns]);
  const node: NodeState = {
    name: plan.name,
    netns: plan.netns,
    address: plan.address,
    agentPid: 0,
    socket: path.join(state.stateDir, plan.name, 'agent.sock'),
  };
  state.nodes.push(node);
  writeState(state);
  return node;
}

/** Starts the node's agent (reaching the control plane at `controlPlane`, default its TCP address); waits until the node is registered. */
async function startNodeAgent(state: ClusterState, node: NodeState, controlPlane?: string): Promise<void> {
  await allowDirectRouting(node.netns);
  mkdirSync(path.dirname(node.socket), { recursive: true, mode: 0o700 });
  for (const dir of Object.values(cniDirs(node))) mkdirSync(dir, { recursive: true });
  const log = path.join(path.dirname(node.socket), 'agent.log');
  node.controlPlane = controlPlane;
  // The node's own credentials (weft:node:<name>), kept when they exist (an agent restarted keeps its certificate).
  if (!existsSync(path.join(nodeTlsDir(state, node.name), 'tls.crt'))) {
    await issueClusterCredentials(state, nodeTlsDir(state, node.name), { kind: 'node', name: node.name });
    // Recorded like `weft ca issue` records, so that `weft ca revoke --node NAME` finds it.
    const certificates = createClient(CertificateServiceService, controlPlaneTarget(state), {
      security: clusterAdminSecurity(state),
    });
    try {
      await certificates.recordCertificate(
        { certificatePem: readFileSync(path.join(nodeTlsDir(state, node.name), 'tls.crt'), 'utf8') },
        { timeoutMs: 10_000 },
      );
    } finally {
      certificates.close();
    }
  }
  node.agentPid = spawnAgent(state, node);
  writeState(state);
  const routes = createClient(RoutesServiceService, controlPlaneTarget(state), {
    security: clusterAdminSecurity(state),
  });
  try {
    await waitFor(
      `${node.name}'s agent`,
      30_000,
      async () => {
        if (!isAlive(node.agentPid)) throw new Error('the agent exited');
        const nodes = await listAllNodes(routes, 2000);
        return nodes.some((n) => n.name === node.name) && existsSync(node.socket) ? true : null;
      },
      log,
    );
  } finally {
    routes.close();
  }
}

/** Each agent serves Prometheus metrics inside its node's namespace (e.g. `ip netns exec <node> curl 127.0.0.1:9402/metrics`). */
export const AGENT_METRICS_PORT = 9402;

export const agentLog = (node: NodeState) => path.join(path.dirname(node.socket), 'agent.log');
/** The node's container-runtime CNI folders, where its agent installs `weft` and `10-weft.conflist` as on a real node. */
export const cniDirs = (node: NodeState) => ({
  bin: path.join(path.dirname(node.socket), 'cni', 'bin'),
  conf: path.join(path.dirname(node.socket), 'cni', 'net.d'),
});

function spawnAgent(state: ClusterState, node: NodeState): number {
  return spawnInNetns(
    node.netns,
    [process.execPath, paths.agent],
    {
      WEFT_NODE_NAME: node.name,
      // The underlay as an operator of many machines names it: by the subnets it lives on.
      WEFT_UNDERLAY_CIDR: SUBNETS.map((s) => `${s.base}.0/24`).join(','),
      WEFT_CONTROL_PLANE: node.controlPlane ?? controlPlaneEndpoints(state),
      WEFT_AGENT_SOCKET: node.socket,
      WEFT_TLS_DIR: nodeTlsDir(state, node.name),
      // The local cluster resyncs every 5 s unless the environment says otherwise (bench/routes measures CPU per route
      // change with a long period, so that no periodic pass falls in its idle or busy window).
      ...(process.env.WEFT_RESYNC_MS ? {} : { WEFT_RESYNC_MS: '5000' }),
      WEFT_METRICS_LISTEN: `0.0.0.0:${AGENT_METRICS_PORT}`,
      WEFT_CNI_BIN_DIR: cniDirs(node).bin,
      WEFT_CNI_CONF_DIR: cniDirs(node).conf,
      ...(state.dualStack ? { WEFT_POD_FAMILIES: 'ipv4,ipv6' } : {}),
    },
    agentLog(node),
  );
}

export interface CniOutcome {
  exitCode: number | null;
  stdout: string;
  stderr: string;
}

/** Runs weft-cni inside the node's namespace exactly as a container runtime does: environment and stdin in, stdout and exit status out. */
export function runCni(node: NodeState, env: Record<string, string>, stdin: string): Promise<CniOutcome> {
  return runPluginInNetns(node.netns, paths.cni, { CNI_PATH: path.dirname(paths.cni), ...env }, stdin);
}

/** Runs a CNI plugin executable inside a namespace (the node's, as its runtime would): only PATH and `env` in its environment. */
export function runPluginInNetns(
  netns: string,
  file: string,
  env: Record<string, string>,
  stdin: string,
): Promise<CniOutcome> {
  return new Promise((resolve, reject) => {
    const child = spawn('ip', ['netns', 'exec', netns, file], {
      env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (exitCode) => resolve({ exitCode, stdout, stderr }));
    child.stdin.on('error', () => {});
    child.stdin.end(stdin);
  });
}

export function networkConfig(node: NodeState): string {
  return JSON.stringify({ cniVersion: '1.0.0', name: 'weft', type: 'weft', agentSocket: node.socket });
}

/** Pods are NAMESPACE/NAME, as in Kubernetes: the same name may exist once in each namespace. */
/**
 * Attaches a pod through the real weft-cni on `nodeName`, as a container runtime does. `uid`: the Kubernetes pod's UID,
 * passed as K8S_POD_UID (what a kubelet's runtime sends), at most 128 of a-z A-Z 0-9 -.
 */
export async function podAdd(
  stateDir: string,
  nodeName: string,
  pod: string,
  namespace = 'default',
  opts: { uid?: string } = {},
): Promise<PodState> {
  const state = readState(stateDir);
  validatePodName(pod);
  validateNamespace(namespace);
  if (opts.uid !== undefined && !/^[A-Za-z0-9-]{1,128}$/.test(opts.uid))
    throw new Error(`pod UID ${JSON.stringify(opts.uid)} is invalid: expected 1 to 128 of a-z A-Z 0-9 -`);
  const node = state.nodes.find((n) => n.name === nodeName);
  if (!node) throw new Error(`no node ${nodeName}; nodes: ${state.nodes.map((n) => n.name).join(', ')}`);
  if (state.pods.some((p) => p.namespace === namespace && p.name === pod))
    throw new Error(`pod ${namespace}/${pod} already exists`);
  const netnsName = podNetns(state.prefix, namespace, pod);
  await run('ip', ['netns', 'add', netnsName]);
  const containerId = createHash('sha256')
    .update(`${state.prefix}/${namespace}/${pod}/${Date.now()}`)
    .digest('hex')
    .slice(0, 32);
  const netns = `/var/run/netns/${netnsName}`;
  const out = await runCni(
    node,
    {
      CNI_COMMAND: 'ADD',
      CNI_CONTAINERID: containerId,
      CNI_NETNS: netns,
      CNI_IFNAME: 'eth0',
      CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${namespace};K8S_POD_NAME=${pod}${opts.uid ? `;K8S_POD_UID=${opts.uid}` : ''}`,
    },
    networkConfig(node),
  );
  if (out.exitCode !== 0) {
    await run('ip', ['netns', 'del', netnsName]).catch(() => {});
    throw new Error(`weft-cni ADD failed (exit ${out.exitCode}): ${out.stdout.trim()} ${out.stderr.trim()}`);
  }
  const result = JSON.parse(out.stdout) as { ips: { address: string }[] };
  const p: PodState = {
    name: pod,
    node: node.name,
    namespace,
    netns,
    containerId,
    ifname: 'eth0',
    addresses: result.ips.map((i) => i.address.split('/')[0]!),
  };
  state.pods.push(p);
  writeState(state);
  return p;
}

/** Deletes the pod `NAMESPACE/NAME`, or `NAME` in `namespace` (default "default"). */
export async function podDel(stateDir: string, pod: string, namespace?: string): Promise<PodState> {
  const state = readState(stateDir);
  const ref = parsePodRef(pod, namespace);
  const p = state.pods.find((x) => x.namespace === ref.namespace && x.name === ref.name);
  if (!p)
    throw new Error(
      `no pod ${ref.namespace}/${ref.name}${state.pods.length > 0 ? `; pods: ${state.pods.map((x) => `${x.namespace}/${x.name}`).join(', ')}` : ''}`,
    );
  const node = state.nodes.find((n) => n.name === p.node)!;
  const out = await runCni(
    node,
    { CNI_COMMAND: 'DEL', CNI_CONTAINERID: p.containerId, CNI_NETNS: p.netns, CNI_IFNAME: p.ifname },
    networkConfig(node),
  );
  if (out.exitCode !== 0)
    throw new Error(`weft-cni DEL failed (exit ${out.exitCode}): ${out.stdout.trim()} ${out.stderr.trim()}`);
  await run('ip', ['netns', 'del', path.basename(p.netns)]).catch(() => {});
  state.pods = state.pods.filter((x) => x !== p);
  writeState(state);
  return p;
}

/** Stops every process and removes every namespace of the cluster, then its state folder. Safe to run twice. */
export async function clusterDown(opts: { stateDir: string }): Promise<{ removedNamespaces: string[] }> {
  const stateDir = path.resolve(opts.stateDir);
  if (!existsSync(stateFile(stateDir))) return { removedNamespaces: [] };
  const state = readState(stateDir);
  await Promise.all(state.nodes.map((n) => stopProcess(n.agentPid)));
  // Further replicas first: the first one runs the database they use.
  await Promise.all((state.replicas ?? []).map((r) => stopProcess(r.pid)));
  await stopProcess(state.controlPlane.pid);
  const listed = (await run('ip', ['netns', 'list']).catch(() => ''))
    .split('\n')
    .map((l) => l.split(' ')[0]!)
    .filter((n) => n.startsWith(`${state.prefix}-`));
  // Pods first, then nodes, the control plane, and the fabric last.
  const order = (n: string) => (n.includes('-pod-') ? 0 : n.endsWith('-fabric') ? 3 : n.endsWith('-cp') ? 2 : 1);
  listed.sort((a, b) => order(a) - order(b));
  for (const ns of listed) {
    // Whatever still runs inside (a crashed agent's children, an orphaned PostgreSQL) goes with its namespace.
    const pids = (await run('ip', ['netns', 'pids', ns]).catch(() => ''))
      .split('\n')
      .map(Number)
      .filter((p) => p > 0);
    for (const pid of pids)
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    await run('ip', ['netns', 'del', ns]).catch(() => {});
  }
  rmSync(stateDir, { recursive: true, force: true });
  return { removedNamespaces: listed };
}

function findNode(state: ClusterState, nodeName: string): NodeState {
  const node = state.nodes.find((n) => n.name === nodeName);
  if (!node) throw new Error(`no node ${nodeName}; nodes: ${state.nodes.map((n) => n.name).join(', ')}`);
  return node;
}

/**
 * Stops a node's agent and leaves it stopped: SIGTERM (then SIGKILL after 5 s), or SIGKILL at once, as a crash or
 * an OOM kill would. The kernel state it programmed stays as it was. Stopping a stopped agent does nothing.
 */
export async function stopAgent(
  stateDir: string,
  nodeName: string,
  signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM',
): Promise<NodeState> {
  const state = readState(stateDir);
  const node = findNode(state, nodeName);
  if (signal === 'SIGKILL' && isAlive(node.agentPid))
    try {
      process.kill(node.agentPid, 'SIGKILL');
    } catch {
      /* gone */
    }
  await stopProcess(node.agentPid);
  node.agentPid = 0;
  writeState(state);
  return node;
}

/** Starts a stopped node's agent. It does not wait for the agent to be in sync. */
export function startAgent(stateDir: string, nodeName: string): NodeState {
  const state = readState(stateDir);
  const node = findNode(state, nodeName);
  if (isAlive(node.agentPid)) throw new Error(`${nodeName}'s agent already runs (pid ${node.agentPid})`);
  node.agentPid = spawnAgent(state, node);
  writeState(state);
  return node;
}

/** Restarts a node's agent (or starts it when it is not running). */
export async function restartAgent(
  stateDir: string,
  nodeName: string,
  signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM',
): Promise<NodeState> {
  await stopAgent(stateDir, nodeName, signal);
  return startAgent(stateDir, nodeName);
}
