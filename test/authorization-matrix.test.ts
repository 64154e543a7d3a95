import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { checkServerIdentity } from 'node:tls';
import { credentials, status } from '@grpc/grpc-js';
import { createClient } from '../lib/grpc/client.js';
import { clientTlsDir, SERVER_NAME, type TransportSecurity } from '../lib/grpc/credentials.js';
import { errorCodeOf } from '../lib/grpc/errors.js';
import { ensureControlPlanePki, issueClientTlsDir } from '../lib/pki.js';
import * as ipamMessages from '../gen/weft/ipam/v1/ipam.js';
import { AllocateRequest, IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { RoutesServiceService } from '../gen/weft/routes/v1/routes.js';
import { Pod, PolicyServiceService } from '../gen/weft/policy/v1/policy.js';
import { AuditServiceService } from '../gen/weft/audit/v1/audit.js';
import { CertificateServiceService, TokenServiceService } from '../gen/weft/auth/v1/auth.js';
import { startTestControlPlane, type TestControlPlane } from './support/control-plane.js';

/**
 * Authorization on the real control plane (real PostgreSQL, the services as `weft up` mounts them, mTLS, enforcement
 * on), with real credentials: every RPC of every served service called as every identity, each call either refused
 * or not ("allowed": it may still fail for another reason, e.g. NOT_FOUND).
 *
 * gRPC callers: clients with certificates from the control plane's CA (node1, node2, admin, controller east); a
 * client whose certificate comes from another CA (forged) and one with no certificate: both refused by the TLS
 * handshake (UNAVAILABLE: counted as refused); and API tokens made through TokenService (read; allocate and release in
 * pool p), sent with the admin certificate, which they override. HTTP callers (the IPAM gateway): none (no
 * Authorization header), a forged bearer token, and the two tokens. WEFT_TEST_MATRIX_LOG=1 prints every cell.
 */
const GRPC = ['none', 'forged', 'node1', 'node2', 'admin', 'controller', 'read', 'poolP'] as const;
const HTTP = ['http:none', 'http:forged', 'http:read', 'http:poolP'] as const;
type GrpcWho = (typeof GRPC)[number];
type HttpWho = (typeof HTTP)[number];
type Who = GrpcWho | HttpWho;
/** Who besides admin may make a call (admin always may; none and forged never): a token allowed counts over HTTP too. */
type Allowed = 'node1' | 'node2' | 'controller' | 'read' | 'poolP';

type Service = 'ipam' | 'routes' | 'policy' | 'audit' | 'tokens' | 'certificates';
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
let scratch: string;
const secrets = {} as Record<'read' | 'poolP', string>;
const clients = {} as Record<GrpcWho, Record<Service, Record<string, Call> & { close(): void }>>;
const adminCall = (service: Service, method: string, req: object) =>
  clients.admin[service][method]!(req, { timeoutMs: 10_000 }) as Promise<unknown>;

const node = (name: string, last: number) => ({
  name,
  underlayAddress: `192.0.2.${last}`,
  vtepMac: `02:00:c0:00:02:${last.toString(16).padStart(2, '0')}`,
});
const allocation = (handle: string, nodeName: string, pool: string) =>
  AllocateRequest.fromPartial({ handle, node: nodeName, pool, containerId: handle.split('/')[0] });
const holding = (handle: string, nodeName: string, pool: string) => async () =>
  void (await adminCall('ipam', 'allocate', allocation(handle, nodeName, pool)));
const attached = (containerId: string, nodeName: string, address: string) => async () =>
  void (await adminCall('policy', 'attachPod', {
    namespace: 'ns',
    name: `pod-${containerId}`,
    node: nodeName,
    containerId,
    addresses: [address],
  }));

const CASES: Case[] = [
  // IPAM
  {
    service: 'ipam',
    method: 'createPool',
    request: { name: 'east-pods', cidr: '10.42.0.0/16', blockPrefixLength: 26 },
    allowed: ['controller'],
  },
  { service: 'ipam', method: 'updatePool', request: { name: 'p', etag: 'stale' }, allowed: [] },
  {
    service: 'ipam',
    method: 'createReservation',
    request: { pool: 'q', cidr: '10.41.255.0/24', reason: 'test' },
    allowed: [],
  },
  { service: 'ipam', method: 'listReservations', request: {}, allowed: ['read'] },
  { service: 'ipam', method: 'deleteReservation', request: { name: 'pools/q/reservations/999999' }, allowed: [] },
  { service: 'ipam', method: 'listPools', request: {}, allowed: ['node1', 'node2', 'controller', 'read'] },
  {
    service: 'ipam',
    method: 'allocate',
    label: 'for node1 in p',
    request: allocation('a1/eth0', 'node1', 'p'),
    allowed: ['node1', 'poolP'],
  },
  {
    service: 'ipam',
    method: 'allocate',
    label: 'for node2 in q',
    request: allocation('a2/eth0', 'node2', 'q'),
    allowed: ['node2'],
  },
  {
    service: 'ipam',
    method: 'allocate',
    label: 'in no named pool',
    request: allocation('a3/eth0', 'node1', ''),
    allowed: ['node1'],
  },
  {
    service: 'ipam',
    method: 'batchAllocate',
    label: 'for node1 in p',
    request: { requests: [allocation('b1/eth0', 'node1', 'p'), allocation('b2/eth0', 'node1', 'p')] },
    allowed: ['node1', 'poolP'],
  },
  {
    service: 'ipam',
    method: 'batchAllocate',
    label: 'one item for node2 in q',
    request: { requests: [allocation('b3/eth0', 'node1', 'p'), allocation('b4/eth0', 'node2', 'q')] },
    allowed: [],
  },
  {
    service: 'ipam',
    method: 'release',
    label: 'a handle node1 holds in p',
    request: { handle: 'c1/eth0' },
    setup: holding('c1/eth0', 'node1', 'p'),
    allowed: ['node1', 'controller', 'poolP'],
  },
  {
    service: 'ipam',
    method: 'release',
    label: 'a handle node2 holds in q',
    request: { handle: 'c2/eth0' },
    setup: holding('c2/eth0', 'node2', 'q'),
    allowed: ['node2', 'controller'],
  },
  {
    service: 'ipam',
    method: 'listAllocations',
    label: 'of node1',
    request: { node: 'node1' },
    allowed: ['node1', 'controller', 'read'],
  },
  {
    service: 'ipam',
    method: 'listAllocations',
    label: 'of every node',
    request: { node: '' },
    allowed: ['controller', 'read'],
  },
  { service: 'ipam', method: 'watchBlockAffinities', request: { acceptChunks: true }, allowed: ['read'] },
  { service: 'ipam', method: 'garbageCollect', request: { node: 'node9', validHandles: [] }, allowed: ['controller'] },
  {
    service: 'ipam',
    method: 'setNodeLabels',
    request: { node: 'node9', labels: { zone: 'a' } },
    allowed: ['controller'],
  },
  {
    service: 'ipam',
    method: 'setNamespaceLabels',
    request: { namespace: 'ns9', labels: { team: 'a' } },
    allowed: ['controller'],
  },
  { service: 'ipam', method: 'listAllocationHistory', request: { handle: 'c1/eth0' }, allowed: ['read'] },
  { service: 'ipam', method: 'createRoutingDomain', request: { name: 'lab' }, allowed: [] },
  { service: 'ipam', method: 'listRoutingDomains', request: {}, allowed: ['read'] },
  {
    service: 'ipam',
    method: 'registerCluster',
    label: "the controller's own",
    request: { name: 'east' },
    allowed: ['controller'],
  },
  { service: 'ipam', method: 'registerCluster', label: 'another cluster', request: { name: 'west' }, allowed: [] },
  { service: 'ipam', method: 'listClusters', request: {}, allowed: ['read'] },
  { service: 'ipam', method: 'createAggregate', request: { name: 'agg', cidr: '10.50.0.0/16' }, allowed: [] },
  { service: 'ipam', method: 'listAggregates', request: {}, allowed: ['read'] },
  {
    service: 'ipam',
    method: 'allocatePrefix',
    label: "for the controller's cluster",
    request: { cluster: 'east', aggregate: 'agg', prefixLength: 24 },
    allowed: ['controller'],
  },
  {
    service: 'ipam',
    method: 'allocatePrefix',
    label: 'for another cluster',
    request: { cluster: 'west', aggregate: 'agg', prefixLength: 24 },
    allowed: [],
  },
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
  {
    service: 'routes',
    method: 'watchRoutes',
    label: 'as node1',
    request: { node: 'node1', acceptChunks: true },
    allowed: ['node1', 'read'],
  },
  {
    service: 'routes',
    method: 'watchRoutes',
    label: 'as node2',
    request: { node: 'node2', acceptChunks: true },
    allowed: ['node2', 'read'],
  },
  // Policy
  {
    service: 'policy',
    method: 'upsertNamespace',
    request: { name: 'ns', labels: { team: 'a' } },
    allowed: ['controller'],
  },
  { service: 'policy', method: 'deleteNamespace', request: { name: 'ns9' }, allowed: ['controller'] },
  {
    service: 'policy',
    method: 'upsertPod',
    request: { pod: Pod.fromPartial({ namespace: 'ns', name: 'web', node: 'node1' }), keepAttachment: true },
    allowed: ['controller'],
  },
  { service: 'policy', method: 'deletePod', request: { namespace: 'ns', name: 'gone' }, allowed: ['controller'] },
  {
    service: 'policy',
    method: 'attachPod',
    label: 'on node1',
    request: { namespace: 'ns', name: 'a1', node: 'node1', containerId: 'a1', addresses: ['10.40.0.20'] },
    allowed: ['node1'],
  },
  {
    service: 'policy',
    method: 'attachPod',
    label: 'on node2',
    request: { namespace: 'ns', name: 'a2', node: 'node2', containerId: 'a2', addresses: ['10.41.0.20'] },
    allowed: ['node2'],
  },
  {
    service: 'policy',
    method: 'detachPod',
    label: 'a sandbox on node1',
    request: { containerId: 'c1' },
    setup: attached('c1', 'node1', '10.40.0.30'),
    allowed: ['node1'],
  },
  {
    service: 'policy',
    method: 'detachPod',
    label: 'a sandbox on node2',
    request: { containerId: 'c2' },
    setup: attached('c2', 'node2', '10.41.0.30'),
    allowed: ['node2'],
  },
  { service: 'policy', method: 'applyPolicies', request: { objectsJson: [] }, allowed: ['controller'] },
  {
    service: 'policy',
    method: 'deletePolicy',
    request: { policy: { kind: 'NetworkPolicy', namespace: 'ns', name: 'none' } },
    allowed: ['controller'],
  },
  { service: 'policy', method: 'listPolicies', request: {}, allowed: ['controller', 'read'] },
  { service: 'policy', method: 'listNamespaces', request: {}, allowed: ['controller', 'read'] },
  { service: 'policy', method: 'listPods', request: {}, allowed: ['controller', 'read'] },
  {
    service: 'policy',
    method: 'explain',
    request: { from: '10.40.0.20', to: '10.41.0.20', port: 80 },
    allowed: ['read'],
  },
  {
    service: 'policy',
    method: 'watchNodePolicy',
    label: 'of node1',
    request: { node: 'node1' },
    allowed: ['node1', 'read'],
  },
  {
    service: 'policy',
    method: 'watchNodePolicy',
    label: 'of node2',
    request: { node: 'node2' },
    allowed: ['node2', 'read'],
  },
  // Audit and tokens: administrators only
  { service: 'audit', method: 'listAuditEvents', request: {}, allowed: [] },
  {
    service: 'tokens',
    method: 'createToken',
    request: { name: 'matrix-made', scopes: ['read'] },
    setup: async () => void (await adminCall('tokens', 'revokeToken', { name: 'matrix-made' }).catch(() => {})),
    allowed: [],
  },
  { service: 'tokens', method: 'listTokens', request: {}, allowed: [] },
  { service: 'tokens', method: 'revokeToken', request: { name: 'never-made' }, allowed: [] },
  // Certificates: administrators only (revoking locks a caller out). The serial below belongs to no certificate.
  { service: 'certificates', method: 'recordCertificate', request: { certificatePem: '' }, allowed: [] },
  {
    service: 'certificates',
    method: 'revokeCertificates',
    request: { serial: 'ffff0000000000000000000000000001', reason: 'matrix' },
    allowed: [],
  },
  { service: 'certificates', method: 'listCertificates', request: {}, allowed: [] },
];

type Outcome = { result: 'allowed' | 'unauthenticated' | 'forbidden' | 'refused'; detail: string };

/** Makes a gRPC call and says whether it was refused; a stream is read up to its first message. */
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
    // No handler answered: the TLS handshake refused the client (no certificate, or one from another CA).
    if (e.code === status.UNAVAILABLE) return { result: 'refused', detail: e.details };
    return { result: 'allowed', detail: `${status[e.code]}: ${e.details}` };
  }
}

