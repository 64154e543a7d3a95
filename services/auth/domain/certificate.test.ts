import { test } from 'node:test';
import assert from 'node:assert/strict';
import { normalizeIdentity, normalizeSerial, revocationTarget, revokedCertificateMessage } from './certificate.js';

test('serials in any usual form compare equal; anything else is refused naming it', () => {
  for (const s of ['0A:1B:ff', '0x0a1bff', 'A1BFF', '000a1bff', ' a1bff ']) assert.equal(normalizeSerial(s), 'a1bff');
  assert.equal(normalizeSerial('00'), '0');
  for (const s of ['', 'xyz', '12-34', 'g1'])
    assert.throws(
      () => normalizeSerial(s),
      (e: Error) => e.message.includes(JSON.stringify(s)),
    );
});

test('identities are kind:name of the certificate kinds', () => {
  assert.equal(normalizeIdentity('node:node1'), 'node:node1');
  assert.equal(normalizeIdentity('weft:controller:east'), 'controller:east');
  for (const s of ['node1', 'token:x', 'node:', 'node:a b'])
    assert.throws(() => normalizeIdentity(s), /is not node:NAME/);
});

test('a revocation names exactly one thing', () => {
  assert.deepEqual(revocationTarget({ serial: 'AB', identity: '', reason: '' }), {
    kind: 'serial',
    serial: 'ab',
    identity: '',
    notAfter: null,
  });
  assert.deepEqual(revocationTarget({ serial: '', identity: 'node:n1', reason: 'lost' }), {
    kind: 'identity',
    identity: 'node:n1',
  });
  const notAfter = new Date(0);
  assert.deepEqual(
    revocationTarget({
      serial: '',
      certificate: { serial: '0F', identity: 'node:n1', notAfter },
      identity: '',
      reason: '',
    }),
    { kind: 'serial', serial: 'f', identity: 'node:n1', notAfter },
  );
  assert.throws(() => revocationTarget({ serial: '', identity: '', reason: '' }), /exactly one/);
  assert.throws(() => revocationTarget({ serial: 'ab', identity: 'node:n1', reason: '' }), /exactly one/);
  assert.throws(() => revocationTarget({ serial: 'ab', identity: '', reason: 'x'.repeat(501) }), /at most 500/);
});

test('the refusal names the serial and says to get a new certificate', () => {
  const m = revokedCertificateMessage('ab12', {
    revokedAt: new Date('2026-12-07T06:00:00Z'),
    reason: 'key lost',
    identity: 'node:n1',
  });
  assert.match(
    m,
    /serial ab12 \(node:n1\) was revoked at 2026-12-07T06:00:00.000Z \(key lost\): get a new certificate/,
  );
});
