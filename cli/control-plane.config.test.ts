import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { ConfigError } from '../lib/config.js';
import {
  controlPlaneSettings,
  databaseTimeouts,
  identityLimits,
  loadControlPlaneConfig,
} from './control-plane.config.js';
import { LIMITED_KINDS, limitSetting } from '../lib/auth/limits.js';

test('database timeouts: defaults are set, and a query timeout not above the statement timeout is refused with what to fix', () => {
  const c = loadControlPlaneConfig({});
  const t = databaseTimeouts(c);
  assert.ok(
    t.statementMs > 0 &&
      t.lockMs > 0 &&
      t.idleInTransactionMs > 0 &&
      t.queryMs > t.statementMs &&
      t.connectMs > 0 &&
      t.keepAliveMs > 0,
  );
  assert.throws(
    () => loadControlPlaneConfig({ dbStatementTimeoutMs: '5000', dbQueryTimeoutMs: '4000' }),
    (e: unknown) =>
      e instanceof ConfigError &&
      /WEFT_DB_QUERY_TIMEOUT_MS=4000 must exceed WEFT_DB_STATEMENT_TIMEOUT_MS=5000/.test(e.message),
  );
  assert.equal(
    loadControlPlaneConfig({ dbStatementTimeoutMs: '0', dbQueryTimeoutMs: '4000' }).dbQueryTimeoutMs,
    4000,
    'no statement limit: any query timeout',
  );
  assert.throws(
    () => loadControlPlaneConfig({ dbLockTimeoutMs: '-1' }),
    /WEFT_DB_LOCK_TIMEOUT_MS="-1": expected an integer/,
  );
});

test("WEFT_DATABASE_PASSWORD_FILE: the file's password goes into DATABASE_URL as node-postgres reads it, and every misuse says what to fix", () => {
  // What node-postgres itself makes of a URL (the client parses it on construction; nothing connects).
  const parse = (url: string) => {
    const c = new pg.Client({ connectionString: url });
    return { user: c.user, password: c.password, host: c.host, port: String(c.port), database: c.database };
  };
  const dir = mkdtempSync(path.join(tmpdir(), 'weft-pw-'));
  try {
    const file = path.join(dir, 'password');
    const refused = (settings: Parameters<typeof loadControlPlaneConfig>[0], why: RegExp) =>
      assert.throws(
        () => loadControlPlaneConfig(settings),
        (e: unknown) => e instanceof ConfigError && why.test(e.message) && !e.message.includes('s3cr'),
      );
    // `openssl rand -base64` yields / + =; a password may hold anything a URL would misread.
    for (const password of ['ab/cd+ef==', 'p@ss:w/rd?#%41 ü', 's3cr']) {
      writeFileSync(file, `${password}\n`);
      const c = loadControlPlaneConfig({
        databaseUrl: 'postgres://weft@10.96.0.9:5432/weft?sslmode=disable',
        databasePasswordFile: file,
      });
      assert.deepEqual(parse(c.databaseUrl), {
        user: 'weft',
        password,
        host: '10.96.0.9',
        port: '5432',
        database: 'weft',
      });
      assert.ok(Object.isFrozen(c));
    }
    writeFileSync(file, 's3cr');
    assert.equal(
      parse(loadControlPlaneConfig({ databaseUrl: 'postgres://weft@h/weft', databasePasswordFile: file }).databaseUrl)
        .password,
      's3cr',
      'no newline: all of it',
    );
    assert.equal(
      loadControlPlaneConfig({ databaseUrl: 'postgres://weft:x@h/weft' }).databaseUrl,
      'postgres://weft:x@h/weft',
      'no file: the URL as given',
    );
    refused({ databasePasswordFile: file }, /WEFT_DATABASE_PASSWORD_FILE=.*needs DATABASE_URL/);
    refused(
      { databaseUrl: 'postgres://weft:other@h/weft', databasePasswordFile: file },
      /DATABASE_URL names a password too/,
    );
    refused({ databaseUrl: 'postgres://h/weft', databasePasswordFile: file }, /names no user/);
    refused({ databaseUrl: 'not a url', databasePasswordFile: file }, /must be a postgres:\/\/ URL/);
    refused(
      { databaseUrl: 'postgres://weft@h/weft', databasePasswordFile: path.join(dir, 'missing') },
      /cannot be read \(ENOENT\)/,
    );
    writeFileSync(file, '\n');
    refused({ databaseUrl: 'postgres://weft@h/weft', databasePasswordFile: file }, /is empty/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('limits per identity: the settings the refusals name are the ones that hold each limit', () => {
  const c = loadControlPlaneConfig({ limitNodeStreams: '3', limitTokenRate: '7', limitAdminBurst: '9' });
  const limits = identityLimits(c);
  assert.equal(limits.node.streams, 3);
  assert.equal(limits.token.ratePerSecond, 7);
  assert.equal(limits.admin.burst, 9);
  const envs = new Set(Object.values(controlPlaneSettings).map((s) => s.env));
  for (const kind of LIMITED_KINDS)
    for (const what of ['streams', 'rate', 'burst'] as const)
      assert.ok(envs.has(limitSetting(kind, what)), limitSetting(kind, what));
  assert.throws(
    () => loadControlPlaneConfig({ limitNodeBurst: '0' }),
    /WEFT_LIMIT_NODE_BURST="0": expected an integer 1-/,
  );
});
