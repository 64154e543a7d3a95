import { DomainError } from '../errors.js';
import type { Identity } from './identity.js';

/**
 * Who may call what: one rule per gRPC method of the control plane (IpamService, RoutesService, PolicyService,
 * AuditService, TokenService), keyed
 * by full method path. `admin` may call every method that has a rule; a method without one is refused to everyone.
 * A rule names the other identity kinds that may call it and, for nodes and controllers, what of the request must be
 * their own (a node allocates for itself, releases only handles it holds); for tokens, the scope it needs. It also
 * marks mutations (what audit records). Pure but for the lookups a service supplies (which node holds a handle).
 * See lib/auth/DESIGN.md for the table in prose.
 */

/** A request as the handler gets it (a decoded message: fields by their camelCase names). */
type Message = Record<string, unknown>;

/** What a rule may need to know beyond the request; each is supplied by the service that owns the data. */
export interface AccessLookups {
  /** IPAM: the node and pools of a handle's live allocations; null when the handle holds none. */
  holderOfHandle?(handle: string): Promise<{ node: string; pools: string[] } | null>;
  /** Policy: the node of the pod attached under a sandbox (CNI container) id; null when none is. */
  nodeOfContainer?(containerId: string): Promise<string | null>;
}

type Why = string | null;

/** A condition on the request for a caller of one kind: null when met, else why not. */
export interface RequestCheck {
  /** What it demands, for the design table ("node = the caller"). */
  readonly describe: string;
  /** The request fields it reads ("requests[].node"): a test checks each against the service definitions. */
  readonly fields: readonly string[];
  check(
    request: Message,
    caller: { name: string; scopes: readonly string[] },
    lookups: AccessLookups,
  ): Why | Promise<Why>;
}

export interface MethodRule {
  /** Changes state: audit records every call. */
  mutation: boolean;
  /** A node may call it when every check passes (an empty list: any request); absent: nodes may not. */
  node?: readonly RequestCheck[];
  /** The same for a Kubernetes controller (its name is its cluster's). */
  controller?: readonly RequestCheck[];
  /** A token may call it with the `admin` scope, or when this check (of its scopes) passes. */
  token?: RequestCheck;
  /** Anyone may call it, `none` included: the method authenticates its request itself (the bootstrap's token). */
  anyone?: true;
}

export type Decision =
  | { allowed: true; rule: MethodRule }
  | { allowed: false; code: 'auth.unauthenticated' | 'auth.forbidden'; message: string };

// --- request fields -------------------------------------------------------------------------------------------------

/** The values at a field path ("node", "requests[].node"), each with where it was ("requests[2].node"). */
function valuesAt(request: Message, path: string): { value: string; at: string }[] {
  const [head, tail] = path.split('[].') as [string, string | undefined];
  if (tail === undefined) return [{ value: String(request[head] ?? ''), at: head }];
  const items = (request[head] ?? []) as Message[];
  return items.map((item, i) => ({ value: String(item[tail] ?? ''), at: `${head}[${i}].${tail}` }));
}

const named = (value: string, at: string) => `the request names ${JSON.stringify(value)} in ${at}`;

// --- checks for nodes and controllers -------------------------------------------------------------------------------

/** Every value at `field` must be the caller's name ("node node1 may only allocate for itself (...)"). */
function callerNamed(kind: 'node' | 'controller', field: string, may: string): RequestCheck {
  return {
    describe: `${field} = the caller`,
    fields: [field],
    check(request, caller) {
      for (const { value, at } of valuesAt(request, field)) {
        if (value !== caller.name) return `${kind} ${caller.name} may only ${may} (${named(value, at)})`;
      }
      return null;
    },
  };
}
const ownNode = (field: string, may: string) => callerNamed('node', field, may);
const ownCluster = (field: string, may: string) => callerNamed('controller', field, may);

/** The handle's live allocations are the calling node's (or it has none: releasing it changes nothing). */
const handleHeldByNode: RequestCheck = {
  describe: 'handle held by the caller (or by nobody)',
  fields: ['handle'],
  async check(request, caller, lookups) {
    const handle = String(request.handle ?? '');
    if (!lookups.holderOfHandle)
      return `cannot tell which node holds handle ${JSON.stringify(handle)} (the server supplies no lookup)`;
    const holder = await lookups.holderOfHandle(handle);
    if (holder && holder.node !== caller.name) {
      return `node ${caller.name} may only release handles it holds (handle ${JSON.stringify(handle)} is held by node ${holder.node})`;
    }
    return null;
  },
};

