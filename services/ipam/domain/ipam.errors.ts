import { DomainError } from '../../../lib/errors.js';

export const ipamErrors = {
  invalid: (field: string, message: string) => new DomainError(`ipam.invalid_${field}`, 'invalid_argument', message),
  poolExists: (name: string) => new DomainError('ipam.pool_exists', 'already_exists', `a pool named ${JSON.stringify(name)} already exists; choose another name`),
  poolOverlaps: (cidr: string, other: string) =>
    new DomainError('ipam.pool_overlaps', 'already_exists', `pool CIDR ${cidr} overlaps existing pool ${other}; pools must not overlap`),
  poolNotFound: (name: string) => new DomainError('ipam.pool_not_found', 'not_found', `no pool named ${JSON.stringify(name)}; list pools with \`weft ipam pools\``),
  noPools: () => new DomainError('ipam.no_pools', 'failed_precondition', 'there are no pools; create one first (CreatePool)'),
  noPoolForFamily: (family: number) =>
    new DomainError('ipam.no_pool_for_family', 'failed_precondition', `there is no IPv${family} pool; create one or ask for other families`),
  exhausted: (what: string) => new DomainError('ipam.pool_exhausted', 'exhausted', `no free address in ${what}: every block is claimed and full`),
};

export const historyErrors = {
  badQuery: () => ipamErrors.invalid('history_query', 'ask about exactly one of: address (with an optional time), pod_name with pod_namespace, node (with an optional range), handle'),
};
