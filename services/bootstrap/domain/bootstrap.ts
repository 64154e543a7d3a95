import { DomainError } from '../../../lib/errors.js';

/**
 * Who a Kubernetes token proves its caller to be, and which Weft identity that caller gets: pure rules over what the
 * TokenReview and the pod's GET answered (services/bootstrap/kubernetes.ts asks them).
 */

/** A ServiceAccount, "namespace/name". */
export interface ServiceAccountRef {
  namespace: string;
  name: string;
}

/** What the bootstrap trusts: the ServiceAccounts of the agent and of the controller, the audience, the cluster name. */
export interface BootstrapPolicy {
  audience: string;
  agent: ServiceAccountRef;
  controller: ServiceAccountRef;
  /** The name a controller's certificate carries (weft:controller:<cluster>). */
  cluster: string;
}

/** What Kubernetes's TokenReview said of a token (status). */
export interface TokenReview {
  authenticated: boolean;
  /** The API server's reason when not authenticated. */
  error: string;
  username: string;
  /** The audiences the token was valid for, among those asked. */
  audiences: string[];
  extra: Record<string, string[]>;
}

/** A pod as the bootstrap reads it; null: not found. */
export interface PodFacts {
  uid: string;
  nodeName: string;
}

export interface BoundPod {
  namespace: string;
  name: string;
  uid: string;
}

/** The caller a token proved: a role, and the pod its token is bound to (required for an agent). */
export type BootstrapCaller = { role: 'agent' | 'controller'; serviceAccount: ServiceAccountRef; pod: BoundPod | null };

export const POD_NAME_EXTRA = 'authentication.kubernetes.io/pod-name';
export const POD_UID_EXTRA = 'authentication.kubernetes.io/pod-uid';

const err = (code: string, kind: DomainError['kind'], message: string) =>
  new DomainError(`bootstrap.${code}`, kind, message);

/** "weft-system/weft-agent" → a ref; throws saying what to write. */
export function parseServiceAccount(raw: string): ServiceAccountRef {
  const m = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?)\/([a-z0-9]([-a-z0-9.]*[a-z0-9])?)$/.exec(raw);
  if (!m) throw new Error('expected NAMESPACE/NAME of a ServiceAccount (lower-case DNS names)');
  return { namespace: m[1]!, name: m[3]! };
}

const describeSa = (sa: ServiceAccountRef) => `${sa.namespace}/${sa.name}`;

/** The caller of a reviewed token, or the error to answer. */
export function callerOfReview(review: TokenReview, policy: BootstrapPolicy): BootstrapCaller {
  if (!review.authenticated) {
    throw err(
      'token_rejected',
      'unauthenticated',
      `Kubernetes does not accept the token for audience ${JSON.stringify(policy.audience)}${review.error ? `: ${review.error}` : ''} (send the pod's projected ServiceAccount token with that audience, not yet expired)`,
    );
  }
  // The API server answers only for the audiences asked; a server that ignored them must not make a token for another
  // audience (the API server's own) good here.
  if (!review.audiences.includes(policy.audience)) {
    throw err(
      'token_rejected',
      'unauthenticated',
      `the token is not for audience ${JSON.stringify(policy.audience)} (it is for ${review.audiences.map((a) => JSON.stringify(a)).join(', ') || 'no audience reported'})`,
    );
  }
  const m = /^system:serviceaccount:([^:]+):([^:]+)$/.exec(review.username);
  const sa = m ? { namespace: m[1]!, name: m[2]! } : null;
  const role =
    sa && describeSa(sa) === describeSa(policy.agent)
      ? 'agent'
      : sa && describeSa(sa) === describeSa(policy.controller)
        ? 'controller'
        : null;
  if (!sa || !role) {
    throw err(
      'wrong_service_account',
      'permission_denied',
      `${review.username} may not get a Weft certificate: only the ServiceAccounts ${describeSa(policy.agent)} (agents) and ${describeSa(policy.controller)} (the Kubernetes controller) may`,
    );
  }
  const name = review.extra[POD_NAME_EXTRA]?.[0] ?? '';
  const uid = review.extra[POD_UID_EXTRA]?.[0] ?? '';
  const pod = name && uid ? { namespace: sa.namespace, name, uid } : null;
  if (role === 'agent' && !pod) {
    throw err(
      'not_pod_bound',
      'permission_denied',
      `the token of ${describeSa(sa)} is bound to no pod: an agent's certificate names the node of the pod its token is bound to (use a projected serviceAccountToken volume, not a Secret's token)`,
    );
  }
  return { role, serviceAccount: sa, pod };
}

/** The Weft identity for the caller, given its bound pod as the API server has it now (null: gone). */
export function identityForCaller(
  caller: BootstrapCaller,
  pod: PodFacts | null,
  policy: BootstrapPolicy,
): { kind: 'node' | 'controller'; name: string } {
  if (caller.pod) {
    const at = `${caller.pod.namespace}/${caller.pod.name}`;
    if (!pod) throw err('pod_gone', 'permission_denied', `the pod ${at} the token is bound to no longer exists`);
    if (pod.uid !== caller.pod.uid)
      throw err(
        'pod_gone',
        'permission_denied',
        `the pod ${at} the token is bound to was replaced (uid ${pod.uid}, the token names ${caller.pod.uid})`,
      );
  }
  if (caller.role === 'controller') return { kind: 'controller', name: policy.cluster };
  if (!pod!.nodeName)
    throw err(
      'pod_unscheduled',
      'failed_precondition',
      `the pod ${caller.pod!.namespace}/${caller.pod!.name} has no node yet (spec.nodeName is empty)`,
    );
  return { kind: 'node', name: pod!.nodeName };
}