/** The pod attached under the container id is on the calling node (or none is: detaching changes nothing). */
const containerOnNode: RequestCheck = {
  describe: 'containerId attached on the caller (or nowhere)',
  fields: ['containerId'],
  async check(request, caller, lookups) {
    const id = String(request.containerId ?? '');
    if (!lookups.nodeOfContainer)
      return `cannot tell where container ${JSON.stringify(id)} is attached (the server supplies no lookup)`;
    const node = await lookups.nodeOfContainer(id);
    if (node !== null && node !== caller.name) {
      return `node ${caller.name} may only detach pods attached on itself (container ${JSON.stringify(id)} is attached on node ${node})`;
    }
    return null;
  },
};

// --- checks for tokens ----------------------------------------------------------------------------------------------

const scopesOf = (scopes: readonly string[]) => (scopes.length > 0 ? scopes.join(', ') : 'none');

/** The `read` scope: every method that changes nothing. */
const readScope: RequestCheck = {
  describe: 'scope read',
  fields: [],
  check: (_request, caller) =>
    caller.scopes.includes('read')
      ? null
      : `token ${caller.name} lacks scope read (it has: ${scopesOf(caller.scopes)})`,
};

/** `<verb>:<pool>` for every pool the request names at `field`; a request naming no pool is refused (it must name one). */
function poolScope(verb: 'ipam:allocate', field: string): RequestCheck {
  return {
    describe: `scope ${verb}:<pool> for each ${field}`,
    fields: [field],
    check(request, caller) {
      for (const { value, at } of valuesAt(request, field)) {
        if (value === '')
          return `token ${caller.name} may only allocate in pools it has a scope for: name the pool (${at} is empty; it has: ${scopesOf(caller.scopes)})`;
        if (!caller.scopes.includes(`${verb}:${value}`))
          return `token ${caller.name} lacks scope ${verb}:${value} (${named(value, at)}; it has: ${scopesOf(caller.scopes)})`;
      }
      return null;
    },
  };
}

/** `ipam:release:<pool>` for the pools of the handle's live allocations (a handle holding nothing: nothing to release). */
const releaseScope: RequestCheck = {
  describe: "scope ipam:release:<pool> of the handle's pools",
  fields: ['handle'],
  async check(request, caller, lookups) {
    const handle = String(request.handle ?? '');
    if (!lookups.holderOfHandle)
      return `cannot tell which pools handle ${JSON.stringify(handle)} holds addresses of (the server supplies no lookup)`;
    const holder = await lookups.holderOfHandle(handle);
    for (const pool of holder?.pools ?? []) {
      if (!caller.scopes.includes(`ipam:release:${pool}`)) {
        return `token ${caller.name} lacks scope ipam:release:${pool} (handle ${JSON.stringify(handle)} holds an address of pool ${pool}; it has: ${scopesOf(caller.scopes)})`;
      }
    }
    return null;
  },
};

// --- the table ------------------------------------------------------------------------------------------------------

const ANY: readonly RequestCheck[] = [];
/** Changes nothing: admin, and tokens with the read scope, plus whoever `more` names. */
const read = (more: Omit<MethodRule, 'mutation' | 'token'> = {}): MethodRule => ({
  mutation: false,
  token: readScope,
  ...more,
});
/** Changes state: admin (and tokens with the admin scope), plus whoever `more` names. */
const write = (more: Omit<MethodRule, 'mutation'> = {}): MethodRule => ({ mutation: true, ...more });

const IPAM = '/weft.ipam.v1.IpamService/';
const ROUTES = '/weft.routes.v1.RoutesService/';
const POLICY = '/weft.policy.v1.PolicyService/';
const AUDIT = '/weft.audit.v1.AuditService/';
const TOKENS = '/weft.auth.v1.TokenService/';
const BOOTSTRAP = '/weft.auth.v1.BootstrapService/';
const CERTIFICATES = '/weft.auth.v1.CertificateService/';

