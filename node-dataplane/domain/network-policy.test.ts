import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { privilegedOrSkip } from '../../test/support/privileges.js';
import {
  chainRules,
  createRenderCache,
  desiredBeforeRules,
  desiredPolicy,
  planPolicy,
  readPolicyActual,
  type NodeRules,
  type PolicyActual,
  type PolicyDesired,
  type PolicyEntry,
} from './network-policy.js';

/** The rendering of a node's compiled rules into ipsets and filter chains, and the plan against what the kernel prints. */
const SET_Y = 'weft-00000000000000aa';
const SET_OUT = 'weft-00000000000000bb';
const entry = (e: Partial<PolicyEntry>): PolicyEntry => ({
  tier: 'networkpolicy',
  action: 'allow',
  peerSet: null,
  protocol: null,
  ports: null,
  source: 'NetworkPolicy/x/p ingress[0]',
  ...e,
});
const rules = (over: Partial<NodeRules> = {}): NodeRules => ({
  revision: 7,
  pods: [
    {
      namespace: 'x',
      name: 'a',
      addresses: ['10.244.0.5'],
      ingress: [
        entry({ tier: 'admin', action: 'pass', peerSet: SET_Y, source: 'AdminNetworkPolicy/t pass-y' }),
        entry({ tier: 'admin', action: 'deny', protocol: 'UDP', source: 'AdminNetworkPolicy/t no udp' }),
        entry({ peerSet: SET_Y, protocol: 'TCP', ports: { from: 80, to: 80 } }),
        entry({ action: 'deny', source: 'NetworkPolicy/x/p default deny' }),
      ],
      egress: [
        entry({
          action: 'deny',
          peerSet: SET_OUT,
          protocol: 'TCP',
          ports: { from: 1000, to: 2000 },
          source: 'BaselineAdminNetworkPolicy/default r0',
        }),
      ],
    },
    { namespace: 'x', name: 'b', addresses: ['10.244.0.6'], ingress: [], egress: [] },
  ],
  sets: new Map([
    [SET_Y, ['10.244.1.7/32', '10.244.2.0/24', 'fd00::1/128']],
    [SET_OUT, ['192.0.2.0/24']],
  ]),
  ...over,
});
const veths = new Map([
  ['10.244.0.5', 'weft00000000001'],
  ['10.244.0.6', 'weft00000000002'],
  ['10.244.0.9', 'weft00000000003'],
]);
const empty: PolicyActual = { chains: new Map(), jumps: 0, sets: new Map() };
/**
 * The entries chain a pod's anchor (WEFT-P-<veth>) goes to for a direction (`dir`: WEFT-I-<veth> for ingress,
 * WEFT-E-<veth> for egress): its name, and its rules (and its pass chain's) written with `dir` for its name.
 */
const bodyOf = (d: PolicyDesired, dir: string) => {
  const [, io, veth] = /^WEFT-([IE])-(\S+)$/.exec(dir)!;
  const anchor = `WEFT-P-${veth}`;
  const match = `-A ${anchor} ${io === 'I' ? '-o' : '-i'} ${veth} -g `;
  const rules = d.chains.get(anchor)!.filter((r) => r.startsWith(match));
  assert.equal(rules.length, 1, `${anchor} holds one rule for ${io === 'I' ? 'ingress' : 'egress'}`);
  const to = new RegExp(`^${match}(${dir}-[0-9a-f]{4})$`).exec(rules[0]!)![1]!;
  const as = (xs: string[] | undefined) => xs?.map((l) => l.replaceAll(to, dir));
  return { name: to, rules: as(d.chains.get(to))!, pass: as(d.chains.get(`${to}N`)) };
};

