import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { randomBytes } from 'node:crypto';
import { startEmbeddedPostgres } from '../../lib/db/embedded.js';
import { silentLogger } from '../../lib/logger.js';
import { freePort } from './ports.js';

/**
 * A real, empty PostgreSQL database for one test file: a fresh database on DATABASE_URL's server when that is
 * set, else an embedded server in a temporary folder. `drop()` removes all of it.
 */
export interface TestDatabase {
  url: string;
  drop(): Promise<void>;
}

export async function createTestDatabase(): Promise<TestDatabase> {
  const external = process.env.DATABASE_URL;
  if (external) {
    const name = `weft_test_${randomBytes(4).toString('hex')}`;
    const admin = new pg.Client({ connectionString: external });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${name}`);
    await admin.end();
    const url = new URL(external);
    url.pathname = `/${name}`;
    return {
      url: url.toString(),
      async drop() {
        const a = new pg.Client({ connectionString: external });
        await a.connect();
        await a.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
        await a.end();
      },
    };
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'weft-test-db-'));
  chmodSync(dir, 0o755);
  const port = await freePort();
  const server = await startEmbeddedPostgres(dir, port, silentLogger);
  return {
    url: server.url,
    async drop() {
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
