import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { DomainError } from '../../../lib/errors.js';
import { LABEL_KEY, LABEL_VALUE, matches } from '../../../lib/labels.js';
import { formatCidr, parseAddress, parseCidr, parseCidr4, parseIPv4 } from '../../../lib/net/ip.js';
import {
  validateAllocationRequest,
  validateAttemptId,
  validateHandle,
  validateLabels,
  validateNamespaceName,
  validateNodeName,
  validatePodUid,
  validatePoolName,
  validatePoolSpec,
} from './pool.js';
import { parseSelector } from './selector.js';

/**
 * Property tests of IPAM's validators and the parsers under them (label selectors, lib/net CIDRs and addresses):
 * any input passes, keeping the validator's promise, or is a DomainError of kind invalid_argument.
 */
const RUNS = { numRuns: 400, interruptAfterTimeLimit: 800, includeErrorInReport: true };

function passesOrInvalid<T>(f: () => T): T | undefined {
  try {
    return f();
  } catch (err) {
    if (!(err instanceof DomainError)) throw new Error(`threw ${String(err)} instead of a DomainError`, { cause: err });
    assert.equal(err.kind, 'invalid_argument');
    return undefined;
  }
}
const text = (plausible: string[]) =>
  fc.oneof(
    fc.constantFrom(...plausible),
    fc.string({ maxLength: 30 }),
    fc.string({ unit: 'binary', maxLength: 30 }),
    fc.constantFrom('', ' ', 'a\n', 'A'.repeat(600)),
  );

test('names, handles, UIDs and attempt ids: returned unchanged and well-formed, or INVALID_ARGUMENT', () => {
  const checks: [(s: string) => string | null, RegExp, string[]][] = [
    [validatePoolName, /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/, ['default', 'pool-a', 'a-', 'A']],
    [validateNodeName, /^[a-zA-Z0-9]([-a-zA-Z0-9.]{0,251}[a-zA-Z0-9])?$/, ['node-1', 'n.example', 'n_1']],
    [validateNamespaceName, /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/, ['kube-system', 'x']],
    [validateHandle, /^[^\u0000-\u001f]{1,512}$/, ['abc/eth0']],
    [validatePodUid, /^([A-Za-z0-9-]{1,128})?$/, ['6f1c1a9e-3b4d-4f57-9a0e-1d2c3b4a5f60']],
    [(s) => validateAttemptId(s), /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/, ['a-1', ':a']],
  ];
  for (const [validate, shape, plausible] of checks) {
    fc.assert(
      fc.property(text(plausible), (s) => {
        const v = passesOrInvalid(() => validate(s));
        if (v === undefined || v === null || v === '') return;
        assert.equal(v, s, 'a validator returns what it was given');
        assert.match(v, shape);
      }),
      RUNS,
    );
  }
});

test('label selectors and labels: requirements with Kubernetes keys and values, or INVALID_ARGUMENT; matching never throws', () => {
  const clause = fc.oneof(
    fc.constantFrom(
      'zone=a',
      'zone==a',
      'tier!=db',
      'env in (prod,stage)',
      'env notin (dev)',
      'gpu',
      '!spot',
      'example.com/role=x',
      'a in ()',
      'in in (in)',
    ),
    fc.string({ maxLength: 12 }),
  );
  fc.assert(
    fc.property(
      fc.array(clause, { maxLength: 4 }).map((cs) => cs.join(',')),
      fc.dictionary(fc.constantFrom('zone', 'env', 'gpu', 'spot'), fc.constantFrom('a', 'prod', '')),
      (s, labels) => {
        const reqs = passesOrInvalid(() => parseSelector(s));
        if (!reqs) return;
        for (const r of reqs) {
          assert.match(r.key, LABEL_KEY);
          if (r.op === 'in' || r.op === 'notin') for (const v of r.values) assert.match(v, LABEL_VALUE);
        }
        assert.equal(typeof matches(reqs, labels), 'boolean');
      },
    ),
    RUNS,
  );
  fc.assert(
    fc.property(fc.dictionary(text(['app', 'example.com/tier']), text(['web', ''])), (labels) => {
      const v = passesOrInvalid(() => validateLabels(labels));
      if (v)
        for (const [k, val] of Object.entries(v)) assert.ok(LABEL_KEY.test(k) && LABEL_VALUE.test(val), `${k}=${val}`);
    }),
    RUNS,
  );
});