test('per-pod chains: replies first, egress and ingress dispatch by veth, entries in order, pass goes to the tiers after admin', () => {
  const d = desiredPolicy(rules(), veths);
  assert.deepEqual(d.chains.get('WEFT-FORWARD'), [
    '-A WEFT-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
    '-A WEFT-FORWARD -i weft+ -j WEFT-FROM-POD',
    '-A WEFT-FORWARD -o weft+ -j WEFT-TO-POD',
  ]);
  assert.deepEqual(
    d.chains.get('WEFT-FROM-POD'),
    [
      '-A WEFT-FROM-POD -i weft.vxlan -j RETURN',
      '-A WEFT-FROM-POD -i weft00000000001 -m comment --comment "weft x/a egress" -g WEFT-P-weft00000000001',
      '-A WEFT-FROM-POD -i weft00000000002 -m comment --comment "weft x/b egress" -g WEFT-P-weft00000000002',
      '-A WEFT-FROM-POD -m comment --comment "weft fail closed: pod not known to policy yet" -j DROP',
    ],
    'every known pod goes to its anchor; 10.244.0.9 is no reported pod: dropped by the last rule',
  );
  assert.deepEqual(
    d.chains.get('WEFT-P-weft00000000002'),
    [],
    'x/b has no rules: its anchor is empty (falling off it returns)',
  );
  assert.ok(
    ![...d.chains.keys()].some((c) => c.startsWith('WEFT-I-weft00000000002') || c.startsWith('WEFT-E-weft00000000002')),
    'and no entries chain',
  );
  assert.deepEqual(
    d.chains.get('WEFT-P-weft00000000001')!.map((r) => r.replace(/-[0-9a-f]{4}$/, '-<hash>')),
    [
      '-A WEFT-P-weft00000000001 -i weft00000000001 -g WEFT-E-weft00000000001-<hash>',
      '-A WEFT-P-weft00000000001 -o weft00000000001 -g WEFT-I-weft00000000001-<hash>',
    ],
    'x/a has rules both ways: one anchor, a rule per direction',
  );
  assert.deepEqual(d.chains.get('WEFT-TO-POD'), [
    '-A WEFT-TO-POD -o weft.vxlan -j RETURN',
    '-A WEFT-TO-POD -o weft00000000001 -m comment --comment "weft x/a ingress" -g WEFT-P-weft00000000001',
    '-A WEFT-TO-POD -o weft00000000002 -m comment --comment "weft x/b ingress" -g WEFT-P-weft00000000002',
    '-A WEFT-TO-POD -m comment --comment "weft fail closed: pod not known to policy yet" -j DROP',
  ]);
  assert.deepEqual(bodyOf(d, 'WEFT-I-weft00000000001').rules, [
    `-A WEFT-I-weft00000000001 -m set --match-set ${SET_Y} src -m comment --comment "weft AdminNetworkPolicy/t pass-y" -g WEFT-I-weft00000000001N`,
    '-A WEFT-I-weft00000000001 -p udp -m comment --comment "weft AdminNetworkPolicy/t no udp" -j DROP',
    `-A WEFT-I-weft00000000001 -p tcp -m set --match-set ${SET_Y} src -m tcp --dport 80 -m comment --comment "weft NetworkPolicy/x/p ingress[0]" -j RETURN`,
    '-A WEFT-I-weft00000000001 -m comment --comment "weft NetworkPolicy/x/p default deny" -j DROP',
  ]);
  assert.deepEqual(bodyOf(d, 'WEFT-I-weft00000000001').pass?.length, 2, 'after a pass: the NetworkPolicy tier only');
  assert.deepEqual(bodyOf(d, 'WEFT-E-weft00000000001').rules, [
    `-A WEFT-E-weft00000000001 -p tcp -m set --match-set ${SET_OUT} dst -m tcp --dport 1000:2000 -m comment --comment "weft BaselineAdminNetworkPolicy/default r0" -j DROP`,
  ]);
  assert.deepEqual(
    [...d.sets].sort(),
    [
      [SET_Y, ['10.244.1.7', '10.244.2.0/24']],
      [SET_OUT, ['192.0.2.0/24']],
    ],
    'IPv4 members, hosts without /32',
  );
});

/** A pod whose ingress has runs of entries that merge into multiport rules, and runs that must not. */
const merging = (): NodeRules =>
  rules({
    pods: [
      {
        namespace: 'x',
        name: 'm',
        addresses: ['10.244.0.5'],
        ingress: [
          ...Array.from({ length: 10 }, (_, j) =>
            entry({ peerSet: SET_Y, protocol: 'TCP', ports: { from: 1000 + j, to: 1000 + j } }),
          ),
          entry({
            peerSet: SET_Y,
            protocol: 'TCP',
            ports: { from: 2000, to: 2010 },
            source: 'NetworkPolicy/x/q ingress[1]',
          }),
          ...Array.from({ length: 4 }, (_, j) =>
            entry({ peerSet: SET_Y, protocol: 'TCP', ports: { from: 3000 + j, to: 3000 + j } }),
          ),
          entry({ peerSet: SET_Y, protocol: 'UDP', ports: { from: 53, to: 53 } }),
          entry({ peerSet: SET_Y, protocol: 'SCTP', ports: { from: 7, to: 7 } }),
          entry({ peerSet: SET_Y, protocol: 'SCTP', ports: { from: 9, to: 12 } }),
          entry({ action: 'deny', source: 'NetworkPolicy/x/p default deny' }),
        ],
        egress: [],
      },
    ],
  });

