import { DomainError } from '../../../lib/errors.js';
import { canonicalSerial, parseIdentityUri } from '../../../lib/auth/identity.js';

/**
 * Certificates Weft's CA issued, and their revocation (services/auth/DESIGN.md, "Certificates"). Pure.
 *
 * A serial is kept as lowercase hex without leading zeros ("3f0a..."), whatever form it is given in (Node's
 * uppercase, OpenSSL's colon-separated bytes, a leading 0x or zeros), so that the serial a TLS peer presents and the
 * one an operator types compare equal.
 */
export interface CertificateRecord {
  serial: string;
  /** kind:name, e.g. "node:node1". */
  identity: string;
  issuedAt: Date;
  notAfter: Date;
  /** Who recorded it: "admin:local", "bootstrap". */
  issuedBy: string;
}

export interface Revocation {
  serial: string;
  /** kind:name when known, else ''. */
  identity: string;
  notAfter: Date | null;
  revokedAt: Date;
  reason: string;
  revokedBy: string;
}

/** What a revocation names: one serial (with what is known of its certificate), or an identity's certificates until `before`. */
export type RevocationTarget =
  { kind: 'serial'; serial: string; identity: string; notAfter: Date | null } | { kind: 'identity'; identity: string };

export const certificateErrors = {
  badSerial: (serial: string) =>
    new DomainError(
      'auth.bad_serial',
      'invalid_argument',
      `serial ${JSON.stringify(serial)} is not a certificate serial number: give it in hex (e.g. 3f0a9c..., colons allowed; \`openssl x509 -noout -serial -in tls.crt\` shows it)`,
    ),
  badIdentity: (identity: string) =>
    new DomainError(
      'auth.bad_identity',
      'invalid_argument',
      `identity ${JSON.stringify(identity)} is not node:NAME, admin:NAME or controller:CLUSTER`,
    ),
  badRevocation: () =>
    new DomainError(
      'auth.bad_revocation',
      'invalid_argument',
      'name exactly one of serial, certificate_pem or identity to revoke',
    ),
  badReason: () =>
    new DomainError('auth.bad_revocation', 'invalid_argument', 'the reason must be at most 500 characters'),
  badCertificate: (why: string) =>
    new DomainError('auth.bad_certificate', 'invalid_argument', `certificate_pem is not a usable certificate: ${why}`),
  foreign: () =>
    new DomainError(
      'auth.foreign_certificate',
      'failed_precondition',
      "the certificate is not signed by this control plane's CA: issue it from the CA in the control plane's pki folder",
    ),
  noCertificates: (identity: string) =>
    new DomainError(
      'auth.no_certificates',
      'not_found',
      `no unexpired certificate of ${identity} is recorded: revoke one by its serial (--serial) or file (--cert); certificates are recorded when \`weft ca issue\` or the bootstrap issues them`,
    ),
};

/** `serial` as kept: lowercase hex without leading zeros; INVALID_ARGUMENT when it is not hex. */
export function normalizeSerial(serial: string): string {
  const hex = canonicalSerial(serial);
  if (!/^[0-9a-f]{1,64}$/.test(hex)) throw certificateErrors.badSerial(serial);
  return hex;
}

/** `node:NAME`, `admin:NAME`, `controller:CLUSTER` (also with a `weft:` prefix) as kept; INVALID_ARGUMENT otherwise. */
export function normalizeIdentity(identity: string): string {
  const id = parseIdentityUri(identity.startsWith('weft:') ? identity : `weft:${identity}`);
  if (!id || id.kind === 'none') throw certificateErrors.badIdentity(identity);
  return `${id.kind}:${id.name}`;
}

/** The one thing a RevokeCertificates request names (serial, PEM already read into serial/identity, or identity). */
export function revocationTarget(req: {
  serial: string;
  certificate?: { serial: string; identity: string; notAfter: Date } | null;
  identity: string;
  reason: string;
}): RevocationTarget {
  const named = [req.serial !== '', req.certificate != null, req.identity !== ''].filter(Boolean).length;
  if (named !== 1) throw certificateErrors.badRevocation();
  if (req.reason.length > 500) throw certificateErrors.badReason();
  if (req.certificate)
    return {
      kind: 'serial',
      serial: normalizeSerial(req.certificate.serial),
      identity: req.certificate.identity,
      notAfter: req.certificate.notAfter,
    };
  if (req.serial) return { kind: 'serial', serial: normalizeSerial(req.serial), identity: '', notAfter: null };
  return { kind: 'identity', identity: normalizeIdentity(req.identity) };
}

/** The message a call with a revoked certificate fails with: which serial, when, why, and what to do. */
export function revokedCertificateMessage(
  serial: string,
  r: { revokedAt: Date; reason: string; identity: string },
): string {
  return (
    `the client certificate with serial ${serial}${r.identity ? ` (${r.identity})` : ''} was revoked at ${r.revokedAt.toISOString()}` +
    `${r.reason ? ` (${r.reason})` : ''}: get a new certificate (\`weft ca issue\`, or the bootstrap on Kubernetes) and use it instead`
  );
}
