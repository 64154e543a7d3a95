import { test } from 'node:test';
import assert from 'node:assert/strict';
import { authorizationError, authorize, type AccessLookups, type Decision } from './authorization.js';
import type { Identity } from './identity.js';

/** The decisions of the table, with lookups faked: who may call what, and what the refusal says. */
const IPAM = '/weft.ipam.v1.IpamService/';
const ROUTES = '/weft.routes.v1.RoutesService/';
const POLICY = '/weft.policy.v1.PolicyService/';

const node1: Identity = { kind: 'node', name: 'node1' };
const admin: Identity = { kind: 'admin', name: 'local' };
const controller: Identity = { kind: 'controller', name: 'east' };
const token = (...scopes: string[]): Identity => ({ kind: 'token', name: 'ci', scopes });

const lookups: AccessLookups = {
  holderOfHandle: async (h) =>
    ({ 'c1/eth0': { node: 'node1', pools: ['P'] }, 'c2/eth0': { node: 'node2', pools: ['Q'] } })[h] ?? null,
  nodeOfContainer: async (c) => ({ c1: 'node1', c2: 'node2' })[c] ?? null,
};

const decide = (path: string, who: Identity, req: object = {}, l: AccessLookups = lookups) =>
  authorize(path, who, req, l);

function denied(d: Decision, code: 'auth.unauthenticated' | 'auth.forbidden', ...says: string[]): void {
  assert.equal(d.allowed, false, 'expected a refusal');
  if (d.allowed) return;
  assert.equal(d.code, code);
  for (const s of says) assert.ok(d.message.includes(s), `"${d.message}" should say ${JSON.stringify(s)}`);
}

test('a caller without identity is unauthenticated, whatever it calls', async () => {
  denied(await decide(`${IPAM}ListPools`, { kind: 'none' }), 'auth.unauthenticated', `${IPAM}ListPools`);
  denied(await decide('/weft.x.v1.Nope/Nope', { kind: 'none' }), 'auth.unauthenticated');
  const err = authorizationError({ allowed: false, code: 'auth.unauthenticated', message: 'm' });
  assert.deepEqual([err.code, err.kind], ['auth.unauthenticated', 'unauthenticated']);
  assert.equal(authorizationError({ allowed: false, code: 'auth.forbidden', message: 'm' }).kind, 'permission_denied');
});

test('only the bootstrap method lets a caller without identity in (its token is checked by the method itself)', async () => {
  const issue = '/weft.auth.v1.BootstrapService/IssueCertificate';
  const anyone = (await import('./authorization.js')).AUTHORIZATION_RULES;
  assert.deepEqual(
    Object.entries(anyone)
      .filter(([, r]) => r.anyone)
      .map(([p]) => p),
    [issue],
  );
  assert.equal((await decide(issue, { kind: 'none' })).allowed, true);
  assert.equal((await decide(issue, node1)).allowed, true);
});

test('a method without a rule is refused even to admin; admin may call every method with one', async () => {
  denied(await decide('/weft.agent.v1.AgentService/Attach', admin), 'auth.forbidden', 'no authorization rule');
  assert.equal((await decide(`${IPAM}UpdatePool`, admin)).allowed, true);
  assert.equal(
    (await decide(`${IPAM}Release`, admin, { handle: 'c2/eth0' }, {})).allowed,
    true,
    'admin needs no lookup',
  );
});

test('a node acts only for itself: the fields naming a node must name it', async () => {
  assert.equal((await decide(`${ROUTES}RegisterNode`, node1, { name: 'node1' })).allowed, true);
  denied(
    await decide(`${ROUTES}RegisterNode`, node1, { name: 'node2' }),
    'auth.forbidden',
    'node node1 may only register itself',
    '"node2" in name',
  );
  denied(await decide(`${ROUTES}RenewLease`, node1, { name: 'node2' }), 'auth.forbidden', 'node2');
  denied(
    await decide(`${IPAM}Allocate`, node1, { node: 'node2', pool: 'P' }),
    'auth.forbidden',
    'node node1 may only allocate for itself',
    '"node2" in node',
  );
  denied(
    await decide(`${IPAM}ListAllocations`, node1, { node: '' }),
    'auth.forbidden',
    'list its own allocations',
    '"" in node',
  );
  assert.equal((await decide(`${IPAM}ListAllocations`, node1, { node: 'node1' })).allowed, true);
  denied(await decide(`${POLICY}AttachPod`, node1, { node: 'node2', containerId: 'c9' }), 'auth.forbidden', 'node2');
  denied(await decide(`${POLICY}WatchNodePolicy`, node1, { node: 'node2' }), 'auth.forbidden', 'watch its own policy');
  denied(await decide(`${ROUTES}WatchRoutes`, node1, { node: 'node2' }), 'auth.forbidden');
  assert.equal((await decide(`${ROUTES}WatchRoutes`, node1, { node: 'node1' })).allowed, true);
});

test("every item of a node's BatchAllocate must be for itself; the refusal names the item", async () => {
  const req = { requests: [{ node: 'node1' }, { node: 'node1' }, { node: 'node2' }] };
  denied(await decide(`${IPAM}BatchAllocate`, node1, req), 'auth.forbidden', '"node2" in requests[2].node');
  assert.equal((await decide(`${IPAM}BatchAllocate`, node1, { requests: [{ node: 'node1' }] })).allowed, true);
});

