import pg from 'pg';
import { drizzle, type NodePgDatabase } from 'drizzle-orm/node-postgres';
import { migrate } from 'drizzle-orm/node-postgres/migrator';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export type Database = NodePgDatabase<Record<string, never>>;

export interface DatabaseHandle {
  pool: pg.Pool;
  db: Database;
  close(): Promise<void>;
}

export function connectDatabase(url: string, max = 20): DatabaseHandle {
  const pool = new pg.Pool({ connectionString: url, max, connectionTimeoutMillis: 10_000 });
  // An idle client's error (e.g. the server restarting) must not crash the process; the pool replaces it.
  pool.on('error', () => {});
  const db = drizzle(pool) as Database;
  return { pool, db, close: () => pool.end() };
}

/** The project's migrations folder: migrations/<service>/, made with drizzle-kit. */
export function migrationsFolder(service: string): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  // Both lib/db (source, via tsx) and dist/lib/db sit two or three levels under the package root.
  for (const up of ['../..', '../../..']) {
    const candidate = path.resolve(here, up, 'migrations', service);
    if (existsSync(candidate)) return candidate;
  }
  throw new Error(`migrations for ${service} not found near ${here}`);
}

import { existsSync } from 'node:fs';

/** Applies a service's migrations to its own schema; each service keeps its own journal table. */
export async function applyMigrations(handle: DatabaseHandle, service: string): Promise<void> {
  await migrate(handle.db, {
    migrationsFolder: migrationsFolder(service),
    migrationsSchema: 'drizzle',
    migrationsTable: `${service}_migrations`,
  });
}
