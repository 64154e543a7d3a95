/**
 * Network policy's drivers on the real kernel: the ipset and filter tables of IPv4 (`ipset`, `iptables-restore` as
 * the agent runs them, through `ip netns exec` into a throwaway namespace removed afterwards, also on failure), run
 * by the real dataplane in the real order. Needs root; skipped otherwise.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { run as runHere } from '../../lib/exec.js';
import { privilegedOrSkip } from '../../test/support/privileges.js';
import type { NodeRules, PodRules } from '../domain/network-policy.js';
import { ORDER } from '../drivers/registry.js';
import { createPolicyDrivers, policyKinds } from '../drivers/policy.js';
import { createDataplane } from '../kernel-table/dataplane.js';
import { createFilterAccess, createIpsetAccess } from './iptables-policy.js';

const ns = `wpd${randomBytes(3).toString('hex')}`;
const inNs: typeof runHere = (file, args, opts) => runHere('ip', ['netns', 'exec', ns, file, ...args], opts);
const SET_A = 'weft-000000000000000a';
const SET_B = 'weft-000000000000000b';
const SET_C = 'weft-000000000000000c';
const veths = new Map([
  ['10.244.0.5', 'weft00000000001'],
  ['10.244.0.6', 'weft00000000002'],
]);
const pod = (name: string, address: string, set: string): PodRules => ({
  namespace: 'x',
  name,
  addresses: [address],
  ingress: [
    {
      tier: 'networkpolicy',
      action: 'allow',
      peerSet: set,
      protocol: 'TCP',
      ports: { from: 80, to: 80 },
      source: 'NetworkPolicy/x/p ingress[0]',
    },
  ],
  egress: [],
});

/** A fresh agent's IPv4 policy drivers (new tables: the first apply reads the kernel back). */
function agent() {
  const p = createPolicyDrivers({
    family: 4,
    ipsets: createIpsetAccess({ family: 4, run: inNs }),
    filter: createFilterAccess({ family: 4, run: inNs }),
  });
  const kinds = policyKinds(4);
  const dataplane = createDataplane({
    drivers: [p.ipsets, p.filter],
    order: ORDER.filter((x) => kinds.includes(x.kind)),
  });
  return {
    dataplane,
    apply: async (rules: NodeRules) => {
      p.compute(rules, veths);
      return dataplane.apply();
    },
  };
}

const save = async () => inNs('iptables-save', ['-t', 'filter']);
const sets = async () => (await inNs('ipset', ['list', '-n'])).split('\n').filter((s) => s.startsWith('weft'));

describe('network policy drivers on the real kernel', privilegedOrSkip(), () => {
  before(async () => {
    await runHere('ip', ['netns', 'add', ns]);
  });
  after(async () => {
    await runHere('ip', ['netns', 'del', ns]).catch(() => {});
  });

  it('one set the kernel refuses fails alone: the other pod is in force, the refused one stays on the fail-closed drop', async () => {
    const a = agent();
    // ipset's hash:net refuses a /0 member: the set's restore fails, and so would the whole batch.
    const bad: NodeRules = {
      revision: 1,
      pods: [pod('a', '10.244.0.5', SET_A), pod('b', '10.244.0.6', SET_B)],
      sets: new Map([
        [SET_A, ['10.244.1.7/32']],
        [SET_B, ['0.0.0.0/0']],
      ]),
    };
    const r = await a.apply(bad);
    assert.deepEqual(
      r.failed.map((f) => `${f.kind} ${f.key}`),
      [`ipset4 ${SET_B}`],
    );
    assert.ok(r.held.some((h) => h.key === 'WEFT-P-weft00000000002'));
    const filter = await save();
    assert.match(filter, /^-A WEFT-FROM-POD -i weft00000000001 .* -g WEFT-P-weft00000000001$/m, 'pod a dispatched');
    assert.doesNotMatch(filter, /weft00000000002/, 'pod b not dispatched: the drop at the end of the chain');
    assert.match(filter, /^-A WEFT-TO-POD .* -j DROP$/m);
    assert.match(filter, /^-I FORWARD|^-A FORWARD -m comment --comment "weft: network policy" -j WEFT-FORWARD$/m);
    assert.ok(
      (await sets()).includes(SET_A),
      "pod a's set is there (ipset restore is no transaction: B's may be there, empty)",
    );

    // The set fixed: the retry reads the sets back and puts b in force; a read-back pass then finds nothing to do.
    const good: NodeRules = { ...bad, revision: 2, sets: new Map([...bad.sets, [SET_B, ['10.244.2.0/24']]]) };
    const again = await a.apply(good);
    assert.deepEqual({ failed: again.failed, held: again.held }, { failed: [], held: [] });
    assert.deepEqual(again.reads, ['ipset4'], 'the failed kind is read back (the held chains were not written)');
    assert.match(await save(), /-g WEFT-P-weft00000000002$/m);
    a.dataplane.markForResync();
    const check = await a.apply(good);
    assert.deepEqual(check.changes, [], 'what was written reads back exactly as the tables hold it');

    // Pod a moves to another set: the new set and rules, then the old rule, chain and set go; nothing else is touched.
    const moved: NodeRules = {
      ...good,
      revision: 3,
      pods: [pod('a', '10.244.0.5', SET_C), good.pods[1]!],
      sets: new Map([
        [SET_B, ['10.244.2.0/24']],
        [SET_C, ['10.244.3.0/24']],
      ]),
    };
    const m = await a.apply(moved);
    assert.deepEqual({ failed: m.failed, held: m.held, reads: m.reads }, { failed: [], held: [], reads: [] });
    assert.deepEqual((await sets()).sort(), [SET_B, SET_C]);
    assert.doesNotMatch(await save(), new RegExp(SET_A));

    // A fresh agent (a restart) finds everything as it wants it: nothing written.
    const restarted = agent();
    const rr = await restarted.apply(moved);
    assert.deepEqual(rr.changes, []);

    // A rule deleted by hand is drift, repaired at the next resync.
    await inNs('iptables', ['-F', 'WEFT-TO-POD']);
    restarted.dataplane.markForResync();
    const repaired = await restarted.apply(moved);
    assert.deepEqual(repaired.drift, [{ kind: 'filter4', key: 'WEFT-TO-POD' }]);
    assert.match(await save(), /^-A WEFT-TO-POD -o weft00000000002 .* -g WEFT-P-weft00000000002$/m);
  });
});
