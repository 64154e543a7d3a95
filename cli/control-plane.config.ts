import { readFileSync } from 'node:fs';
import { ConfigError, loadSettings, parsers, type SettingsSpec } from '../lib/config.js';
import type { DatabaseTimeouts } from '../lib/db/database.js';
import type { IdentityLimits } from '../lib/auth/limits.js';
import { parseApiUrl } from '../kube-controller/config.js';
import { parseServiceAccount } from '../services/bootstrap/domain/bootstrap.js';

/** Settings of `weft up`: the control plane (IPAM and routes services) in one process. */
export const controlPlaneSettings = {
  dataDir: {
    env: 'WEFT_DATA_DIR',
    description: 'folder for the embedded PostgreSQL data and the unix socket',
    default: '.weft',
    parse: parsers.string,
  },
  databaseUrl: {
    env: 'DATABASE_URL',
    description:
      "external PostgreSQL URL the services' requests use: a role that owns nothing and has only table privileges (lib/db/DESIGN.md); empty runs the embedded server",
    default: '',
    parse: parsers.string,
  },
  migrationDatabaseUrl: {
    env: 'WEFT_MIGRATION_DATABASE_URL',
    description:
      "external PostgreSQL URL of the schemas' owner: migrations run as it, and it grants DATABASE_URL's role its table privileges at each start; empty: DATABASE_URL does both (one role, warned about)",
    default: '',
    parse: parsers.string,
  },
  databasePasswordFile: {
    env: 'WEFT_DATABASE_PASSWORD_FILE',
    description:
      'file holding the password for DATABASE_URL (a mounted Secret), read once at start, one trailing newline dropped; DATABASE_URL must then name no password',
    default: '',
    parse: parsers.string,
  },
  dbStatementTimeoutMs: {
    env: 'WEFT_DB_STATEMENT_TIMEOUT_MS',
    description:
      'PostgreSQL cancels a statement that runs longer (statement_timeout; migrations are exempt); 0: no limit',
    default: 10_000,
    parse: parsers.int(0, 3_600_000),
  },
  dbLockTimeoutMs: {
    env: 'WEFT_DB_LOCK_TIMEOUT_MS',
    description: 'a statement waiting longer for a lock fails (lock_timeout); 0: no limit',
    default: 5000,
    parse: parsers.int(0, 3_600_000),
  },
  dbIdleInTransactionTimeoutMs: {
    env: 'WEFT_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS',
    description: 'PostgreSQL ends a session idle inside a transaction this long, releasing its locks; 0: no limit',
    default: 30_000,
    parse: parsers.int(0, 3_600_000),
  },
  dbQueryTimeoutMs: {
    env: 'WEFT_DB_QUERY_TIMEOUT_MS',
    description:
      'a query with no answer after this long fails (UNAVAILABLE to the caller) and its session is closed: what bounds a call when the database cannot be reached; must exceed the statement timeout; 0: no limit',
    default: 12_000,
    parse: parsers.int(0, 3_600_000),
  },
  dbConnectTimeoutMs: {
    env: 'WEFT_DB_CONNECT_TIMEOUT_MS',
    description: 'opening a database session, or waiting for a free one, fails after this long',
    default: 5000,
    parse: parsers.int(100, 600_000),
  },
  dbKeepAliveMs: {
    env: 'WEFT_DB_KEEPALIVE_MS',
    description: 'TCP keepalive toward PostgreSQL starts after a session is idle this long; 0: off',
    default: 10_000,
    parse: parsers.int(0, 3_600_000),
  },
  pgPort: {
    env: 'WEFT_PG_PORT',
    description:
      "port number naming the embedded PostgreSQL's unix socket (<data-dir>/pg/.s.PGSQL.<port>); it listens on no TCP port",
    default: 54329,
    parse: parsers.port,
  },
  listen: {
    env: 'WEFT_LISTEN',
    description: 'gRPC listen address host:port, or "off" for the unix socket only',
    default: '127.0.0.1:7400',
    parse: (raw: string) => (raw === 'off' ? '' : raw),
  },
  httpListen: {
    env: 'WEFT_HTTP_LISTEN',
    description: 'HTTP/JSON listen address host:port for the IPAM API, or "off"',
    default: '127.0.0.1:7401',
    parse: (raw: string) => (raw === 'off' ? '' : raw),
  },
  httpAllowedHosts: {
    env: 'WEFT_HTTP_ALLOWED_HOSTS',
    description:
      'comma-separated host names the HTTP/JSON API answers to besides the listen address, localhost and IP addresses (a request with another Host header is refused: DNS rebinding)',
    default: [] as string[],
    parse: parsers.list,
  },
  httpAllowedOrigins: {
    env: 'WEFT_HTTP_ALLOWED_ORIGINS',
    description:
      'comma-separated browser origins (scheme://host[:port]) allowed to call the HTTP/JSON API; a request carrying any other Origin is refused (cross-site requests)',
    default: [] as string[],
    parse: parsers.list,
  },
  grpcKeepaliveMs: {
    env: 'WEFT_GRPC_KEEPALIVE_MS',
    description:
      'the gRPC server pings each client connection this often; with the timeout, how soon the streams of a vanished agent end',
    default: 30_000,
    parse: parsers.int(100, 3_600_000),
  },
  grpcKeepaliveTimeoutMs: {
    env: 'WEFT_GRPC_KEEPALIVE_TIMEOUT_MS',
    description: 'a client connection whose ping is not answered within this long is closed, with its streams',
    default: 10_000,
    parse: parsers.int(100, 600_000),
  },
  socket: {
    env: 'WEFT_SOCKET',
    description: 'gRPC unix socket path (default: <data-dir>/weft.sock)',
    default: '',
    parse: parsers.string,
  },
  pkiDir: {
    env: 'WEFT_PKI_DIR',
    description:
      "folder of the CA and the control plane's certificates, made on first start (default: <data-dir>/pki); replicas share one",
    default: '',
    parse: parsers.string,
  },
  caDir: {
    env: 'WEFT_CA_DIR',
    description:
      "folder holding Weft's CA (ca.crt, ca.key: on Kubernetes the Secret weft-ca, mounted): the control plane signs its server certificate and bootstrap certificates with it and never makes one; empty: the CA in the pki folder, made on first start",
    default: '',
    parse: parsers.string,
  },
  bootstrapListen: {
    env: 'WEFT_BOOTSTRAP_LISTEN',
    description:
      'host:port of the bootstrap listener (TLS without client certificates, BootstrapService only): pods of the agent and the Kubernetes controller trade their projected ServiceAccount token for a client certificate there; "off": no bootstrap',
    default: '',
    parse: (raw: string) => (raw === 'off' ? '' : raw),
  },
  bootstrapAudience: {
    env: 'WEFT_BOOTSTRAP_AUDIENCE',
    description: "the audience a bootstrap token must be for (the projected token volume's audience)",
    default: 'weft',
    parse: parsers.string,
  },
  bootstrapAgentServiceAccount: {
    env: 'WEFT_BOOTSTRAP_AGENT_SERVICE_ACCOUNT',
    description:
      "NAMESPACE/NAME of the agents' ServiceAccount: its tokens, bound to a pod, get weft:node:<the pod's node>",
    default: parseServiceAccount('weft-system/weft-agent'),
    parse: parseServiceAccount,
  },
  bootstrapControllerServiceAccount: {
    env: 'WEFT_BOOTSTRAP_CONTROLLER_SERVICE_ACCOUNT',
    description:
      "NAMESPACE/NAME of the Kubernetes controller's ServiceAccount: its tokens get weft:controller:<WEFT_BOOTSTRAP_CLUSTER>",
    default: parseServiceAccount('weft-system/weft-kube-controller'),
    parse: parseServiceAccount,
  },
  bootstrapCluster: {
    env: 'WEFT_BOOTSTRAP_CLUSTER',
    description: "the cluster name in bootstrapped controller certificates (the controller's WEFT_K8S_CLUSTER)",
    default: 'default',
    parse: parsers.string,
  },
  bootstrapCertificateTtlS: {
    env: 'WEFT_BOOTSTRAP_CERT_TTL_S',
    description: 'how long a bootstrapped certificate is valid, in seconds (clients renew at two thirds of it)',
    default: 86_400,
    parse: parsers.int(600, 30 * 86_400),
  },
  kubeconfig: {
    env: 'WEFT_KUBECONFIG',
    description:
      "kubeconfig the bootstrap reaches the Kubernetes API with (TokenReview, pods); empty: the pod's service account",
    default: '',
    parse: parsers.string,
  },
  k8sApi: {
    env: 'WEFT_K8S_API',
    description: 'Kubernetes API server URL (https://HOST:PORT) instead of the in-cluster service address',
    default: '',
    parse: (raw: string) => (raw ? parseApiUrl(raw) : ''),
  },
  k8sServiceHost: {
    env: 'KUBERNETES_SERVICE_HOST',
    description: 'in-cluster API server host (set by the kubelet)',
    default: '',
    parse: parsers.string,
  },
  k8sServicePort: {
    env: 'KUBERNETES_SERVICE_PORT',
    description: 'in-cluster API server port (set by the kubelet)',
    default: 443,
    parse: parsers.port,
  },
  k8sServiceAccountDir: {
    env: 'WEFT_K8S_SERVICE_ACCOUNT_DIR',
    description: "folder of the control plane's own service account token and ca.crt (for the Kubernetes API)",
    default: '/var/run/secrets/kubernetes.io/serviceaccount',
    parse: parsers.string,
  },
  tlsRefreshMs: {
    env: 'WEFT_TLS_REFRESH_MS',
    description:
      'certificate files are re-read this often: files replaced on disk are used by new connections without a restart',
    default: 10_000,
    parse: parsers.int(10, 3_600_000),
  },
  sweepSeconds: {
    env: 'WEFT_IPAM_SWEEP_SECONDS',
    description: 'how often IPAM returns empty blocks and sweeps gone nodes',
    default: 30,
    parse: parsers.int(1, 86_400),
  },
  blockGraceSeconds: {
    env: 'WEFT_IPAM_BLOCK_GRACE_SECONDS',
    description: 'an empty block returns to its pool after this long unused',
    default: 600,
    parse: parsers.int(0, 30 * 86_400),
  },
  nodeGoneGraceSeconds: {
    env: 'WEFT_IPAM_NODE_GONE_GRACE_SECONDS',
    description:
      'a node deregistered this long ago (and not registered again) has its allocations released; names never registered are left alone',
    default: 300,
    parse: parsers.int(0, 30 * 86_400),
  },
  attemptRetentionSeconds: {
    env: 'WEFT_IPAM_ATTEMPT_RETENTION_SECONDS',
    description:
      'a Release that fenced an allocation attempt is remembered this long: a later Allocate of that attempt allocates nothing',
    default: 86_400,
    parse: parsers.int(60, 30 * 86_400),
  },
  nodeLeaseMs: {
    env: 'WEFT_NODE_LEASE_MS',
    description: 'how long a node registration lasts without renewal (agents renew every third of it)',
    default: 20_000,
    parse: parsers.int(100, 3_600_000),
  },
  routesBookmarkMs: {
    env: 'WEFT_ROUTES_BOOKMARK_MS',
    description: 'idle WatchRoutes and WatchNodePolicy streams get a bookmark (their current revision) this often',
    default: 5000,
    parse: parsers.int(10, 600_000),
  },
  routesPollMs: {
    env: 'WEFT_ROUTES_POLL_MS',
    description: 'WatchRoutes and WatchNodePolicy streams re-read at least this often (NOTIFY wakes them sooner)',
    default: 2000,
    parse: parsers.int(10, 60_000),
  },
  routesFlushMs: {
    env: 'WEFT_ROUTES_FLUSH_MS',
    description:
      'while a replica is over its flush budget, a WatchRoutes stream that sent a change less than this long ago takes the next ones at most this often, coalesced (0: at once)',
    default: 250,
    parse: parsers.int(0, 10_000),
  },
  routesFlushBudget: {
    env: 'WEFT_ROUTES_FLUSH_BUDGET',
    description:
      'messages a second a replica sends to its WatchRoutes streams before busy streams wait for the flush period',
    default: 2000,
    parse: parsers.int(1, 10_000_000),
  },
  routesLogKeep: {
    env: 'WEFT_ROUTES_LOG_KEEP',
    description: 'compaction keeps at least this many newest route changes',
    default: 10_000,
    parse: parsers.int(1, 100_000_000),
  },
  routesLogMaxAgeS: {
    env: 'WEFT_ROUTES_LOG_MAX_AGE_S',
    description: 'compaction keeps every route change younger than this many seconds',
    default: 3600,
    parse: parsers.int(0, 31_536_000),
  },
  limitNodeStreams: {
    env: 'WEFT_LIMIT_NODE_STREAMS',
    description:
      'server streams (watches) one node identity may hold open at once (an agent opens a handful); the next is refused RESOURCE_EXHAUSTED; 0: no limit',
    default: 64,
    parse: parsers.int(0, 1_000_000),
  },
  limitControllerStreams: {
    env: 'WEFT_LIMIT_CONTROLLER_STREAMS',
    description: 'server streams one controller identity may hold open at once; 0: no limit',
    default: 1024,
    parse: parsers.int(0, 1_000_000),
  },
  limitTokenStreams: {
    env: 'WEFT_LIMIT_TOKEN_STREAMS',
    description: 'server streams one API token may hold open at once; 0: no limit',
    default: 256,
    parse: parsers.int(0, 1_000_000),
  },
  limitAdminStreams: {
    env: 'WEFT_LIMIT_ADMIN_STREAMS',
    description: 'server streams one admin identity may hold open at once; 0: no limit',
    default: 0,
    parse: parsers.int(0, 1_000_000),
  },
  limitNodeRate: {
    env: 'WEFT_LIMIT_NODE_RATE',
    description:
      'calls per second one node identity may make on average (a token bucket of WEFT_LIMIT_NODE_BURST); beyond it RESOURCE_EXHAUSTED with retry-after-ms; 0: no limit',
    default: 200,
    parse: parsers.int(0, 1_000_000),
  },
  limitNodeBurst: {
    env: 'WEFT_LIMIT_NODE_BURST',
    description: 'calls one node identity may make at once after a quiet spell',
    default: 1000,
    parse: parsers.int(1, 100_000_000),
  },
  limitControllerRate: {
    env: 'WEFT_LIMIT_CONTROLLER_RATE',
    description: 'calls per second one controller identity may make on average; 0: no limit',
    default: 1000,
    parse: parsers.int(0, 1_000_000),
  },
  limitControllerBurst: {
    env: 'WEFT_LIMIT_CONTROLLER_BURST',
    description: 'calls one controller identity may make at once after a quiet spell',
    default: 10_000,
    parse: parsers.int(1, 100_000_000),
  },
  limitTokenRate: {
    env: 'WEFT_LIMIT_TOKEN_RATE',
    description: 'calls per second one API token may make on average; 0: no limit',
    default: 500,
    parse: parsers.int(0, 1_000_000),
  },
  limitTokenBurst: {
    env: 'WEFT_LIMIT_TOKEN_BURST',
    description: 'calls one API token may make at once after a quiet spell',
    default: 5000,
    parse: parsers.int(1, 100_000_000),
  },
  limitAdminRate: {
    env: 'WEFT_LIMIT_ADMIN_RATE',
    description: 'calls per second one admin identity may make on average; 0: no limit',
    default: 0,
    parse: parsers.int(0, 1_000_000),
  },
  limitAdminBurst: {
    env: 'WEFT_LIMIT_ADMIN_BURST',
    description: 'calls one admin identity may make at once after a quiet spell',
    default: 10_000,
    parse: parsers.int(1, 100_000_000),
  },
  limitNodeAllocations: {
    env: 'WEFT_LIMIT_NODE_ALLOCATIONS',
    description:
      'live IPAM allocations a node identity may hold (its Allocate and BatchAllocate beyond it: RESOURCE_EXHAUSTED ipam.node_allocation_limit; a node holds ~110-250 pods); others are not limited; 0: no limit',
    default: 1024,
    parse: parsers.int(0, 100_000_000),
  },
  logLevel: {
    env: 'WEFT_LOG_LEVEL',
    description: 'debug, info, warn or error',
    default: 'info' as const,
    parse: parsers.oneOf('debug', 'info', 'warn', 'error'),
  },
  traceExporter: {
    env: 'WEFT_TRACE_EXPORTER',
    description: 'none or console',
    default: 'none' as const,
    parse: parsers.oneOf('none', 'console'),
  },
} satisfies SettingsSpec;

