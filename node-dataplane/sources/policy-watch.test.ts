import { test } from 'node:test';
import assert from 'node:assert/strict';
import { silentLogger } from '../../lib/logger.js';
import type { WatchNodePolicyResponse } from '../../gen/weft/policy/v1/policy.js';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { privilegedOrSkip } from '../../test/support/privileges.js';
import { desiredPolicy, planPolicy, readPolicyActual } from '../domain/network-policy.js';
import { applyPolicyMessage, followNodePolicy } from './policy-watch.js';

/** Each message replaces the rules held; bookmarks only advance the revision; a reconnect passes the last revision and keeps the rules meanwhile. */
const msg = (m: Partial<WatchNodePolicyResponse> & { revision: number }): WatchNodePolicyResponse => ({
  bookmark: false,
  pods: [],
  sets: [],
  delta: false,
  removedPods: [],
  removedSets: [],
  more: false,
  ...m,
});
const pod = (name: string, peerSet: string) => ({
  namespace: 'x',
  name,
  addresses: ['10.244.0.5'],
  egress: [],
  ingress: [
    {
      tier: 'networkpolicy',
      action: 'allow',
      peerSet,
      protocol: 'TCP',
      portFrom: 80,
      portTo: 80,
      source: 'NetworkPolicy/x/p ingress[0]',
    },
  ],
});

test('rules replace each other, bookmarks advance the revision, a reconnect resumes from it with the rules held', async () => {
  const requests: number[] = [];
  const streams = [
    [
      msg({ revision: 3, pods: [pod('a', 'weft-1')], sets: [{ name: 'weft-1', cidrs: ['10.244.1.0/24'] }] }),
      msg({ revision: 5, bookmark: true }),
    ],
    [msg({ revision: 9, pods: [pod('b', '')] })],
  ];
  const client = {
    watchNodePolicy(req: { sinceRevision: number }) {
      requests.push(req.sinceRevision);
      const script = streams.shift();
      return (async function* () {
        if (!script) return await new Promise<never>(() => {});
        for (const m of script) yield m;
        throw new Error('connection reset');
      })();
    },
  };
  const ac = new AbortController();
  const changes: string[] = [];
  let done!: () => void;
  const finished = new Promise<void>((r) => (done = r));
  const source = followNodePolicy({
    client: client as never,
    node: 'n1',
    logger: silentLogger,
    signal: ac.signal,
    onChange: (r) => {
      changes.push(`${r.revision} ${r.pods.map((p) => p.name).join(',')}`);
      if (r.revision === 9) done();
    },
  });
  assert.equal(source.rules(), null, 'nothing held before the first message');
  await finished;
  ac.abort();
  assert.deepEqual(changes, ['3 a', '9 b']);
  assert.deepEqual(requests, [0, 5], "the reconnect passes the bookmark's revision");
  const held = source.rules()!;
  assert.deepEqual(held.pods[0]!.ingress[0], {
    tier: 'networkpolicy',
    action: 'allow',
    peerSet: null,
    protocol: 'TCP',
    ports: { from: 80, to: 80 },
    source: 'NetworkPolicy/x/p ingress[0]',
  });
  assert.equal(held.sets.size, 0);
});

test('a delta changes only what it names; unchanged pods keep their objects, also across a complete set', () => {
  const full = applyPolicyMessage(
    null,
    msg({
      revision: 3,
      pods: [pod('a', 'weft-1'), pod('b', 'weft-1'), pod('c', '')],
      sets: [{ name: 'weft-1', cidrs: ['10.244.1.0/24'] }],
    }),
  );
  const [a, b, c] = full.pods;
  const d = applyPolicyMessage(
    full,
    msg({
      revision: 4,
      delta: true,
      pods: [pod('b', 'weft-2')],
      sets: [{ name: 'weft-2', cidrs: ['10.244.2.0/24'] }],
      removedPods: ['x/c'],
    }),
  );
  assert.equal(d.revision, 4);
  assert.deepEqual(
    d.pods.map((p) => p.name),
    ['a', 'b'],
  );
  assert.equal(d.pods[0], a, 'x/a untouched keeps its object');
  assert.notEqual(d.pods[1], b);
  assert.equal(d.pods[1]!.ingress[0]!.peerSet, 'weft-2');
  assert.deepEqual([...d.sets.keys()], ['weft-1', 'weft-2']);
  const d2 = applyPolicyMessage(
    d,
    msg({ revision: 5, delta: true, removedSets: ['weft-1'], pods: [pod('a', 'weft-2')] }),
  );
  assert.deepEqual([...d2.sets.keys()], ['weft-2']);
  assert.equal(
    d2.pods.find((p) => p.name === 'b'),
    d.pods[1],
  );
  // A reconnect: the complete set replaces everything, but content-equal pods keep their objects.
  const again = applyPolicyMessage(
    d2,
    msg({
      revision: 6,
      pods: [pod('a', 'weft-2'), pod('c', '')],
      sets: [{ name: 'weft-2', cidrs: ['10.244.2.0/24'] }],
    }),
  );
  assert.deepEqual(
    again.pods.map((p) => p.name),
    ['a', 'c'],
  );
  assert.equal(
    again.pods[0],
    d2.pods.find((p) => p.name === 'a'),
  );
  assert.notEqual(again.pods[1], c, 'x/c was removed meanwhile: a new object');
  assert.deepEqual([...again.sets.keys()], ['weft-2']);
});

