import { mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createBackoff, sleep } from '../lib/backoff.js';
import { createClient } from '../lib/grpc/client.js';
import { checkSecurityFiles, clientTlsDir } from '../lib/grpc/credentials.js';
import { startTlsBootstrap } from '../lib/tls-bootstrap.js';
import { listenUnixSocket } from '../lib/grpc/frame-server.js';
import { addService, createServer, shutdownServer, type UnaryMethods } from '../lib/grpc/server.js';
import { createLogger } from '../lib/logger.js';
import { createMetricsRegistry, serveMetrics, type MetricsServer } from '../lib/metrics.js';
import { setupTelemetry } from '../lib/telemetry.js';
import { AgentServiceService } from '../gen/weft/agent/v1/agent.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { PolicyServiceService } from '../gen/weft/policy/v1/policy.js';
import { RoutesServiceService } from '../gen/weft/routes/v1/routes.js';
import { createCniHandlers } from './cni-endpoint/endpoint.js';
import { installCni } from './cni-install.js';
import { loadAgentConfig } from './config.js';
import { enableForwarding, type HostPaths } from './kernel/host-paths.js';
import { createNatAccess, createNatDriver } from './kernel/iptables-nat.js';
import { closeOwnConnections } from './kernel/own-connections.js';
import { createFilterAccess, createIpsetAccess, readPodVeths } from './kernel/iptables-policy.js';
import { createOverlayNetlink } from './kernel/netlink-overlay.js';
import { detectUnderlay } from './kernel/underlay.js';
import { createVxlanDeviceAccess, ensureVxlanDevice, VXLAN_OVERHEAD_V4, vtepMacFor } from './kernel/vxlan-device.js';
import { FDB } from './drivers/fdb.js';
import { NEIGHBOUR } from './drivers/neighbours.js';
import { ROUTE } from './drivers/routes.js';
import { createModuleDrivers } from './drivers/registry.js';
import { attachmentsOf } from './domain/pod-host.js';
import { hostIfnameFor } from './kernel/pod-network.js';
import { followAttachments } from './sources/attachments.js';
import { createAgentMetrics, timeCniHandlers } from './metrics.js';
import { createPodReporter, reportHeldAttachments } from './pod-reports.js';
import { createPendingReleases } from './pending-releases.js';
import { createReconciler } from './reconciler.js';
import { followUnderlay } from './underlay-follow.js';
import { watchKernel, type KernelWatch } from './sources/kernel-watch.js';
import { followPools, type PoolsSource } from './sources/pools-watch.js';
import { followNodePolicy, type PolicySource } from './sources/policy-watch.js';
import { followRoutes } from './sources/routes-watch.js';
import { reconnectSpreadMs } from './sources/follow-stream.js';
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

  // The host's sysctls and sysfs, where a container's own are read-only (hostPath mounts; see kernel/host-paths.ts).
  const hostPaths: HostPaths = { procSysNet: config.procSysNet, sysDir: config.sysDir };
  // IPv6 pod blocks are forwarded too; a kernel without IPv6 (or with it disabled) routes IPv4 only.
  const forwarding = enableForwarding(hostPaths);
  if (!forwarding.ipv6)
    logger.warn('IPv6 forwarding cannot be switched on; IPv6 pod blocks will not be forwarded', {
      err: forwarding.reason,
    });
  const underlay = await detectUnderlay({
    address: config.underlayAddress,
    cidrs: config.underlayCidr,
    interfaces: config.underlayInterface,
    routeTo: config.underlayRouteTo,
  });
  const mtu = underlay.mtu - VXLAN_OVERHEAD_V4;
  // Pods' MTU: in `direct` mode no pod packet is ever encapsulated (nodes off the subnet and IPv6 blocks are refused),
  // so pods get the underlay's whole MTU, as the underlay's own hosts do; in `vxlan` and `auto` a pod may reach a
  // node through VXLAN, so it gets the VXLAN device's.
  const podMtu = config.routingMode === 'direct' ? underlay.mtu : mtu;
  let vxlanSpec = {
    name: config.vxlanDevice,
    vni: config.vxlanVni,
    port: config.vxlanPort,
    localAddress: underlay.address,
    underlayInterface: underlay.interface,
    mtu,
  };
  const device = await ensureVxlanDevice(vxlanSpec, logger);
  logger.info('underlay', {
    ...underlay,
    vtepMac: device.mac,
    mtu,
    podMtu,
    routingMode: config.routingMode,
    podFamilies: config.podFamilies,
  });

  // One endpoint or several replicas (lib/grpc/endpoints.ts): grpc-js keeps each client on one and moves it when it goes.
  const target = config.controlPlane;
  const keepalive = { timeMs: config.controlPlaneKeepaliveMs, timeoutMs: config.controlPlaneKeepaliveTimeoutMs };
  const security = clientTlsDir(config.tlsDir, config.tlsRefreshMs);
  // On Kubernetes: the node's certificate from the control plane's bootstrap listener, for the pod's token, renewed
  // in the background (the file watcher picks each renewal up).
  if (config.bootstrap) {
    try {
      await startTlsBootstrap({
        address: config.bootstrap,
        tokenFile: config.bootstrapTokenFile,
        caFile: config.bootstrapCaFile,
        tlsDir: config.tlsDir,
        expectIdentity: `node:${config.nodeName}`,
        logger,
        signal: stopper.signal,
      });
    } catch (err) {
      process.stderr.write(`weft agent: ${(err as Error).message}\n`);
      process.exit(2);
    }
  }
  await checkSecurityFiles(security);
  const routes = createClient(RoutesServiceService, target, { keepalive, security });
  const ipam = createClient(IpamServiceService, target, { keepalive, security });
  const policyClient = createClient(PolicyServiceService, target, { keepalive, security });

  const registration = { name: config.nodeName, underlayAddress: underlay.address, vtepMac: device.mac };
  const register = async () => {
    const backoff = createBackoff({ baseMs: 200, capMs: 5000 });
    for (let attempt = 0; !stopper.signal.aborted; attempt++) {
      try {
        const leaseMs = (await routes.registerNode(registration, { timeoutMs: 5000, waitForReady: true })).leaseMillis;
        logger.info('registered', { underlay: registration.underlayAddress, vtepMac: registration.vtepMac, leaseMs });
        return leaseMs;
      } catch (err) {
        logger.warn('cannot register with the control plane; retrying', { err: (err as Error).message, attempt });
        await sleep(backoff.next(), stopper.signal);
      }
    }
    return 0;
  };
  // Registration does not hold up the rest: the watches, the reconciler (which adopts what the kernel holds) and the
  // CNI socket start at once, so a restart is not slowed by the control plane, and a node whose control plane is
  // unreachable still serves DEL and CHECK. Leases are kept from the moment the node is registered.
  void register().then((leaseMs) => {
    if (!stopper.signal.aborted) keepNodeLease({ routes, registration, leaseMs, logger, signal: stopper.signal });
  });

  let snapshot: ReturnType<typeof followRoutes> | null = null;
  let pools: PoolsSource | null = null;
  let policy: PolicySource | null = null;
  // The overlay's entries are written on the VXLAN device's current index (the device driver's) and the underlay's.
  const overlayNetlink = createOverlayNetlink({
    routeProtocol: config.routeProtocol,
    logger,
    devices: () => ({ vxlan: reconciler.overlay().ifindex, underlay: reconciler.overlay().underlayIfindex ?? 0 }),
  });
  const policyAccess = (family: 4 | 6) => ({
    ipsets: createIpsetAccess({ family }),
    filter: createFilterAccess({ family }),
    veths: () => readPodVeths({ routeProtocol: config.routeProtocol, family }),
  });
  // The node's attachments (IPAM's at start, then the CNI endpoint's own changes): the pod drivers' input.
  const attachments = followAttachments({
    list: async () => {
      const allocations = [];
      let pageToken = '';
      do {
        const page = await ipam.listAllocations(
          { pool: '', node: config.nodeName, pageSize: 5000, pageToken },
          { timeoutMs: 10_000, signal: stopper.signal },
        );
        allocations.push(...page.allocations);
        pageToken = page.nextPageToken;
      } while (pageToken);
      return attachmentsOf(allocations, hostIfnameFor);
    },
    logger,
    signal: stopper.signal,
    onChange: () => reconciler.markDirty('attachments'),
  });
  // The drivers that carry their own manager (the pods' veths and host routes), from the registry of driver modules.
  const moduleDrivers = createModuleDrivers({
    routeProtocol: config.routeProtocol,
    hostPaths,
    pods: attachments,
    logger,
  });
  const reconciler = createReconciler({
    self: config.nodeName,
    snapshot: () => snapshot ?? { nodes: new Map(), revision: 0, synced: false },
    kernel: {
      device: createVxlanDeviceAccess(config.vxlanDevice, logger),
      neighbours: overlayNetlink.neighbours,
      fdb: overlayNetlink.fdb,
      routes: overlayNetlink.routes,
      nat4: createNatAccess(createNatDriver(4)),
      nat6: createNatAccess(createNatDriver(6)),
    },
    vxlan: () => vxlanSpec,
    routing: { mode: config.routingMode, underlay: { address: underlay.address, prefixLength: underlay.prefixLength } },
    underlayIfindex: underlay.ifindex,
    pools: () => pools?.pools() ?? null,
    // IPv6 policy is programmed on every node (IPv6 forwarding is on): a packet a pod sends with an IPv6 source it was
    // not given meets the fail-closed drop. With dual-stack pods it is required.
    policy: {
      rules: () => policy?.rules() ?? null,
      families: { 4: policyAccess(4), 6: policyAccess(6) },
      ipv6Required: config.podFamilies.includes('ipv6'),
    },
    drivers: moduleDrivers.drivers,
    resyncMs: config.resyncMs,
    logger,
    metrics,
  });
  // The underlay can move after start (DHCP, an operator, a re-addressed subnet): the VXLAN device is rebuilt on the
  // new address (the device driver compares it with the spec), the node registered again with its new address and
  // VTEP MAC, so every other node's entries follow, and direct routing judged against the new subnet.
  const underlayFollower = followUnderlay({
    initial: underlay,
    detect: () =>
      detectUnderlay({
        address: config.underlayAddress,
        cidrs: config.underlayCidr,
        interfaces: config.underlayInterface,
        routeTo: config.underlayRouteTo,
      }),
    onMoved: async (next, previous) => {
      vxlanSpec = {
        ...vxlanSpec,
        localAddress: next.address,
        underlayInterface: next.interface,
        mtu: next.mtu - VXLAN_OVERHEAD_V4,
      };
      reconciler.setUnderlay({ address: next.address, prefixLength: next.prefixLength }, next.ifindex);
      // The device is rebuilt on the new address before the other nodes are told to send there.
      await reconciler.flush();
      // The agent's connections from the old address are dead but would only be noticed by gRPC keepalive (up to
      // 30 s): destroyed here, the channels reconnect from the new address at once (the streams resume from their last
      // revision). Only the agent's own: other programs' connections bound to that address (kubelet, ssh) are theirs.
      if (next.address !== previous.address) {
        await closeOwnConnections(previous.address)
          .then((closed) =>
            logger.info("closed the agent's connections from the old underlay address", {
              address: previous.address,
              closed,
            }),
          )
          .catch((err: Error) =>
            logger.warn("cannot close the agent's connections from the old underlay address; gRPC keepalive will", {
              err: err.message,
            }),
          );
      }
      registration.underlayAddress = next.address;
      registration.vtepMac = vtepMacFor(next.address);
      await register();
    },
    logger,
    intervalMs: config.resyncMs,
  });
  // Subscribed before the first pass, so that no change after the first read-back goes unnoticed. Without it the
  // agent still works, repairing drift at each periodic resync only.
  let kernelWatch: KernelWatch | null = null;
  try {
    kernelWatch = watchKernel({
      view: () => ({ deviceName: config.vxlanDevice, routeProtocol: config.routeProtocol, ...reconciler.overlay() }),
      onChange: (e) => {
        metrics.kernelEvents.add(1, { kind: e.kind });
        // A link event may mean the device is gone or changed: it and everything on it are read back; an entry's
        // event, only its kind.
        if (e.kind === 'link') reconciler.markDirty('device', config.eventDebounceMs);
        else
          reconciler.resync(
            [e.kind === 'route' ? ROUTE : e.kind === 'neighbour' && e.family === 'bridge' ? FDB : NEIGHBOUR],
            config.eventDebounceMs,
          );
      },
      onEcho: (e) => metrics.kernelEchoes.add(1, { kind: e.kind }),
      onLost: (reason) => {
        metrics.netlinkFailures.add(1, { op: 'watch' });
        logger.warn('kernel notifications may have been lost; reconciling', { reason });
        reconciler.markDirty('device');
        underlayFollower.poke();
      },
      onInterfaces: () => underlayFollower.poke(),
      logger,
    });
  } catch (err) {
    metrics.netlinkFailures.add(1, { op: 'watch' });
    logger.error('cannot follow kernel notifications; drift is repaired at each periodic resync only', {
      err,
      resyncMs: config.resyncMs,
    });
  }
  policy = followNodePolicy({
    client: policyClient,
    node: config.nodeName,
    logger,
    signal: stopper.signal,
    onChange: () => reconciler.markDirty('policy'),
    spreadMs: () => reconnectSpreadMs(snapshot?.nodes.size ?? 0),
  });
  pools = followPools({
    ipam,
    intervalMs: config.resyncMs,
    logger,
    signal: stopper.signal,
    onChange: () => reconciler.markDirty('pools'),
  });
  snapshot = followRoutes({
    client: routes,
    node: config.nodeName,
    logger,
    signal: stopper.signal,
    onChange: (snap) => {
      metrics.synced.set(snap.synced ? 1 : 0);
      reconciler.markDirty('routes');
    },
  });

  const server = createServer();
  const reports = createPodReporter({
    node: config.nodeName,
    policy: policyClient,
    logger: logger.child({ component: 'pod-reports' }),
  });
  // Beside the CNI socket: it outlives an agent restart (not a reboot, after which the runtime's DEL or GC comes again).
  const pendingReleases = createPendingReleases({
    release: (handle, attemptId) => ipam.release(attemptId ? { handle, attemptId } : { handle }, { timeoutMs: 10_000 }),
    file: path.join(path.dirname(config.socket), 'pending-releases.json'),
    logger: logger.child({ component: 'pending-releases' }),
    onSize: (n) => metrics.pendingReleases.set(n),
  });
  const cniHandlers = createCniHandlers({
    node: config.nodeName,
    ipam,
    ipamTarget: target,
    mtu: podMtu,
    routeProtocol: config.routeProtocol,
    logger,
    reports,
    onPodsChanged: () => reconciler.flush('pods'),
    families: config.podFamilies,
    policyInForce: (family, timeoutMs) => reconciler.whenPolicyInForce(family, timeoutMs),
    onAttachPhase: (phase, ms) => metrics.attachPhaseDuration.record(ms / 1000, { phase }),
    onDetachPhase: (phase, ms) => metrics.detachPhaseDuration.record(ms / 1000, { phase }),
    hostPaths,
    pods: attachments.events,
    pendingReleases,
  });
  // The plugin calls in with unary frames, anything else with gRPC, on the same socket (lib/grpc/frame-server.ts).
  const unaryMethods: UnaryMethods = new Map();
  addService(
    server,
    AgentServiceService,
    timeCniHandlers(cniHandlers, metrics.cniCallDuration),
    logger.child({ service: 'agent' }),
    { unaryMethods },
  );
  // A folder made for the socket is root's alone (0700); an existing one (e.g. a shared /run) is left as it is: the
  // socket itself is 0600.
  mkdirSync(path.dirname(config.socket), { recursive: true, mode: 0o700 });
  rmSync(config.socket, { force: true });
  const socketServer = await listenUnixSocket({
    server,
    socketPath: config.socket,
    unaryMethods,
    logger: logger.child({ service: 'agent' }),
  });
  logger.info('serving the CNI plugin', { socket: config.socket });
  // Installed once the socket answers, so that a runtime that sees the conflist can attach pods at once.
  await installCni(
    {
      binDir: config.cniBinDir,
      confDir: config.cniConfDir,
      pluginSource:
        config.cniPluginSource || path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../bin/weft-cni'),
      name: config.cniNetworkName,
      agentSocket: config.socket,
      bandwidth: config.cniBandwidth,
    },
    logger,
  );

  // Reports lost with a previous agent (the policy service was down, the agent was killed) are made again: every
  // attachment IPAM holds for this node is reported; one the service already has changes nothing there.
  void reportHeldAttachments(ipam, config.nodeName, reports).catch((err: Error) =>
    logger.warn('re-reporting held attachments failed', { err: err.message }),
  );

  const shutdown = async (signal: string) => {
    logger.info('stopping', { signal });
    stopper.abort();
    reconciler.stop();
    pendingReleases.stop();
    kernelWatch?.close();
    underlayFollower.close();
    await socketServer.close();
    await shutdownServer(server, 1000);
    await metricsServer?.close();
    rmSync(config.socket, { force: true });
    routes.close();
    ipam.close();
    reports.close();
    policyClient.close();
    overlayNetlink.close();
    moduleDrivers.close();
    process.exit(0);
  };
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
  process.once('SIGINT', () => void shutdown('SIGINT'));
}

main().catch((err) => {
  process.stderr.write(`weft agent: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