/**
 * Every method of the control plane's services. Nodes get what the agent (node-dataplane/) calls, the controller what
 * kube-controller/controller.ts calls; the control plane's own clients (the routes service's affinity follower, IPAM's
 * sweeper) call as admin. AgentService (the agent's local CNI socket) is not here: it is not served by the control plane.
 */
export const AUTHORIZATION_RULES: Readonly<Record<string, MethodRule>> = Object.freeze({
  // IPAM: pools, reservations, routing domains, aggregates are the operator's; the controller makes its cluster's pool.
  [`${IPAM}CreatePool`]: write({ controller: ANY }),
  [`${IPAM}UpdatePool`]: write(),
  [`${IPAM}CreateReservation`]: write(),
  [`${IPAM}ListReservations`]: read(),
  [`${IPAM}DeleteReservation`]: write(),
  [`${IPAM}ListPools`]: read({ node: ANY, controller: ANY }),
  [`${IPAM}Allocate`]: write({
    node: [ownNode('node', 'allocate for itself')],
    token: poolScope('ipam:allocate', 'pool'),
  }),
  [`${IPAM}BatchAllocate`]: write({
    node: [ownNode('requests[].node', 'allocate for itself')],
    token: poolScope('ipam:allocate', 'requests[].pool'),
  }),
  [`${IPAM}Release`]: write({ node: [handleHeldByNode], controller: ANY, token: releaseScope }),
  [`${IPAM}ListAllocations`]: read({ node: [ownNode('node', 'list its own allocations')], controller: ANY }),
  [`${IPAM}WatchBlockAffinities`]: read(),
  [`${IPAM}GarbageCollect`]: write({ controller: ANY }),
  [`${IPAM}SetNodeLabels`]: write({ controller: ANY }),
  [`${IPAM}SetNamespaceLabels`]: write({ controller: ANY }),
  [`${IPAM}ListAllocationHistory`]: read(),
  [`${IPAM}CreateRoutingDomain`]: write(),
  [`${IPAM}ListRoutingDomains`]: read(),
  [`${IPAM}RegisterCluster`]: write({ controller: [ownCluster('name', 'register its own cluster')] }),
  [`${IPAM}ListClusters`]: read(),
  [`${IPAM}CreateAggregate`]: write(),
  [`${IPAM}ListAggregates`]: read(),
  [`${IPAM}AllocatePrefix`]: write({ controller: [ownCluster('cluster', 'allocate prefixes for its own cluster')] }),
  [`${IPAM}ReleasePrefix`]: write(),
  [`${IPAM}ListPrefixes`]: read(),
  [`${IPAM}CheckConsistency`]: read(),
  [`${IPAM}GetUtilization`]: read(),
  // Routes: a node registers and renews itself and watches everyone's routes; the controller withdraws a deleted node.
  [`${ROUTES}RegisterNode`]: write({ node: [ownNode('name', 'register itself')] }),
  [`${ROUTES}RenewLease`]: write({ node: [ownNode('name', 'renew its own lease')] }),
  [`${ROUTES}DeregisterNode`]: write({ controller: ANY }),
  [`${ROUTES}ListNodes`]: read({ controller: ANY }),
  [`${ROUTES}ListDepartedNodes`]: read(),
  [`${ROUTES}WatchRoutes`]: read({ node: [ownNode('node', 'watch routes as itself')] }),
  // Policy: the controller describes namespaces, pods and policies; a node reports its attachments and reads its rules.
  [`${POLICY}UpsertNamespace`]: write({ controller: ANY }),
  [`${POLICY}DeleteNamespace`]: write({ controller: ANY }),
  [`${POLICY}UpsertPod`]: write({ controller: ANY }),
  [`${POLICY}DeletePod`]: write({ controller: ANY }),
  [`${POLICY}AttachPod`]: write({ node: [ownNode('node', 'report pods attached on itself')] }),
  [`${POLICY}DetachPod`]: write({ node: [containerOnNode] }),
  [`${POLICY}ApplyPolicies`]: write({ controller: ANY }),
  [`${POLICY}DeletePolicy`]: write({ controller: ANY }),
  [`${POLICY}ListPolicies`]: read({ controller: ANY }),
  [`${POLICY}ListNamespaces`]: read({ controller: ANY }),
  [`${POLICY}ListPods`]: read({ controller: ANY }),
  [`${POLICY}Explain`]: read(),
  [`${POLICY}WatchNodePolicy`]: read({ node: [ownNode('node', 'watch its own policy')] }),
  // The audit log: who did what. Administrators only (not read tokens: it names every caller and resource).
  [`${AUDIT}ListAuditEvents`]: { mutation: false },
  // API tokens: administrators (and admin-scoped tokens) only; a read token may not even list them.
  [`${TOKENS}CreateToken`]: write(),
  [`${TOKENS}ListTokens`]: { mutation: false },
  [`${TOKENS}RevokeToken`]: write(),
  // Certificates: recording what the CA issued and revoking it are administrators' (it can lock any caller out).
  [`${CERTIFICATES}RecordCertificate`]: write(),
  [`${CERTIFICATES}RevokeCertificates`]: write(),
  [`${CERTIFICATES}ListCertificates`]: { mutation: false },
  // The bootstrap listener's one method: callers have no certificate yet; the Kubernetes token in the request, checked
  // with a TokenReview by the method itself, is what authenticates them (services/bootstrap).
  [`${BOOTSTRAP}IssueCertificate`]: { mutation: true, anyone: true },
});

