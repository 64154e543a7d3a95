import { DomainError } from '../../../lib/errors.js';

export const ipamErrors = {
  invalid: (field: string, message: string) => new DomainError(`ipam.invalid_${field}`, 'invalid_argument', message),
  poolExists: (name: string) =>
    new DomainError(
      'ipam.pool_exists',
      'already_exists',
      `a pool named ${JSON.stringify(name)} already exists; choose another name`,
    ),
  poolOverlaps: (cidr: string, other: string) =>
    new DomainError(
      'ipam.pool_overlaps',
      'already_exists',
      `pool CIDR ${cidr} overlaps existing pool ${other}; pools must not overlap within a routing domain`,
    ),
  routingDomainNotFound: (name: string) =>
    new DomainError(
      'ipam.routing_domain_not_found',
      'not_found',
      `no routing domain named ${JSON.stringify(name)}; create it first (\`weft ipam domain create\`)`,
    ),
  clusterNotFound: (name: string) =>
    new DomainError(
      'ipam.cluster_not_found',
      'not_found',
      `no cluster named ${JSON.stringify(name)} is registered; register it first (\`weft ipam cluster register\`)`,
    ),
  poolNotFound: (name: string) =>
    new DomainError(
      'ipam.pool_not_found',
      'not_found',
      `no pool named ${JSON.stringify(name)}; list pools with \`weft ipam pools\``,
    ),
  noPools: () =>
    new DomainError('ipam.no_pools', 'failed_precondition', 'there are no pools; create one first (CreatePool)'),
  poolDisabled: (name: string) =>
    new DomainError(
      'ipam.pool_disabled',
      'failed_precondition',
      `pool ${name} is disabled: it makes no new allocations; enable it or ask for another pool`,
    ),
  useNotAllowed: (name: string, use: string, allowed: string[]) =>
    new DomainError(
      'ipam.use_not_allowed',
      'failed_precondition',
      `pool ${name} allows ${allowed.join(', ')}, not ${use}`,
    ),
  nodeNotSelected: (name: string, selector: string) =>
    new DomainError(
      'ipam.node_not_selected',
      'failed_precondition',
      `pool ${name}'s node selector ${JSON.stringify(selector)} does not select this node`,
    ),
  noPoolSelectsNode: (node: string, labels: Record<string, string>, pools: string[]) =>
    new DomainError(
      'ipam.node_not_selected',
      'failed_precondition',
      `no pool this pod may use selects node ${node} (its labels: ${JSON.stringify(labels)}; pools: ${pools.join(', ')}): label the node (SetNodeLabels) or change a pool's node selector`,
    ),
  noPoolSelectsNamespace: (namespace: string, labels: Record<string, string>, pools: string[]) =>
    new DomainError(
      'ipam.namespace_not_selected',
      'failed_precondition',
      `no pool this pod may use on this node selects namespace ${JSON.stringify(namespace)} (its labels: ${JSON.stringify(labels)}; pools: ${pools.join(', ')}): label the namespace (SetNamespaceLabels) or change a pool's namespace selector`,
    ),
  staleEtag: (what: string) =>
    new DomainError(
      'ipam.stale_etag',
      'conflict',
      `${what} changed since you read it; read it again and retry with the new etag`,
    ),
  reservedInUse: (range: string, holders: string[]) =>
    new DomainError(
      'ipam.reservation_in_use',
      'failed_precondition',
      `range ${range} has live allocations: ${holders.join(', ')}; release them first`,
    ),
  specificNotInPool: (address: string) =>
    new DomainError(
      'ipam.address_not_in_pool',
      'failed_precondition',
      `address ${address} is not in any enabled pool this pod may use on this node`,
    ),
  specificReserved: (address: string, range: string) =>
    new DomainError('ipam.address_reserved', 'failed_precondition', `address ${address} is reserved (${range})`),
  specificInUse: (address: string, handle: string) =>
    new DomainError('ipam.address_in_use', 'already_exists', `address ${address} is held by ${handle}`),
  specificResting: (address: string, until: Date) =>
    new DomainError(
      'ipam.address_cooling_down',
      'failed_precondition',
      `address ${address} was released recently and rests until ${until.toISOString()}; it can be asked for again from then`,
    ),
  specificOtherNode: (address: string, node: string) =>
    new DomainError(
      'ipam.address_on_other_node',
      'failed_precondition',
      `address ${address} lies in a block held by node ${node}; a pod can only take it there`,
    ),
  noPoolForFamily: (family: number) =>
    new DomainError(
      'ipam.no_pool_for_family',
      'failed_precondition',
      `there is no IPv${family} pool; create one or ask for other families`,
    ),
  attemptReleased: (attemptId: string, handle: string, at: Date) =>
    new DomainError(
      'ipam.attempt_released',
      'conflict',
      `allocation attempt ${attemptId} of handle ${handle} was released (fenced) at ${at.toISOString()} by a Release naming it, so it allocates nothing; a new allocation needs a new attempt id`,
    ),
  overloaded: (queued: number) =>
    new DomainError(
      'ipam.overloaded',
      'unavailable',
      `this IPAM replica already has ${queued} allocations waiting for the database; retry shortly (or on another replica)`,
    ),
  nodeAllocationLimit: (node: string, live: number, limit: number) =>
    new DomainError(
      'ipam.node_allocation_limit',
      'exhausted',
      `node ${node} holds ${live} live allocations, the most a node may hold (WEFT_LIMIT_NODE_ALLOCATIONS=${limit}); release addresses it no longer uses (its CNI garbage collection does), or raise the setting`,
    ),
  exhausted: (what: string) =>
    new DomainError('ipam.pool_exhausted', 'exhausted', `no free address in ${what}: every block is claimed and full`),
};

export const historyErrors = {
  badQuery: () =>
    ipamErrors.invalid(
      'history_query',
      'ask about exactly one of: address (with an optional time), pod_name with pod_namespace, node (with an optional range), handle',
    ),
};

/**
 * A race a store reports and a use case may retry: a concurrent transaction took the same row (unique violation),
 * or the database broke a deadlock or a serialization conflict. Not a DomainError: one that outlasts the retries is
 * unexpected (INTERNAL), as the error it wraps (`cause`) would be.
 */
export class TransientConflict extends Error {
  constructor(cause: unknown) {
    super((cause as Error)?.message ?? 'transient conflict', { cause });
    this.name = 'TransientConflict';
  }
}
