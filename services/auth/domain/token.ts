import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { DomainError } from '../../../lib/errors.js';

/**
 * API tokens: what an external system presents as `authorization: Bearer <secret>`.
 *
 * A secret is `weft_<key id>.<secret part>`: the key id (16 hex digits, 64 random bits) is public and finds the
 * token's row; the secret part (43 base64url characters, 256 random bits) is checked against the SHA-256 hash kept
 * for it, in constant time. The control plane never stores a secret. Pure but for randomness and hashing.
 */
export interface Token {
  keyId: string;
  name: string;
  scopes: string[];
  createdAt: Date;
  expiresAt: Date | null;
  revokedAt: Date | null;
  createdBy: string;
}

/** A token as stored: with the SHA-256 of its secret part. */
export type StoredToken = Token & { secretHash: Buffer };

export const tokenErrors = {
  badName: (name: string) =>
    new DomainError(
      'auth.bad_token_name',
      'invalid_argument',
      `token name ${JSON.stringify(name)} must be 1-63 of a-z, 0-9, '.', '_' or '-', starting and ending with a letter or digit`,
    ),
  noScope: () =>
    new DomainError('auth.unknown_scope', 'invalid_argument', `a token needs at least one scope: ${SCOPE_HELP}`),
  unknownScope: (scope: string) =>
    new DomainError(
      'auth.unknown_scope',
      'invalid_argument',
      `unknown scope ${JSON.stringify(scope)}: scopes are ${SCOPE_HELP}`,
    ),
  badExpiry: (seconds: number) =>
    new DomainError(
      'auth.bad_expiry',
      'invalid_argument',
      `a token may expire in at most ${MAX_EXPIRY_SECONDS} seconds (ten years), not ${seconds}; 0: never`,
    ),
  exists: (name: string) =>
    new DomainError(
      'auth.token_exists',
      'already_exists',
      `a token named ${JSON.stringify(name)} exists and is not revoked; revoke it first (\`weft token revoke ${name}\`) or choose another name`,
    ),
  notFound: (name: string) =>
    new DomainError(
      'auth.token_not_found',
      'not_found',
      `no token named ${JSON.stringify(name)} that is not revoked; list them with \`weft token list\``,
    ),
  /** A bearer secret that is not a Weft token, names no token, or does not match: the call is refused. */
  invalid: (why: string) => new DomainError('auth.invalid_token', 'unauthenticated', why),
};

export const MAX_EXPIRY_SECONDS = 10 * 365 * 86_400;
const SCOPE_HELP = '"read", "admin", "ipam:allocate:<pool>", "ipam:release:<pool>"';
const NAME = /^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$/;
/** A pool name in a scope (what IPAM accepts as a pool name, and no more). */
const POOL = /^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$/;

export function validateTokenName(name: string): string {
  if (!NAME.test(name)) throw tokenErrors.badName(name);
  return name;
}

/** The scopes, each known (else INVALID_ARGUMENT naming it), duplicates removed, in their order. */
export function validateScopes(scopes: readonly string[]): string[] {
  if (scopes.length === 0) throw tokenErrors.noScope();
  for (const s of scopes) {
    if (s === 'read' || s === 'admin') continue;
    const m = /^ipam:(allocate|release):(.*)$/.exec(s);
    if (m && POOL.test(m[2]!)) continue;
    throw tokenErrors.unknownScope(s);
  }
  return [...new Set(scopes)];
}

export function validateExpiry(seconds: number): number {
  if (!Number.isInteger(seconds) || seconds < 0 || seconds > MAX_EXPIRY_SECONDS) throw tokenErrors.badExpiry(seconds);
  return seconds;
}

const SECRET = /^(weft_[0-9a-f]{16})\.([A-Za-z0-9_-]{43})$/;

export const hashSecret = (secretPart: string): Buffer => createHash('sha256').update(secretPart, 'utf8').digest();

/** A new secret, its key id and the hash to keep. */
export function makeSecret(): { keyId: string; secret: string; secretHash: Buffer } {
  const keyId = `weft_${randomBytes(8).toString('hex')}`;
  const part = randomBytes(32).toString('base64url');
  return { keyId, secret: `${keyId}.${part}`, secretHash: hashSecret(part) };
}

/** The key id and secret part of a bearer secret; null when it is not one of Weft's. */
export function parseSecret(secret: string): { keyId: string; part: string } | null {
  const m = SECRET.exec(secret);
  return m ? { keyId: m[1]!, part: m[2]! } : null;
}

/**
 * The token a bearer secret proves, or why not (UNAUTHENTICATED, auth.invalid_token): `find` looks a key id up.
 * The hash comparison is constant-time; an unknown key id and a wrong secret part get the same message.
 */
export async function verifySecret(
  secret: string,
  find: (keyId: string) => Promise<StoredToken | null>,
  now: Date,
): Promise<Token> {
  const parsed = parseSecret(secret);
  if (!parsed)
    throw tokenErrors.invalid(
      'the bearer token is not a Weft API token (weft_<16 hex digits>.<43 characters>, as `weft token create` prints it)',
    );
  const found = await find(parsed.keyId);
  if (!found || !timingSafeEqual(found.secretHash, hashSecret(parsed.part))) {
    throw tokenErrors.invalid(`the bearer token ${parsed.keyId}… is wrong: no token has that secret`);
  }
  if (found.revokedAt && found.revokedAt <= now)
    throw tokenErrors.invalid(`token ${found.name} was revoked at ${found.revokedAt.toISOString()}`);
  if (found.expiresAt && found.expiresAt <= now)
    throw tokenErrors.invalid(`token ${found.name} expired at ${found.expiresAt.toISOString()}`);
  const { secretHash: _hash, ...token } = found;
  return token;
}
