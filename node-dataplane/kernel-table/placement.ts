import type { Phase } from './dataplane.js';

/**
 * Where a kind of kernel object goes in the dataplane's one dependency order, as its driver declares it. The order
 * of phases is derived from the declarations of all drivers (`phaseOrder`), not written out anywhere.
 */
export interface Placement {
  kind: string;
  /**
   * Kinds its entries depend on or need (`Driver.dependsOn`, `needs`): their writes go before its writes, and its
   * removals before theirs.
   */
  dependsOn?: readonly string[];
  /**
   * Kinds whose entries its entries live on (gone with one that is re-made, as routes with the VXLAN device): as
   * `dependsOn`, and its table is read back after one of them was re-made or found changed.
   */
  livesOn?: readonly string[];
  /**
   * When its removals go: after its writes (`last`, the default: the new entry is in place before the old one goes),
   * before them (`first`: an entry replaced under another key is gone before anything of its kind is written), or
   * `never` (no delete phase: its entries are always wanted).
   */
  deletes?: 'last' | 'first' | 'never';
}

const after = (p: Placement) => [...(p.livesOn ?? []), ...(p.dependsOn ?? [])];
const id = (kind: string, op: Phase['op']) => `${kind} ${op}`;

/**
 * The phases of the given kinds in an order that meets every placement: a topological order, deterministic, whose
 * ties are broken by the order of `placements`. The kinds' phases are taken in that order (a kind's delete first
 * when it deletes first); each is placed after the phases it must follow, placing those first, depth first (its
 * kind's other phase, then the phases of the kinds it names, in the order named). A kind named but not placed is
 * passed over (a dataplane of some kinds only); a cycle is an error.
 */
export function phaseOrder(placements: readonly Placement[]): Phase[] {
  const byKind = new Map<string, Placement>();
  for (const p of placements) {
    if (byKind.has(p.kind)) throw new Error(`${p.kind} is placed twice`);
    byKind.set(p.kind, p);
  }
  const has = (kind: string, op: Phase['op']) =>
    byKind.has(kind) && (op === 'update' || byKind.get(kind)!.deletes !== 'never');
  /** The phases a phase must follow, in the order they are placed when not placed yet. */
  const before = new Map<string, Phase[]>();
  const phases: Phase[] = [];
  for (const p of placements) {
    const own: Phase['op'][] =
      p.deletes === 'never' ? ['update'] : p.deletes === 'first' ? ['delete', 'update'] : ['update', 'delete'];
    for (const op of own) {
      phases.push({ kind: p.kind, op });
      before.set(id(p.kind, op), []);
    }
    if (own.length === 2) before.get(id(p.kind, own[1]!))!.push({ kind: p.kind, op: own[0]! });
  }
  for (const p of placements)
    for (const kind of after(p)) {
      if (has(kind, 'update')) before.get(id(p.kind, 'update'))!.push({ kind, op: 'update' });
      if (has(kind, 'delete') && has(p.kind, 'delete'))
        before.get(id(kind, 'delete'))!.push({ kind: p.kind, op: 'delete' });
    }
  const out: Phase[] = [];
  const state = new Map<string, 'placing' | 'placed'>();
  const place = (phase: Phase, path: string[]) => {
    const key = id(phase.kind, phase.op);
    if (state.get(key) === 'placed') return;
    if (state.get(key) === 'placing') throw new Error(`the placements form a cycle: ${[...path, key].join(' → ')}`);
    state.set(key, 'placing');
    for (const first of before.get(key)!) place(first, [...path, key]);
    state.set(key, 'placed');
    out.push(phase);
  };
  for (const phase of phases) place(phase, []);
  return out;
}

/** Kind → the kinds that live on its entries (`livesOn`), for the dataplane's `dependents`. */
export function dependentsOf(placements: readonly Placement[]): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const p of placements) for (const on of p.livesOn ?? []) (out[on] ??= []).push(p.kind);
  return out;
}
