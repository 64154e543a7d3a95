import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { parseAddress, parseCidr, formatCidr, formatAddress } from '../../lib/net/ip.js';
import type { AddressSet, CompiledPod, PolicyEntry as PbPolicyEntry } from '../../gen/weft/policy/v1/policy.js';
import { checkAddressSet, checkPod, checkPolicyEntry, checkPoolCidr, checkRemoteNode } from './stream-validation.js';

/**
 * Property tests of the agent's stream validation: random messages of the generated shapes (WatchNodePolicy's pods,
 * entries and sets; WatchRoutes' remote nodes; ListPools' CIDRs), built from valid fields, near misses and injection
 * attempts. Validation never throws, and whatever it passes on satisfies what iptables-restore, ipset and netlink
 * need, asserted here independently of the validator's own regular expressions.
 */
const RUNS = { numRuns: 400, interruptAfterTimeLimit: 2000, includeErrorInReport: true };

/** Fragments that would change an iptables-restore or ipset restore line if they reached it. */
const HOSTILE = [
  '\n-A FORWARD -j ACCEPT',
  ' -j ACCEPT',
  '\r',
  '\u0000',
  ';',
  ' ',
  '\u2028',
  '/0',
  '..',
  '%eth0',
  '\u00e9',
  '\ud83d\ude00',
];
const hostile = fc.constantFrom(...HOSTILE);
/** A string that is often almost right: a valid one, one with a hostile fragment spliced in, or anything. */
const near = (valid: fc.Arbitrary<string>) =>
  fc.oneof(
    { arbitrary: valid, weight: 6 },
    fc.tuple(valid, hostile, fc.nat()).map(([v, h, at]) => {
      const i = at % (v.length + 1);
      return v.slice(0, i) + h + v.slice(i);
    }),
    fc.string({ unit: 'binary', maxLength: 40 }),
  );

const octet = fc.integer({ min: 0, max: 255 });
const ipv4 = fc.tuple(octet, octet, octet, octet).map((o) => o.join('.'));
const ipv6 = fc.ipV6();
const prefix = fc.integer({ min: 0, max: 130 });
/** CIDRs with and without host bits (the third kind: always without), leading zeros, out-of-range prefixes, both families. */
const cidrText = near(
  fc.oneof(
    fc.tuple(ipv4, prefix).map(([a, p]) => `${a}/${p}`),
    fc.tuple(ipv6, prefix).map(([a, p]) => `${a}/${p}`),
    fc.tuple(ipv4, fc.integer({ min: 0, max: 32 })).map(([a, p]) => {
      const n = Number(parseAddress(a).value);
      const base = p === 0 ? 0 : (n & (~0 << (32 - p))) >>> 0;
      return `${formatAddress(4, BigInt(base))}/${p}`;
    }),
    fc.constantFrom(
      '010.0.0.0/8',
      '10.0.0.0/08',
      '0.0.0.0/0',
      '::/0',
      '10.0.0.0/8 -j ACCEPT',
      '10.0.0.0/33',
      'fe80::%eth0/64',
    ),
  ),
);
const addressText = near(fc.oneof(ipv4, ipv6, fc.constantFrom('010.0.0.1', '::ffff:1.2.3.4', '1.2.3.4/32')));
const setName = near(
  fc.oneof(fc.stringMatching(/^weft-[a-z0-9]{1,24}$/), fc.stringMatching(/^weft6?-[a-zA-Z0-9]{0,30}$/)),
);
const dnsName = near(fc.stringMatching(/^[a-z0-9]([-a-z0-9.]{0,20}[a-z0-9])?$/));
const port = fc.oneof(
  { arbitrary: fc.integer({ min: 1, max: 65535 }), weight: 6 },
  { arbitrary: fc.constant(0), weight: 3 },
  fc.integer(),
  fc.constantFrom(-1, 65536, 1.5, NaN, Infinity),
);
/** Set names a pod's entries name, drawn from few, so that some are held and some not. */
const fewSetNames = fc.oneof({ arbitrary: fc.constantFrom('weft-a1', 'weft-b2', 'weft-c3'), weight: 4 }, setName);

