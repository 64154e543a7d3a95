import { DomainError } from '../errors.js';

/**
 * Whether an error means "the database cannot serve now" rather than "this request is wrong": it cannot be reached,
 * did not answer in time (query_timeout, statement_timeout, lock_timeout, connect timeout), ended the session, or is
 * out of resources. Such errors reach callers as the kind `unavailable` (gRPC UNAVAILABLE: retry later), never as
 * INTERNAL. Looks through wrappers (drizzle's DrizzleQueryError keeps pg's error as `cause`).
 */
export function databaseUnavailableReason(err: unknown): string | null {
  for (
    let e = err as { code?: unknown; message?: unknown; cause?: unknown } | undefined, i = 0;
    e && i < 4;
    e = e.cause as typeof e, i++
  ) {
    const code = typeof e.code === 'string' ? e.code : '';
    const message = typeof e.message === 'string' ? e.message : '';
    if (SQLSTATE_REASONS[code]) return SQLSTATE_REASONS[code]!;
    if (/^(08|53)[0-9A-Z]{3}$/.test(code))
      return code.startsWith('08') ? 'the connection to the database failed' : 'the database is out of resources';
    if (SOCKET_ERRORS.has(code)) return `the database cannot be reached (${code})`;
    if (message === 'Query read timeout') return 'the database did not answer in time';
    if (message === COMMIT_NOT_REPLICATED)
      return "the database's synchronous standby did not confirm the write in time (it may or may not have been kept)";
    if (/timeout exceeded when trying to connect|Connection terminated due to connection timeout/.test(message))
      return 'no database session could be opened in time';
    if (/Connection terminated|is not queryable/.test(message)) return 'the database session ended';
  }
  return null;
}

/** The error a statement gets instead of success when it stopped waiting for the synchronous standby (database.ts). */
export const COMMIT_NOT_REPLICATED = 'the commit was not confirmed by the synchronous standby';

const SQLSTATE_REASONS: Record<string, string> = {
  '57014': 'a statement ran past the statement timeout',
  '55P03': 'a lock was not granted within the lock timeout',
  '25P03': 'a transaction sat idle past the idle-in-transaction timeout',
  '25006': 'the database accepts no writes (a standby, or a primary being demoted)',
  '57P01': 'the database is shutting down',
  '57P02': 'the database crashed',
  '57P03': 'the database is not accepting connections yet',
  '57P05': 'the database ended an idle session',
};

const SOCKET_ERRORS = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
]);

export const isDatabaseUnavailable = (err: unknown) => databaseUnavailableReason(err) !== null;

/** The domain error a store throws for a database that cannot serve now: `<service>.database_unavailable`, kind unavailable. */
export function databaseUnavailable(service: string, reason: string): DomainError {
  return new DomainError(
    `${service}.database_unavailable`,
    'unavailable',
    `${service} cannot use its database right now: ${reason}; retry shortly`,
  );
}

/**
 * A store whose every method turns "database unavailable" errors into the domain error above; every other error
 * passes through unchanged. Applied once where a store is made, so no query can leak a raw connection error.
 */
export function withDatabaseErrors<T extends object>(service: string, store: T): T {
  const map = (err: unknown): never => {
    const reason = databaseUnavailableReason(err);
    throw reason === null ? err : databaseUnavailable(service, reason);
  };
  const out: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(store)) {
    out[name] =
      typeof value !== 'function'
        ? value
        : (...args: unknown[]) => {
            let result: unknown;
            try {
              result = (value as (...a: unknown[]) => unknown).apply(store, args);
            } catch (err) {
              return map(err);
            }
            return result instanceof Promise ? result.catch(map) : result;
          };
  }
  return out as T;
}