test('CIDRs and addresses (lib/net): canonical and without host bits, or INVALID_ARGUMENT', () => {
  const cidrText = fc.oneof(
    fc.tuple(fc.oneof(fc.ipV4(), fc.ipV6()), fc.integer({ min: 0, max: 130 })).map(([a, p]) => `${a}/${p}`),
    fc.constantFrom(
      '10.244.0.0/16',
      '010.0.0.0/8',
      '10.0.0.0/08',
      '::ffff:10.0.0.0/104',
      'fe80::%eth0/64',
      '1.2.3.4/32 x',
    ),
    fc.string({ maxLength: 20 }),
  );
  fc.assert(
    fc.property(cidrText, (s) => {
      const c = passesOrInvalid(() => parseCidr(s));
      if (c) {
        assert.ok(c.prefixLength >= 0 && c.prefixLength <= (c.family === 4 ? 32 : 128));
        const again = parseCidr(formatCidr(c));
        assert.deepEqual(again, c, 'the canonical form parses to the same CIDR');
      }
      const c4 = passesOrInvalid(() => parseCidr4(s));
      if (c4) assert.ok(Number.isInteger(c4.base) && c4.base >= 0 && c4.base < 2 ** 32 && c4.prefixLength <= 32);
      const a = passesOrInvalid(() => parseAddress(s.split('/')[0]!));
      if (a) assert.ok(a.value >= 0n && a.value < (a.family === 4 ? 2n ** 32n : 2n ** 128n));
      const n = passesOrInvalid(() => parseIPv4(s.split('/')[0]!));
      if (n !== undefined) assert.ok(Number.isInteger(n) && n >= 0 && n < 2 ** 32);
    }),
    RUNS,
  );
});

test('pool specs and allocation requests: pass with their invariants, or INVALID_ARGUMENT', () => {
  const spec = fc.record({
    name: text(['default']),
    cidr: text(['10.244.0.0/16', 'fd00:10:244::/48', '10.0.0.0/4', '10.244.0.0/24']),
    blockPrefixLength: fc.oneof(fc.integer({ min: 0, max: 130 }), fc.double()),
    cooldownSeconds: fc.option(fc.oneof(fc.nat(), fc.integer()), { nil: undefined }),
    nodeSelector: fc.option(text(['zone=a', 'a in (']), { nil: undefined }),
    allowedUses: fc.option(fc.array(text(['workload', 'gateway'])), { nil: undefined }),
    routingDomain: fc.option(text(['default', '']), { nil: undefined }),
  });
  fc.assert(
    fc.property(spec, (input) => {
      const s = passesOrInvalid(() => validatePoolSpec(input));
      if (!s) return;
      const bits = s.cidr.family === 4 ? 32 : 128;
      assert.ok(s.cidr.prefixLength >= (s.cidr.family === 4 ? 8 : 16));
      assert.ok(
        Number.isInteger(s.blockPrefixLength) &&
          s.blockPrefixLength >= s.cidr.prefixLength &&
          s.blockPrefixLength <= bits &&
          bits - s.blockPrefixLength <= 16,
      );
      assert.ok(s.allowedUses.length > 0);
    }),
    RUNS,
  );
  const request = fc.record({
    handle: text(['abc/eth0']),
    node: text(['node-1']),
    pool: fc.option(text(['default'])),
    families: fc.option(fc.array(fc.constantFrom(4 as const, 6 as const))),
    podNamespace: text(['x']),
    podName: text(['a']),
    containerId: text(['abc']),
    addresses: fc.array(text(['10.244.0.5', 'fd00::5', '10.244.0.5/32']), { maxLength: 2 }),
    owner: text(['statefulset/x/a-0']),
    use: text(['workload', '']),
    attemptId: fc.option(text(['a-1'])),
    podUid: text(['']),
  });
  fc.assert(
    fc.property(request, (input) => {
      const r = passesOrInvalid(() => validateAllocationRequest(input));
      if (!r) return;
      assert.ok(r.addresses.length <= 2 && new Set(r.addresses.map((a) => a.family)).size === r.addresses.length);
      for (const a of r.addresses) assert.equal(parseAddress(a.text).family, a.family);
      assert.ok(r.owner.length <= 512);
    }),
    RUNS,
  );
});
