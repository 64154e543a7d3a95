import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { status } from '@grpc/grpc-js';
import type { Identity } from '../lib/auth/identity.js';
import { createClient } from '../lib/grpc/client.js';
import { errorCodeOf } from '../lib/grpc/errors.js';
import type { IdentifiableCall } from '../lib/grpc/server.js';
import { AllocateRequest, IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { RoutesServiceService } from '../gen/weft/routes/v1/routes.js';
import { Pod, PolicyServiceService } from '../gen/weft/policy/v1/policy.js';
import { startTestControlPlane, type TestControlPlane } from './support/control-plane.js';

/**
 * Authorization on the real control plane (real PostgreSQL, the services as `weft up` mounts them, enforcement on):
 * every RPC of IPAM, routes and policy called as every identity, each call either refused (UNAUTHENTICATED for no
 * identity, PERMISSION_DENIED with auth.forbidden otherwise) or not ("allowed": it may still fail for another reason,
 * e.g. NOT_FOUND).
 *
 * IDENTITIES ARE INJECTED: until mTLS is merged, each identity's clients carry it in their user agent and the server's
 * `identify` hook reads it back (`identifyFromUserAgent` below). When client certificates exist, give each identity a
 * client with its certificate (`weft ca issue`) and drop `identify` from the control plane's access: the matrix stays.
 * WEFT_TEST_MATRIX_LOG=1 prints every cell's outcome.
 */
const AS = 'weft-test-identity/';

const IDENTITIES = {
  none: { kind: 'none' },
  node1: { kind: 'node', name: 'node1' },
  node2: { kind: 'node', name: 'node2' },
  admin: { kind: 'admin', name: 'local' },
  controller: { kind: 'controller', name: 'east' },
  read: { kind: 'token', name: 'reader', scopes: ['read'] },
  poolP: { kind: 'token', name: 'p-only', scopes: ['ipam:allocate:p', 'ipam:release:p'] },
} satisfies Record<string, Identity>;
type Who = keyof typeof IDENTITIES;
/** Who besides admin may make a call (admin always may, none never). */
type Allowed = Exclude<Who, 'admin' | 'none'>;

/**
 * The test's identify hook: the identity named in the client's user agent. A call without one over the unix socket is
 * the control plane's own client (the routes service's affinity follower watches IPAM, IPAM's sweeper asks routes):
 * admin, as the control plane's admin certificate will make it (grpc-js names no peer address for a unix socket).
 * Anything else: none.
 */
function identifyFromUserAgent(call: IdentifiableCall): Identity {
  const ua = String(call.metadata.get('user-agent')[0] ?? '');
  const at = ua.indexOf(AS);
  if (at < 0) return call.getPeer() === 'unknown' ? { kind: 'admin', name: 'control-plane' } : { kind: 'none' };
  const who = ua.slice(at + AS.length).split(' ')[0] as Who;
  return IDENTITIES[who] ?? { kind: 'none' };
}

type Service = 'ipam' | 'routes' | 'policy';
type Call = (req: object, opts: { timeoutMs: number }) => Promise<unknown> | AsyncIterable<unknown>;
interface Case {
  service: Service;
  method: string;
  label?: string;
  request: object;
  allowed: Allowed[];
  /** Run (as admin) before the case: puts back what an earlier allowed call removed. */
  setup?: () => Promise<void>;
}

let cp: TestControlPlane;
const clients = {} as Record<Who, Record<Service, Record<string, Call> & { close(): void }>>;
const adminCall = (service: Service, method: string, req: object) => clients.admin[service][method]!(req, { timeoutMs: 10_000 }) as Promise<unknown>;

const node = (name: string, last: number) => ({ name, underlayAddress: `192.0.2.${last}`, vtepMac: `02:00:c0:00:02:${last.toString(16).padStart(2, '0')}` });
const allocation = (handle: string, nodeName: string, pool: string) => AllocateRequest.fromPartial({ handle, node: nodeName, pool, containerId: handle.split('/')[0] });
const holding = (handle: string, nodeName: string, pool: string) => async () => void (await adminCall('ipam', 'allocate', allocation(handle, nodeName, pool)));
const attached = (containerId: string, nodeName: string, address: string) => async () =>
  void (await adminCall('policy', 'attachPod', { namespace: 'ns', name: `pod-${containerId}`, node: nodeName, containerId, addresses: [address] }));

const CASES: Case[] = [
  // IPAM
  { service: 'ipam', method: 'createPool', request: { name: 'east-pods', cidr: '10.42.0.0/16', blockPrefixLength: 26 }, allowed: ['controller'] },
  { service: 'ipam', method: 'updatePool', request: { name: 'p', etag: 'stale' }, allowed: [] },
  { service: 'ipam', method: 'createReservation', request: { pool: 'q', cidr: '10.41.255.0/24', reason: 'test' }, allowed: [] },
  { service: 'ipam', method: 'listReservations', request: {}, allowed: ['read'] },
  { service: 'ipam', method: 'deleteReservation', request: { name: 'pools/q/reservations/999999' }, allowed: [] },
  { service: 'ipam', method: 'listPools', request: {}, allowed: ['node1', 'node2', 'controller', 'read'] },
  { service: 'ipam', method: 'allocate', label: 'for node1 in p', request: allocation('a1/eth0', 'node1', 'p'), allowed: ['node1', 'poolP'] },
  { service: 'ipam', method: 'allocate', label: 'for node2 in q', request: allocation('a2/eth0', 'node2', 'q'), allowed: ['node2'] },
  { service: 'ipam', method: 'allocate', label: 'in no named pool', request: allocation('a3/eth0', 'node1', ''), allowed: ['node1'] },
  { service: 'ipam', method: 'batchAllocate', label: 'for node1 in p', request: { requests: [allocation('b1/eth0', 'node1', 'p'), allocation('b2/eth0', 'node1', 'p')] }, allowed: ['node1', 'poolP'] },
  { service: 'ipam', method: 'batchAllocate', label: 'one item for node2 in q', request: { requests: [allocation('b3/eth0', 'node1', 'p'), allocation('b4/eth0', 'node2', 'q')] }, allowed: [] },
  { service: 'ipam', method: 'release', label: 'a handle node1 holds in p', request: { handle: 'c1/eth0' }, setup: holding('c1/eth0', 'node1', 'p'), allowed: ['node1', 'controller', 'poolP'] },
  { service: 'ipam', method: 'release', label: 'a handle node2 holds in q', request: { handle: 'c2/eth0' }, setup: holding('c2/eth0', 'node2', 'q'), allowed: ['node2', 'controller'] },
  { service: 'ipam', method: 'listAllocations', label: 'of node1', request: { node: 'node1' }, allowed: ['node1', 'controller', 'read'] },
  { service: 'ipam', method: 'listAllocations', label: 'of every node', request: { node: '' }, allowed: ['controller', 'read'] },
  { service: 'ipam', method: 'watchBlockAffinities', request: { acceptChunks: true }, allowed: ['read'] },
  { service: 'ipam', method: 'garbageCollect', request: { node: 'node9', validHandles: [] }, allowed: ['controller'] },
  { service: 'ipam', method: 'setNodeLabels', request: { node: 'node9', labels: { zone: 'a' } }, allowed: ['controller'] },
  { service: 'ipam', method: 'setNamespaceLabels', request: { namespace: 'ns9', labels: { team: 'a' } }, allowed: ['controller'] },
  { service: 'ipam', method: 'listAllocationHistory', request: { handle: 'c1/eth0' }, allowed: ['read'] },
  { service: 'ipam', method: 'createRoutingDomain', request: { name: 'lab' }, allowed: [] },
  { service: 'ipam', method: 'listRoutingDomains', request: {}, allowed: ['read'] },
  { service: 'ipam', method: 'registerCluster', label: 'the controller\'s own', request: { name: 'east' }, allowed: ['controller'] },
  { service: 'ipam', method: 'registerCluster', label: 'another cluster', request: { name: 'west' }, allowed: [] },
  { service: 'ipam', method: 'listClusters', request: {}, allowed: ['read'] },
  { service: 'ipam', method: 'createAggregate', request: { name: 'agg', cidr: '10.50.0.0/16' }, allowed: [] },
  { service: 'ipam', method: 'listAggregates', request: {}, allowed: ['read'] },
  { service: 'ipam', method: 'allocatePrefix', label: 'for the controller\'s cluster', request: { cluster: 'east', aggregate: 'agg', prefixLength: 24 }, allowed: ['controller'] },
  { service: 'ipam', method: 'allocatePrefix', label: 'for another cluster', request: { cluster: 'west', aggregate: 'agg', prefixLength: 24 }, allowed: [] },
  { service: 'ipam', method: 'releasePrefix', request: { name: 'aggregates/agg/prefixes/999999' }, allowed: [] },
  { service: 'ipam', method: 'listPrefixes', request: {}, allowed: ['read'] },
  { service: 'ipam', method: 'checkConsistency', request: {}, allowed: ['read'] },
  { service: 'ipam', method: 'getUtilization', request: {}, allowed: ['read'] },
  // Routes
  { service: 'routes', method: 'registerNode', label: 'node1', request: node('node1', 11), allowed: ['node1'] },
  { service: 'routes', method: 'registerNode', label: 'node2', request: node('node2', 12), allowed: ['node2'] },
  { service: 'routes', method: 'renewLease', label: 'of node1', request: { name: 'node1' }, allowed: ['node1'] },
  { service: 'routes', method: 'renewLease', label: 'of node2', request: { name: 'node2' }, allowed: ['node2'] },
  { service: 'routes', method: 'deregisterNode', request: { name: 'node9' }, allowed: ['controller'] },
  { service: 'routes', method: 'listNodes', request: {}, allowed: ['controller', 'read'] },
  { service: 'routes', method: 'listDepartedNodes', request: { names: ['node1'] }, allowed: ['read'] },
  { service: 'routes', method: 'watchRoutes', label: 'as node1', request: { node: 'node1', acceptChunks: true }, allowed: ['node1', 'read'] },
  { service: 'routes', method: 'watchRoutes', label: 'as node2', request: { node: 'node2', acceptChunks: true }, allowed: ['node2', 'read'] },
  // Policy
  { service: 'policy', method: 'upsertNamespace', request: { name: 'ns', labels: { team: 'a' } }, allowed: ['controller'] },
  { service: 'policy', method: 'deleteNamespace', request: { name: 'ns9' }, allowed: ['controller'] },
  { service: 'policy', method: 'upsertPod', request: { pod: Pod.fromPartial({ namespace: 'ns', name: 'web', node: 'node1' }), keepAttachment: true }, allowed: ['controller'] },
  { service: 'policy', method: 'deletePod', request: { namespace: 'ns', name: 'gone' }, allowed: ['controller'] },
  { service: 'policy', method: 'attachPod', label: 'on node1', request: { namespace: 'ns', name: 'a1', node: 'node1', containerId: 'a1', addresses: ['10.40.0.20'] }, allowed: ['node1'] },
  { service: 'policy', method: 'attachPod', label: 'on node2', request: { namespace: 'ns', name: 'a2', node: 'node2', containerId: 'a2', addresses: ['10.41.0.20'] }, allowed: ['node2'] },
  { service: 'policy', method: 'detachPod', label: 'a sandbox on node1', request: { containerId: 'c1' }, setup: attached('c1', 'node1', '10.40.0.30'), allowed: ['node1'] },
  { service: 'policy', method: 'detachPod', label: 'a sandbox on node2', request: { containerId: 'c2' }, setup: attached('c2', 'node2', '10.41.0.30'), allowed: ['node2'] },
  { service: 'policy', method: 'applyPolicies', request: { objectsJson: [] }, allowed: ['controller'] },
  { service: 'policy', method: 'deletePolicy', request: { policy: { kind: 'NetworkPolicy', namespace: 'ns', name: 'none' } }, allowed: ['controller'] },
  { service: 'policy', method: 'listPolicies', request: {}, allowed: ['controller', 'read'] },
  { service: 'policy', method: 'listNamespaces', request: {}, allowed: ['controller', 'read'] },
  { service: 'policy', method: 'listPods', request: {}, allowed: ['controller', 'read'] },
  { service: 'policy', method: 'explain', request: { from: '10.40.0.20', to: '10.41.0.20', port: 80 }, allowed: ['read'] },
  { service: 'policy', method: 'watchNodePolicy', label: 'of node1', request: { node: 'node1' }, allowed: ['node1', 'read'] },
  { service: 'policy', method: 'watchNodePolicy', label: 'of node2', request: { node: 'node2' }, allowed: ['node2', 'read'] },
];

type Outcome = { result: 'allowed' | 'unauthenticated' | 'forbidden'; detail: string };

/** Makes a call and says whether it was refused; a stream is read up to its first message. */
async function attempt(call: Call, request: object): Promise<Outcome> {
  try {
    const r = call(request, { timeoutMs: 5_000 });
    if (Symbol.asyncIterator in (r as object)) {
      for await (const first of r as AsyncIterable<unknown>) {
        void first;
        break;
      }
    } else await r;
    return { result: 'allowed', detail: 'ok' };
  } catch (err) {
    const e = err as { code: number; details: string };
    if (e.code === status.UNAUTHENTICATED) {
      assert.equal(errorCodeOf(e), 'auth.unauthenticated');
      return { result: 'unauthenticated', detail: e.details };
    }
    if (e.code === status.PERMISSION_DENIED) {
      assert.equal(errorCodeOf(e), 'auth.forbidden');
      return { result: 'forbidden', detail: e.details };
    }
    return { result: 'allowed', detail: `${status[e.code]}: ${e.details}` };
  }
}

describe('authorization matrix: every RPC as every identity (identities injected through identify; switch to client certificates with mTLS)', () => {
  before(async () => {
    cp = await startTestControlPlane({ access: { enforce: true, identify: identifyFromUserAgent } });
    for (const who of Object.keys(IDENTITIES) as Who[]) {
      const channel = who === 'none' ? {} : { 'grpc.primary_user_agent': `${AS}${who}` };
      clients[who] = {
        ipam: createClient(IpamServiceService, cp.address, { channel }),
        routes: createClient(RoutesServiceService, cp.address, { channel }),
        policy: createClient(PolicyServiceService, cp.address, { channel }),
      } as never;
    }
    await adminCall('ipam', 'createPool', { name: 'p', cidr: '10.40.0.0/16', blockPrefixLength: 26 });
    await adminCall('ipam', 'createPool', { name: 'q', cidr: '10.41.0.0/16', blockPrefixLength: 26 });
    await adminCall('routes', 'registerNode', node('node1', 11));
    await adminCall('routes', 'registerNode', node('node2', 12));
  });

  after(async () => {
    for (const c of Object.values(clients)) for (const s of Object.values(c)) s.close();
    await cp?.stop();
  });

  test('every RPC of the served services is in the matrix', () => {
    const served = [IpamServiceService, RoutesServiceService, PolicyServiceService].flatMap((d) => Object.keys(d));
    const called = new Set(CASES.map((c) => c.method));
    assert.deepEqual(served.filter((m) => !called.has(m)), []);
  });

  for (const c of CASES) {
    test(`${c.service}.${c.method}${c.label ? ` (${c.label})` : ''}: only admin${c.allowed.map((a) => `, ${a}`).join('')}`, async () => {
      await c.setup?.();
      // Those to be refused first: an allowed call may change what a rule looks up (a release frees the handle).
      const order = (Object.keys(IDENTITIES) as Who[]).sort((a, b) => Number(expected(c, a)) - Number(expected(c, b)));
      const wrong: string[] = [];
      for (const who of order) {
        const { result, detail } = await attempt(clients[who][c.service][c.method]!, c.request);
        const want = who === 'none' ? 'unauthenticated' : expected(c, who) ? 'allowed' : 'forbidden';
        if (process.env.WEFT_TEST_MATRIX_LOG) console.log(`${c.method} ${c.label ?? ""} ${who}: ${result}: ${detail}`);
        if (result !== want) wrong.push(`${who}: ${result} (wanted ${want}): ${detail}`);
      }
      assert.deepEqual(wrong, []);
    });
  }
});

function expected(c: Case, who: Who): boolean {
  return who === 'admin' || (c.allowed as string[]).includes(who);
}
