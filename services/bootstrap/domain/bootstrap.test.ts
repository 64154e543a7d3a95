import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DomainError } from '../../../lib/errors.js';
import {
  callerOfReview,
  identityForCaller,
  parseServiceAccount,
  POD_NAME_EXTRA,
  POD_UID_EXTRA,
  type BootstrapPolicy,
  type TokenReview,
} from './bootstrap.js';

const policy: BootstrapPolicy = {
  audience: 'weft',
  agent: parseServiceAccount('weft-system/weft-agent'),
  controller: parseServiceAccount('weft-system/weft-kube-controller'),
  cluster: 'east',
};
const review = (over: Partial<TokenReview> = {}): TokenReview => ({
  authenticated: true,
  error: '',
  username: 'system:serviceaccount:weft-system:weft-agent',
  audiences: ['weft'],
  extra: { [POD_NAME_EXTRA]: ['weft-agent-x'], [POD_UID_EXTRA]: ['u1'] },
  ...over,
});
const code = (f: () => unknown) => {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof DomainError, String(e));
    return `${e.code} ${e.kind}`;
  }
  return 'no error';
};

test('an agent token bound to a pod gives the node of that pod; a controller token the configured cluster', () => {
  const caller = callerOfReview(review(), policy);
  assert.deepEqual(identityForCaller(caller, { uid: 'u1', nodeName: 'node1' }, policy), {
    kind: 'node',
    name: 'node1',
  });
  const ctl = callerOfReview(review({ username: 'system:serviceaccount:weft-system:weft-kube-controller' }), policy);
  assert.deepEqual(identityForCaller(ctl, { uid: 'u1', nodeName: 'cp1' }, policy), {
    kind: 'controller',
    name: 'east',
  });
  assert.deepEqual(identityForCaller({ ...ctl, pod: null }, null, policy), { kind: 'controller', name: 'east' });
});

test('refusals: rejected token, other audience, other service account, no pod, pod gone or replaced, unscheduled', () => {
  assert.equal(
    code(() => callerOfReview(review({ authenticated: false, error: 'expired' }), policy)),
    'bootstrap.token_rejected unauthenticated',
  );
  assert.equal(
    code(() => callerOfReview(review({ audiences: ['https://kubernetes.default.svc'] }), policy)),
    'bootstrap.token_rejected unauthenticated',
  );
  assert.equal(
    code(() => callerOfReview(review({ username: 'system:serviceaccount:default:default' }), policy)),
    'bootstrap.wrong_service_account permission_denied',
  );
  assert.equal(
    code(() => callerOfReview(review({ username: 'system:serviceaccount:other:weft-agent' }), policy)),
    'bootstrap.wrong_service_account permission_denied',
  );
  assert.equal(
    code(() => callerOfReview(review({ username: 'alice' }), policy)),
    'bootstrap.wrong_service_account permission_denied',
  );
  assert.equal(
    code(() => callerOfReview(review({ extra: {} }), policy)),
    'bootstrap.not_pod_bound permission_denied',
  );
  const caller = callerOfReview(review(), policy);
  assert.equal(
    code(() => identityForCaller(caller, null, policy)),
    'bootstrap.pod_gone permission_denied',
  );
  assert.equal(
    code(() => identityForCaller(caller, { uid: 'u2', nodeName: 'node1' }, policy)),
    'bootstrap.pod_gone permission_denied',
  );
  assert.equal(
    code(() => identityForCaller(caller, { uid: 'u1', nodeName: '' }, policy)),
    'bootstrap.pod_unscheduled failed_precondition',
  );
});

test('service account settings are NAMESPACE/NAME', () => {
  assert.deepEqual(parseServiceAccount('a/b'), { namespace: 'a', name: 'b' });
  for (const bad of ['a', 'a/', '/b', 'A/b', 'a/b/c']) assert.throws(() => parseServiceAccount(bad), /NAMESPACE\/NAME/);
});
