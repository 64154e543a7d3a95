import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestControlPlane, type TestControlPlane } from './support/control-plane.js';

/**
 * The IPAM API over HTTP with JSON (protobuf JSON mapping), served by the same handlers as gRPC and authorized the
 * same way: the caller is the API token of its `Authorization: Bearer` header (made with TokenService, as
 * `weft token create` does).
 */
let cp: TestControlPlane;
let adminToken: string;
before(async () => {
  cp = await startTestControlPlane();
  adminToken = await cp.createToken('http-admin', ['admin']);
});
after(async () => {
  await cp?.stop();
});

const JSON_TYPE = { 'content-type': 'application/json' };

const call = async (method: string, body: unknown, token: string | null = adminToken) => {
  const headers = { ...JSON_TYPE, ...(token === null ? {} : { authorization: `Bearer ${token}` }) };
  const res = await fetch(`${cp.httpUrl}/weft.ipam.v1.IpamService/${method}`, {
    method: 'POST',
    headers,
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: res.status, json: (await res.json()) as Record<string, any> };
};

test('pools and allocations over HTTP/JSON, in the protobuf JSON mapping', async () => {
  const created = await call('CreatePool', { name: 'default', cidr: '10.244.0.0/16', blockPrefixLength: 26 });
  assert.equal(created.status, 200);
  assert.equal(created.json.pool.family, 'IP_FAMILY_IPV4');
  assert.match(created.json.pool.createTime, /^\d{4}-\d\d-\d\dT/);
  const alloc = await call('Allocate', {
    handle: 'c1/eth0',
    node: 'n1',
    podNamespace: 'ns',
    podName: 'p',
    families: ['IP_FAMILY_IPV4'],
  });
  assert.equal(alloc.status, 200);
  assert.equal(alloc.json.allocation.address, '10.244.0.0');
  const list = await call('ListAllocations', {});
  assert.deepEqual(
    list.json.allocations.map((a: { handle: string }) => a.handle),
    ['c1/eth0'],
  );
});

test('errors carry an HTTP status, the gRPC code name, the message and the stable error code', async () => {
  const overlap = await call('CreatePool', { name: 'inner', cidr: '10.244.1.0/24', blockPrefixLength: 26 });
  assert.equal(overlap.status, 409);
  assert.deepEqual([overlap.json.code, overlap.json.errorCode], ['ALREADY_EXISTS', 'ipam.pool_overlaps']);
  assert.match(overlap.json.message, /overlaps existing pool default/);
  const bad = await call('CreatePool', { name: 'x', cidr: 'ten.0.0.0/8', blockPrefixLength: 26 });
  assert.equal(bad.status, 400);
  assert.equal(bad.json.errorCode, 'invalid_cidr');
  const malformed = await call('CreatePool', '{"name": ');
  assert.equal(malformed.status, 400);
  assert.match(malformed.json.message, /not a valid CreatePoolRequest/);
  const badEnum = await call('Allocate', { handle: 'c2/eth0', node: 'n1', families: ['IP_FAMILY_IPV7'] });
  assert.equal(badEnum.status, 400);
  const missing = await fetch(`${cp.httpUrl}/weft.ipam.v1.IpamService/Frobnicate`, { method: 'POST', body: '{}' });
  assert.equal(missing.status, 404);
  const get = await fetch(`${cp.httpUrl}/weft.ipam.v1.IpamService/ListPools`);
  assert.equal(get.status, 400);
  const text = await fetch(`${cp.httpUrl}/weft.ipam.v1.IpamService/CreatePool`, {
    method: 'POST',
    body: JSON.stringify({ name: 'form', cidr: '10.250.0.0/16', blockPrefixLength: 26 }),
  });
  assert.equal(text.status, 415, 'a body not sent as JSON (what a cross-site form can send) is refused');
  const crossSite = await fetch(`${cp.httpUrl}/weft.ipam.v1.IpamService/CreatePool`, {
    method: 'POST',
    headers: { ...JSON_TYPE, authorization: `Bearer ${adminToken}`, origin: 'https://evil.example' },
    body: JSON.stringify({ name: 'csrf', cidr: '10.251.0.0/16', blockPrefixLength: 26 }),
  });
  assert.equal(crossSite.status, 403, 'a request from a web page of another origin is refused');
  assert.equal((await call('ListPools', {})).json.pools.length, 1, 'nothing changed');
});

test('a streaming method answers newline-delimited JSON', async () => {
  const ac = new AbortController();
  const res = await fetch(`${cp.httpUrl}/weft.ipam.v1.IpamService/WatchBlockAffinities`, {
    method: 'POST',
    headers: { ...JSON_TYPE, authorization: `Bearer ${adminToken}` },
    body: '{}',
    signal: ac.signal,
  });
  assert.equal(res.headers.get('content-type'), 'application/x-ndjson');
  const reader = res.body!.getReader();
  let text = '';
  while (!text.includes('\n')) text += new TextDecoder().decode((await reader.read()).value);
  ac.abort();
  const first = JSON.parse(text.split('\n')[0]!);
  assert.equal(first.reset, true);
  assert.equal(first.upserts[0].node, 'n1');
});

test('every HTTP call is authorized: 401 without a token or with a bad one, 403 naming the missing scope', async () => {
  const anonymous = await call('ListPools', {}, null);
  assert.equal(anonymous.status, 401);
  assert.equal(anonymous.json.code, 'UNAUTHENTICATED');
  assert.match(anonymous.json.message, /needs an authenticated caller/);
  const forged = await call('ListPools', {}, 'weft_0123456789abcdef.' + 'A'.repeat(43));
  assert.equal(forged.status, 401);
  assert.match(forged.json.message, /is wrong/);
  const reader = await cp.createToken('http-reader', ['read']);
  assert.equal((await call('ListPools', {}, reader)).status, 200, 'read scope lists');
  const refused = await call('CreatePool', { name: 'by-reader', cidr: '10.99.0.0/16', blockPrefixLength: 26 }, reader);
  assert.equal(refused.status, 403);
  assert.deepEqual([refused.json.code, refused.json.errorCode], ['PERMISSION_DENIED', 'auth.forbidden']);
  assert.match(refused.json.message, /token http-reader lacks scope admin/);
  const poolToken = await cp.createToken('http-default', ['ipam:allocate:default', 'ipam:release:default']);
  const inPool = await call('Allocate', { handle: 'h1/eth0', node: 'n9', pool: 'default' }, poolToken);
  assert.equal(inPool.status, 200);
  const elsewhere = await call('Allocate', { handle: 'h2/eth0', node: 'n9', pool: 'other' }, poolToken);
  assert.equal(elsewhere.status, 403);
  assert.match(elsewhere.json.message, /lacks scope ipam:allocate:other/);
  assert.equal((await call('Release', { handle: 'h1/eth0' }, poolToken)).status, 200);
  assert.equal((await call('ListAllocations', {}, poolToken)).status, 403, 'an allocate-only token may not read');
});
