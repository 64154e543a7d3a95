import { chmodSync, existsSync, mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { applyMigrations, connectDatabase, sessionConfig, type DatabaseTimeouts } from '../lib/db/database.js';
import { appRoleProblems, grantAppPrivileges, userOf } from '../lib/db/roles.js';
import { mountAuditService } from '../services/audit/main.js';
import { createTokenAuthority, mountCertificateService, mountTokenService } from '../services/auth/main.js';
import { createCertificateRepository, REVOCATIONS_CHANNEL } from '../services/auth/store/certificate.repository.js';
import { startRevocationList, type RevocationList } from '../services/auth/revocations.js';
import { readCertificate } from '../services/auth/rpc/certificate.rpc.js';
import { readFileSync } from 'node:fs';
import { startEmbeddedPostgres, type EmbeddedDatabase } from '../lib/db/embedded.js';
import { LEADER_LOCK_CLASS, MIGRATION_LOCK } from '../lib/db/leadership.js';
import { createNotifier } from '../lib/db/notifier.js';
import {
  bindServer,
  createServer,
  identifyCaller,
  shutdownServer,
  type IdentifiableCall,
  type ServerAccess,
} from '../lib/grpc/server.js';
import type { Identity } from '../lib/auth/identity.js';
import type { TransportSecurity } from '../lib/grpc/credentials.js';
import { ensureControlPlanePki, PKI_FILES } from '../lib/pki.js';
import type { Logger } from '../lib/logger.js';
import { mountIpamService } from '../services/ipam/main.js';
import { BLOCKS_CHANNEL } from '../services/ipam/store/postgres.store.js';
import { mountRoutesService } from '../services/routes/main.js';
import { mountPolicyService } from '../services/policy/main.js';
import { POLICY_CHANNEL } from '../services/policy/store/policy.repository.js';
import { CHANGES_CHANNEL } from '../services/routes/store/route-log.repository.js';
import { databaseTimeouts, identityLimits, type ControlPlaneConfig } from './control-plane.config.js';
import { createCallLimiter } from '../lib/auth/limits.js';
import http from 'node:http';
import { kubeConfigFrom } from '../kube-controller/kube.js';
import { startBootstrapListener } from '../services/bootstrap/main.js';
import { createKubernetesFacts } from '../services/bootstrap/kubernetes.js';
import { createHttpServer } from '../lib/http/json-gateway.js';

/** The services whose migrations the control plane applies, in order (each its own schema and journal). */
const MIGRATED = ['ipam', 'routes', 'policy', 'audit', 'auth'];
/** Shared-pool sessions opened before the server listens and kept while idle (lib/db/database.ts `warm`). */
const WARM_SESSIONS = 8;
/** A stop that takes longer is logged as a warning, with its steps' times. */
const SLOW_STOP_MS = 3000;

/**
 * Migrations as the owner (`ownerUrl`), then, when the services run as another role (`appUrl`'s user), that role's
 * table privileges (lib/db/roles.ts). With one URL for both, the services can ALTER and DROP their tables: warned.
 */
async function prepareDatabase(
  ownerUrl: string,
  appUrl: string,
  timeouts: DatabaseTimeouts,
  logger: Logger,
): Promise<void> {
  const owner = sessionConfig(ownerUrl, { ...timeouts, statementMs: 0, lockMs: 0, queryMs: 0, idleInTransactionMs: 0 });
  // Replicas starting together on one database take turns: a session lock held through migrations and grants (the
  // migrator takes none, and two replicas would both apply the same migration).
  const client = new pg.Client(owner);
  client.on('error', () => {});
  await client.connect();
  try {
    await client.query('SELECT pg_advisory_lock($1, $2)', [LEADER_LOCK_CLASS, MIGRATION_LOCK]);
    for (const service of MIGRATED) await applyMigrations(owner, service);
    const appRole = userOf(appUrl);
    if (ownerUrl === appUrl || !appRole || appRole === userOf(ownerUrl)) return;
    await grantAppPrivileges(client, appRole);
    logger.info('database privileges granted', { role: appRole });
  } finally {
    // Ending the session releases the lock.
    await client.end().catch(() => {});
  }
}

function listenHttp(server: http.Server, address: string): Promise<number> {
  const i = address.lastIndexOf(':');
  const host = address.slice(0, i).replace(/^\[|\]$/g, '');
  const port = Number(address.slice(i + 1));
  if (i < 0 || !Number.isInteger(port))
    throw new Error(`WEFT_HTTP_LISTEN ${JSON.stringify(address)} must be host:port`);
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
  /** The bootstrap listener's port (WEFT_BOOTSTRAP_LISTEN), or null when off. */
  bootstrapPort: number | null;
  /** The plaintext listener's port (ControlPlaneInternals.plaintextListenForBenchmarks), or null. */
  plaintextPort: number | null;
  stop(): Promise<void>;
}

/**
 * What only in-process callers may set, never a setting or an environment variable.
 *
 * `plaintextListenForBenchmarks`: a second TCP listener without TLS whose callers are all the administrator
 * `bench-plaintext`. bench/ipam's `transport` part measures what mTLS costs against it, on the same server, database
 * and pool cache; no deployment can turn it on.
 */
export interface ControlPlaneInternals {
  plaintextListenForBenchmarks?: string;
}

/**
 * `weft up`: the IPAM, routes, policy, audit and token services in one process, on embedded PostgreSQL unless DATABASE_URL is
 * set. Every call is authorized (lib/auth/authorization.ts) for the identity of its verified client certificate;
 * `access` replaces how callers are identified (the authorization matrix test injects identities).
 */
export async function startControlPlane(
  config: ControlPlaneConfig,
  logger: Logger,
  access: ServerAccess = {},
  internals: ControlPlaneInternals = {},
): Promise<ControlPlane> {
  // The data folder holds the database, its passwords and the socket: the user running weft's alone (embedded.ts
  // lets the user 'postgres' enter it when weft runs as root).
  mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
  if (process.getuid?.() !== 0 || config.databaseUrl) {
    try {
      chmodSync(config.dataDir, 0o700);
    } catch (err) {
      // A folder weft does not own (a container's emptyDir): what is in it is still 0600.
      logger.warn('the data folder is not ours to make private; its files and socket are 0600', {
        dataDir: config.dataDir,
        err: (err as Error).message,
      });
    }
  }
  // Every listener (TCP and the unix socket) is mTLS: there is no plaintext control plane.
  const pkiDir = path.resolve(config.pkiDir || path.join(config.dataDir, 'pki'));
  const listenHost = config.listen ? config.listen.slice(0, config.listen.lastIndexOf(':')) : '';
  const bootstrapHost = config.bootstrapListen
    ? config.bootstrapListen.slice(0, config.bootstrapListen.lastIndexOf(':'))
    : '';
  const { created, ca } = await ensureControlPlanePki(pkiDir, [listenHost, bootstrapHost].filter(Boolean), {
    caDir: config.caDir || undefined,
  });
  if (created.length) logger.info('made certificates', { pkiDir, files: created });
  const security: TransportSecurity = {
    mode: 'mtls',
    caFile: path.join(pkiDir, PKI_FILES.caCert),
    certFile: path.join(pkiDir, PKI_FILES.serverCert),
    keyFile: path.join(pkiDir, PKI_FILES.serverKey),
    refreshMs: config.tlsRefreshMs,
  };
  let embedded: EmbeddedDatabase | null = null;
  let url = config.databaseUrl;
  let ownerUrl = config.migrationDatabaseUrl || config.databaseUrl;
  if (!url) {
    embedded = await startEmbeddedPostgres(config.dataDir, config.pgPort, logger);
    url = embedded.appUrl;
    ownerUrl = embedded.ownerUrl;
  }
  try {
    await prepareDatabase(ownerUrl, url, databaseTimeouts(config), logger);
  } catch (err) {
    await embedded?.stop();
    throw err;
  }
  const database = connectDatabase(url, { timeouts: databaseTimeouts(config) });
  const problems = await appRoleProblems(database.pool).catch((err: Error) => [
    `its privileges could not be read: ${err.message}`,
  ]);
  if (problems.length > 0) {
    logger.warn(
      "the services' database role can do more than they need; give DATABASE_URL a role that owns nothing, and the owner's URL as WEFT_MIGRATION_DATABASE_URL (lib/db/DESIGN.md)",
      { problems },
    );
  }
  const notifier = createNotifier(
    database.session,
    [BLOCKS_CHANNEL, CHANGES_CHANNEL, POLICY_CHANNEL, REVOCATIONS_CHANNEL],
    logger,
  );
  const socketPath = path.resolve(config.socket || path.join(config.dataDir, 'weft.sock'));
  // A folder made for the socket is the user's alone; an existing one is left as it is (the socket itself is 0600).
  if (!existsSync(path.dirname(socketPath))) mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o700 });
  rmSync(socketPath, { force: true });
  // API tokens: a call's bearer token is its identity (lib/auth/DESIGN.md), checked against the database on every call.
  const tokens = createTokenAuthority(database);
  // Revoked certificates and tokens, in memory (services/auth/revocations.ts): read before the first call is served.
  const certificates = createCertificateRepository(database.db);
  let revocations: RevocationList;
  try {
    revocations = await startRevocationList({
      repo: certificates,
      notifier,
      logger: logger.child({ service: 'auth' }),
    });
    // The local admin's certificate is recorded like any other, so that `weft ca revoke --admin local` finds it.
    const admin = readCertificate(readFileSync(path.join(pkiDir, PKI_FILES.adminCert), 'utf8'));
    await certificates.record({
      serial: admin.serial,
      identity: admin.identity,
      issuedAt: new Date(),
      notAfter: admin.notAfter,
      issuedBy: 'control-plane',
    });
  } catch (err) {
    await notifier.close();
    await database.close();
    await embedded?.stop();
    throw err;
  }
  // One budget per identity, over gRPC and the HTTP gateway alike.
  const limiter = createCallLimiter(identityLimits(config));
  if (internals.plaintextListenForBenchmarks) {
    // A call that came over TLS is identified as always; one without TLS can only be the benchmark's listener.
    const plaintextAdmin: Identity = Object.freeze({ kind: 'admin', name: 'bench-plaintext' });
    const identify = access.identify ?? ((call: IdentifiableCall) => identifyCaller(call, tokens.verify));
    access = {
      ...access,
      identify: (call) => {
        // Asked once: over TLS, getAuthContext parses the peer's certificate each time.
        const auth = call.getAuthContext();
        if (!auth.transportSecurityType) return plaintextAdmin;
        return identify({ metadata: call.metadata, getPeer: () => call.getPeer(), getAuthContext: () => auth });
      },
    };
    logger.warn('a plaintext listener for benchmarks is on: every caller on it is an administrator', {
      listen: internals.plaintextListenForBenchmarks,
    });
  }
  const server = createServer(
    { timeMs: config.grpcKeepaliveMs, timeoutMs: config.grpcKeepaliveTimeoutMs },
    { enforce: true, tokens: tokens.verify, limits: limiter, revocations, ...access },
  );
  const ipamAddress = `unix://${socketPath}`;
  let routes: { stop(): Promise<void> } | null = null;
  let ipamService: { stop(): Promise<void> } | null = null;
  let tcpPort: number | null;
  let plaintextPort: number | null = null;
  let httpPort: number | null = null;
  let httpServer: http.Server | null = null;
  let bootstrap: { port: number; stop(): Promise<void> } | null = null;
  // First: its observer must see the services mounted after it.
  const audit = mountAuditService(server, { database, logger });
  try {
    const ipam = await mountIpamService(server, {
      database,
      notifier,
      logger,
      tokens: tokens.verify,
      limits: { nodeAllocations: config.limitNodeAllocations },
      callLimiter: limiter,
      revocations,
      housekeeping: {
        sweepSeconds: config.sweepSeconds,
        blockGraceSeconds: config.blockGraceSeconds,
        nodeGoneGraceSeconds: config.nodeGoneGraceSeconds,
        attemptRetentionSeconds: config.attemptRetentionSeconds,
        routesAddress: ipamAddress,
        routesSecurity: security,
      },
    });
    ipamService = ipam;
    if (config.httpListen) {
      httpServer = createHttpServer([ipam.http], {
        listenHost: config.httpListen.slice(0, config.httpListen.lastIndexOf(':')),
        allowedHosts: config.httpAllowedHosts,
        allowedOrigins: config.httpAllowedOrigins,
      });
      httpPort = await listenHttp(httpServer, config.httpListen);
    }
    routes = await mountRoutesService(server, {
      database,
      notifier,
      logger,
      ipamAddress,
      ipamSecurity: security,
      options: {
        leaseMs: config.nodeLeaseMs,
        bookmarkMs: config.routesBookmarkMs,
        pollMs: config.routesPollMs,
        flushMs: config.routesFlushMs,
        flushBudget: config.routesFlushBudget,
        logKeep: config.routesLogKeep,
        logMaxAgeSeconds: config.routesLogMaxAgeS,
      },
    });
    mountTokenService(server, { repo: tokens.repo, logger });
    mountCertificateService(server, { repo: certificates, caPem: ca.cert, logger });
    await mountPolicyService(server, {
      database,
      notifier,
      logger,
      options: { pollMs: config.routesPollMs, bookmarkMs: config.routesBookmarkMs },
    });
    // Sessions open before the port is: agents reconnecting after a restart come all at once.
    await database.warm(WARM_SESSIONS);
    await bindServer(server, ipamAddress, security);
    // Created with the umask's mode (0755 with the usual 022: only its owner may connect, which needs write); now 0600.
    chmodSync(socketPath, 0o600);
    tcpPort = config.listen ? await bindServer(server, config.listen, security) : null;
    if (internals.plaintextListenForBenchmarks)
      plaintextPort = await bindServer(server, internals.plaintextListenForBenchmarks, { mode: 'insecure' });
    if (config.bootstrapListen) {
      bootstrap = await startBootstrapListener({
        address: config.bootstrapListen,
        logger,
        ca,
        observe: audit.observe,
        recordIssued: async (c) =>
          void (await certificates.record({ ...c, issuedAt: new Date(), issuedBy: 'bootstrap' })),
        security: {
          mode: 'server-tls',
          certFile: security.certFile,
          keyFile: security.keyFile,
          refreshMs: config.tlsRefreshMs,
        },
        keepalive: { timeMs: config.grpcKeepaliveMs, timeoutMs: config.grpcKeepaliveTimeoutMs },
        kubernetes: createKubernetesFacts(
          kubeConfigFrom({
            kubeconfig: config.kubeconfig,
            api: config.k8sApi,
            serviceHost: config.k8sServiceHost,
            servicePort: config.k8sServicePort,
            serviceAccountDir: config.k8sServiceAccountDir,
          }),
        ),
        policy: {
          audience: config.bootstrapAudience,
          agent: config.bootstrapAgentServiceAccount,
          controller: config.bootstrapControllerServiceAccount,
          cluster: config.bootstrapCluster,
        },
        certificateTtlMs: config.bootstrapCertificateTtlS * 1000,
      });
    }
  } catch (err) {
    // Leave nothing running behind a failed start (the embedded server above all).
    await bootstrap?.stop();
    await routes?.stop();
    await ipamService?.stop();
    httpServer?.close();
    server.forceShutdown();
    await audit.stop();
    revocations.stop();
    await notifier.close();
    await database.close();
    await embedded?.stop();
    throw err;
  }
  logger.info('control plane serving (mTLS)', {
    socket: socketPath,
    listen: config.listen,
    port: tcpPort,
    httpPort,
    pkiDir,
    bootstrap: config.bootstrapListen || 'off',
    bootstrapPort: bootstrap?.port ?? null,
    admin: `the CLI on this host uses ${path.join(pkiDir, PKI_FILES.adminCert)}`,
    credentials: `weft ca issue (--node NAME | --admin NAME | --controller CLUSTER) --out DIR --data-dir ${path.resolve(config.dataDir)}${config.pkiDir ? ` (WEFT_PKI_DIR=${pkiDir})` : ''}`,
  });
  return {
    socketPath,
    pkiDir,
    tcpPort,
    httpPort,
    bootstrapPort: bootstrap?.port ?? null,
    plaintextPort,
    async stop() {
      const t0 = performance.now();
      const took: Record<string, number> = {};
      const step = async (name: string, f: () => unknown) => {
        const t = performance.now();
        await f();
        took[name] = Math.round(performance.now() - t);
      };
      await step('bootstrap', () => bootstrap?.stop());
      await step('routes', () => routes?.stop());
      await step('ipam', () => ipamService?.stop());
      httpServer?.closeAllConnections();
      httpServer?.close();
      await step('grpc', () => shutdownServer(server));
      await step('audit', () => audit.stop());
      revocations.stop();
      await step('notifier', () => notifier.close());
      await step('database', () => database.close());
      await step('embedded', () => embedded?.stop());
      rmSync(socketPath, { force: true });
      const ms = Math.round(performance.now() - t0);
      // A slow stop is what an operator restarting a control plane under thousands of agents waits for: say where.
      if (ms > SLOW_STOP_MS) logger.warn('control plane stopped, slowly', { ms, steps: took });
      else logger.info('control plane stopped', { ms, steps: took });
    },
  };
}