const entry: fc.Arbitrary<PbPolicyEntry> = fc.record({
  tier: near(fc.constantFrom('admin', 'networkpolicy', 'baseline')),
  action: near(fc.constantFrom('allow', 'deny', 'pass')),
  peerSet: fc.oneof(fc.constant(''), fewSetNames),
  protocol: fc.oneof(
    { arbitrary: fc.constantFrom('', 'TCP', 'UDP', 'SCTP'), weight: 6 },
    near(fc.constantFrom('tcp', 'ICMP', 'TCP')),
  ),
  portFrom: port,
  portTo: port,
  source: near(fc.string({ maxLength: 60 })),
});
const pod: fc.Arbitrary<CompiledPod> = fc.record({
  namespace: dnsName,
  name: dnsName,
  addresses: fc.array(addressText, { maxLength: 3 }),
  ingress: fc.array(entry, { maxLength: 2 }),
  egress: fc.array(entry, { maxLength: 2 }),
});
const addressSet: fc.Arbitrary<AddressSet> = fc.record({ name: setName, cidrs: fc.array(cidrText, { maxLength: 5 }) });

// --- The kernel-safe invariants, stated without the validator's code. ---

function assertSetName(name: string): void {
  // ipset names: at most 31 bytes; the agent adds "6" after "weft" and a trailing "t" for a temporary set.
  assert.ok(name.startsWith('weft-'), `set name ${JSON.stringify(name)} lacks Weft's prefix`);
  assert.ok(name.length + 2 <= 31, `set name ${JSON.stringify(name)} is too long for ipset once derived`);
  assert.match(
    name.slice(5),
    /^[a-z0-9]+$/,
    `set name ${JSON.stringify(name)} has characters ipset restore could misread`,
  );
}

/** A canonical CIDR without host bits (what the kernel prints back), and never /0 (`hash:net` and routes refuse it). */
function assertCidr(text: string): void {
  assert.match(
    text,
    /^[0-9a-f.:]+\/\d{1,3}$/,
    `CIDR ${JSON.stringify(text)} has characters outside an address and a prefix`,
  );
  const c = parseCidr(text);
  assert.equal(formatCidr(c), text, `CIDR ${JSON.stringify(text)} is not canonical`);
  assert.notEqual(c.prefixLength, 0, `CIDR ${JSON.stringify(text)} is every address`);
}

function assertAddress(text: string): void {
  assert.match(text, /^[0-9a-f.:]+$/, `address ${JSON.stringify(text)} has characters outside an address`);
  const a = parseAddress(text);
  assert.equal(formatAddress(a.family, a.value), text, `address ${JSON.stringify(text)} is not canonical`);
}

const noControl = (s: string, what: string) =>
  assert.doesNotMatch(
    s,
    /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/,
    `${what} ${JSON.stringify(s)} has control characters`,
  );

test('policy entries: every passed entry has a known tier, action and protocol, a Weft set, ports in 1-65535 only with a protocol', () => {
  let passed = 0;
  fc.assert(
    fc.property(entry, (e) => {
      const c = checkPolicyEntry(e);
      if (c.refused !== undefined) {
        assert.equal(typeof c.refused, 'string');
        return;
      }
      passed++;
      const v = c.value;
      assert.ok(['admin', 'networkpolicy', 'baseline'].includes(v.tier));
      assert.ok(['allow', 'deny', 'pass'].includes(v.action));
      assert.ok(v.protocol === null || ['TCP', 'UDP', 'SCTP'].includes(v.protocol));
      if (v.peerSet !== null) assertSetName(v.peerSet);
      if (v.ports !== null) {
        assert.ok(v.protocol !== null, 'ports without a protocol would match every port');
        for (const p of [v.ports.from, v.ports.to]) assert.ok(Number.isInteger(p) && p >= 1 && p <= 65535, `port ${p}`);
        assert.ok(v.ports.from <= v.ports.to);
      }
      assert.ok(v.source.length <= 1024);
      noControl(v.source, 'source');
    }),
    RUNS,
  );
  assert.ok(passed > 0, `only ${passed} entries passed: the generator is too hostile to test what passes`);
});

