import { run as runHere } from '../../lib/exec.js';
import type { BatchChange, KernelAccess } from '../kernel-table/dataplane.js';
import {
  chainRemovals,
  chainWrites,
  filterEntries,
  readPolicyActual,
  setDestroys,
  setWrites,
  type PolicyFamily,
} from '../domain/network-policy.js';

/**
 * Network policy's kernel side, in this process's network namespace (the node's): Weft's ipsets of a family
 * (`ipset save`, `ipset restore -exist`), Weft's filter chains of a family (`iptables-save -t filter`,
 * `iptables-restore --noflush`; ip6tables for family 6), and the local pods' host veths (the pods' host routes: Weft's
 * protocol through a pod veth). Writes go in batches, one restore per phase (kernel-table/dataplane.ts); the
 * single-entry `write` and `remove` are batches of one.
 */
export interface PolicyKernelOpts {
  /** How commands run (default: here; bench/policy runs them in a namespace). */
  run?: typeof runHere;
  family: PolicyFamily;
  /** Called with each restore input before it runs, and once it ran (for measurements). */
  onRestore?: (what: 'ipset' | 'filter', op: 'update' | 'delete', done: boolean) => void;
}

/** An access that writes in batches; its single-entry `write` and `remove` are batches of one. */
function batched<V>(
  read: () => Promise<Map<string, V>>,
  applyBatch: NonNullable<KernelAccess<V>['applyBatch']>,
): KernelAccess<V> {
  return {
    read,
    applyBatch,
    write: async (key, value, held) => (await applyBatch('update', [{ key, value, held }]))?.get(key),
    remove: async (key, held) => void (await applyBatch('delete', [{ key, value: held, held }])),
  };
}

export function createIpsetAccess(opts: PolicyKernelOpts): KernelAccess<string[]> {
  const run = opts.run ?? runHere;
  const restore = async (op: 'update' | 'delete', input: string | null) => {
    if (!input) return;
    opts.onRestore?.('ipset', op, false);
    await run('ipset', ['restore', '-exist'], { input });
    opts.onRestore?.('ipset', op, true);
  };
  return batched(
    async () => readPolicyActual('', await run('ipset', ['save']), opts.family).sets,
    async (op, changes) => {
      // `destroy` of a set already gone is no error under -exist.
      if (op === 'delete') return restore(op, setDestroys(changes.map((c) => c.key)));
      await restore(
        op,
        setWrites(
          changes.map((c) => ({ name: c.key, members: c.value, held: c.held })),
          opts.family,
        ),
      );
    },
  );
}

export function createFilterAccess(opts: PolicyKernelOpts): KernelAccess<string[]> {
  const run = opts.run ?? runHere;
  const iptables = opts.family === 4 ? 'iptables' : 'ip6tables';
  const read = async () =>
    filterEntries(readPolicyActual(await run(`${iptables}-save`, ['-t', 'filter']), '', opts.family));
  const restore = async (op: 'update' | 'delete', input: string | null) => {
    if (!input) return;
    opts.onRestore?.('filter', op, false);
    await run(`${iptables}-restore`, ['--noflush'], { input });
    opts.onRestore?.('filter', op, true);
  };
  const removals = (changes: readonly BatchChange<string[]>[]) =>
    chainRemovals(
      changes.filter((c) => c.finish).map((c) => ({ chain: c.key, rules: c.value, held: c.held })),
      changes.filter((c) => !c.finish).map((c) => ({ chain: c.key, rules: [], held: c.held })),
    );
  return batched(read, async (op, changes) => {
    if (op === 'update') {
      const out = chainWrites(changes.map((c) => ({ chain: c.key, rules: c.value, held: c.held })));
      await restore(op, out.restore);
      // Anchors hold their old rules beside the new ones until the delete phase (finishedByRemoval).
      return new Map(changes.filter((c) => out.held.get(c.key) !== c.value).map((c) => [c.key, out.held.get(c.key)!]));
    }
    try {
      await restore(op, removals(changes));
    } catch (err) {
      // A chain already gone is success: once more, against what the kernel holds now.
      const now = await read();
      const left = changes
        .filter((c) => now.has(c.key))
        .map((c) => ({ ...c, held: now.get(c.key) }))
        .filter((c) => !c.finish || c.held!.length > c.value.length);
      if (left.length === changes.length && left.every((c, i) => sameHeld(c.held, changes[i]!.held))) throw err;
      await restore(op, removals(left));
    }
  });
}

const sameHeld = (a: readonly string[] | undefined, b: readonly string[] | undefined) =>
  a === b || (!!a && !!b && a.length === b.length && a.every((x, i) => x === b[i]));

const POD_VETH = /^weft[0-9a-f]{11}$/;

/** Local pod address (of the family) → its host-side veth, from the pods' host routes. */
export async function readPodVeths(opts: {
  routeProtocol: number;
  family: PolicyFamily;
  run?: typeof runHere;
}): Promise<Map<string, string>> {
  const run = opts.run ?? runHere;
  const routes = JSON.parse(
    (await run('ip', [`-${opts.family}`, '-j', 'route', 'show', 'proto', String(opts.routeProtocol)])) || '[]',
  ) as { dst: string; dev?: string }[];
  const out = new Map<string, string>();
  for (const r of routes) if (r.dev && POD_VETH.test(r.dev) && !r.dst.includes('/')) out.set(r.dst, r.dev);
  return out;
}