test('consecutive entries with one action, set and protocol become multiport rules of at most 15 ports (a range counts two)', () => {
  const lines = bodyOf(desiredPolicy(merging(), veths), 'WEFT-I-weft00000000001').rules;
  const m = (set: string, proto: string, ports: string, src: string) =>
    `-A WEFT-I-weft00000000001 -p ${proto} -m set --match-set ${set} src -m multiport --dports ${ports} -m comment --comment "weft ${src}" -j RETURN`;
  assert.deepEqual(
    lines,
    [
      m(
        SET_Y,
        'tcp',
        '1000,1001,1002,1003,1004,1005,1006,1007,1008,1009,2000:2010,3000,3001,3002',
        'NetworkPolicy/x/p ingress[0] NetworkPolicy/x/q ingress[1]',
      ),
      `-A WEFT-I-weft00000000001 -p tcp -m set --match-set ${SET_Y} src -m tcp --dport 3003 -m comment --comment "weft NetworkPolicy/x/p ingress[0]" -j RETURN`,
      `-A WEFT-I-weft00000000001 -p udp -m set --match-set ${SET_Y} src -m udp --dport 53 -m comment --comment "weft NetworkPolicy/x/p ingress[0]" -j RETURN`,
      m(SET_Y, 'sctp', '7,9:12', 'NetworkPolicy/x/p ingress[0]'),
      '-A WEFT-I-weft00000000001 -m comment --comment "weft NetworkPolicy/x/p default deny" -j DROP',
    ],
    '15 ports in the first rule (10 + a range as two + 3), the 16th alone; a different protocol, or no ports, starts a new rule',
  );
  const mixed = chainRules(
    'C',
    [
      entry({ peerSet: SET_Y, protocol: 'TCP', ports: { from: 1, to: 1 } }),
      entry({ peerSet: SET_Y, protocol: 'TCP', ports: { from: 2, to: 2 }, action: 'deny' }),
      entry({ peerSet: SET_OUT, protocol: 'TCP', ports: { from: 3, to: 3 } }),
      entry({ peerSet: SET_OUT, protocol: 'TCP', ports: { from: 4, to: 4 } }),
    ],
    'egress',
    'C-N',
  );
  assert.deepEqual(
    mixed.map((l) => / --dports? (\S+)/.exec(l)![1]),
    ['1', '2', '3,4'],
    'another action or set is never merged',
  );
});

test('the render cache: an unchanged pod object is not rendered again, and renders the same as without the cache', () => {
  const cache = createRenderCache();
  const r = merging();
  const first = desiredPolicy(r, veths, undefined, cache);
  const again = desiredPolicy(r, veths, undefined, cache);
  assert.equal(
    again.chains.get(bodyOf(again, 'WEFT-I-weft00000000001').name),
    first.chains.get(bodyOf(first, 'WEFT-I-weft00000000001').name),
    'the same rendered array, by identity',
  );
  assert.deepEqual(again, desiredPolicy(r, veths));
  const moved = desiredPolicy(r, new Map([['10.244.0.5', 'weft00000000009']]), undefined, cache);
  assert.ok(moved.chains.has('WEFT-P-weft00000000009'), 'another veth renders again');
  const noSet = desiredPolicy({ ...r, sets: new Map([[SET_OUT, ['192.0.2.0/24']]]) }, veths, undefined, cache);
  assert.deepEqual(
    bodyOf(noSet, 'WEFT-I-weft00000000001').rules,
    ['-A WEFT-I-weft00000000001 -m comment --comment "weft NetworkPolicy/x/p default deny" -j DROP'],
    'a set that became empty renders again',
  );
});

test('fail closed: before the first rule set every local pod is dropped both ways', () => {
  const d = desiredPolicy(null, new Map([['10.244.0.5', 'weft00000000001']]), 'wx.vxlan');
  assert.deepEqual(
    d.chains.get('WEFT-FROM-POD'),
    [
      '-A WEFT-FROM-POD -i wx.vxlan -j RETURN',
      '-A WEFT-FROM-POD -m comment --comment "weft fail closed: no rules held yet" -j DROP',
    ],
    'only the VXLAN device passes',
  );
  assert.deepEqual(d.chains.get('WEFT-TO-POD')!.slice(1), [
    '-A WEFT-TO-POD -m comment --comment "weft fail closed: no rules held yet" -j DROP',
  ]);
  assert.deepEqual([...d.chains.keys()].sort(), ['WEFT-FORWARD', 'WEFT-FROM-POD', 'WEFT-TO-POD']);
  assert.equal(d.sets.size, 0);
});

test('a restarted agent without rules yet keeps the rules it finds; pods that appeared since meet the dispatch drop', () => {
  const d = desiredPolicy(rules(), veths);
  const held: PolicyActual = { chains: new Map(d.chains), jumps: 1, sets: new Map(d.sets) };
  const more = new Map([...veths, ['10.244.0.10', 'weft00000000004']]);
  assert.deepEqual(
    planPolicy(desiredBeforeRules(held, more), held).changed,
    [],
    'nothing rewritten, a new pod included',
  );
  assert.deepEqual(desiredBeforeRules(empty, veths), desiredPolicy(null, veths), 'a fresh node drops every pod');
  const foreign: PolicyActual = {
    chains: new Map([['WEFT-FORWARD', ['-A WEFT-FORWARD -j ACCEPT']]]),
    jumps: 1,
    sets: new Map(),
  };
  assert.deepEqual(
    desiredBeforeRules(foreign, veths),
    desiredPolicy(null, veths),
    'a layout it does not know is replaced by the fail-closed one',
  );
});

