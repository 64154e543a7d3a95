import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  describeIdentity,
  identityFromPeerCertificate,
  identityFromSubjectAltName,
  identityUri,
  parseIdentityUri,
} from './identity.js';

test('a SAN URI weft:<kind>:<name> names a node, an admin or a controller', () => {
  assert.deepEqual(identityFromSubjectAltName('URI:weft:node:node1'), { kind: 'node', name: 'node1' });
  assert.deepEqual(identityFromSubjectAltName('DNS:x.example, URI:weft:admin:local'), { kind: 'admin', name: 'local' });
  assert.deepEqual(identityFromSubjectAltName('URI:weft:controller:east-1'), { kind: 'controller', name: 'east-1' });
  assert.deepEqual(identityFromPeerCertificate({ subjectaltname: 'URI:weft:node:n.2' }), { kind: 'node', name: 'n.2' });
});

test('anything else is no identity: other kinds, other schemes, bad names, two identities, no certificate', () => {
  for (const san of [
    undefined,
    '',
    'DNS:weft-control-plane',
    'URI:weft:token:x',
    'URI:weft:node:',
    'URI:weft:node:a b',
    'URI:https://weft:node:n1',
    'URI:weft:node:-x',
    'URI:weft:node:n1, URI:weft:admin:a',
    'DNS:weft:node:n1',
    'URI:weft:Node:n1',
  ]) {
    assert.deepEqual(identityFromSubjectAltName(san), { kind: 'none' }, String(san));
  }
  assert.deepEqual(identityFromPeerCertificate(undefined), { kind: 'none' });
  assert.equal(parseIdentityUri('weft:node:n1:extra')?.kind, undefined);
});

test('identityUri writes what parseIdentityUri reads, and refuses names it could not read back', () => {
  assert.equal(identityUri('node', 'node1'), 'weft:node:node1');
  assert.deepEqual(parseIdentityUri(identityUri('controller', 'c.1')), { kind: 'controller', name: 'c.1' });
  assert.throws(() => identityUri('node', 'a,b'), /letters, digits/);
  assert.throws(() => identityUri('admin', ''), /letters, digits/);
  assert.equal(describeIdentity({ kind: 'node', name: 'n1' }), 'node:n1');
  assert.equal(describeIdentity({ kind: 'none' }), 'none');
});