test('a node releases only handles it holds, and detaches only sandboxes attached on it (looked up)', async () => {
  assert.equal((await decide(`${IPAM}Release`, node1, { handle: 'c1/eth0' })).allowed, true);
  denied(
    await decide(`${IPAM}Release`, node1, { handle: 'c2/eth0' }),
    'auth.forbidden',
    'only release handles it holds',
    'held by node node2',
  );
  assert.equal(
    (await decide(`${IPAM}Release`, node1, { handle: 'gone/eth0' })).allowed,
    true,
    'a handle holding nothing: releasing it changes nothing',
  );
  denied(await decide(`${IPAM}Release`, node1, { handle: 'c1/eth0' }, {}), 'auth.forbidden', 'no lookup');
  assert.equal((await decide(`${POLICY}DetachPod`, node1, { containerId: 'c1' })).allowed, true);
  denied(await decide(`${POLICY}DetachPod`, node1, { containerId: 'c2' }), 'auth.forbidden', 'attached on node node2');
  assert.equal((await decide(`${POLICY}DetachPod`, node1, { containerId: 'nothing' })).allowed, true);
});

test('a node may not call what the agent never calls', async () => {
  for (const m of [
    `${IPAM}CreatePool`,
    `${IPAM}GarbageCollect`,
    `${IPAM}SetNodeLabels`,
    `${IPAM}WatchBlockAffinities`,
    `${ROUTES}DeregisterNode`,
    `${ROUTES}ListNodes`,
    `${POLICY}UpsertPod`,
    `${POLICY}ListPods`,
  ]) {
    denied(
      await decide(m, node1, { node: 'node1', name: 'node1' }),
      'auth.forbidden',
      `node node1 may not call ${m}`,
      'allowed: admin',
    );
  }
});

test('the controller calls what it needs, for its own cluster only where requests name one', async () => {
  for (const m of [
    `${POLICY}UpsertPod`,
    `${POLICY}ApplyPolicies`,
    `${IPAM}SetNodeLabels`,
    `${IPAM}GarbageCollect`,
    `${ROUTES}DeregisterNode`,
    `${IPAM}Release`,
    `${IPAM}ListAllocations`,
  ]) {
    assert.equal((await decide(m, controller, { handle: 'c2/eth0' })).allowed, true, m);
  }
  assert.equal((await decide(`${IPAM}RegisterCluster`, controller, { name: 'east' })).allowed, true);
  denied(
    await decide(`${IPAM}RegisterCluster`, controller, { name: 'west' }),
    'auth.forbidden',
    'controller east may only register its own cluster',
    '"west"',
  );
  denied(await decide(`${IPAM}AllocatePrefix`, controller, { cluster: 'west' }), 'auth.forbidden', '"west" in cluster');
  denied(
    await decide(`${IPAM}UpdatePool`, controller),
    'auth.forbidden',
    'controller east may not call',
    'allowed: admin, token with scope admin',
  );
  denied(await decide(`${IPAM}Allocate`, controller, { node: 'n' }), 'auth.forbidden', 'allowed: admin, node,');
});

test('tokens: read reads, pool scopes allocate and release in their pools only, admin does everything', async () => {
  assert.equal((await decide(`${IPAM}ListPools`, token('read'))).allowed, true);
  assert.equal((await decide(`${POLICY}WatchNodePolicy`, token('read'), { node: 'node2' })).allowed, true);
  denied(
    await decide(`${IPAM}CreatePool`, token('read')),
    'auth.forbidden',
    'token ci lacks scope admin',
    'it has: read',
  );
  denied(await decide(`${IPAM}ListPools`, token('ipam:allocate:P')), 'auth.forbidden', 'lacks scope read');

  const p = token('ipam:allocate:P', 'ipam:release:P');
  assert.equal((await decide(`${IPAM}Allocate`, p, { pool: 'P', node: 'anywhere' })).allowed, true);
  denied(
    await decide(`${IPAM}Allocate`, p, { pool: 'Q' }),
    'auth.forbidden',
    'lacks scope ipam:allocate:Q',
    '"Q" in pool',
  );
  denied(await decide(`${IPAM}Allocate`, p, { pool: '' }), 'auth.forbidden', 'name the pool');
  denied(
    await decide(`${IPAM}BatchAllocate`, p, { requests: [{ pool: 'P' }, { pool: 'Q' }] }),
    'auth.forbidden',
    'requests[1].pool',
  );
  assert.equal((await decide(`${IPAM}Release`, p, { handle: 'c1/eth0' })).allowed, true);
  denied(
    await decide(`${IPAM}Release`, p, { handle: 'c2/eth0' }),
    'auth.forbidden',
    'lacks scope ipam:release:Q',
    'pool Q',
  );
  denied(
    await decide(`${IPAM}Release`, token('ipam:allocate:P'), { handle: 'c1/eth0' }),
    'auth.forbidden',
    'ipam:release:P',
  );
  denied(await decide(`${IPAM}GarbageCollect`, p, { node: 'x' }), 'auth.forbidden', 'lacks scope admin');

  assert.equal((await decide(`${IPAM}UpdatePool`, token('admin'))).allowed, true);
  denied(await decide('/weft.x.v1.Nope/Nope', token('admin')), 'auth.forbidden', 'no authorization rule');
});
