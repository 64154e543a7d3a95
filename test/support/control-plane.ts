import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { createClient, type PromiseClient } from '../../lib/grpc/client.js';
import { clientTlsDir, type TransportSecurity } from '../../lib/grpc/credentials.js';
import { ensureControlPlanePki, issueClientTlsDir } from '../../lib/pki.js';
import type { CertificateIdentityKind } from '../../lib/auth/identity.js';
import { IpamServiceService } from '../../gen/weft/ipam/v1/ipam.js';
import { TokenServiceService } from '../../gen/weft/auth/v1/auth.js';
import { startControlPlane, type ControlPlane } from '../../cli/control-plane.js';
import { loadSettings } from '../../lib/config.js';
import { controlPlaneSettings } from '../../cli/control-plane.config.js';
import { createLogger, silentLogger } from '../../lib/logger.js';
import type { ServerAccess } from '../../lib/grpc/server.js';
import { createTestDatabase, type TestDatabase } from './database.js';
import { bin, startUntil, type Started } from './processes.js';

/**
 * One CA per test process, shared by every test control plane it starts (replicas on one database trust the same
 * clients), with the local admin's credentials as a client TLS folder. Removed when the process exits.
 */
export interface TestPki {
  pkiDir: string;
  /** ca.crt, tls.crt, tls.key of weft:admin:test: for `--tls-dir` and WEFT_TLS_DIR. */
  adminTlsDir: string;
  admin: TransportSecurity;
  /** Issues a client TLS folder (e.g. a node's or a controller's) from the test CA. */
  issue(kind: CertificateIdentityKind, name: string): Promise<{ dir: string; security: TransportSecurity }>;
}

let sharedPki: Promise<TestPki> | null = null;
export function testPki(): Promise<TestPki> {
  sharedPki ??= (async () => {
    const root = mkdtempSync(path.join(tmpdir(), 'weft-test-pki-'));
    process.once('exit', () => rmSync(root, { recursive: true, force: true }));
    const pkiDir = path.join(root, 'pki');
    await ensureControlPlanePki(pkiDir);
    let n = 0;
    const issue = async (kind: CertificateIdentityKind, name: string) => {
      const dir = path.join(root, `${kind}-${name}-${n++}`);
      await issueClientTlsDir(pkiDir, dir, { kind, name });
      return { dir, security: clientTlsDir(dir) };
    };
    const admin = await issue('admin', 'test');
    return { pkiDir, adminTlsDir: admin.dir, admin: admin.security, issue };
  })();
  return sharedPki;
}

/** A `weft up` process serving as one replica of a control plane on a shared database. */
export interface ReplicaProcess {
  proc: Started;
  port: number;
  /** Its own data folder (removed by `close`). */
  dataDir: string;
  /** SIGTERM (SIGKILL after `graceMs`), then its data folder removed. */
  close(graceMs?: number): Promise<void>;
}

/**
 * Starts `weft up` as an operator starts a replica: on the test database (the services' role, the owner for
 * migrations), the test PKI, no HTTP listener, listening on `listen` (`host:port`, port 0 for any), with `env` on top;
 * resolves once it serves.
 */
