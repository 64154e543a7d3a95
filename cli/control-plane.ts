import { mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { connectDatabase } from '../lib/db/database.js';
import { startEmbeddedPostgres, type EmbeddedDatabase } from '../lib/db/embedded.js';
import { createNotifier } from '../lib/db/notifier.js';
import { bindServer, createServer, shutdownServer } from '../lib/grpc/server.js';
import type { TransportSecurity } from '../lib/grpc/credentials.js';
import { ensureControlPlanePki, PKI_FILES } from '../lib/pki.js';
import type { Logger } from '../lib/logger.js';
import { mountIpamService } from '../services/ipam/main.js';
import { BLOCKS_CHANNEL } from '../services/ipam/store/ipam.repository.js';
import { mountRoutesService } from '../services/routes/main.js';
import { mountPolicyService } from '../services/policy/main.js';
import { POLICY_CHANNEL } from '../services/policy/store/policy.repository.js';
import { CHANGES_CHANNEL } from '../services/routes/store/route-log.repository.js';
import { databaseTimeouts, type ControlPlaneConfig } from './control-plane.config.js';
import http from 'node:http';
import { createHttpServer } from '../lib/http/json-gateway.js';

function listenHttp(server: http.Server, address: string): Promise<number> {
  const i = address.lastIndexOf(':');
  const host = address.slice(0, i).replace(/^\[|\]$/g, '');
  const port = Number(address.slice(i + 1));
  if (i < 0 || !Number.isInteger(port)) throw new Error(`WEFT_HTTP_LISTEN ${JSON.stringify(address)} must be host:port`);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve((server.address() as { port: number }).port));
  });
}

export interface ControlPlane {
  socketPath: string;
  /** The CA and certificates (ca.crt, server.crt, admin.crt, …). */
  pkiDir: string;
  tcpPort: number | null;
  httpPort: number | null;
  stop(): Promise<void>;
}

/** `weft up`: the IPAM and routes services in one process, on embedded PostgreSQL unless DATABASE_URL is set. */
export async function startControlPlane(config: ControlPlaneConfig, logger: Logger): Promise<ControlPlane> {
  mkdirSync(config.dataDir, { recursive: true });
  // Every listener (TCP and the unix socket) is mTLS: there is no plaintext control plane.
  const pkiDir = path.resolve(config.pkiDir || path.join(config.dataDir, 'pki'));
  const listenHost = config.listen ? config.listen.slice(0, config.listen.lastIndexOf(':')) : '';
  const { created } = await ensureControlPlanePki(pkiDir, listenHost ? [listenHost] : []);
  if (created.length) logger.info('made certificates', { pkiDir, files: created });
  const security: TransportSecurity = {
    mode: 'mtls', caFile: path.join(pkiDir, PKI_FILES.caCert), certFile: path.join(pkiDir, PKI_FILES.serverCert), keyFile: path.join(pkiDir, PKI_FILES.serverKey), refreshMs: config.tlsRefreshMs,
  };
  let embedded: EmbeddedDatabase | null = null;
  let url = config.databaseUrl;
  if (!url) {
    embedded = await startEmbeddedPostgres(config.dataDir, config.pgPort, logger);
    url = embedded.url;
  }
  const database = connectDatabase(url, { timeouts: databaseTimeouts(config) });
  const notifier = createNotifier(database.session, [BLOCKS_CHANNEL, CHANGES_CHANNEL, POLICY_CHANNEL], logger);
  const socketPath = path.resolve(config.socket || path.join(config.dataDir, 'weft.sock'));
  rmSync(socketPath, { force: true });
  const server = createServer({ timeMs: config.grpcKeepaliveMs, timeoutMs: config.grpcKeepaliveTimeoutMs });
  const ipamAddress = `unix://${socketPath}`;
  let routes: { stop(): void } | null = null;
  let ipamService: { stop(): void } | null = null;
  let tcpPort: number | null = null;
  let httpPort: number | null = null;
  let httpServer: http.Server | null = null;
  try {
    const ipam = await mountIpamService(server, {
      database, notifier, logger,
      housekeeping: { sweepSeconds: config.sweepSeconds, blockGraceSeconds: config.blockGraceSeconds, nodeGoneGraceSeconds: config.nodeGoneGraceSeconds, attemptRetentionSeconds: config.attemptRetentionSeconds, routesAddress: ipamAddress, routesSecurity: security },
    });
    ipamService = ipam;
    if (config.httpListen) {
      httpServer = createHttpServer([ipam.http]);
      httpPort = await listenHttp(httpServer, config.httpListen);
    }
    routes = await mountRoutesService(server, {
      database, databaseUrl: url, notifier, logger, ipamAddress, ipamSecurity: security,
      options: { leaseMs: config.nodeLeaseMs, bookmarkMs: config.routesBookmarkMs, pollMs: config.routesPollMs, logKeep: config.routesLogKeep, logMaxAgeSeconds: config.routesLogMaxAgeS },
    });
    await mountPolicyService(server, { database, notifier, logger, options: { pollMs: config.routesPollMs, bookmarkMs: config.routesBookmarkMs } });
    await bindServer(server, ipamAddress, security);
    tcpPort = config.listen ? await bindServer(server, config.listen, security) : null;
  } catch (err) {
    // Leave nothing running behind a failed start (the embedded server above all).
    routes?.stop();
    ipamService?.stop();
    httpServer?.close();
    server.forceShutdown();
    await notifier.close();
    await database.close();
    await embedded?.stop();
    throw err;
  }
  logger.info('control plane serving (mTLS)', {
    socket: socketPath, listen: config.listen, port: tcpPort, httpPort, pkiDir,
    admin: `the CLI on this host uses ${path.join(pkiDir, PKI_FILES.adminCert)}`,
    credentials: `weft ca issue (--node NAME | --admin NAME | --controller CLUSTER) --out DIR --data-dir ${path.resolve(config.dataDir)}${config.pkiDir ? ` (WEFT_PKI_DIR=${pkiDir})` : ''}`,
  });
  return {
    socketPath,
    pkiDir,
    tcpPort,
    httpPort,
    async stop() {
      routes?.stop();
      ipamService?.stop();
      httpServer?.closeAllConnections();
      httpServer?.close();
      await shutdownServer(server);
      await notifier.close();
      await database.close();
      await embedded?.stop();
      rmSync(socketPath, { force: true });
    },
  };
}
