import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { status } from '@grpc/grpc-js';
import { createClient } from '../lib/grpc/client.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { RoutesServiceService } from '../gen/weft/routes/v1/routes.js';
import { AuditServiceService, type AuditEvent } from '../gen/weft/audit/v1/audit.js';
import { bin } from './support/processes.js';
import { startTestControlPlane, type TestControlPlane } from './support/control-plane.js';

/** The audit log as an operator reads it: every mutation, its outcome, nothing for reads; by RPC and by `weft audit`. */
const run = promisify(execFile);
let cp: TestControlPlane;
let ipam: ReturnType<typeof createClient<typeof IpamServiceService>>;
let routes: ReturnType<typeof createClient<typeof RoutesServiceService>>;
let audit: ReturnType<typeof createClient<typeof AuditServiceService>>;

before(async () => {
  cp = await startTestControlPlane();
  ipam = createClient(IpamServiceService, cp.address, { security: cp.security });
  routes = createClient(RoutesServiceService, cp.address, { security: cp.security });
  audit = createClient(AuditServiceService, cp.address, { security: cp.security });
});
after(async () => {
  ipam?.close();
  routes?.close();
  audit?.close();
  await cp?.stop();
});

/** Every event matching the filter, once at least `n` are there (events are written within a fraction of a second). */
async function eventsOnceThere(
  n: number,
  filter: { actor?: string; resource?: string; since?: Date } = {},
): Promise<AuditEvent[]> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const { events } = await audit.listAuditEvents({ ...filter, pageSize: 1000 });
    if (events.length >= n || Date.now() > deadline) return events;
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('each mutation is recorded once with its actor, method, resource and result; reads are not', async () => {
  const started = new Date(Date.now() - 1000);
  await ipam.createPool({ name: 'audit-a', cidr: '10.62.0.0/16', blockPrefixLength: 26 });
  await assert.rejects(
    ipam.createPool({ name: 'audit-bad', cidr: '10.62.0.1/16', blockPrefixLength: 26 }),
    (e: { code: number }) => e.code === status.INVALID_ARGUMENT,
  );
  await ipam.listPools({});
  await ipam.allocate({
    handle: 'c1/eth0',
    node: 'n1',
    pool: 'audit-a',
    podNamespace: 'ns',
    podName: 'p',
    containerId: 'c1',
  });
  await routes.registerNode({ name: 'n1', underlayAddress: '192.0.2.11', vtepMac: '02:00:00:00:00:01' });
  await routes.renewLease({ name: 'n1' });
  await ipam.release({ handle: 'c1/eth0' });

  const events = await eventsOnceThere(5, { since: started });
  assert.deepEqual(
    events.map((e) => [e.method.split('/').pop(), e.resource, e.result, e.actor]),
    [
      ['CreatePool', 'pool/audit-a', 'OK', 'admin:test'],
      ['CreatePool', 'pool/audit-bad', 'INVALID_ARGUMENT', 'admin:test'],
      ['Allocate', 'handle/c1/eth0', 'OK', 'admin:test'],
      ['RegisterNode', 'node/n1', 'OK', 'admin:test'],
      ['Release', 'handle/c1/eth0', 'OK', 'admin:test'],
    ],
  );
  assert.equal(events[0]!.method, '/weft.ipam.v1.IpamService/CreatePool');
  assert.equal(events[0]!.message, '');
  assert.match(events[1]!.message, /10\.62\.0\.1\/16/, 'a failed mutation keeps the message its caller got');
  assert.ok(events.every((e) => e.time!.getTime() >= started.getTime() && e.time!.getTime() <= Date.now()));
  assert.ok(
    events.every((e, i) => i === 0 || e.id > events[i - 1]!.id),
    'oldest first',
  );
});

test('filters by resource (exact or prefix) and actor, pages, and refuses a page token it did not give', async () => {
  await ipam.createPool({ name: 'audit-b', cidr: '10.63.0.0/16', blockPrefixLength: 26 });
  const exact = await eventsOnceThere(1, { resource: 'pool/audit-b' });
  assert.deepEqual(
    exact.map((e) => e.resource),
    ['pool/audit-b'],
  );
  const pools = await eventsOnceThere(3, { resource: 'pool/' });
  assert.ok(
    pools.length >= 3 && pools.every((e) => e.resource.startsWith('pool/')),
    pools.map((e) => e.resource).join(', '),
  );
  assert.deepEqual(await audit.listAuditEvents({ actor: 'node:nobody' }).then((r) => r.events), []);

  const first = await audit.listAuditEvents({ resource: 'pool/', pageSize: 2 });
  assert.equal(first.events.length, 2);
  assert.notEqual(first.nextPageToken, '');
  const second = await audit.listAuditEvents({ resource: 'pool/', pageSize: 2, pageToken: first.nextPageToken });
  assert.ok(
    second.events.length >= 1 && second.events[0]!.id > first.events[1]!.id,
    'the next page starts after the last one',
  );
  await assert.rejects(
    audit.listAuditEvents({ pageToken: 'bm90LWEtdG9rZW4' }),
    (e: { code: number }) => e.code === status.INVALID_ARGUMENT,
  );
  await assert.rejects(
    audit.listAuditEvents({ pageSize: 5000 }),
    (e: { code: number; details: string }) => e.code === status.INVALID_ARGUMENT && /page_size/.test(e.details),
  );
});

test('weft audit prints the log, filtered, as text and as JSON', async () => {
  await ipam.createPool({ name: 'audit-cli', cidr: '10.64.0.0/16', blockPrefixLength: 26 });
  await eventsOnceThere(1, { resource: 'pool/audit-cli' });
  const weft = (...args: string[]) =>
    run(bin.weft, ['audit', ...args, '--server', cp.address, '--tls-dir', cp.tlsDir], { timeout: 30_000 });
  const asJson = JSON.parse((await weft('--resource', 'pool/audit-cli', '--since', '10m', '--json')).stdout) as {
    method: string;
    resource: string;
    result: string;
  }[];
  assert.deepEqual(
    asJson.map((e) => [e.method, e.resource, e.result]),
    [['/weft.ipam.v1.IpamService/CreatePool', 'pool/audit-cli', 'OK']],
  );
  const text = (await weft('--actor', 'admin:test', '--resource', 'pool/audit-cli')).stdout;
  assert.match(text, /ipam\.v1\.IpamService\/CreatePool\s+pool\/audit-cli\s+OK/);
  assert.equal((await weft('--resource', 'pool/none-such')).stdout.trim(), 'no audit events');
  await assert.rejects(
    weft('--since', 'yesterday'),
    (e: { code: number; stderr: string }) => e.code === 2 && /--since/.test(e.stderr),
  );
});