/** Malicious or malformed stream entries, beside good ones, each of which would inject a rule or break a restore. */
const INJECTED = '-A FORWARD -j ACCEPT';
const evilMessage = () =>
  msg({
    revision: 11,
    pods: [
      { ...pod('good', 'weft-00000000000000aa'), addresses: ['10.244.0.5'] },
      { ...pod('setname', `weft-evil\n${INJECTED}`), addresses: ['10.244.0.6'] },
      { ...pod('member', 'weft-00000000000000bb'), addresses: ['10.244.0.7'] },
      {
        ...pod('proto', ''),
        addresses: ['10.244.0.8'],
        ingress: [
          {
            tier: 'networkpolicy',
            action: 'allow',
            peerSet: '',
            protocol: `TCP -j ACCEPT\n${INJECTED}\n#`,
            portFrom: 80,
            portTo: 80,
            source: 'NetworkPolicy/x/p ingress[0]',
          },
        ],
      },
    ],
    sets: [
      { name: 'weft-00000000000000aa', cidrs: ['10.244.1.0/24'] },
      { name: `weft-evil\n${INJECTED}`, cidrs: ['10.244.2.0/24'] },
      { name: 'weft-00000000000000bb', cidrs: ['10.244.3.0/24', '10.0.0.0/8 -j ACCEPT'] },
    ],
  });
const evilVeths = new Map([
  ['10.244.0.5', 'weft00000000005'],
  ['10.244.0.6', 'weft00000000006'],
  ['10.244.0.7', 'weft00000000007'],
  ['10.244.0.8', 'weft00000000008'],
]);

test('a malicious stream entry never reaches iptables-restore or ipset input; the good entries are applied', () => {
  const refused: string[] = [];
  const held = applyPolicyMessage(null, evilMessage(), (what, why) => refused.push(`${what}: ${why}`));
  const plan = planPolicy(desiredPolicy(held, evilVeths), { chains: new Map(), jumps: 0, sets: new Map() });
  const input = [plan.setsBefore, plan.filter, plan.filterAfter, plan.setsAfter].join('\n');
  assert.ok(
    !input.includes(INJECTED) &&
      !input.includes('evil') &&
      !input.includes('10.0.0.0/8') &&
      !/-j ACCEPT\n/.test(input.replace('--ctstate RELATED,ESTABLISHED -j ACCEPT\n', '')),
    `nothing injected:\n${input}`,
  );
  assert.deepEqual(
    held.pods.map((p) => p.name),
    ['good'],
    'the pods naming a refused set, or with a bad protocol, are refused',
  );
  assert.deepEqual([...held.sets.keys()], ['weft-00000000000000aa']);
  assert.match(
    plan.setsBefore!,
    /^create weft-00000000000000aa hash:net family inet\nflush weft-00000000000000aa\nadd weft-00000000000000aa 10.244.1.0\/24\n$/,
  );
  assert.match(
    plan.filter!,
    /-A WEFT-TO-POD -o weft00000000005 .* -g WEFT-P-weft00000000005\n/,
    'x/good is dispatched to its rules',
  );
  assert.ok(!/-[io] weft0000000000[678] /.test(plan.filter!), 'the refused pods meet the fail-closed drop');
  assert.equal(refused.length, 5, refused.join('\n'));
  assert.ok(
    refused.some((r) => /set .*weft-evil.*is not Weft's/s.test(r)),
    refused.join('\n'),
  );
  assert.ok(
    refused.some((r) => /10\.0\.0\.0\/8 -j ACCEPT.*is not a CIDR/.test(r)),
    refused.join('\n'),
  );
  assert.ok(
    refused.some((r) => /x\/proto": ingress\[0\]: protocol .* is not one of TCP, UDP, SCTP/.test(r)),
    refused.join('\n'),
  );
});

test('in the kernel: a malicious stream entry is not applied, the good ones are', privilegedOrSkip(), () => {
  const ns = `wstream${randomBytes(3).toString('hex')}`;
  const inNs = (args: string[], input?: string) =>
    execFileSync('ip', ['netns', 'exec', ns, ...args], { input, encoding: 'utf8' });
  execFileSync('ip', ['netns', 'add', ns]);
  try {
    const held = applyPolicyMessage(null, evilMessage(), () => {});
    const plan = planPolicy(
      desiredPolicy(held, evilVeths),
      readPolicyActual(inNs(['iptables-save', '-t', 'filter']), inNs(['ipset', 'save'])),
    );
    if (plan.setsBefore) inNs(['ipset', 'restore', '-exist'], plan.setsBefore);
    if (plan.filter) inNs(['iptables-restore', '--noflush'], plan.filter);
    const forward = inNs(['iptables', '-S', 'FORWARD']).trim().split('\n');
    assert.deepEqual(
      forward,
      ['-P FORWARD ACCEPT', '-A FORWARD -m comment --comment "weft: network policy" -j WEFT-FORWARD'],
      "FORWARD holds Weft's jump and nothing else",
    );
    assert.equal(inNs(['ipset', 'list', '-n']).trim(), 'weft-00000000000000aa');
    assert.match(inNs(['iptables', '-S', 'WEFT-TO-POD']), /-o weft00000000005 .*-g WEFT-P-weft00000000005/);
  } finally {
    execFileSync('ip', ['netns', 'del', ns]);
  }
});
