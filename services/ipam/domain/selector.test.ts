import { test } from 'node:test';
import assert from 'node:assert/strict';
import { matches, parseSelector } from './selector.js';

test('selectors match as Kubernetes label selectors do', () => {
  const s = parseSelector('zone=a, env in (prod, stage), tier!=db, gpu, !spot');
  assert.ok(matches(s, { zone: 'a', env: 'prod', gpu: '' }));
  assert.ok(matches(s, { zone: 'a', env: 'stage', tier: 'web', gpu: 'yes' }));
  assert.ok(!matches(s, { zone: 'b', env: 'prod', gpu: '' }), 'zone differs');
  assert.ok(!matches(s, { zone: 'a', env: 'dev', gpu: '' }), 'env not in set');
  assert.ok(!matches(s, { zone: 'a', env: 'prod', tier: 'db', gpu: '' }), 'tier excluded');
  assert.ok(!matches(s, { zone: 'a', env: 'prod' }), 'gpu missing');
  assert.ok(!matches(s, { zone: 'a', env: 'prod', gpu: '', spot: 'true' }), 'spot present');
  assert.ok(matches(parseSelector(''), {}), 'empty selects everything');
  assert.ok(matches(parseSelector('topology.kubernetes.io/zone==eu-1'), { 'topology.kubernetes.io/zone': 'eu-1' }));
  assert.ok(matches(parseSelector('env notin (dev)'), {}), 'notin matches a missing key');
});

test('a bad selector names the clause and says what is wrong', () => {
  assert.throws(() => parseSelector('zone=a,='), /"=" .*invalid label key|is not a requirement/);
  assert.throws(() => parseSelector('zone in (a b)'), /invalid label value/);
  assert.throws(() => parseSelector('Zone Name=a'), /zone|Zone/);
});
