import { createInMemoryIpamStore } from './in-memory.store.js';
import { runIpamStoreContract } from './ipam-store.contract.js';

// The fake the use-case tests run on keeps the contract the PostgreSQL store keeps (postgres.store.test.ts).
runIpamStoreContract('in memory', async () => createInMemoryIpamStore());
