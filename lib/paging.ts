import { DomainError } from './errors.js';

/**
 * Page tokens for lists that were once answered whole (ListNodes, ListPolicies): opaque to callers, base64url of the
 * list's kind and the last key returned (keyset paging, so pages stay correct while rows come and go). A token of
 * another list, or a mangled one, is INVALID_ARGUMENT with `code`. IPAM's lists keep their own
 * (services/ipam/domain/paging.ts), of the same shape.
 */
export type PageKey = (string | number)[];

export function encodePageToken(kind: string, key: PageKey): string {
  return Buffer.from(JSON.stringify({ k: kind, v: key })).toString('base64url');
}

/** The key a token carries, checked to have `length` strings; null for an empty token (the first page). */
export function decodePageToken(code: string, kind: string, token: string, length: number): string[] | null {
  if (!token) return null;
  try {
    const parsed = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as { k?: unknown; v?: unknown };
    if (
      parsed.k === kind &&
      Array.isArray(parsed.v) &&
      parsed.v.length === length &&
      parsed.v.every((x) => typeof x === 'string')
    )
      return parsed.v as string[];
  } catch {
    // fall through
  }
  throw new DomainError(
    code,
    'invalid_argument',
    `page_token is not one this list (${kind}) gave out; start again with an empty page_token`,
  );
}

/**
 * The page size asked for, at most `max`. 0 stays 0: the whole list, for callers that predate paging (they do not
 * follow next_page_token, so a short list would look complete to them).
 */
export function pageSizeOf(code: string, requested: number, max: number): number {
  if (requested > max) throw new DomainError(code, 'invalid_argument', `page_size ${requested} is over ${max}`);
  return requested;
}
