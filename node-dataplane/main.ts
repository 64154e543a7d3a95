import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createClient } from '../lib/grpc/client.js';
import { addService, bindServer, createServer, shutdownServer } from '../lib/grpc/server.js';
import { createLogger } from '../lib/logger.js';
import { createMetricsRegistry, serveMetrics, type MetricsServer } from '../lib/metrics.js';
import { setupTelemetry } from '../lib/telemetry.js';
import { AgentServiceService } from '../gen/weft/agent/v1/agent.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { PolicyServiceService } from '../gen/weft/policy/v1/policy.js';
import { RoutesServiceService } from '../gen/weft/routes/v1/routes.js';
import { createCniHandlers } from './cni-endpoint.js';
import { installCni } from './cni-install.js';
import { loadAgentConfig } from './config.js';
import { createNatDriver } from './kernel/iptables-nat.js';
import { createPolicyDriver } from './kernel/iptables-policy.js';
import { createOverlayDriver } from './kernel/netlink-overlay.js';
import { detectUnderlay } from './kernel/underlay.js';
import { ensureVxlanDevice, VXLAN_OVERHEAD_V4 } from './kernel/vxlan-device.js';
import { createAgentMetrics, timeCniHandlers } from './metrics.js';
import { createReconciler } from './reconciler.js';
import { watchKernel, type KernelWatch } from './sources/kernel-watch.js';
import { followPools, type PoolsSource } from './sources/pools-watch.js';
import { followNodePolicy, type PolicySource } from './sources/policy-watch.js';
import { followRoutes } from './sources/routes-watch.js';
import { keepNodeLease } from './node-lease.js';

