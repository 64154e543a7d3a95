/**
 * Who is calling: read from the verified client certificate of a call (its SAN URI `weft:<kind>:<name>`). The
 * transport (lib/grpc/credentials.ts) has already checked the certificate against Weft's CA; this module only reads
 * names. Anything it does not recognise is `none`, never an error: authorization decides what `none` may do.
 */
export type Identity =
  | { kind: 'none' } // no client certificate / no token
  | { kind: 'node'; name: string } // an agent: client cert SAN URI weft:node:<name>
  | { kind: 'admin'; name: string } // the CLI / an operator: SAN URI weft:admin:<name>
  | { kind: 'controller'; name: string } // a Kubernetes controller: SAN URI weft:controller:<cluster>
  | { kind: 'token'; name: string; scopes: string[]; expiresAt?: Date | null }; // an API token (services/auth)

export type CertificateIdentityKind = 'node' | 'admin' | 'controller';
export const CERTIFICATE_IDENTITY_KINDS: readonly CertificateIdentityKind[] = ['node', 'admin', 'controller'];

export const NO_IDENTITY: Identity = Object.freeze({ kind: 'none' });

/** A name in a Weft identity: what a node or cluster may be called (DNS-label-like, at most 253 characters). */
const NAME = /^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$/;

/** The SAN URI of an identity: `weft:node:node1`. Throws on a name that could not be read back. */
export function identityUri(kind: CertificateIdentityKind, name: string): string {
  if (!NAME.test(name))
    throw new Error(
      `identity name ${JSON.stringify(name)} must be letters, digits, '.', '_' or '-' (at most 253, starting and ending with a letter or digit)`,
    );
  return `weft:${kind}:${name}`;
}

/** `weft:<kind>:<name>` → an identity; anything else → null. */
export function parseIdentityUri(uri: string): Identity | null {
  const m = /^weft:(node|admin|controller):(.+)$/.exec(uri);
  if (!m || !NAME.test(m[2]!)) return null;
  return { kind: m[1] as CertificateIdentityKind, name: m[2]! };
}

/**
 * The identity in a certificate's subjectAltName as Node's TLS reports it ("URI:weft:node:n1, DNS:x"). Exactly one
 * Weft URI makes an identity; none, or two (ambiguous), make `none`.
 */
export function identityFromSubjectAltName(subjectAltName: string | undefined): Identity {
  if (!subjectAltName) return NO_IDENTITY;
  const found: Identity[] = [];
  for (const entry of subjectAltName.split(/,\s*/)) {
    if (!entry.startsWith('URI:')) continue;
    const id = parseIdentityUri(entry.slice(4));
    if (id) found.push(id);
  }
  return found.length === 1 ? found[0]! : NO_IDENTITY;
}

/** The identity of a call's verified peer certificate (grpc-js `getAuthContext().sslPeerCertificate`); none without one. */
export function identityFromPeerCertificate(cert: { subjectaltname?: string } | undefined | null): Identity {
  return cert ? identityFromSubjectAltName(cert.subjectaltname) : NO_IDENTITY;
}

/** "node:node1", "none": for logs and error messages. */
export function describeIdentity(id: Identity): string {
  return id.kind === 'none' ? 'none' : `${id.kind}:${id.name}`;
}

/**
 * The secret of an `authorization` header or metadata value `Bearer <secret>` (scheme in any case); null without
 * one. A value that is not a bearer credential gives '' (a token that verifies as nothing: the call is refused rather
 * than silently made as the certificate's identity).
 */
export function bearerSecretOf(value: unknown): string | null {
  if (value === undefined || value === null) return null;
  const m = /^Bearer[ ]+(\S+)\s*$/i.exec(String(value));
  return m ? m[1]! : '';
}

/**
 * A certificate serial as Weft keeps it: lowercase hex without colons or leading zeros. Node reports a peer's serial
 * in uppercase; OpenSSL prints colon-separated bytes; both compare equal once through here.
 */
export function canonicalSerial(serial: string): string {
  return serial
    .trim()
    .replace(/^0x/i, '')
    .replace(/:/g, '')
    .toLowerCase()
    .replace(/^0+(?=.)/, '');
}

/**
 * Which presented credentials are revoked (services/auth/revocations.ts keeps them in memory, refreshed from the
 * database within seconds): each answers null, or the message a call presenting it fails with. Synchronous and
 * cheap: asked on every call and, for open streams, every second.
 */
export interface CredentialRevocations {
  /** A client certificate by its canonical serial. */
  certificate(serial: string): string | null;
  /** An API token by its key id ("weft_" + 16 hex digits). */
  token(keyId: string): string | null;
  /** Calls `listener` after each change of what is revoked; returns the unsubscribe. */
  subscribe(listener: () => void): () => void;
}

/** setTimeout's longest delay; a later expiry is waited for in steps of it. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Calls `onExpired` at `at` (at once when it has passed), unless `signal` aborts first: a stream opened with a
 * credential ends when the credential expires, as a call made with it then would be refused. Keeps no process alive.
 */
export function whenExpired(at: Date, signal: AbortSignal, onExpired: () => void): void {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const arm = () => {
    if (signal.aborted) return;
    const left = at.getTime() - Date.now();
    if (left <= 0) return onExpired();
    timer = setTimeout(arm, Math.min(left, MAX_TIMER_MS));
    timer.unref();
  };
  signal.addEventListener('abort', () => clearTimeout(timer), { once: true });
  arm();
}
