/**
 * Domain errors: specific classes with stable codes. They carry no transport detail; lib/grpc/errors.ts maps
 * each kind to a gRPC status in one table.
 */
export type ErrorKind =
  | 'invalid_argument'
  | 'not_found'
  | 'already_exists'
  | 'conflict'
  | 'exhausted'
  | 'failed_precondition'
  | 'unavailable'
  | 'unauthenticated'
  | 'permission_denied';

export class DomainError extends Error {
  /** code: stable, dotted, e.g. "ipam.pool_exhausted"; kind: what class of failure it is. */
  constructor(
    readonly code: string,
    readonly kind: ErrorKind,
    message: string,
  ) {
    super(message);
    this.name = 'DomainError';
  }
}

export const invalidArgument = (code: string, message: string) => new DomainError(code, 'invalid_argument', message);