/** The node agent: register, follow routes, reconcile the kernel, serve the CNI plugin. */
async function main(): Promise<void> {
  let config;
  try {
    config = loadAgentConfig();
  } catch (err) {
    process.stderr.write(`weft agent: ${(err as Error).message}\n`);
    process.exit(2);
  }
  setupTelemetry('weft-agent');
  const logger = createLogger({ component: 'agent', node: config.nodeName }, { level: config.logLevel });
  const stopper = new AbortController();
  const registry = createMetricsRegistry();
  const metrics = createAgentMetrics(registry);
  let metricsServer: MetricsServer | null = null;
  if (config.metricsListen) {
    metricsServer = await serveMetrics(registry, config.metricsListen, logger);
    logger.info('serving metrics', { listen: config.metricsListen, port: metricsServer.port });
  }

  writeFileSync('/proc/sys/net/ipv4/ip_forward', '1');
  const underlay = await detectUnderlay({ address: config.underlayAddress, cidrs: config.underlayCidr, interfaces: config.underlayInterface, routeTo: config.underlayRouteTo });
  const mtu = underlay.mtu - VXLAN_OVERHEAD_V4;
  const vxlanSpec = { name: config.vxlanDevice, vni: config.vxlanVni, port: config.vxlanPort, localAddress: underlay.address, underlayInterface: underlay.interface, mtu };
  const device = await ensureVxlanDevice(vxlanSpec, logger);
  logger.info('underlay', { ...underlay, vtepMac: device.mac, mtu, routingMode: config.routingMode });

  const target = config.controlPlane.startsWith('unix:') ? config.controlPlane : `dns:${config.controlPlane}`;
  const routes = createClient(RoutesServiceService, target);
  const ipam = createClient(IpamServiceService, target);
  const policyClient = createClient(PolicyServiceService, target);

  const registration = { name: config.nodeName, underlayAddress: underlay.address, vtepMac: device.mac };
  let leaseMs = 0;
  for (let attempt = 0; !stopper.signal.aborted; attempt++) {
    try {
      leaseMs = (await routes.registerNode(registration, { timeoutMs: 5000 })).leaseMillis;
      break;
    } catch (err) {
      logger.warn('cannot register with the control plane; retrying', { err: (err as Error).message, attempt });
      await new Promise((r) => setTimeout(r, Math.min(200 * 2 ** attempt, 5000)));
    }
  }
  logger.info('registered', { underlay: underlay.address, leaseMs });
  keepNodeLease({ routes, registration, leaseMs, logger, signal: stopper.signal });

  const driver = createOverlayDriver({ routeProtocol: config.routeProtocol, logger });
  let snapshot: ReturnType<typeof followRoutes> | null = null;
  let pools: PoolsSource | null = null;
  let policy: PolicySource | null = null;
  const reconciler = createReconciler({
    self: config.nodeName,
    snapshot: () => snapshot ?? { nodes: new Map(), revision: 0, synced: false },
    driver,
    ensureDevice: async () => (await ensureVxlanDevice(vxlanSpec, logger)).ifindex,
    routing: { mode: config.routingMode, underlay: { address: underlay.address, prefixLength: underlay.prefixLength } },
    underlayIfindex: underlay.ifindex,
    masquerade: { pools: () => pools?.pools() ?? null, driver: createNatDriver() },
    policy: { rules: () => policy?.rules() ?? null, driver: createPolicyDriver({ routeProtocol: config.routeProtocol }) },
    resyncMs: config.resyncMs,
    logger,
    metrics,
  });
  // Subscribed before the first pass, so that no change after the first read-back goes unnoticed. Without it the
  // agent still works, repairing drift at each periodic resync only.
  let kernelWatch: KernelWatch | null = null;
  try {
    kernelWatch = watchKernel({
      view: () => ({ deviceName: config.vxlanDevice, routeProtocol: config.routeProtocol, ...reconciler.overlay() }),
      onChange: (e) => {
        metrics.kernelEvents.add(1, { kind: e.kind });
        // A link event may mean the device is gone or changed: the pass ensures it; other events concern entries only.
        reconciler.markDirty(e.kind === 'link' ? 'device' : 'kernel', config.eventDebounceMs);
      },
      onLost: (reason) => {
        metrics.netlinkFailures.add(1, { op: 'watch' });
        logger.warn('kernel notifications may have been lost; reconciling', { reason });
        reconciler.markDirty('device');
      },
      logger,
    });
  } catch (err) {
    metrics.netlinkFailures.add(1, { op: 'watch' });
    logger.error('cannot follow kernel notifications; drift is repaired at each periodic resync only', { err, resyncMs: config.resyncMs });
  }
  policy = followNodePolicy({ client: policyClient, node: config.nodeName, logger, signal: stopper.signal, onChange: () => reconciler.markDirty('policy') });
  pools = followPools({ ipam, intervalMs: config.resyncMs, logger, signal: stopper.signal, onChange: () => reconciler.markDirty('pools') });
  snapshot = followRoutes({
    client: routes, node: config.nodeName, logger, signal: stopper.signal,
    onChange: (snap) => {
      metrics.synced.set(snap.synced ? 1 : 0);
      reconciler.markDirty('routes');
    },
  });

  const server = createServer();
  const cniHandlers = createCniHandlers({ node: config.nodeName, ipam, ipamTarget: target, mtu, routeProtocol: config.routeProtocol, logger, onPodsChanged: () => reconciler.markDirty('pods') });
  addService(server, AgentServiceService, timeCniHandlers(cniHandlers, metrics.cniCallDuration), logger.child({ service: 'agent' }));
  mkdirSync(path.dirname(config.socket), { recursive: true });
  rmSync(config.socket, { force: true });
  await bindServer(server, `unix://${config.socket}`);
  logger.info('serving the CNI plugin', { socket: config.socket });
  // Installed once the socket answers, so that a runtime that sees the conflist can attach pods at once.
  await installCni({
    binDir: config.cniBinDir,
    confDir: config.cniConfDir,
    pluginSource: config.cniPluginSource || path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../bin/weft-cni'),
    name: config.cniNetworkName,
    agentSocket: config.socket,
    bandwidth: config.cniBandwidth,
  }, logger);

  const shutdown = async (signal: string) => {
    logger.info('stopping', { signal });
    stopper.abort();
    reconciler.stop();
    kernelWatch?.close();
    await shutdownServer(server, 1000);
    await metricsServer?.close();
    rmSync(config.socket, { force: true });
    routes.close();
    ipam.close();
    policyClient.close();
    driver.close();
    process.exit(0);
  };
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
  process.once('SIGINT', () => void shutdown('SIGINT'));
}

main().catch((err) => {
  process.stderr.write(`weft agent: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
