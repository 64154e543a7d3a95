import { BootstrapServiceService } from '../../gen/weft/auth/v1/bootstrap.js';
import type { TransportSecurity } from '../../lib/grpc/credentials.js';
import {
  addService,
  bindServer,
  createServer,
  observeCalls,
  shutdownServer,
  type CallObserver,
  type ServerKeepalive,
} from '../../lib/grpc/server.js';
import type { Logger } from '../../lib/logger.js';
import { createBootstrapHandlers, type BootstrapDeps } from './rpc/bootstrap.rpc.js';

/**
 * The bootstrap listener: its own gRPC server and port, TLS with the control plane's server certificate and no
 * client certificate asked for, serving BootstrapService alone (services/bootstrap/DESIGN.md). Authorization is
 * enforced as on the main server; the table lets anyone call IssueCertificate, whose token is its authentication.
 */
export async function startBootstrapListener(
  deps: BootstrapDeps & {
    address: string;
    security: Extract<TransportSecurity, { mode: 'server-tls' }>;
    keepalive: ServerKeepalive;
    logger: Logger;
    /** The audit log's observer (services/audit): each issue, and each refused call, is recorded. */
    observe?: CallObserver;
  },
): Promise<{ port: number; stop(): Promise<void> }> {
  const logger = deps.logger.child({ service: 'bootstrap' });
  const server = createServer(deps.keepalive, { enforce: true });
  if (deps.observe) observeCalls(server, deps.observe);
  addService(server, BootstrapServiceService, createBootstrapHandlers(deps), logger);
  let port: number;
  try {
    port = await bindServer(server, deps.address, deps.security);
  } catch (err) {
    server.forceShutdown();
    throw err;
  }
  return { port, stop: () => shutdownServer(server) };
}