export async function startReplicaProcess(opts: {
  db: Pick<TestDatabase, 'appUrl' | 'url'>;
  pki: TestPki;
  listen: string;
  /** Names the data folder (`weft-<name>-…`). */
  name: string;
  env?: NodeJS.ProcessEnv;
}): Promise<ReplicaProcess> {
  const dataDir = mkdtempSync(path.join(tmpdir(), `weft-${opts.name}-`));
  try {
    const proc = await startUntil(bin.weft, ['up', '--data-dir', dataDir, '--listen', opts.listen], /"serving":true/, {
      env: {
        DATABASE_URL: opts.db.appUrl,
        WEFT_MIGRATION_DATABASE_URL: opts.db.url,
        WEFT_PKI_DIR: opts.pki.pkiDir,
        WEFT_HTTP_LISTEN: 'off',
        WEFT_LOG_LEVEL: 'info',
        ...opts.env,
      },
    });
    return {
      proc,
      port: (JSON.parse(proc.line) as { port: number }).port,
      dataDir,
      close: async (graceMs = 5000) => {
        await proc.stop(graceMs);
        rmSync(dataDir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    rmSync(dataDir, { recursive: true, force: true });
    throw err;
  }
}

/** The real control plane (IPAM + routes on one gRPC server bound to port 0) on a fresh test database. */
export interface TestControlPlane {
  address: string;
  /** Admin credentials for clients: `createClient(def, cp.address, { security: cp.security })`. */
  security: TransportSecurity;
  /** The same as a folder (ca.crt, tls.crt, tls.key): the CLI's `--tls-dir`. */
  tlsDir: string;
  pki: TestPki;
  /** Base URL of the HTTP/JSON API. */
  httpUrl: string;
  /** The bootstrap listener (settings.bootstrapListen), 127.0.0.1:PORT, or null when off. */
  bootstrapAddress: string | null;
  socket: string;
  /** The owner's URL (to look under the API). */
  databaseUrl: string;
  /** The URL the services use (weft_app): what a test runs as to prove what they cannot do. */
  appDatabaseUrl: string;
  /** Makes an API token through TokenService (as admin) and returns its secret. */
  createToken(name: string, scopes: string[], expiresInSeconds?: number): Promise<string>;
  stop(): Promise<void>;
}

export interface TestControlPlaneOptions {
  /** Serve from this database (another control plane's `databaseUrl`) instead of a fresh one: a second replica. It is not dropped on stop. */
  databaseUrl?: string;
  /** With `databaseUrl`: the services' URL (the other control plane's `appDatabaseUrl`); without it they run as the owner. */
  appDatabaseUrl?: string;
  /** Control-plane settings (e.g. nodeLeaseMs), as their text values. */
  settings?: Partial<Record<keyof typeof controlPlaneSettings, string>>;
  /** Who calls and whether authorization is enforced (default: no identities, nothing refused). */
  access?: ServerAccess;
}

export async function startTestControlPlane(opts: TestControlPlaneOptions = {}): Promise<TestControlPlane> {
  const db: TestDatabase = opts.databaseUrl
    ? { url: opts.databaseUrl, appUrl: opts.appDatabaseUrl ?? opts.databaseUrl, drop: async () => {} }
    : await createTestDatabase();
  const dir = mkdtempSync(path.join(tmpdir(), 'weft-test-cp-'));
  let cp: ControlPlane;
  const pki = await testPki();
  try {
    const config = loadSettings(
      controlPlaneSettings,
      {},
      {
        dataDir: dir,
        databaseUrl: db.appUrl,
        migrationDatabaseUrl: db.url,
        listen: '127.0.0.1:0',
        httpListen: '127.0.0.1:0',
        pkiDir: pki.pkiDir,
        ...opts.settings,
      },
    );
    // WEFT_TEST_LOG=1 shows the control plane's log on stderr.
    cp = await startControlPlane(
      config,
      process.env.WEFT_TEST_LOG ? createLogger({ component: 'test-control-plane' }, { level: 'debug' }) : silentLogger,
      opts.access,
    );
  } catch (err) {
    await db.drop();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    address: `127.0.0.1:${cp.tcpPort}`,
    security: pki.admin,
    tlsDir: pki.adminTlsDir,
    pki,
    httpUrl: `http://127.0.0.1:${cp.httpPort}`,
    bootstrapAddress: cp.bootstrapPort === null ? null : `127.0.0.1:${cp.bootstrapPort}`,
    socket: cp.socketPath,
    databaseUrl: db.url,
    appDatabaseUrl: db.appUrl,
    async createToken(name, scopes, expiresInSeconds = 0) {
      const tokens = createClient(TokenServiceService, `127.0.0.1:${cp.tcpPort}`, { security: pki.admin });
      try {
        return (await tokens.createToken({ name, scopes, expiresInSeconds }, { timeoutMs: 10_000 })).secret;
      } finally {
        tokens.close();
      }
    },
    async stop() {
      await cp.stop();
      await db.drop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A control plane with an IPAM client and a direct SQL connection (to look under the API), stopped as one. */
export interface IpamTestbed {
  cp: TestControlPlane;
  ipam: PromiseClient<typeof IpamServiceService>;
  sql: pg.Client;
  stop(): Promise<void>;
}

export async function startIpamTestbed(opts: TestControlPlaneOptions = {}): Promise<IpamTestbed> {
  const cp = await startTestControlPlane(opts);
  const ipam = createClient(IpamServiceService, cp.address, { security: cp.security });
  const sql = new pg.Client({ connectionString: cp.databaseUrl });
  try {
    await sql.connect();
  } catch (err) {
    ipam.close();
    await cp.stop();
    throw err;
  }
  return {
    cp,
    ipam,
    sql,
    async stop() {
      ipam.close();
      await sql.end().catch(() => {});
      await cp.stop();
    },
  };
}
