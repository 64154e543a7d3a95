import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { status } from '@grpc/grpc-js';
import pg from 'pg';
import { createClient } from '../lib/grpc/client.js';
import { errorCodeOf } from '../lib/grpc/errors.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { TokenServiceService } from '../gen/weft/auth/v1/auth.js';
import { AuditServiceService } from '../gen/weft/audit/v1/audit.js';
import { bin } from './support/processes.js';
import { startTestControlPlane, type TestControlPlane } from './support/control-plane.js';

/**
 * API tokens as an operator and an external system see them: made, listed and revoked through TokenService and
 * `weft token`, sent as a bearer token with a client certificate (the token is the identity), refused once revoked
 * or expired, and never stored in the clear.
 */
const run = promisify(execFile);
let cp: TestControlPlane;
let tokens: ReturnType<typeof createClient<typeof TokenServiceService>>;
let nodeTls: Awaited<ReturnType<TestControlPlane['pki']['issue']>>;

before(async () => {
  cp = await startTestControlPlane();
  tokens = createClient(TokenServiceService, cp.address, { security: cp.security });
  nodeTls = await cp.pki.issue('node', 'ext-host');
  const ipam = createClient(IpamServiceService, cp.address, { security: cp.security });
  await ipam.createPool({ name: 'p', cidr: '10.60.0.0/16', blockPrefixLength: 26 });
  ipam.close();
});
after(async () => {
  tokens?.close();
  await cp?.stop();
});

/** An IPAM client with the node certificate and `secret` as its bearer token. */
const ipamAs = (secret: string) =>
  createClient(IpamServiceService, cp.address, { security: nodeTls.security, token: secret });
const refusal = (code: number, message: RegExp) => (e: { code: number; details: string }) => {
  assert.equal(e.code, code, `${status[e.code]}: ${e.details}`);
  assert.match(e.details, message);
  return true;
};

test('a token is made with its scopes, listed without its secret, and its secret is stored only as a hash', async () => {
  const made = await tokens.createToken({ name: 'lister', scopes: ['read', 'read', 'ipam:allocate:p'] });
  assert.match(made.secret, /^weft_[0-9a-f]{16}\.[A-Za-z0-9_-]{43}$/);
  assert.deepEqual(made.token!.scopes, ['read', 'ipam:allocate:p']);
  assert.equal(made.token!.createdBy, 'admin:test');
  const listed = (await tokens.listTokens({})).tokens.find((t) => t.name === 'lister')!;
  assert.equal(listed.keyId, made.secret.split('.')[0]);
  assert.ok(!JSON.stringify(listed).includes(made.secret.split('.')[1]!), 'the list carries no secret');
  const sql = new pg.Client({ connectionString: cp.databaseUrl });
  await sql.connect();
  try {
    const { rows } = await sql.query("SELECT * FROM auth.tokens WHERE name = 'lister'");
    assert.equal(rows.length, 1);
    assert.ok(!JSON.stringify(rows).includes(made.secret.split('.')[1]!), 'the database holds no secret');
    assert.equal((rows[0].secret_hash as Buffer).length, 32);
  } finally {
    await sql.end();
  }
});

test('bad names, unknown scopes and taken names are refused, naming what to fix', async () => {
  await assert.rejects(
    tokens.createToken({ name: 'x', scopes: ['read', 'ipam:delete:p'] }),
    (e: { code: number; details: string }) =>
      e.code === status.INVALID_ARGUMENT &&
      errorCodeOf(e) === 'auth.unknown_scope' &&
      e.details.includes('"ipam:delete:p"'),
  );
  await assert.rejects(
    tokens.createToken({ name: 'x', scopes: [] }),
    refusal(status.INVALID_ARGUMENT, /at least one scope/),
  );
  await assert.rejects(
    tokens.createToken({ name: 'Not OK', scopes: ['read'] }),
    refusal(status.INVALID_ARGUMENT, /token name "Not OK"/),
  );
  await tokens.createToken({ name: 'twice', scopes: ['read'] });
  await assert.rejects(
    tokens.createToken({ name: 'twice', scopes: ['read'] }),
    refusal(status.ALREADY_EXISTS, /revoke it first/),
  );
  await assert.rejects(
    tokens.revokeToken({ name: 'never-made' }),
    refusal(status.NOT_FOUND, /no token named "never-made"/),
  );
});