export function loadControlPlaneConfig(overrides: Partial<Record<keyof typeof controlPlaneSettings, string>> = {}) {
  const c = loadSettings(controlPlaneSettings, process.env, overrides);
  if (c.dbQueryTimeoutMs > 0 && c.dbStatementTimeoutMs > 0 && c.dbQueryTimeoutMs <= c.dbStatementTimeoutMs) {
    throw new ConfigError([
      `WEFT_DB_QUERY_TIMEOUT_MS=${c.dbQueryTimeoutMs} must exceed WEFT_DB_STATEMENT_TIMEOUT_MS=${c.dbStatementTimeoutMs} (PostgreSQL should cancel a slow statement before the client gives up on its session)`,
    ]);
  }
  if (c.bootstrapListen && !c.kubeconfig && !c.k8sApi && !c.k8sServiceHost) {
    throw new ConfigError([
      `WEFT_BOOTSTRAP_LISTEN=${c.bootstrapListen} needs the Kubernetes API to review tokens with: set WEFT_KUBECONFIG or WEFT_K8S_API, or run in a pod (KUBERNETES_SERVICE_HOST)`,
    ]);
  }
  if (c.databasePasswordFile)
    return Object.freeze({ ...c, databaseUrl: withPasswordFrom(c.databaseUrl, c.databasePasswordFile) });
  return c;
}
export type ControlPlaneConfig = ReturnType<typeof loadControlPlaneConfig>;

