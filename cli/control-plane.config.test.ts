import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError } from '../lib/config.js';
import { databaseTimeouts, loadControlPlaneConfig } from './control-plane.config.js';

test('database timeouts: defaults are set, and a query timeout not above the statement timeout is refused with what to fix', () => {
  const c = loadControlPlaneConfig({});
  const t = databaseTimeouts(c);
  assert.ok(t.statementMs > 0 && t.lockMs > 0 && t.idleInTransactionMs > 0 && t.queryMs > t.statementMs && t.connectMs > 0 && t.keepAliveMs > 0);
  assert.throws(() => loadControlPlaneConfig({ dbStatementTimeoutMs: '5000', dbQueryTimeoutMs: '4000' }),
    (e: unknown) => e instanceof ConfigError && /WEFT_DB_QUERY_TIMEOUT_MS=4000 must exceed WEFT_DB_STATEMENT_TIMEOUT_MS=5000/.test(e.message));
  assert.equal(loadControlPlaneConfig({ dbStatementTimeoutMs: '0', dbQueryTimeoutMs: '4000' }).dbQueryTimeoutMs, 4000, 'no statement limit: any query timeout');
  assert.throws(() => loadControlPlaneConfig({ dbLockTimeoutMs: '-1' }), /WEFT_DB_LOCK_TIMEOUT_MS="-1": expected an integer/);
});