const capitalize = (s: string) => s[0]!.toUpperCase() + s.slice(1);

/** The same call over the HTTP/JSON gateway (IPAM only): 401 unauthenticated, 403 forbidden, anything else allowed. */
async function attemptHttp(method: string, request: object, token: string | null): Promise<Outcome> {
  const fns = (
    ipamMessages as unknown as Record<string, { fromPartial(o: object): unknown; toJSON(m: unknown): unknown }>
  )[`${capitalize(method)}Request`]!;
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), 5_000);
  try {
    const res = await fetch(`${cp.httpUrl}/weft.ipam.v1.IpamService/${capitalize(method)}`, {
      method: 'POST',
      signal: ac.signal,
      headers: { 'content-type': 'application/json', ...(token === null ? {} : { authorization: `Bearer ${token}` }) },
      body: JSON.stringify(fns.toJSON(fns.fromPartial(request))),
    });
    if (res.headers.get('content-type') === 'application/x-ndjson') {
      const reader = res.body!.getReader();
      await reader.read();
      ac.abort();
      return { result: 'allowed', detail: `${res.status} stream` };
    }
    const body = (await res.json()) as { code?: string; message?: string; errorCode?: string };
    if (res.status === 401) return { result: 'unauthenticated', detail: body.message ?? '' };
    if (res.status === 403 && body.errorCode === 'auth.forbidden')
      return { result: 'forbidden', detail: body.message ?? '' };
    return { result: 'allowed', detail: `${res.status} ${body.code ?? 'OK'}: ${body.message ?? ''}` };
  } finally {
    clearTimeout(timer);
  }
}

