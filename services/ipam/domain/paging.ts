import { ipamErrors } from './ipam.errors.js';

/**
 * Page tokens: opaque to callers, base64url of the list's kind and the last key returned (keyset paging, so pages
 * stay correct while rows are added or removed). A token for another list, or a mangled one, is INVALID_ARGUMENT.
 */
export type PageKey = (string | number)[];

export function encodePageToken(kind: string, key: PageKey): string {
  return Buffer.from(JSON.stringify({ k: kind, v: key })).toString('base64url');
}

export function decodePageToken(kind: string, token: string): PageKey | null {
  if (!token) return null;
  try {
    const parsed = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as { k?: unknown; v?: unknown };
    if (
      parsed.k === kind &&
      Array.isArray(parsed.v) &&
      parsed.v.every((x) => typeof x === 'string' || typeof x === 'number')
    )
      return parsed.v as PageKey;
  } catch {
    // fall through
  }
  throw ipamErrors.invalid(
    'page_token',
    `page_token is not one this list (${kind}) gave out; start again with an empty page_token`,
  );
}

export function pageSize(requested: number, fallback: number, max: number): number {
  if (requested > max) throw ipamErrors.invalid('page_size', `page_size ${requested} is over ${max}`);
  return requested || fallback;
}

export interface Page<T> {
  items: T[];
  next: PageKey | null;
}
