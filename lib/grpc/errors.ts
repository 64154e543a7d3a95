import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { DomainError, type ErrorKind } from '../errors.js';
import { ERROR_CODE_KEY, RETRY_AFTER_KEY } from './status.js';

export { ERROR_CODE_KEY, RETRY_AFTER_KEY, errorCodeOf } from './status.js';

/** The one table from domain error kinds to gRPC status codes. */
export const statusForKind: Record<ErrorKind, status> = {
  invalid_argument: status.INVALID_ARGUMENT,
  not_found: status.NOT_FOUND,
  already_exists: status.ALREADY_EXISTS,
  conflict: status.ABORTED,
  exhausted: status.RESOURCE_EXHAUSTED,
  failed_precondition: status.FAILED_PRECONDITION,
  unavailable: status.UNAVAILABLE,
  unauthenticated: status.UNAUTHENTICATED,
  permission_denied: status.PERMISSION_DENIED,
};

/** Turns any thrown value into a gRPC error; unexpected errors become INTERNAL with a generic message. */
export function toServiceError(err: unknown): { error: Partial<ServiceError>; expected: boolean } {
  const metadata = new Metadata();
  if (err instanceof DomainError) {
    metadata.set(ERROR_CODE_KEY, err.code);
    // A refusal that knows when a retry would pass (lib/auth/limits.ts) says so: `retry-after-ms` in the trailers.
    const retryAfterMs = (err as { retryAfterMs?: unknown }).retryAfterMs;
    if (typeof retryAfterMs === 'number') metadata.set(RETRY_AFTER_KEY, String(retryAfterMs));
    return { error: { code: statusForKind[err.kind], details: err.message, metadata }, expected: true };
  }
  metadata.set(ERROR_CODE_KEY, 'internal');
  return { error: { code: status.INTERNAL, details: 'internal error; see the server log', metadata }, expected: false };
}
