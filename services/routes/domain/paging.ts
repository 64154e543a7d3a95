import { DomainError } from '../../../lib/errors.js';

/**
 * Page tokens of the routes service's lists: opaque to callers, base64url of the list's kind and the last key
 * returned (keyset paging, so pages stay correct while nodes come and go). A token of another list, or a mangled one,
 * is INVALID_ARGUMENT.
 */
export const MAX_PAGE_SIZE = 5000;

export function encodePageToken(kind: string, key: string): string {
  return Buffer.from(JSON.stringify({ k: kind, v: key })).toString('base64url');
}

export function decodePageToken(kind: string, token: string): string | null {
  if (!token) return null;
  try {
    const parsed = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as { k?: unknown; v?: unknown };
    if (parsed.k === kind && typeof parsed.v === 'string') return parsed.v;
  } catch {
    // fall through
  }
  throw new DomainError('routes.invalid_page_token', 'invalid_argument', `page_token is not one this list (${kind}) gave out; start again with an empty page_token`);
}

/** The page size asked for; 0 means the whole list (see ListNodesRequest.page_size). */
export function pageSize(requested: number): number {
  if (requested > MAX_PAGE_SIZE) throw new DomainError('routes.invalid_page_size', 'invalid_argument', `page_size ${requested} is over ${MAX_PAGE_SIZE}`);
  return requested;
}
