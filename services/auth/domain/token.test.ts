import { test } from 'node:test';
import assert from 'node:assert/strict';
import { makeSecret, parseSecret, validateScopes, validateTokenName, verifySecret, type StoredToken } from './token.js';

test('scopes: known ones pass (duplicates once), an unknown one is named', () => {
  assert.deepEqual(validateScopes(['read', 'ipam:allocate:p', 'read', 'ipam:release:pool-1', 'admin']), [
    'read',
    'ipam:allocate:p',
    'ipam:release:pool-1',
    'admin',
  ]);
  for (const bad of ['write', 'ipam:allocate:', 'ipam:delete:p', 'READ', 'ipam:allocate:a b']) {
    assert.throws(
      () => validateScopes([bad]),
      (e: Error & { code: string }) => e.code === 'auth.unknown_scope' && e.message.includes(JSON.stringify(bad)),
      bad,
    );
  }
  assert.throws(() => validateScopes([]), /at least one scope/);
  assert.throws(() => validateTokenName('Bad Name'), /token name "Bad Name"/);
  assert.equal(validateTokenName('billing-ipam'), 'billing-ipam');
});

test('a secret proves its token until it is revoked or expires; a wrong or foreign one is refused', async () => {
  const { keyId, secret, secretHash } = makeSecret();
  assert.match(secret, /^weft_[0-9a-f]{16}\.[A-Za-z0-9_-]{43}$/);
  assert.equal(parseSecret(secret)?.keyId, keyId);
  const now = new Date('2030-01-01T00:00:00Z');
  const row: StoredToken = {
    keyId,
    name: 'ci',
    scopes: ['read'],
    createdAt: now,
    expiresAt: null,
    revokedAt: null,
    createdBy: 'admin:local',
    secretHash,
  };
  const find = (r: StoredToken) => async (k: string) => (k === r.keyId ? r : null);
  assert.deepEqual((await verifySecret(secret, find(row), now)).scopes, ['read']);
  const other = makeSecret();
  await assert.rejects(verifySecret(`${keyId}.${other.secret.split('.')[1]}`, find(row), now), /is wrong/);
  await assert.rejects(verifySecret(other.secret, find(row), now), /is wrong/);
  await assert.rejects(verifySecret('hunter2', find(row), now), /not a Weft API token/);
  await assert.rejects(
    verifySecret(secret, find({ ...row, revokedAt: now }), now),
    /token ci was revoked at 2030-01-01T00:00:00.000Z/,
  );
  await assert.rejects(
    verifySecret(secret, find({ ...row, expiresAt: new Date(now.getTime() - 1) }), now),
    /token ci expired at/,
  );
  assert.ok(await verifySecret(secret, find({ ...row, expiresAt: new Date(now.getTime() + 1000) }), now));
});