test('pods: a passed pod has DNS names, canonical addresses and only checked entries naming held sets', () => {
  let passed = 0;
  fc.assert(
    fc.property(pod, fc.array(fewSetNames, { maxLength: 3 }), (p, held) => {
      const heldSet = new Set(held);
      const c = checkPod(p, (n) => heldSet.has(n));
      if (c.refused !== undefined) return;
      passed++;
      const v = c.value;
      for (const [what, n] of [
        ['namespace', v.namespace],
        ['name', v.name],
      ] as const) {
        assert.match(n, /^[a-zA-Z0-9][-a-zA-Z0-9.]*$/, `${what} ${JSON.stringify(n)}`);
        assert.ok(n.length <= 253);
      }
      v.addresses.forEach(assertAddress);
      for (const e of [...v.ingress, ...v.egress]) {
        if (e.peerSet !== null) {
          assertSetName(e.peerSet);
          assert.ok(heldSet.has(e.peerSet), `entry names ${e.peerSet}, which is not held`);
        }
        noControl(e.source, 'source');
      }
      assert.equal(v.ingress.length, p.ingress.length, 'an entry was dropped instead of the pod refused');
      assert.equal(v.egress.length, p.egress.length, 'an entry was dropped instead of the pod refused');
    }),
    RUNS,
  );
  assert.ok(passed > 0, `only ${passed} pods passed`);
});

test('address sets: a passed set has a Weft name and only canonical CIDRs, none of them /0, all members kept', () => {
  let passed = 0;
  fc.assert(
    fc.property(addressSet, (s) => {
      const c = checkAddressSet(s);
      if (c.refused !== undefined) return;
      passed++;
      assertSetName(c.value.name);
      c.value.cidrs.forEach(assertCidr);
      assert.equal(c.value.cidrs.length, s.cidrs.length, 'a member was dropped instead of the set refused');
    }),
    RUNS,
  );
  assert.ok(passed > 0, `only ${passed} sets passed`);
});

test('remote nodes and pool CIDRs: passed ones have a DNS name, an IPv4 underlay, a MAC and blocks that are not /0 and not over the underlay', () => {
  const mac = near(fc.stringMatching(/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/));
  const node = fc.record({
    node: dnsName,
    underlayAddress: addressText,
    vtepMac: mac,
    blockCidrs: fc.array(cidrText, { maxLength: 3 }),
  });
  let passed = 0;
  fc.assert(
    fc.property(node, (n) => {
      const c = checkRemoteNode(n);
      if (c.refused !== undefined) return;
      passed++;
      const v = c.value;
      assert.match(v.node, /^[a-zA-Z0-9][-a-zA-Z0-9.]*$/);
      assertAddress(v.underlayAddress);
      assert.equal(parseAddress(v.underlayAddress).family, 4);
      assert.match(v.vtepMac, /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
      const own = parseAddress(v.underlayAddress);
      for (const b of v.blockCidrs) {
        assertCidr(b);
        const c2 = parseCidr(b);
        if (c2.family === 4) {
          const hostBits = BigInt(32 - c2.prefixLength);
          assert.notEqual(
            (own.value >> hostBits) << hostBits,
            c2.base,
            `block ${b} holds the underlay address ${v.underlayAddress}`,
          );
        }
      }
    }),
    RUNS,
  );
  assert.ok(passed > 0, `only ${passed} nodes passed`);
  fc.assert(
    fc.property(cidrText, (t) => {
      const c = checkPoolCidr(t);
      if (c.value !== undefined) {
        assert.match(c.value, /^[0-9a-f.:]+\/\d{1,3}$/);
        assert.equal(formatCidr(parseCidr(c.value)), c.value);
      }
    }),
    RUNS,
  );
});
