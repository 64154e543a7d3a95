import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { stringify } from 'yaml';
import { DomainError } from '../lib/errors.js';
import { parsePolicyObject } from '../services/policy/domain/model.js';
import { PolicyInputError, readPolicyObjects } from './policy.js';

/**
 * Property test of `weft policy apply -f FILE`'s reading: any YAML or JSON file gives objects that can be sent as
 * ApplyPolicies' objects_json (JSON text) or a PolicyInputError naming the file and line; the objects then parse as
 * policies or fail with policy.invalid. YAML's own features (anchors and aliases, also self-referencing ones, tags,
 * several documents, `kind: List`) are part of the input.
 */
const RUNS = { numRuns: 200, interruptAfterTimeLimit: 2000, includeErrorInReport: true };

const valid = [
  {
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata: { name: 'web', namespace: 'x' },
    spec: {
      podSelector: { matchLabels: { app: 'web' } },
      ingress: [{ from: [{ podSelector: {} }], ports: [{ port: 80 }] }],
    },
  },
  {
    apiVersion: 'policy.networking.k8s.io/v1alpha1',
    kind: 'AdminNetworkPolicy',
    metadata: { name: 'a' },
    spec: {
      priority: 1,
      subject: { namespaces: {} },
      egress: [{ name: 'deny', action: 'Deny', to: [{ networks: ['10.0.0.0/8'] }] }],
    },
  },
];
const yamlDoc = fc.oneof(
  fc.constantFrom(...valid).map((o) => stringify(o)),
  fc.constant(`kind: List\nitems:\n${valid.map((o) => `  - ${JSON.stringify(o)}`).join('\n')}\n`),
  fc.jsonValue({ maxDepth: 3 }).map((v) => stringify(v)),
  fc.constantFrom(
    'a: &x [*x]\n',
    'kind: NetworkPolicy\nmetadata: &m {name: *m}\n',
    'x: !!binary aGVsbG8=\n',
    'x: !!set {a, b}\n',
    'x: !!omap [a: 1]\n',
    'x: !foo bar\n',
    'x: 2001-12-14t21:59:43.10-05:00\n',
    'x: 0x1F\n',
    'x: .inf\n',
    'x: 123456789012345678901234567890\n',
    '? [a, b]\n: c\n',
    '{a: 1, a: 2}\n',
    `a: &a [${'x,'.repeat(5)}x]\nb: &b [${'*a,'.repeat(9)}*a]\nc: &c [${'*b,'.repeat(9)}*b]\nd: [${'*c,'.repeat(9)}*c]\n`,
    `a: &a [x,x,x,x,x,x,x,x,x,x]\n${Array.from(
      { length: 12 },
      (_, i) =>
        `b${i}: &b${i} [${Array(10)
          .fill(i ? `*b${i - 1}` : '*a')
          .join(',')}]`,
    ).join('\n')}\n`,
    '\t- x\n',
    '%YAML 1.1\n---\nx: yes\n',
    '--- |\n  text\n',
    '',
  ),
  fc.string({ maxLength: 40 }),
);
const file = fc.array(yamlDoc, { minLength: 1, maxLength: 3 }).map((docs) => docs.join('\n---\n'));

test('policy files: objects that become objects_json and parse or are policy.invalid, or a PolicyInputError', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'weft-policy-fuzz-'));
  try {
    let read = 0;
    fc.assert(
      fc.property(file, (text) => {
        const f = path.join(dir, 'p.yaml');
        writeFileSync(f, text);
        let objects: unknown[];
        try {
          objects = readPolicyObjects(f);
        } catch (err) {
          if (!(err instanceof PolicyInputError))
            throw new Error(`threw ${String(err)} instead of a PolicyInputError`, { cause: err });
          assert.ok(err.message.startsWith(f), err.message);
          return;
        }
        read++;
        for (const o of objects) {
          const json = JSON.stringify(o);
          assert.equal(typeof json, 'string', 'every object can be sent as objects_json');
          try {
            parsePolicyObject(JSON.parse(json));
          } catch (err) {
            if (!(err instanceof DomainError) || err.code !== 'policy.invalid')
              throw new Error(`parsePolicyObject threw ${String(err)}`, { cause: err });
          }
        }
      }),
      RUNS,
    );
    assert.ok(read > 0, `only ${read} files read`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
