import type { BootstrapServiceService } from '../../../gen/weft/auth/v1/bootstrap.js';
import { DomainError, invalidArgument } from '../../../lib/errors.js';
import { canonicalSerial } from '../../../lib/auth/identity.js';
import type { Handlers } from '../../../lib/grpc/server.js';
import {
  describeCertificate,
  issueCertificateForKey,
  publicKeyFromPem,
  PublicKeyError,
  type KeyPairPem,
} from '../../../lib/pki.js';
import { callerOfReview, identityForCaller, type BootstrapPolicy } from '../domain/bootstrap.js';
import type { KubernetesFacts } from '../kubernetes.js';

export interface BootstrapDeps {
  ca: KeyPairPem;
  policy: BootstrapPolicy;
  /** null: no Kubernetes API configured (every call answers UNAVAILABLE bootstrap.disabled). */
  kubernetes: KubernetesFacts | null;
  certificateTtlMs: number;
  /**
   * Records an issued certificate (services/auth's certificate record), before it is handed out: revoking its
   * identity then revokes it. A failure fails the call (the pod asks again). Absent: not recorded.
   */
  recordIssued?: (c: { serial: string; identity: string; notAfter: Date }) => Promise<void>;
}

export function createBootstrapHandlers(deps: BootstrapDeps): Handlers<typeof BootstrapServiceService> {
  return {
    async issueCertificate(req, ctx) {
      if (!deps.kubernetes)
        throw new DomainError(
          'bootstrap.disabled',
          'unavailable',
          'this control plane has no Kubernetes API to review tokens with (set WEFT_KUBECONFIG, WEFT_K8S_API or run in a pod)',
        );
      if (!req.serviceAccountToken)
        throw invalidArgument(
          'bootstrap.no_token',
          "service_account_token is required: the pod's projected ServiceAccount token",
        );
      let publicKey: CryptoKey;
      try {
        publicKey = await publicKeyFromPem(req.publicKeyPem);
      } catch (err) {
        if (err instanceof PublicKeyError)
          throw invalidArgument('bootstrap.bad_public_key', `public_key_pem: ${err.message}`);
        throw err;
      }
      // The token first: nothing about a pod is read for a caller Kubernetes does not vouch for.
      const caller = callerOfReview(
        await deps.kubernetes.reviewToken(req.serviceAccountToken, deps.policy.audience),
        deps.policy,
      );
      const pod = caller.pod ? await deps.kubernetes.getPod(caller.pod.namespace, caller.pod.name) : null;
      const identity = identityForCaller(caller, pod, deps.policy);
      const certificatePem = await issueCertificateForKey(deps.ca, identity, publicKey, deps.certificateTtlMs);
      const c = describeCertificate(certificatePem);
      await deps.recordIssued?.({
        serial: canonicalSerial(c.serialNumber),
        identity: `${identity.kind}:${identity.name}`,
        notAfter: c.validTo,
      });
      ctx.logger.info('issued a certificate', {
        identity: `${identity.kind}:${identity.name}`,
        service_account: `${caller.serviceAccount.namespace}/${caller.serviceAccount.name}`,
        pod: caller.pod ? `${caller.pod.namespace}/${caller.pod.name}` : '',
        serial: c.serialNumber,
        not_after: c.validTo.toISOString(),
        request_id: ctx.requestId,
      });
      return {
        certificatePem,
        caCertificatePem: deps.ca.cert,
        identity: `${identity.kind}:${identity.name}`,
        notAfter: c.validTo,
      };
    },
  };
}
