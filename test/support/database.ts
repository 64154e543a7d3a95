import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { randomBytes } from 'node:crypto';
import { startEmbeddedPostgres } from '../../lib/db/embedded.js';
import { ensureAppRole } from '../../lib/db/roles.js';
import { silentLogger } from '../../lib/logger.js';
import { freePort } from './ports.js';

/**
 * A real, empty PostgreSQL database for one test file: a fresh database on DATABASE_URL's server when that is
 * set, else an embedded server in a temporary folder. `drop()` removes all of it.
 */
export interface TestDatabase {
  /** The owner's URL (migrations; tests looking under the API). */
  url: string;
  /** The services' URL: a role that owns nothing (lib/db/roles.ts), as `weft up` runs them. */
  appUrl: string;
  drop(): Promise<void>;
}

export async function createTestDatabase(): Promise<TestDatabase> {
  const external = process.env.DATABASE_URL;
  if (external) {
    const name = `weft_test_${randomBytes(4).toString('hex')}`;
    const admin = new pg.Client({ connectionString: external });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${name}`);
    // Roles are the server's, not the database's: one per test database, dropped with it.
    const appPassword = randomBytes(16).toString('hex');
    await ensureAppRole(admin, `${name}_app`, appPassword);
    await admin.end();
    const url = new URL(external);
    url.pathname = `/${name}`;
    const appUrl = new URL(url);
    appUrl.username = `${name}_app`;
    appUrl.password = appPassword;
    return {
      url: url.toString(),
      appUrl: appUrl.toString(),
      async drop() {
        const a = new pg.Client({ connectionString: external });
        await a.connect();
        await a.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
        await a.query(`DROP ROLE IF EXISTS ${name}_app`);
        await a.end();
      },
    };
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'weft-test-db-'));
  const port = await freePort();
  const server = await startEmbeddedPostgres(dir, port, silentLogger);
  return {
    url: server.ownerUrl,
    appUrl: server.appUrl,
    async drop() {
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