/** The limits per identity of a control-plane config (lib/auth/limits.ts). */
export const identityLimits = (c: ControlPlaneConfig): IdentityLimits => ({
  node: { streams: c.limitNodeStreams, ratePerSecond: c.limitNodeRate, burst: c.limitNodeBurst },
  controller: {
    streams: c.limitControllerStreams,
    ratePerSecond: c.limitControllerRate,
    burst: c.limitControllerBurst,
  },
  token: { streams: c.limitTokenStreams, ratePerSecond: c.limitTokenRate, burst: c.limitTokenBurst },
  admin: { streams: c.limitAdminStreams, ratePerSecond: c.limitAdminRate, burst: c.limitAdminBurst },
});

/** The database timeouts of a control-plane config. */
export const databaseTimeouts = (c: ControlPlaneConfig): DatabaseTimeouts => ({
  statementMs: c.dbStatementTimeoutMs,
  lockMs: c.dbLockTimeoutMs,
  idleInTransactionMs: c.dbIdleInTransactionTimeoutMs,
  queryMs: c.dbQueryTimeoutMs,
  connectMs: c.dbConnectTimeoutMs,
  keepAliveMs: c.dbKeepAliveMs,
});

/**
 * DATABASE_URL with the password of WEFT_DATABASE_PASSWORD_FILE in it, percent-encoded (any character may be in the
 * password). One source of the password only: a URL that already names one is refused.
 */
function withPasswordFrom(databaseUrl: string, file: string): string {
  const problem = (what: string) => new ConfigError([`WEFT_DATABASE_PASSWORD_FILE=${JSON.stringify(file)}: ${what}`]);
  if (!databaseUrl)
    throw problem(
      'needs DATABASE_URL (the embedded server takes no password): set DATABASE_URL or unset WEFT_DATABASE_PASSWORD_FILE',
    );
  let url: URL;
  try {
    url = new URL(databaseUrl);
  } catch {
    throw problem('DATABASE_URL must be a postgres:// URL to take a password from a file');
  }
  if (url.password)
    throw problem('DATABASE_URL names a password too: remove it from the URL, or unset WEFT_DATABASE_PASSWORD_FILE');
  if (!url.username) throw problem('DATABASE_URL names no user (postgres://USER@HOST:PORT/DB) for the password');
  let password: string;
  try {
    password = readFileSync(file, 'utf8').replace(/\r?\n$/, '');
  } catch (err) {
    throw problem(`cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  if (!password) throw problem('is empty');
  url.password = encodeURIComponent(password);
  return url.toString();
}