test('the plan: everything from nothing; nothing when the kernel matches; only what changed; stale chains and sets removed after', () => {
  const d = desiredPolicy(rules(), veths);
  const first = planPolicy(d, empty);
  assert.match(
    first.filter!,
    /^\*filter\n:WEFT-E-weft00000000001-[0-9a-f]{4} - \[0:0\]\n(:.*\n)*:WEFT-FORWARD - \[0:0\]\n-A /,
    'chains declared before any rule',
  );
  assert.match(first.filter!, /-I FORWARD 1 -m comment --comment "weft: network policy" -j WEFT-FORWARD\nCOMMIT\n$/);
  assert.match(
    first.setsBefore!,
    new RegExp(`create ${SET_Y} hash:net family inet\nflush ${SET_Y}\nadd ${SET_Y} 10.244.1.7\n`),
  );
  const same: PolicyActual = { chains: new Map(d.chains), jumps: 1, sets: new Map(d.sets) };
  assert.deepEqual(planPolicy(d, same), {
    setsBefore: null,
    filter: null,
    filterAfter: null,
    setsAfter: null,
    changed: [],
  });
  // x/a loses its egress rules, x/b is no longer reported; a set was changed by hand; a leftover set of Weft's and two jumps.
  const next = desiredPolicy(rules({ pods: [{ ...rules().pods[0]!, egress: [] }] }), veths);
  const p = planPolicy(next, {
    ...same,
    jumps: 2,
    sets: new Map([...d.sets, [SET_Y, ['10.244.1.7']], ['weft-old', ['10.0.0.1']]]),
  });
  const egressBody = bodyOf(d, 'WEFT-E-weft00000000001').name;
  assert.deepEqual(p.changed, [
    `set ${SET_Y}`,
    'chain WEFT-P-weft00000000001',
    'chain WEFT-FROM-POD',
    'chain WEFT-TO-POD',
    `chain ${egressBody} (deleted)`,
    'chain WEFT-P-weft00000000002 (deleted)',
    `set ${SET_OUT} (destroyed)`,
    'set weft-old (destroyed)',
  ]);
  assert.match(
    p.setsBefore!,
    new RegExp(
      `create ${SET_Y}t hash:net family inet\nflush ${SET_Y}t\n.*swap ${SET_Y}t ${SET_Y}\ndestroy ${SET_Y}t\n$`,
      's',
    ),
  );
  assert.match(
    p.filter!,
    /^\*filter\n:WEFT-FROM-POD - \[0:0\]\n:WEFT-TO-POD - \[0:0\]\n(-A WEFT-(FROM|TO)-POD .*\n)+-I WEFT-P-weft00000000001 1 -i weft00000000001 -j RETURN\n-D FORWARD -m comment --comment "weft: network policy" -j WEFT-FORWARD\nCOMMIT\n$/,
    "the new rules in force first: x/a's egress returns at its anchor",
  );
  assert.equal(
    p.filterAfter,
    `*filter\n-D WEFT-P-weft00000000001 -i weft00000000001 -g ${egressBody}\n-D WEFT-P-weft00000000001 -i weft00000000001 -j RETURN\n-F ${egressBody}\n-F WEFT-P-weft00000000002\n-X ${egressBody}\n-X WEFT-P-weft00000000002\nCOMMIT\n`,
    'then the old egress rule and the RETURN deleted (the ingress rule stays), and the stale chains flushed and deleted',
  );
  assert.equal(p.setsAfter, `destroy ${SET_OUT}\ndestroy weft-old\n`);
});

