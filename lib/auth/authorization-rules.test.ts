import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as ipam from '../../gen/weft/ipam/v1/ipam.js';
import * as routes from '../../gen/weft/routes/v1/routes.js';
import * as policy from '../../gen/weft/policy/v1/policy.js';
import * as audit from '../../gen/weft/audit/v1/audit.js';
import * as auth from '../../gen/weft/auth/v1/auth.js';
import * as bootstrap from '../../gen/weft/auth/v1/bootstrap.js';
import { AUTHORIZATION_RULES, methodRule, type MethodRule } from './authorization.js';

/**
 * Generated from the service definitions the control plane serves: every method has a rule (an RPC added without one
 * fails here), every rule is of a method that exists, every request field a rule reads exists in that request, and
 * only reads (List, Get, Watch, Explain, Check) are not mutations.
 */
type Definition = Record<string, { path: string }>;
type Messages = Record<string, unknown>;
const SERVED: { definition: Definition; messages: Messages }[] = [
  { definition: ipam.IpamServiceService, messages: ipam },
  { definition: routes.RoutesServiceService, messages: routes },
  { definition: policy.PolicyServiceService, messages: policy },
  { definition: audit.AuditServiceService, messages: audit },
  { definition: auth.TokenServiceService, messages: auth },
  { definition: auth.CertificateServiceService, messages: auth },
  { definition: bootstrap.BootstrapServiceService, messages: bootstrap },
];

const capitalize = (s: string) => s[0]!.toUpperCase() + s.slice(1);

/** Methods of the definitions that have no rule. */
function methodsWithoutRule(definitions: Definition[]): string[] {
  return definitions.flatMap((d) => Object.values(d).map((m) => m.path)).filter((p) => !methodRule(p));
}

/** Request fields a rule reads ("requests[].node") that the request message does not have. */
type RequestFns = { fromPartial(o: never): object };
function unknownFields(rule: MethodRule, messageFns: RequestFns): string[] {
  const request = messageFns as unknown as { fromPartial(o: object): Record<string, unknown> };
  const checks = [...(rule.node ?? []), ...(rule.controller ?? []), ...(rule.token ? [rule.token] : [])];
  return checks
    .flatMap((c) => c.fields)
    .filter((field) => {
      const [head, tail] = field.split('[].') as [string, string | undefined];
      if (tail === undefined) return !(head in request.fromPartial({}));
      const items = request.fromPartial({ [head]: [{}] })[head];
      return !Array.isArray(items) || !(tail in (items[0] as object));
    });
}

describe('the authorization table covers the served services', () => {
  for (const { definition, messages } of SERVED) {
    for (const [name, method] of Object.entries(definition)) {
      test(`${method.path} has a rule whose request fields exist`, () => {
        const rule = methodRule(method.path);
        assert.ok(
          rule,
          `${method.path} has no rule in lib/auth/authorization.ts: add one (who may call it, what of the request must be theirs)`,
        );
        const request = messages[`${capitalize(name)}Request`] as RequestFns;
        assert.deepEqual(
          unknownFields(rule, request),
          [],
          `a check of ${method.path} reads fields ${capitalize(name)}Request lacks`,
        );
        assert.equal(
          rule.mutation,
          !/^(List|Get|Watch|Explain|Check)/.test(capitalize(name)),
          `${method.path}: mutation should be ${!rule.mutation}`,
        );
      });
    }
  }

  test('every rule is of a served method (no rule outlives its RPC)', () => {
    const served = new Set(SERVED.flatMap(({ definition }) => Object.values(definition).map((m) => m.path)));
    assert.deepEqual(
      Object.keys(AUTHORIZATION_RULES).filter((p) => !served.has(p)),
      [],
    );
  });

  test('the checks can fail: a method without a rule and a field the request lacks are found', () => {
    assert.deepEqual(
      methodsWithoutRule([{ ...ipam.IpamServiceService, newRpc: { path: '/weft.ipam.v1.IpamService/NewRpc' } }]),
      ['/weft.ipam.v1.IpamService/NewRpc'],
    );
    const rule = AUTHORIZATION_RULES['/weft.ipam.v1.IpamService/BatchAllocate']!;
    assert.deepEqual(unknownFields(rule, ipam.BatchAllocateRequest), []);
    assert.deepEqual(
      unknownFields(rule, ipam.AllocateRequest),
      ['requests[].node', 'requests[].pool'],
      'another message lacks the fields',
    );
    assert.deepEqual(
      unknownFields(AUTHORIZATION_RULES['/weft.routes.v1.RoutesService/RegisterNode']!, ipam.AllocateRequest),
      ['name'],
    );
  });
});
