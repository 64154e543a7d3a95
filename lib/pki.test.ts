import { test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createSecureContext } from 'node:tls';
import { createCa, ensureControlPlanePki, issueCertificate, issueClientTlsDir, readCa } from './pki.js';

const DAY = 86_400_000;

test('a CA is ECDSA P-256, self-signed, a CA for 10 years; leaves are signed by it for 1 year with random serials', async () => {
  const ca = await createCa();
  const caCert = new X509Certificate(ca.cert);
  assert.equal(caCert.ca, true);
  assert.ok(caCert.verify(caCert.publicKey));
  assert.equal(caCert.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  assert.ok(Math.abs(new Date(caCert.validTo).getTime() - Date.now() - 3650 * DAY) < 2 * DAY);

  const a = await issueCertificate(ca, { kind: 'node', name: 'node1' });
  const b = await issueCertificate(ca, { kind: 'node', name: 'node1' });
  const leaf = new X509Certificate(a.cert);
  assert.equal(leaf.ca, false);
  assert.ok(leaf.verify(caCert.publicKey), 'signed by the CA');
  assert.ok(leaf.checkIssued(caCert));
  assert.equal(leaf.subjectAltName, 'URI:weft:node:node1');
  assert.ok(Math.abs(new Date(leaf.validTo).getTime() - Date.now() - 365 * DAY) < 2 * DAY);
  assert.notEqual(leaf.serialNumber, new X509Certificate(b.cert).serialNumber);
  assert.ok(
    leaf.checkPrivateKey((await import('node:crypto')).createPrivateKey(a.key)),
    "the key is the certificate's",
  );
  createSecureContext({ cert: a.cert, key: a.key, ca: ca.cert }); // Node's TLS takes them as they are

  const short = new X509Certificate((await issueCertificate(ca, { kind: 'admin', name: 'ops' }, { days: 7 })).cert);
  assert.ok(Math.abs(new Date(short.validTo).getTime() - Date.now() - 7 * DAY) < 2 * DAY);
  await assert.rejects(issueCertificate(ca, { kind: 'node', name: 'bad name' }), /letters, digits/);
  await assert.rejects(issueCertificate(ca, { kind: 'node', name: 'n' }, { days: 0 }), /1 to 36500/);
});

test('ensureControlPlanePki makes the pki folder once (0700, keys 0600) and keeps what is there', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'weft-pki-'));
  try {
    const pki = path.join(dir, 'pki');
    const first = await ensureControlPlanePki(pki, ['10.1.2.3', 'cp.example']);
    assert.deepEqual(first.created, ['ca.crt', 'server.crt', 'admin.crt']);
    assert.equal(statSync(pki).mode & 0o777, 0o700);
    for (const k of ['ca.key', 'server.key', 'admin.key'])
      assert.equal(statSync(path.join(pki, k)).mode & 0o777, 0o600, k);
    const server = new X509Certificate(readFileSync(path.join(pki, 'server.crt')));
    for (const n of [
      'DNS:weft-control-plane',
      'DNS:localhost',
      'DNS:cp.example',
      'IP Address:127.0.0.1',
      'IP Address:10.1.2.3',
    ])
      assert.ok(server.subjectAltName?.includes(n), n);
    assert.equal(new X509Certificate(readFileSync(path.join(pki, 'admin.crt'))).subjectAltName, 'URI:weft:admin:local');
    const caBefore = readFileSync(path.join(pki, 'ca.crt'), 'utf8');
    rmSync(path.join(pki, 'admin.crt'));
    const second = await ensureControlPlanePki(pki);
    assert.deepEqual(second.created, ['admin.crt'], 'a missing admin certificate is issued again from the same CA');
    assert.equal(readFileSync(path.join(pki, 'ca.crt'), 'utf8'), caBefore);
    assert.ok(
      new X509Certificate(readFileSync(path.join(pki, 'admin.crt'))).checkIssued(new X509Certificate(caBefore)),
    );

    const out = path.join(dir, 'ctl');
    await issueClientTlsDir(pki, out, { kind: 'controller', name: 'east' }, 30);
    assert.equal(readFileSync(path.join(out, 'ca.crt'), 'utf8'), caBefore);
    assert.equal(
      new X509Certificate(readFileSync(path.join(out, 'tls.crt'))).subjectAltName,
      'URI:weft:controller:east',
    );
    assert.equal(statSync(path.join(out, 'tls.key')).mode & 0o777, 0o600);
    await assert.rejects(readCa(path.join(dir, 'nothing')), /weft up/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
