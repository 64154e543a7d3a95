/**
 * gRPC status codes and Weft's error-code trailer, for code that must not load @grpc/grpc-js (the CNI plugin).
 * The numbers are the wire values of grpc/doc/statuscodes.md, the same as grpc-js's `status` enum (grpc.test.ts
 * checks that they agree).
 */
export const GrpcStatus = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

export type GrpcStatusCode = (typeof GrpcStatus)[keyof typeof GrpcStatus];

const NAMES: readonly string[] = Object.keys(GrpcStatus);

/** "UNAVAILABLE" for 14; the number itself for a code outside the table. */
export function statusName(code: number): string {
  return NAMES[code] ?? String(code);
}

/** The trailer that carries a Weft error's stable domain code (e.g. "agent.check_failed"). */
export const ERROR_CODE_KEY = 'weft-error-code';

/** The trailer of a RESOURCE_EXHAUSTED refusal that says how many milliseconds until a retry would pass (a rate limit). */
export const RETRY_AFTER_KEY = 'retry-after-ms';

/**
 * The stable domain code carried by a gRPC error, if any. Reads the error's `metadata` through `get(key)`, which both
 * grpc-js's Metadata and the plugin's unary client (unary-client.ts) provide.
 */
export function errorCodeOf(err: unknown): string | undefined {
  const md = (err as { metadata?: { get?: unknown } } | undefined)?.metadata;
  const v = typeof md?.get === 'function' ? (md.get(ERROR_CODE_KEY) as unknown[])[0] : undefined;
  return typeof v === 'string' ? v : undefined;
}
