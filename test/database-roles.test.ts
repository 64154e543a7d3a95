import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { createClient } from '../lib/grpc/client.js';
import { appRoleProblems, grantAppPrivileges, userOf } from '../lib/db/roles.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { startTestControlPlane, type TestControlPlane } from './support/control-plane.js';

/**
 * The services' database role (weft_app) can serve every request but cannot change the schema, run programs on the
 * database server, or rewrite the audit log. Each check runs as the same connection string the control plane's
 * services use; the owner's connection doing the same shows the check can fail.
 */
let cp: TestControlPlane;
let app: pg.Client;
let owner: pg.Client;

before(async () => {
  cp = await startTestControlPlane();
  app = new pg.Client({ connectionString: cp.appDatabaseUrl });
  owner = new pg.Client({ connectionString: cp.databaseUrl });
  await app.connect();
  await owner.connect();
  const ipam = createClient(IpamServiceService, cp.address, { security: cp.security });
  try {
    await ipam.createPool({ name: 'roles', cidr: '10.61.0.0/16', blockPrefixLength: 26 });
  } finally {
    ipam.close();
  }
});

after(async () => {
  await app?.end();
  await owner?.end();
  await cp?.stop();
});

/** The SQLSTATE the statement fails with as `client`, or 'ok'. */
async function outcome(client: pg.Client, sql: string): Promise<string> {
  try {
    await client.query('BEGIN');
    await client.query(sql);
    return 'ok';
  } catch (err) {
    return (err as { code?: string }).code ?? (err as Error).message;
  } finally {
    await client.query('ROLLBACK');
  }
}

const INSUFFICIENT_PRIVILEGE = '42501';

test("the services' role is not the owner and serves from the tables", async () => {
  const { rows } = await app.query<{ me: string; n: number }>(
    'SELECT current_user AS me, (SELECT count(*)::int FROM ipam.pools) AS n',
  );
  assert.equal(rows[0]!.me, new URL(cp.appDatabaseUrl).username);
  assert.notEqual(rows[0]!.me, new URL(cp.databaseUrl).username);
  assert.equal(rows[0]!.n, 1, 'the pool made through the API is visible to the services');
  assert.deepEqual(await appRoleProblems(app), []);
  assert.ok((await appRoleProblems(owner)).length > 0, "the owner's connection is reported as too powerful");
});

test("the services' role cannot run a program on the database server (COPY ... TO PROGRAM)", async () => {
  assert.equal(await outcome(app, "COPY (SELECT 1) TO PROGRAM 'cat > /dev/null'"), INSUFFICIENT_PRIVILEGE);
  assert.equal(await outcome(owner, "COPY (SELECT 1) TO PROGRAM 'cat > /dev/null'"), 'ok');
});

test("the services' role cannot ALTER or DROP the tables, nor create its own", async () => {
  assert.equal(await outcome(app, 'ALTER TABLE ipam.pools ADD COLUMN sneaky int'), INSUFFICIENT_PRIVILEGE);
  assert.equal(await outcome(app, 'DROP TABLE ipam.pools'), INSUFFICIENT_PRIVILEGE);
  assert.equal(await outcome(app, 'DROP TABLE routes.nodes'), INSUFFICIENT_PRIVILEGE);
  assert.equal(await outcome(app, 'TRUNCATE policy.pods'), INSUFFICIENT_PRIVILEGE);
  assert.equal(await outcome(app, 'CREATE TABLE ipam.mine (x int)'), INSUFFICIENT_PRIVILEGE);
  assert.equal(await outcome(owner, 'ALTER TABLE ipam.pools ADD COLUMN sneaky int'), 'ok');
  assert.equal(await outcome(owner, 'DROP TABLE routes.nodes CASCADE'), 'ok');
});

test("the services' role may only append to the audit log and read it", async () => {
  const insert = "INSERT INTO audit.events (at, actor, method, result) VALUES (now(), 'none', '/test/Insert', 'OK')";
  assert.equal(await outcome(app, insert), 'ok');
  assert.equal(await outcome(app, 'SELECT * FROM audit.events'), 'ok');
  assert.equal(await outcome(app, "UPDATE audit.events SET actor = 'someone-else'"), INSUFFICIENT_PRIVILEGE);
  assert.equal(await outcome(app, 'DELETE FROM audit.events'), INSUFFICIENT_PRIVILEGE);
  assert.equal(await outcome(app, 'TRUNCATE audit.events'), INSUFFICIENT_PRIVILEGE);
  assert.equal(await outcome(owner, "UPDATE audit.events SET actor = 'someone-else'"), 'ok');
});

test("the services' role may revoke a certificate but not undo a revocation", async () => {
  const insert =
    "INSERT INTO auth.certificate_revocations (serial, revoked_at, revoked_by) VALUES ('ab12', now(), 'admin:test')";
  assert.equal(await outcome(app, insert), 'ok');
  assert.equal(await outcome(app, 'SELECT * FROM auth.certificate_revocations'), 'ok');
  assert.equal(await outcome(app, "UPDATE auth.certificate_revocations SET serial = 'cd34'"), INSUFFICIENT_PRIVILEGE);
  assert.equal(await outcome(app, 'DELETE FROM auth.certificate_revocations'), INSUFFICIENT_PRIVILEGE);
  assert.equal(
    await outcome(
      app,
      "INSERT INTO auth.certificates (serial, identity, issued_at, not_after, issued_by) VALUES ('ab12', 'node:n1', now(), now(), 'x')",
    ),
    'ok',
  );
});

test("a replica starting (granting again) never takes the services' privileges away from replicas serving meanwhile", async () => {
  let reads = 0;
  const refused: string[] = [];
  let granting = true;
  const reader = (async () => {
    while (granting) {
      try {
        await app.query('SELECT count(*) FROM ipam.blocks');
        reads++;
      } catch (err) {
        refused.push((err as Error).message);
      }
    }
  })();
  for (let i = 0; i < 10; i++) await grantAppPrivileges(owner, userOf(cp.appDatabaseUrl));
  granting = false;
  await reader;
  assert.ok(reads > 10, `reads while granting: ${reads}`);
  assert.deepEqual(refused, []);
});
