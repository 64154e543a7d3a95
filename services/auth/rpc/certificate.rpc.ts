import { X509Certificate } from 'node:crypto';
import type { Handlers } from '../../../lib/grpc/server.js';
import { canonicalSerial, describeIdentity, identityFromSubjectAltName } from '../../../lib/auth/identity.js';
import type { Certificate as CertificateMessage, CertificateServiceService } from '../../../gen/weft/auth/v1/auth.js';
import { certificateErrors, normalizeIdentity, revocationTarget } from '../domain/certificate.js';
import type { CertificateRepository, CertificateView } from '../store/certificate.repository.js';

const toMessage = (c: CertificateView): CertificateMessage => ({
  serial: c.serial,
  identity: c.identity,
  issueTime: c.issuedAt ?? undefined,
  notAfter: c.notAfter ?? undefined,
  issuedBy: c.issuedBy,
  revokeTime: c.revokedAt ?? undefined,
  revokeReason: c.reason,
});

/** What a PEM certificate says: canonical serial, identity (kind:name, '' without one), end of validity; INVALID_ARGUMENT when it does not parse. */
export function readCertificate(pem: string): {
  cert: X509Certificate;
  serial: string;
  identity: string;
  notAfter: Date;
} {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(pem);
  } catch (err) {
    throw certificateErrors.badCertificate((err as Error).message);
  }
  const id = identityFromSubjectAltName(cert.subjectAltName);
  return {
    cert,
    serial: canonicalSerial(cert.serialNumber),
    identity: id.kind === 'none' ? '' : describeIdentity(id),
    notAfter: new Date(cert.validTo),
  };
}

/** The gRPC adapter of CertificateService (administrators only): `caPem` is the CA whose certificates may be recorded. */
export function createCertificateHandlers(deps: {
  repo: CertificateRepository;
  caPem: string;
  now?: () => Date;
}): Handlers<typeof CertificateServiceService> {
  const now = deps.now ?? (() => new Date());
  const caKey = new X509Certificate(deps.caPem).publicKey;
  return {
    async recordCertificate(req, ctx) {
      const c = readCertificate(req.certificatePem);
      if (!c.identity)
        throw certificateErrors.badCertificate(
          'it names no Weft identity (a SAN URI weft:node:NAME, weft:admin:NAME or weft:controller:CLUSTER)',
        );
      if (!c.cert.verify(caKey)) throw certificateErrors.foreign();
      const record = await deps.repo.record({
        serial: c.serial,
        identity: c.identity,
        issuedAt: now(),
        notAfter: c.notAfter,
        issuedBy: describeIdentity(ctx.identity),
      });
      return { certificate: toMessage({ ...record, revokedAt: null, reason: '' }) };
    },
    async revokeCertificates(req, ctx) {
      const cert = req.certificatePem ? readCertificate(req.certificatePem) : null;
      const target = revocationTarget({
        serial: req.serial,
        certificate: cert,
        identity: req.identity,
        reason: req.reason,
      });
      const r = await deps.repo.revoke(target, { at: now(), reason: req.reason, by: describeIdentity(ctx.identity) });
      ctx.logger.info('revoked certificates', {
        serials: r.revoked.map((c) => c.serial),
        already_revoked: r.alreadyRevoked,
        reason: req.reason,
        request_id: ctx.requestId,
      });
      return { revoked: r.revoked.map(toMessage), alreadyRevoked: r.alreadyRevoked };
    },
    async listCertificates(req) {
      return {
        certificates: (await deps.repo.list(req.identity ? normalizeIdentity(req.identity) : '')).map(toMessage),
      };
    },
  };
}