/** The rule of a method, or undefined (the method is refused to everyone). */
export function methodRule(path: string): MethodRule | undefined {
  return Object.hasOwn(AUTHORIZATION_RULES, path) ? AUTHORIZATION_RULES[path] : undefined;
}

/** Who a rule lets call, for messages: "admin, node". */
function allowedKinds(rule: MethodRule): string {
  return [
    'admin',
    ...(rule.node ? ['node'] : []),
    ...(rule.controller ? ['controller'] : []),
    `token with scope ${rule.token ? `admin or ${rule.token.describe.replace(/^scope /, '')}` : 'admin'}`,
  ].join(', ');
}

const forbidden = (message: string): Decision => ({ allowed: false, code: 'auth.forbidden', message });

/** Whether `identity` may call `path` with `request`. */
export async function authorize(
  path: string,
  identity: Identity,
  request: unknown,
  lookups: AccessLookups = {},
): Promise<Decision> {
  const anyone = methodRule(path);
  if (anyone?.anyone) return { allowed: true, rule: anyone };
  if (identity.kind === 'none') {
    return {
      allowed: false,
      code: 'auth.unauthenticated',
      message: `${path} needs an authenticated caller (a client certificate of a node, an admin or a controller, or a token); the call presented none`,
    };
  }
  const rule = methodRule(path);
  if (!rule) return forbidden(`${path} has no authorization rule: nobody may call it`);
  if (identity.kind === 'admin') return { allowed: true, rule };
  const req = (request ?? {}) as Message;
  let checks: readonly RequestCheck[] | undefined;
  const caller = { name: identity.name, scopes: identity.kind === 'token' ? identity.scopes : [] };
  if (identity.kind === 'token') {
    if (identity.scopes.includes('admin')) return { allowed: true, rule };
    if (!rule.token)
      return forbidden(`token ${identity.name} lacks scope admin for ${path} (it has: ${scopesOf(identity.scopes)})`);
    checks = [rule.token];
  } else {
    checks = rule[identity.kind];
    if (!checks)
      return forbidden(`${identity.kind} ${identity.name} may not call ${path} (allowed: ${allowedKinds(rule)})`);
  }
  for (const c of checks) {
    const why = await c.check(req, caller, lookups);
    if (why !== null) return forbidden(why);
  }
  return { allowed: true, rule };
}

/** The error a refused call fails with: UNAUTHENTICATED for no identity, PERMISSION_DENIED otherwise. */
export function authorizationError(decision: Extract<Decision, { allowed: false }>): DomainError {
  return new DomainError(
    decision.code,
    decision.code === 'auth.unauthenticated' ? 'unauthenticated' : 'permission_denied',
    decision.message,
  );
}

/** Resolves when `identity` may call `path` with `request`; otherwise fails with authorizationError. */
export async function ensureAuthorized(
  path: string,
  identity: Identity,
  request: unknown,
  lookups: AccessLookups = {},
): Promise<void> {
  const decision = await authorize(path, identity, request, lookups);
  if (!decision.allowed) throw authorizationError(decision);
}
