import { after, before } from 'node:test';
import pg from 'pg';
import { applyMigrations, connectDatabase, sessionConfig, type DatabaseHandle } from '../../../lib/db/database.js';
import { grantAppPrivileges, userOf } from '../../../lib/db/roles.js';
import { createTestDatabase, type TestDatabase } from '../../../test/support/database.js';
import { runIpamStoreContract } from './ipam-store.contract.js';
import { createPostgresIpamStore } from './postgres.store.js';

/**
 * The IpamStore contract on real PostgreSQL (embedded, as every IPAM test runs it), migrated as the control plane
 * does and used through the services' role. Each test starts from empty tables.
 */
let db: TestDatabase;
let owner: pg.Client;
let handle: DatabaseHandle;
let prepared: pg.Pool;
before(async () => {
  db = await createTestDatabase();
  await applyMigrations(sessionConfig(db.url), 'ipam');
  owner = new pg.Client({ connectionString: db.url });
  await owner.connect();
  const role = userOf(db.appUrl);
  if (role && role !== userOf(db.url)) await grantAppPrivileges(owner, role);
  handle = connectDatabase(db.appUrl);
  prepared = handle.preparedPool(2);
});
after(async () => {
  await handle?.close();
  await owner?.end().catch(() => {});
  await db?.drop();
});

runIpamStoreContract('PostgreSQL', async () => {
  await owner.query(`TRUNCATE ipam.allocations, ipam.free_addresses, ipam.node_usage, ipam.allocation_attempts, ipam.reservations, ipam.block_events,
    ipam.blocks, ipam.node_labels, ipam.namespace_labels, ipam.prefixes, ipam.aggregates, ipam.clusters, ipam.pools RESTART IDENTITY`);
  return createPostgresIpamStore(handle.db, prepared).store;
});
