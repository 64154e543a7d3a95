import type pg from 'pg';
import { sql } from 'drizzle-orm';
import type { Database } from '../../../lib/db/database.js';
import { withDatabaseErrors } from '../../../lib/db/unavailable.js';
import type { IpamReports, IpamStore } from '../domain/ipam-store.js';
import { TransientConflict } from '../domain/ipam.errors.js';
import { createAllocationRepository } from './allocation.repository.js';
import { checkConsistency } from './consistency.repository.js';
import { createHistoryRepository } from './history.repository.js';
import { createHousekeepingRepository } from './housekeeping.repository.js';
import { PG, pgErrorOf } from './pg-errors.js';
import { createPoolsRepository } from './pools.repository.js';
import { createReleaseRepository } from './release.repository.js';
import { rows } from './sql.js';
import { utilization } from './utilization.repository.js';

export { BLOCKS_CHANNEL } from './sql.js';

const RACES = new Set<string>([PG.uniqueViolation, PG.serializationFailure, PG.deadlockDetected]);

/** Every method of `store` reports a lost race (unique violation, serialization failure, deadlock) as TransientConflict. */
function withConflicts<T extends object>(store: T): T {
  const map = (err: unknown): never => {
    throw RACES.has(pgErrorOf(err)?.code ?? '') ? new TransientConflict(err) : err;
  };
  const out: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(store)) {
    out[name] =
      typeof value !== 'function'
        ? value
        : async (...args: unknown[]) => {
            try {
              return await (value as (...a: unknown[]) => unknown).apply(store, args);
            } catch (err) {
              return map(err);
            }
          };
  }
  return out as T;
}

/** What the sweeper writes (services/ipam/sweeper.ts), on `db`: the leader's own session (lib/db/leadership.ts). */
export function createHousekeepingStore(db: Database) {
  const { releaseNodeAllocationsBefore } = createReleaseRepository(db);
  /**
   * ANALYZE of the tables that hold twice the rows their statistics say (migrations/ipam/0016): plans made while a new
   * database's tables were empty are made again. Returns the tables analyzed.
   */
  const refreshStatistics = async (): Promise<string[]> =>
    (await rows<{ tables: string[] }>(db, sql`SELECT ipam.refresh_statistics() AS tables`))[0]?.tables ?? [];
  return withDatabaseErrors(
    'ipam',
    withConflicts({ ...createHousekeepingRepository(db), releaseNodeAllocationsBefore, refreshStatistics }),
  );
}
export type HousekeepingStoreOnSession = ReturnType<typeof createHousekeepingStore>;

/**
 * IPAM's store on PostgreSQL: the repositories, each one concern, as one IpamStore (the contract that
 * ipam-store.contract.ts checks) plus the reports. PostgreSQL errors stop here: a database that cannot serve becomes
 * `ipam.database_unavailable`, a lost race TransientConflict, a constraint the caller broke a domain error.
 * `client` serves the group-commit statement: best a pool whose sessions keep one generic plan (DatabaseHandle.preparedPool).
 */
export function createPostgresIpamStore(
  db: Database,
  client: Pick<pg.Pool, 'query'>,
): { store: IpamStore; reports: IpamReports } {
  const { history, ...historyRest } = createHistoryRepository(db);
  const store: IpamStore = {
    ...createPoolsRepository(db),
    ...createAllocationRepository(db, client),
    ...createReleaseRepository(db),
    ...historyRest,
    ...createHousekeepingRepository(db),
  };
  const reports: IpamReports = {
    history,
    utilization: (pool, includeBlocks, page) => utilization(db, pool, includeBlocks, page),
    checkConsistency: () => checkConsistency(db),
  };
  return { store: withDatabaseErrors('ipam', withConflicts(store)), reports: withDatabaseErrors('ipam', reports) };
}