test("a bearer token is the identity (over the certificate's), scoped; revoked or expired, its next call is refused", async () => {
  const secret = (await tokens.createToken({ name: 'allocator', scopes: ['ipam:allocate:p'] })).secret;
  const ipam = ipamAs(secret);
  try {
    const a = await ipam.allocate({ handle: 't1/eth0', node: 'elsewhere', pool: 'p' });
    assert.equal(a.allocation!.node, 'elsewhere', 'the node certificate alone could only allocate for ext-host');
    await assert.rejects(ipam.listPools({}), refusal(status.PERMISSION_DENIED, /token allocator lacks scope read/));
    await assert.rejects(
      ipam.allocate({ handle: 't2/eth0', node: 'n', pool: 'q' }),
      refusal(status.PERMISSION_DENIED, /lacks scope ipam:allocate:q/),
    );
    await tokens.revokeToken({ name: 'allocator' });
    await assert.rejects(
      ipam.allocate({ handle: 't3/eth0', node: 'n', pool: 'p' }),
      refusal(status.UNAUTHENTICATED, /token allocator was revoked at/),
    );
  } finally {
    ipam.close();
  }
  const wrong = ipamAs(`${secret.split('.')[0]}.${'B'.repeat(43)}`);
  await assert.rejects(wrong.listPools({}), refusal(status.UNAUTHENTICATED, /is wrong/));
  wrong.close();
  const garbage = ipamAs('not-a-token');
  await assert.rejects(garbage.listPools({}), refusal(status.UNAUTHENTICATED, /not a Weft API token/));
  garbage.close();
  const brief = ipamAs((await tokens.createToken({ name: 'brief', scopes: ['read'], expiresInSeconds: 1 })).secret);
  try {
    await brief.listPools({});
    await new Promise((r) => setTimeout(r, 1100));
    await assert.rejects(brief.listPools({}), refusal(status.UNAUTHENTICATED, /token brief expired at/));
  } finally {
    brief.close();
  }
  // Audited as the token.
  const audit = createClient(AuditServiceService, cp.address, { security: cp.security });
  try {
    let events: { actor: string; resource: string }[] = [];
    for (let i = 0; i < 100 && !events.some((e) => e.actor === 'token:allocator'); i++) {
      events = (await audit.listAuditEvents({ resource: 'handle/t1/eth0' })).events;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.deepEqual(
      events.map((e) => e.actor),
      ['token:allocator'],
    );
  } finally {
    audit.close();
  }
});

test("tokens are administrators' business: a read token may not list or make them", async () => {
  const reader = createClient(TokenServiceService, cp.address, {
    security: nodeTls.security,
    token: (await tokens.createToken({ name: 'reader', scopes: ['read'] })).secret,
  });
  try {
    await assert.rejects(reader.listTokens({}), refusal(status.PERMISSION_DENIED, /token reader lacks scope admin/));
    await assert.rejects(
      reader.createToken({ name: 'escalated', scopes: ['admin'] }),
      refusal(status.PERMISSION_DENIED, /lacks scope admin/),
    );
  } finally {
    reader.close();
  }
});

test('weft token create prints the secret once, list never shows it, revoke ends it; --token and WEFT_TOKEN send it', async () => {
  const weft = (args: string[], env: Record<string, string> = {}) =>
    run(bin.weft, [...args, '--server', cp.address, '--tls-dir', cp.tlsDir], {
      timeout: 30_000,
      env: { ...process.env, ...env },
    });
  const created = JSON.parse(
    (await weft(['token', 'create', 'cli-reader', '--scope', 'read', '--expires-in', '30d', '--json'])).stdout,
  ) as { secret: string; expireTime: string };
  assert.match(created.secret, /^weft_/);
  assert.ok(Math.abs(new Date(created.expireTime).getTime() - Date.now() - 30 * 86_400_000) < 60_000);
  const text = (await weft(['token', 'create', 'cli-text', '--scope', 'ipam:allocate:p'])).stdout;
  assert.match(text.split('\n')[0]!, /^weft_[0-9a-f]{16}\.[A-Za-z0-9_-]{43}$/, 'the secret alone on the first line');
  const list = (await weft(['token', 'list'])).stdout;
  assert.match(list, /cli-reader\s+weft_[0-9a-f]{16}\s+until /);
  assert.ok(!list.includes(created.secret.split('.')[1]!), 'no secret in the list');
  // The token decides, not the admin certificate beside it.
  assert.match((await weft(['ipam', 'pools', '--token', created.secret])).stdout, /\bp\b/);
  await assert.rejects(
    weft(['ipam', 'pool', 'create', 'z', '10.70.0.0/16', '--block-prefix-length', '26'], {
      WEFT_TOKEN: created.secret,
    }),
    (e: { stderr: string }) => /token cli-reader lacks scope admin/.test(e.stderr),
  );
  await assert.rejects(weft(['token', 'create', 'bad', '--scope', 'writer']), (e: { stderr: string }) =>
    /unknown scope "writer"/.test(e.stderr),
  );
  assert.match((await weft(['token', 'revoke', 'cli-reader'])).stdout, /revoked token cli-reader/);
  await assert.rejects(weft(['ipam', 'pools', '--token', created.secret]), (e: { stderr: string }) =>
    /token cli-reader was revoked/.test(e.stderr),
  );
  assert.match((await weft(['token', 'list', '--json'])).stdout, /"revokeTime": "\d{4}-/);
});
