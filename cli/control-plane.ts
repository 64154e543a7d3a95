import { mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { connectDatabase } from '../lib/db/database.js';
import { startEmbeddedPostgres, type EmbeddedDatabase } from '../lib/db/embedded.js';
import { createNotifier } from '../lib/db/notifier.js';
import { bindServer, createServer, shutdownServer, type ServerAccess } from '../lib/grpc/server.js';
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
  tcpPort: number | null;
  httpPort: number | null;
  stop(): Promise<void>;
}

/**
 * `weft up`: the IPAM and routes services in one process, on embedded PostgreSQL unless DATABASE_URL is set.
 * `access`: who calls and whether authorization is enforced (lib/grpc/server.ts ServerAccess); default: nobody is
 * identified and nothing is refused (until transport security supplies identities).
 */
export async function startControlPlane(config: ControlPlaneConfig, logger: Logger, access: ServerAccess = {}): Promise<ControlPlane> {
  mkdirSync(config.dataDir, { recursive: true });
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
  const server = createServer({ timeMs: config.grpcKeepaliveMs, timeoutMs: config.grpcKeepaliveTimeoutMs }, access);
  const ipamAddress = `unix://${socketPath}`;
  let routes: { stop(): void } | null = null;
  let ipamService: { stop(): void } | null = null;
  let tcpPort: number | null = null;
  let httpPort: number | null = null;
  let httpServer: http.Server | null = null;
  try {
    const ipam = await mountIpamService(server, {
      database, notifier, logger,
      housekeeping: { sweepSeconds: config.sweepSeconds, blockGraceSeconds: config.blockGraceSeconds, nodeGoneGraceSeconds: config.nodeGoneGraceSeconds, attemptRetentionSeconds: config.attemptRetentionSeconds, routesAddress: ipamAddress },
    });
    ipamService = ipam;
    if (config.httpListen) {
      httpServer = createHttpServer([ipam.http]);
      httpPort = await listenHttp(httpServer, config.httpListen);
    }
    routes = await mountRoutesService(server, {
      database, databaseUrl: url, notifier, logger, ipamAddress,
      options: { leaseMs: config.nodeLeaseMs, bookmarkMs: config.routesBookmarkMs, pollMs: config.routesPollMs, logKeep: config.routesLogKeep, logMaxAgeSeconds: config.routesLogMaxAgeS },
    });
    await mountPolicyService(server, { database, notifier, logger, options: { pollMs: config.routesPollMs, bookmarkMs: config.routesBookmarkMs } });
    await bindServer(server, ipamAddress);
    tcpPort = config.listen ? await bindServer(server, config.listen) : null;
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
  logger.info('control plane serving', { socket: socketPath, listen: config.listen, port: tcpPort, httpPort });
  return {
    socketPath,
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