test('an agent that finds the per-direction anchors of an earlier version moves the dispatch to the new anchors, then deletes the old ones', () => {
  const d = desiredPolicy(rules(), veths);
  const ingressBody = bodyOf(d, 'WEFT-I-weft00000000001');
  // The earlier layout: WEFT-I-<veth> and WEFT-E-<veth> anchors, dispatched to by direction, the same entries chains.
  const v = (n: number) => `weft0000000000${n}`;
  const save = [
    '*filter',
    ':WEFT-FORWARD - [0:0]',
    ':WEFT-FROM-POD - [0:0]',
    ':WEFT-TO-POD - [0:0]',
    ...[1, 2].flatMap((n) => [`:WEFT-I-${v(n)} - [0:0]`, `:WEFT-E-${v(n)} - [0:0]`]),
    `:${ingressBody.name} - [0:0]`,
    `:${ingressBody.name}N - [0:0]`,
    ...d.chains.get('WEFT-FORWARD')!,
    '-A WEFT-FROM-POD -i weft.vxlan -j RETURN',
    ...[1, 2].map(
      (n) =>
        `-A WEFT-FROM-POD -i ${v(n)} -m comment --comment "weft x/${n === 1 ? 'a' : 'b'} egress" -g WEFT-E-${v(n)}`,
    ),
    '-A WEFT-FROM-POD -m comment --comment "weft fail closed: pod not known to policy yet" -j DROP',
    `-A WEFT-I-${v(1)} -g ${ingressBody.name}`,
    ...d.chains.get(ingressBody.name)!,
    ...d.chains.get(`${ingressBody.name}N`)!,
    '-A FORWARD -m comment --comment "weft: network policy" -j WEFT-FORWARD',
    'COMMIT',
  ].join('\n');
  const plan = planPolicy(d, readPolicyActual(save, ''));
  assert.ok(!plan.changed.includes(`chain ${ingressBody.name}`), 'the entries chain is kept as it is');
  assert.match(plan.filter!, /^:WEFT-P-weft00000000001 - \[0:0\]$/m, 'the new anchors are made');
  assert.match(
    plan.filter!,
    /^-A WEFT-FROM-POD -i weft00000000001 .* -g WEFT-P-weft00000000001$/m,
    'and dispatched to in the first transaction',
  );
  for (const old of [
    'WEFT-I-weft00000000001',
    'WEFT-E-weft00000000001',
    'WEFT-I-weft00000000002',
    'WEFT-E-weft00000000002',
  ]) {
    assert.ok(plan.changed.includes(`chain ${old} (deleted)`), `${old} is stale`);
    assert.match(plan.filterAfter!, new RegExp(`^-X ${old}$`, 'm'), `${old} deleted after the new rules are in force`);
    assert.doesNotMatch(plan.filter!, new RegExp(`${old}( |$)`, 'm'), `${old} is not touched before`);
  }
});

test('an anchor is compared as a set of rules: another order plans nothing, a rule held twice loses its extra copy', () => {
  const d = desiredPolicy(rules(), veths);
  const want = d.chains.get('WEFT-P-weft00000000001')!;
  const held = (anchor: string[]): PolicyActual => ({
    chains: new Map([...d.chains, ['WEFT-P-weft00000000001', anchor]]),
    jumps: 1,
    sets: new Map(d.sets),
  });
  assert.deepEqual(planPolicy(d, held([...want].reverse())).changed, [], 'the two directions in the other order');
  const twice = planPolicy(d, held([...want, want[1]!]));
  assert.deepEqual(twice.changed, ['chain WEFT-P-weft00000000001']);
  assert.equal(twice.filter, null, 'nothing to add');
  assert.equal(
    twice.filterAfter,
    `*filter\n-D WEFT-P-weft00000000001 ${want[1]!.slice('-A WEFT-P-weft00000000001 '.length)}\nCOMMIT\n`,
    'one copy deleted',
  );
});

test("Weft's FORWARD jump is kept first: an ACCEPT another program inserted above it is found and the jump put back on top", () => {
  const d = desiredPolicy(rules(), veths);
  const jump = '-A FORWARD -m comment --comment "weft: network policy" -j WEFT-FORWARD';
  const save = (forward: string[]) =>
    [
      '*filter',
      ':FORWARD ACCEPT [0:0]',
      ...[...d.chains.keys()].map((c) => `:${c} - [0:0]`),
      ...forward,
      ...[...d.chains.values()].flat(),
      'COMMIT',
      '',
    ].join('\n');
  const sets = [...d.sets]
    .flatMap(([name, members]) => [`create ${name} hash:net family inet`, ...members.map((m) => `add ${name} ${m}`)])
    .join('\n');
  assert.deepEqual(
    planPolicy(d, readPolicyActual(save([jump, '-A FORWARD -j ACCEPT']), sets)).changed,
    [],
    'first, with other rules below: nothing to do',
  );
  const buried = planPolicy(d, readPolicyActual(save(['-A FORWARD -j ACCEPT', jump]), sets));
  assert.deepEqual(buried.changed, ['jump (moved back first in FORWARD)']);
  assert.equal(
    buried.filter,
    `*filter\n${jump.replace('-A', '-D')}\n${jump.replace('-A FORWARD', '-I FORWARD 1')}\nCOMMIT\n`,
    'deleted and inserted on top in one transaction',
  );
  const between = planPolicy(d, readPolicyActual(save([jump, '-A FORWARD -j ACCEPT', jump]), sets));
  assert.equal(
    between.filter,
    `*filter\n${jump.replace('-A', '-D')}\n${jump.replace('-A', '-D')}\n${jump.replace('-A FORWARD', '-I FORWARD 1')}\nCOMMIT\n`,
    'a second jump below another rule: both deleted, one on top',
  );
  assert.equal(
    planPolicy(d, readPolicyActual(save([jump, jump, '-A FORWARD -j ACCEPT']), sets)).filter,
    `*filter\n${jump.replace('-A', '-D')}\nCOMMIT\n`,
    'two jumps on top: the extra one deleted, the other stays first',
  );
  const uncommented = planPolicy(d, readPolicyActual(save(['-A FORWARD -j WEFT-FORWARD', jump]), sets));
  assert.deepEqual(
    uncommented.changed,
    ['jump (moved back first in FORWARD)'],
    "a jump Weft did not write counts as another program's rule",
  );
});