const SERVICES = {
  ipam: IpamServiceService,
  routes: RoutesServiceService,
  policy: PolicyServiceService,
  audit: AuditServiceService,
  tokens: TokenServiceService,
  certificates: CertificateServiceService,
};

describe('authorization matrix: every RPC as every identity, on real certificates and tokens (and the HTTP gateway)', () => {
  before(async () => {
    cp = await startTestControlPlane();
    scratch = mkdtempSync(path.join(tmpdir(), 'weft-matrix-'));
    // A certificate for weft:admin:test from another CA, with the real CA to check the server: the server must refuse it.
    await ensureControlPlanePki(path.join(scratch, 'other-ca'));
    const forgedDir = path.join(scratch, 'forged');
    await issueClientTlsDir(path.join(scratch, 'other-ca'), forgedDir, { kind: 'admin', name: 'test' });
    copyFileSync(path.join(cp.pki.pkiDir, 'ca.crt'), path.join(forgedDir, 'ca.crt'));
    // TLS with the real CA, and no client certificate.
    const noCert = credentials.createSsl(readFileSync(path.join(cp.pki.pkiDir, 'ca.crt')), null, null, {
      checkServerIdentity: (_h, c) => checkServerIdentity(SERVER_NAME, c),
    });
    const security: Record<GrpcWho, TransportSecurity> = {
      none: cp.security,
      forged: clientTlsDir(forgedDir),
      admin: cp.security,
      read: cp.security,
      poolP: cp.security,
      node1: (await cp.pki.issue('node', 'node1')).security,
      node2: (await cp.pki.issue('node', 'node2')).security,
      controller: (await cp.pki.issue('controller', 'east')).security,
    };
    secrets.read = await cp.createToken('reader', ['read']);
    secrets.poolP = await cp.createToken('p-only', ['ipam:allocate:p', 'ipam:release:p']);
    for (const who of GRPC) {
      const opts = {
        security: security[who],
        ...(who === 'none' ? { credentials: noCert } : {}),
        ...(who === 'read' || who === 'poolP' ? { token: secrets[who] } : {}),
      };
      clients[who] = Object.fromEntries(
        Object.entries(SERVICES).map(([s, d]) => [s, createClient(d, cp.address, opts)]),
      ) as never;
    }
    await adminCall('ipam', 'createPool', { name: 'p', cidr: '10.40.0.0/16', blockPrefixLength: 26 });
    await adminCall('ipam', 'createPool', { name: 'q', cidr: '10.41.0.0/16', blockPrefixLength: 26 });
    await adminCall('routes', 'registerNode', node('node1', 11));
    await adminCall('routes', 'registerNode', node('node2', 12));
  });

  after(async () => {
    for (const c of Object.values(clients)) for (const s of Object.values(c)) s.close();
    await cp?.stop();
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  test('every RPC of the served services is in the matrix (a new RPC without a case fails here)', () => {
    const served = Object.entries(SERVICES).flatMap(([s, d]) => Object.keys(d).map((m) => `${s}.${m}`));
    const called = new Set(CASES.map((c) => `${c.service}.${c.method}`));
    assert.deepEqual(
      served.filter((m) => !called.has(m)),
      [],
    );
  });

  for (const c of CASES) {
    test(`${c.service}.${c.method}${c.label ? ` (${c.label})` : ''}: only admin${c.allowed.map((a) => `, ${a}`).join('')}`, async () => {
      await c.setup?.();
      const callers: Who[] = [...GRPC, ...(c.service === 'ipam' ? HTTP : [])];
      // Those to be refused first: an allowed call may change what a rule looks up (a release frees the handle).
      const order = callers.sort((a, b) => Number(expected(c, a)) - Number(expected(c, b)));
      const wrong: string[] = [];
      for (const who of order) {
        const { result, detail } = who.startsWith('http:')
          ? await attemptHttp(
              c.method,
              c.request,
              who === 'http:none'
                ? null
                : who === 'http:forged'
                  ? `weft_0123456789abcdef.${'A'.repeat(43)}`
                  : secrets[who.slice(5) as 'read' | 'poolP'],
            )
          : await attempt(clients[who as GrpcWho][c.service][c.method]!, c.request);
        const want =
          who === 'none' || who === 'forged'
            ? 'refused'
            : who === 'http:none' || who === 'http:forged'
              ? 'unauthenticated'
              : expected(c, who)
                ? 'allowed'
                : 'forbidden';
        if (process.env.WEFT_TEST_MATRIX_LOG)
          console.log(`${c.service}.${c.method} ${c.label ?? ''} ${who}: ${result}: ${detail}`);
        if (result !== want) wrong.push(`${who}: ${result} (wanted ${want}): ${detail}`);
      }
      assert.deepEqual(wrong, []);
    });
  }
});

function expected(c: Case, who: Who): boolean {
  const name = who.startsWith('http:') ? who.slice(5) : who;
  return name === 'admin' || (c.allowed as string[]).includes(name);
}
