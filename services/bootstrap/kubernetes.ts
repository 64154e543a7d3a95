import { AuthenticationV1Api, CoreV1Api, type KubeConfig } from '@kubernetes/client-node';
import { DomainError } from '../../lib/errors.js';
import type { PodFacts, TokenReview } from './domain/bootstrap.js';

/**
 * The bootstrap's view of the Kubernetes API (its "store"): a TokenReview of a token for one audience, and a pod's
 * uid and node. The control plane calls it with its own ServiceAccount, which may create tokenreviews and get pods in
 * weft-system, nothing else (deploy/base/rbac.yaml). Failures to reach the API are UNAVAILABLE (the caller retries);
 * a pod that is not there is null.
 */
export interface KubernetesFacts {
  reviewToken(token: string, audience: string): Promise<TokenReview>;
  getPod(namespace: string, name: string): Promise<PodFacts | null>;
}

const unavailable = (what: string, e: unknown) => {
  const status = (e as { code?: number }).code;
  const first = String((e as Error).message ?? e).split('\n')[0];
  return new DomainError(
    'bootstrap.kubernetes_unavailable',
    'unavailable',
    `cannot ${what} with the Kubernetes API${typeof status === 'number' ? ` (HTTP ${status})` : ''}: ${first}`,
  );
};

export function createKubernetesFacts(kubeConfig: KubeConfig): KubernetesFacts {
  const auth = kubeConfig.makeApiClient(AuthenticationV1Api);
  const core = kubeConfig.makeApiClient(CoreV1Api);
  return {
    async reviewToken(token, audience) {
      let review;
      try {
        review = await auth.createTokenReview({
          body: { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token, audiences: [audience] } },
        });
      } catch (e) {
        throw unavailable('review the token', e);
      }
      const s = review.status ?? {};
      return {
        authenticated: s.authenticated === true,
        error: s.error ?? '',
        username: s.user?.username ?? '',
        audiences: s.audiences ?? [],
        extra: (s.user?.extra ?? {}) as Record<string, string[]>,
      };
    },
    async getPod(namespace, name) {
      try {
        const pod = await core.readNamespacedPod({ namespace, name });
        return { uid: pod.metadata?.uid ?? '', nodeName: pod.spec?.nodeName ?? '' };
      } catch (e) {
        if ((e as { code?: number }).code === 404) return null;
        throw unavailable(`read the pod ${namespace}/${name}`, e);
      }
    },
  };
}