test("a set larger than ipset's default 65,536 members is created with room for all of them", () => {
  const members = Array.from({ length: 70_000 }, (_, i) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`);
  const plan = planPolicy({ chains: new Map(), sets: new Map([['weft-big', members]]) }, empty);
  assert.match(plan.setsBefore!, /^create weft-big hash:net family inet maxelem 70000\n/);
  assert.match(
    planPolicy({ chains: new Map(), sets: new Map([['weft-small', ['10.0.0.1']]]) }, empty).setsBefore!,
    /^create weft-small hash:net family inet\n/,
    'small sets keep the default',
  );
});

test(
  'in the kernel: applied plans read back exactly as rendered, so an unchanged state plans nothing; stale objects go',
  privilegedOrSkip(),
  () => {
    const ns = `wpol${randomBytes(3).toString('hex')}`;
    const inNs = (args: string[], input?: string) =>
      execFileSync('ip', ['netns', 'exec', ns, ...args], { input, encoding: 'utf8' });
    const read = () => readPolicyActual(inNs(['iptables-save', '-t', 'filter']), inNs(['ipset', 'save']));
    const apply = (plan: ReturnType<typeof planPolicy>) => {
      if (plan.setsBefore) inNs(['ipset', 'restore', '-exist'], plan.setsBefore);
      if (plan.filter) inNs(['iptables-restore', '--noflush'], plan.filter);
      if (plan.filterAfter) inNs(['iptables-restore', '--noflush'], plan.filterAfter);
      if (plan.setsAfter) inNs(['ipset', 'restore', '-exist'], plan.setsAfter);
    };
    execFileSync('ip', ['netns', 'add', ns]);
    try {
      const d = desiredPolicy(rules(), veths);
      apply(planPolicy(d, read()));
      assert.deepEqual(planPolicy(d, read()).changed, [], 'iptables-save and ipset save print what was rendered');
      inNs(['ipset', 'del', SET_Y, '10.244.1.7']);
      assert.deepEqual(planPolicy(d, read()).changed, [`set ${SET_Y}`], 'a member removed by hand is seen');
      apply(planPolicy(d, read()));
      const multi = desiredPolicy(merging(), veths);
      apply(planPolicy(multi, read()));
      assert.deepEqual(
        planPolicy(multi, read()).changed,
        [],
        'multiport rules (ports, ranges; TCP and SCTP) read back as rendered',
      );
      // A long dispatch chain and one pod's change out of every policy: only its anchor changes (a rule inserted first).
      const many = (moved: number, gone = -1) =>
        rules({
          pods: Array.from({ length: 40 }, (_, i) => ({
            namespace: 'x',
            name: `p${i}`,
            addresses: [`10.244.3.${i}`],
            ingress: i === moved ? [] : [entry({ peerSet: SET_Y, protocol: 'TCP', ports: { from: 80, to: 80 } })],
            egress: [],
          })).filter((_, i) => i !== gone),
        });
      const manyVeths = new Map(
        Array.from({ length: 40 }, (_, i) => [`10.244.3.${i}`, `weft${i.toString(16).padStart(11, '0')}`]),
      );
      apply(planPolicy(desiredPolicy(many(-1), manyVeths), read()));
      const oldBody17 = bodyOf(desiredPolicy(many(-1), manyVeths), 'WEFT-I-weft00000000011').name;
      const none = planPolicy(desiredPolicy(many(17), manyVeths), read());
      assert.equal(
        none.filter,
        '*filter\n-I WEFT-P-weft00000000011 1 -o weft00000000011 -j RETURN\nCOMMIT\n',
        'a RETURN inserted in the anchor; the dispatch chain untouched',
      );
      assert.equal(
        none.filterAfter,
        `*filter\n-D WEFT-P-weft00000000011 -o weft00000000011 -g ${oldBody17}\n-D WEFT-P-weft00000000011 -o weft00000000011 -j RETURN\n-F ${oldBody17}\n-X ${oldBody17}\nCOMMIT\n`,
        'then the anchor emptied',
      );
      apply(none);
      assert.deepEqual(
        planPolicy(desiredPolicy(many(17), manyVeths), read()).changed,
        [],
        'the anchor reads back as rendered',
      );
      apply(planPolicy(desiredPolicy(many(-1), manyVeths), read()));
      assert.deepEqual(planPolicy(desiredPolicy(many(-1), manyVeths), read()).changed, []);
      // A pod that goes (its rules no longer held): the dispatch chains are edited in place, by rule number.
      const edited = planPolicy(desiredPolicy(many(-1, 17), manyVeths), read());
      assert.match(
        edited.filter!,
        /^\*filter\n-D WEFT-FROM-POD 19\n-D WEFT-TO-POD 19\nCOMMIT\n$/,
        'the dispatch chains edited in place',
      );
      assert.match(edited.filterAfter!, /-X WEFT-P-weft00000000011\n/);
      apply(edited);
      assert.deepEqual(
        planPolicy(desiredPolicy(many(-1, 17), manyVeths), read()).changed,
        [],
        'the edited chains read back as rendered',
      );
      apply(planPolicy(desiredPolicy(many(-1), manyVeths), read()));
      assert.deepEqual(planPolicy(desiredPolicy(many(-1), manyVeths), read()).changed, []);
      // A pod's entries change: a new chain, and a rule inserted first in its anchor; the old ones go after.
      const other = (port: number) =>
        rules({
          pods: Array.from({ length: 40 }, (_, i) => ({
            namespace: 'x',
            name: `p${i}`,
            addresses: [`10.244.3.${i}`],
            ingress: [
              entry({
                peerSet: SET_Y,
                protocol: 'TCP',
                ports: { from: i === 17 ? port : 80, to: i === 17 ? port : 80 },
              }),
            ],
            egress: [],
          })),
        });
      const swap = planPolicy(desiredPolicy(other(81), manyVeths), read());
      const newBody = bodyOf(desiredPolicy(other(81), manyVeths), 'WEFT-I-weft00000000011').name;
      const oldBody = bodyOf(desiredPolicy(other(80), manyVeths), 'WEFT-I-weft00000000011').name;
      assert.equal(
        swap.filter,
        `*filter\n:${newBody} - [0:0]\n-A ${newBody} -p tcp -m set --match-set ${SET_Y} src -m tcp --dport 81 -m comment --comment "weft NetworkPolicy/x/p ingress[0]" -j RETURN\n-I WEFT-P-weft00000000011 1 -o weft00000000011 -g ${newBody}\nCOMMIT\n`,
        'only additions: iptables-nft need not read the table',
      );
      assert.equal(
        swap.filterAfter,
        `*filter\n-D WEFT-P-weft00000000011 -o weft00000000011 -g ${oldBody}\n-F ${oldBody}\n-X ${oldBody}\nCOMMIT\n`,
      );
      inNs(['iptables-restore', '--noflush'], swap.filter!);
      assert.deepEqual(
        readPolicyActual(inNs(['iptables-save', '-t', 'filter']), '').chains.get('WEFT-P-weft00000000011'),
        [
          `-A WEFT-P-weft00000000011 -o weft00000000011 -g ${newBody}`,
          `-A WEFT-P-weft00000000011 -o weft00000000011 -g ${oldBody}`,
        ],
        'in force: the new rule first',
      );
      inNs(['iptables-restore', '--noflush'], swap.filterAfter!);
      assert.deepEqual(planPolicy(desiredPolicy(other(81), manyVeths), read()).changed, [], 'then exactly as rendered');
      // A pod with egress entries only gains ingress ones: the anchor's new rule goes first, so the kernel holds the
      // two in the other order than rendered; they match disjoint packets, and the plan sees nothing to do.
      const both = (ingress: boolean) =>
        rules({
          pods: [
            {
              namespace: 'x',
              name: 'p17',
              addresses: ['10.244.3.17'],
              ingress: ingress ? [entry({ peerSet: SET_Y, protocol: 'TCP', ports: { from: 80, to: 80 } })] : [],
              egress: [entry({ peerSet: SET_Y, protocol: 'UDP', ports: { from: 53, to: 53 } })],
            },
          ],
        });
      apply(planPolicy(desiredPolicy(both(false), manyVeths), read()));
      const grown = planPolicy(desiredPolicy(both(true), manyVeths), read());
      assert.equal(grown.filterAfter, null, 'nothing to remove');
      apply(grown);
      assert.deepEqual(
        read()
          .chains.get('WEFT-P-weft00000000011')!
          .map((r) => r.split(' ')[2]),
        ['-o', '-i'],
        'ingress first in the kernel',
      );
      assert.deepEqual(
        planPolicy(desiredPolicy(both(true), manyVeths), read()).changed,
        [],
        'the anchor reads back as the same rules',
      );
      const next = desiredPolicy(null, veths);
      apply(planPolicy(next, read()));
      const after = read();
      assert.deepEqual([...after.chains.keys()].sort(), ['WEFT-FORWARD', 'WEFT-FROM-POD', 'WEFT-TO-POD']);
      assert.equal(after.sets.size, 0);
      assert.deepEqual(planPolicy(next, after).changed, []);
    } finally {
      execFileSync('ip', ['netns', 'del', ns]);
    }
  },
);

/** The same node with dual-stack pods: x/a and x/b have IPv6 addresses too; pod c is IPv4-only. */
const dualRules = () =>
  rules({
    pods: rules().pods.map((p, i) => ({ ...p, addresses: [...p.addresses, `fd00:10:244::${5 + i}`] })),
  });
const veths6 = new Map([
  ['fd00:10:244::5', 'weft00000000001'],
  ['fd00:10:244::6', 'weft00000000002'],
]);

test('IPv6: the same structure for ip6tables; sets hold the IPv6 CIDRs as inet6 sets named weft6-…; a set without IPv6 members leaves its entries out', () => {
  const d4 = desiredPolicy(dualRules(), veths);
  const d6 = desiredPolicy(dualRules(), veths6, 'weft.vxlan', undefined, 6);
  assert.deepEqual(d6.chains.get('WEFT-FORWARD'), d4.chains.get('WEFT-FORWARD'), 'the same dispatch');
  assert.deepEqual(
    [...d6.sets],
    [['weft6-00000000000000aa', ['fd00::1']]],
    'only IPv6 members, host addresses without /128; the IPv4-only set is not made',
  );
  const in6 = bodyOf(d6, 'WEFT-I-weft00000000001').rules;
  assert.ok(
    in6.some((r) => r.includes('--match-set weft6-00000000000000aa src -m tcp --dport 80')),
    'the rule matches the inet6 set',
  );
  assert.ok(
    in6.some((r) => r.endsWith('default deny" -j DROP')),
    'the default deny is there in IPv6 too',
  );
  const out6 = d6.chains.get('WEFT-FROM-POD')!;
  assert.ok(
    out6.some((r) => r.startsWith('-A WEFT-FROM-POD -i weft00000000001 ') && r.endsWith('-g WEFT-P-weft00000000001')),
    'the pod is dispatched to its anchor',
  );
  assert.ok(
    d6.chains.get('WEFT-P-weft00000000001')!.every((r) => r.startsWith('-A WEFT-P-weft00000000001 -o ')),
    'the egress deny to IPv4-only 192.0.2.0/24 cannot match IPv6: no egress rule in the anchor',
  );
  assert.equal(
    out6.at(-1),
    '-A WEFT-FROM-POD -m comment --comment "weft fail closed: pod not known to policy yet" -j DROP',
  );
  // Pod c (IPv4 only, veth 3) has no IPv6 address: no dispatch rule in ip6tables, so IPv6 from or to it is dropped.
  assert.ok(!out6.some((r) => r.includes('weft00000000003')));
  const plan = planPolicy(d6, readPolicyActual('', '', 6), 6);
  assert.match(
    plan.setsBefore!,
    /^create weft6-00000000000000aa hash:net family inet6\nflush weft6-00000000000000aa\nadd weft6-00000000000000aa fd00::1\n$/,
  );
  // Each family reads and destroys only its own sets.
  const save =
    'create weft-00000000000000aa hash:net family inet\nadd weft-00000000000000aa 10.244.1.7\ncreate weft6-00000000000000aa hash:net family inet6\nadd weft6-00000000000000aa fd00::1\n';
  assert.deepEqual([...readPolicyActual('', save, 4).sets.keys()], ['weft-00000000000000aa']);
  assert.deepEqual([...readPolicyActual('', save, 6).sets], [['weft6-00000000000000aa', ['fd00::1']]]);
});

test(
  'in the kernel: IPv6 plans read back from ip6tables-save and ipset save exactly as rendered',
  privilegedOrSkip(),
  () => {
    const ns = `wpol6${randomBytes(3).toString('hex')}`;
    const inNs = (args: string[], input?: string) =>
      execFileSync('ip', ['netns', 'exec', ns, ...args], { input, encoding: 'utf8' });
    const read = () => readPolicyActual(inNs(['ip6tables-save', '-t', 'filter']), inNs(['ipset', 'save']), 6);
    const apply = (plan: ReturnType<typeof planPolicy>) => {
      if (plan.setsBefore) inNs(['ipset', 'restore', '-exist'], plan.setsBefore);
      if (plan.filter) inNs(['ip6tables-restore', '--noflush'], plan.filter);
      if (plan.filterAfter) inNs(['ip6tables-restore', '--noflush'], plan.filterAfter);
      if (plan.setsAfter) inNs(['ipset', 'restore', '-exist'], plan.setsAfter);
    };
    execFileSync('ip', ['netns', 'add', ns]);
    try {
      const d = desiredPolicy(dualRules(), veths6, 'weft.vxlan', undefined, 6);
      apply(planPolicy(d, read(), 6));
      assert.deepEqual(planPolicy(d, read(), 6).changed, [], 'ip6tables-save and ipset save print what was rendered');
      assert.match(inNs(['ipset', 'list', 'weft6-00000000000000aa']), /Header: family inet6/);
      assert.equal(
        readPolicyActual(inNs(['iptables-save', '-t', 'filter']), '').chains.size,
        0,
        'nothing written to iptables',
      );
      const next = desiredPolicy(null, veths6, 'weft.vxlan', undefined, 6);
      apply(planPolicy(next, read(), 6));
      assert.deepEqual([...read().chains.keys()].sort(), ['WEFT-FORWARD', 'WEFT-FROM-POD', 'WEFT-TO-POD']);
      assert.equal(read().sets.size, 0, 'the inet6 set is gone');
    } finally {
      execFileSync('ip', ['netns', 'del', ns]);
    }
  },
);
