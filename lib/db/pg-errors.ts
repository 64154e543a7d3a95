/** PostgreSQL error details, whether thrown by pg directly or wrapped by drizzle. */
export interface PgErrorInfo {
  code: string;
  constraint?: string;
}

export function pgErrorOf(err: unknown): PgErrorInfo | undefined {
  for (
    let e = err as { code?: unknown; constraint?: string; cause?: unknown } | undefined, i = 0;
    e && i < 4;
    e = e.cause as typeof e, i++
  ) {
    if (typeof e.code === 'string' && /^[0-9A-Z]{5}$/.test(e.code)) return { code: e.code, constraint: e.constraint };
  }
  return undefined;
}

export const PG = {
  uniqueViolation: '23505',
  exclusionViolation: '23P01',
  serializationFailure: '40001',
  deadlockDetected: '40P01',
} as const;
