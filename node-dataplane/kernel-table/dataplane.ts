import { forEachBounded } from '../../lib/bounded-concurrency.js';
import type { KernelTable } from './table.js';

/**
 * Drivers, and the one place that runs them in kernel dependency order.
 *
 * A driver owns one kind of kernel object: its table (desired, cache, pending; `table.ts`), the kernel access for
 * that kind (read all of Weft's entries, write one, remove one), and what each entry needs in the kernel first
 * (`dependsOn`). The dataplane applies every driver's pending changes phase by phase in the order it is given,
 * reading a driver's kind back first only when its table is marked for resync. Within a phase at most `maxInFlight`
 * requests are outstanding. A failed request leaves its entry pending and marks its table for resync (the retry
 * reads back); the rest goes on. What depends on an entry that is not in place is held back, not attempted:
 *  - an update waits until every entry it depends on is in the kernel as desired (not pending: failed or held);
 *  - a delete waits while an entry in the kernel that depends on it is still pending (its own delete or replacement
 *    failed), so nothing is taken from under an entry that still uses it.
 */
export interface KernelAccess<V> {
  /** Every entry of this kind that Weft owns, as the kernel holds it now, by the table's keys. */
  read(): Promise<Map<string, V>>;
  /** Creates or replaces one entry (`held`: what the kernel holds under the key, if anything); may return the value as the kernel now holds it. */
  write(key: string, value: V, held: V | undefined): Promise<V | void>;
  /** Removes one entry; an entry already gone is success. */
  remove(key: string, held: V): Promise<void>;
  /**
   * Optional: a phase's changes in one request (a restore transaction), in dependency order. Resolves with what the
   * kernel now holds of entries whose value differs from the desired one; rejects when the request failed, whatever
   * part of it the kernel took (each change must be safe to repeat). The dataplane then splits the batch to find the
   * failing changes.
   */
  applyBatch?(op: 'update' | 'delete', changes: readonly BatchChange<V>[]): Promise<Map<string, V> | void>;
}

export interface BatchChange<V> {
  key: string;
  /** Update: the desired value; delete: the value the kernel holds. */
  value: V;
  held: V | undefined;
  /** An update done by the removal batch (Driver.finishedByRemoval). */
  finish?: boolean;
}

/** Finds an entry of another kind (desired, else as cached), for dependencies that go through it. */
export type Lookup = (kind: string, key: string) => unknown;

export interface Driver<V = unknown> {
  kind: string;
  table: KernelTable<V>;
  access: KernelAccess<V>;
  /** Entries of other kinds (`kind/key`) that must be in the kernel before this one is written. */
  dependsOn?(key: string, value: V, lookup: Lookup): string[];
  /** Entries of other kinds, or of its own, that must merely exist in the kernel (whatever they hold) first. */
  needs?(key: string, value: V): string[];
  /**
   * An update held back by some of what it needs (`missing`, `kind/key`) may be written without the parts that need
   * them, when that is safe (a dispatch chain without a pod that is not there yet: the pod meets the chain's final
   * drop). Null: it is held back whole. The entry stays pending until written whole.
   */
  without?(key: string, value: V, missing: ReadonlySet<string>): V | null;
  /** Its failures do not fail the pass (logged by the caller); after one it rests until it is next marked for resync. */
  optional?: boolean;
  /** False while its desired entries are not known (e.g. the pools): it neither reads nor writes. */
  ready?: () => boolean;
  /** After a read-back, before anything is applied: for desired entries that depend on what the kernel holds. */
  onRead?: () => void;
  /**
   * Batch drivers: an update whose written part is in force and whose rest is removals only (what the kernel holds
   * is the desired value plus more) is completed in the delete phase's batch, before the deletes it may allow.
   */
  finishedByRemoval?(key: string, want: V, held: V): boolean;
}

/** Requests a batch driver's phase may make while it splits failing batches (log2 of 4,000 changes is 12). */
const MAX_BATCH_REQUESTS = 32;

export interface Phase {
  kind: string;
  op: 'update' | 'delete';
}

export interface Change {
  op: 'update' | 'delete';
  kind: string;
  key: string;
}

export interface ApplyReport {
  /** Kinds read back in this apply. */
  reads: string[];
  readFailures: { kind: string; error: string; optional: boolean }[];
  /** Entries the cache held as desired that the read-back found gone or changed: drift, re-applied now. */
  drift: { kind: string; key: string }[];
  changes: Change[];
  failed: (Change & { error: string; optional: boolean })[];
  /** Changes not attempted because what they depend on is not in place, with the first such entry. */
  held: (Change & { on: string })[];
}

export interface Dataplane {
  apply(): Promise<ApplyReport>;
  /** Marks the given kinds (default: all) for resync; a resting optional driver is tried again. */
  markForResync(kinds?: readonly string[]): void;
  driver<V>(kind: string): Driver<V>;
  /** Changes still pending in the given kinds (default: all), held and failed ones included. */
  pending(kinds?: readonly string[]): number;
}

export function createDataplane(opts: {
  drivers: readonly Driver<unknown>[];
  order: readonly Phase[];
  /** Kinds whose entries live on an entry of this kind: re-created or found changed, they are read back too. */
  dependents?: Readonly<Record<string, readonly string[]>>;
  /** Requests in flight per phase (the netlink package aborts the process near 512). */
  maxInFlight?: number;
}): Dataplane {
  const drivers = new Map<string, Driver<unknown>>(opts.drivers.map((d) => [d.kind, d]));
  for (const p of opts.order)
    if (!drivers.has(p.kind)) throw new Error(`dataplane order names ${p.kind}, which has no driver`);
  const maxInFlight = Math.min(opts.maxInFlight ?? 64, 256);
  /** Kinds whose entries live on an entry of another kind. */
  const livesOn = new Set(Object.values(opts.dependents ?? {}).flat());
  const resting = new Set<string>();

  const lookup: Lookup = (kind, key) => {
    const t = drivers.get(kind)?.table;
    return t?.desired.get(key) ?? t?.cache.get(key);
  };
  const depsOf = (d: Driver<unknown>, key: string, value: unknown) => d.dependsOn?.(key, value, lookup) ?? [];
  const needsOf = (d: Driver<unknown>, key: string, value: unknown) => d.needs?.(key, value) ?? [];
  const splitRef = (ref: string) => {
    const i = ref.indexOf('/');
    return [ref.slice(0, i), ref.slice(i + 1)] as const;
  };
  /** An entry another one depends on is in place when its kind has it in the kernel as desired. */
  const inPlace = (ref: string) => {
    const [kind, key] = splitRef(ref);
    const t = drivers.get(kind)?.table;
    return !t || !t.pendingUpdates.has(key);
  };
  /** An entry another one needs exists when its kind's kernel holds it, as desired or not. */
  const exists = (ref: string) => {
    const [kind, key] = splitRef(ref);
    const t = drivers.get(kind)?.table;
    return !t || t.cache.has(key);
  };

  /** Entries still in the kernel and still to change (`kind/key`), by what they use: those are not deleted yet. */
  const usersOf = () => {
    const inUse = new Map<string, string[]>();
    for (const other of drivers.values()) {
      for (const pending of [other.table.pendingUpdates, other.table.pendingDeletes]) {
        for (const key of pending.keys()) {
          const held = other.table.cache.get(key);
          if (held === undefined) continue;
          for (const ref of [...depsOf(other, key, held), ...needsOf(other, key, held)]) {
            const users = inUse.get(ref);
            if (users) users.push(`${other.kind}/${key}`);
            else inUse.set(ref, [`${other.kind}/${key}`]);
          }
        }
      }
    }
    return inUse;
  };

  const failedChange = (d: Driver<unknown>, op: 'update' | 'delete', key: string, err: unknown, r: ApplyReport) => {
    d.table.markForResync();
    if (d.optional) resting.add(d.kind);
    r.failed.push({ op, kind: d.kind, key, error: (err as Error).message, optional: !!d.optional });
  };

  /**
   * A batch driver's phase: the changes whose dependencies are in place or in the same batch, in dependency order
   * (what an update needs first; a delete after the changes of what used it), as one request. A failed request is
   * split in halves, each retried once the other half's outcome is known (what depended on a failed change is held
   * back), down to single changes, at most MAX_BATCH_REQUESTS requests a phase: one bad entry does not fail the rest.
   * Returns whether anything was written.
   */
  async function applyBatched(d: Driver<unknown>, op: 'update' | 'delete', report: ApplyReport): Promise<boolean> {
    const t = d.table;
    /** `whole`: the desired value of an update that is written without some parts (Driver.without). */
    type Item = BatchChange<unknown> & { op: 'update' | 'delete'; whole?: unknown; on?: string };
    const candidates = new Map<string, Item>();
    if (op === 'update') {
      for (const [key, value] of t.pendingUpdates) candidates.set(key, { op, key, value, held: t.cache.get(key) });
    } else {
      for (const [key, value] of t.pendingUpdates) {
        const held = t.cache.get(key);
        if (held !== undefined && d.finishedByRemoval?.(key, value, held))
          candidates.set(key, { op: 'update', key, value, held, finish: true });
      }
      for (const [key, value] of t.pendingDeletes) candidates.set(key, { op, key, value, held: value });
    }
    const users = op === 'delete' ? usersOf() : new Map<string, string[]>();
    const prefix = `${d.kind}/`;
    const sameKind = (ref: string) => (ref.startsWith(prefix) ? ref.slice(prefix.length) : null);
    /** Keys of this phase whose request succeeded. */
    const done = new Set<string>();
    /**
     * What holds an item back: an entry it needs that is not in place, nor written or to be written in this batch;
     * or, for a delete, an entry still using it whose change is not in this batch (nor done).
     */
    const blocker = (item: Item, batch: ReadonlyMap<string, Item>): string | undefined => {
      if (item.op === 'update') return missingFor(item, batch)[0];
      return users.get(`${d.kind}/${item.key}`)?.find((user) => {
        const k = sameKind(user);
        return k === null || (k !== item.key && !batch.has(k) && !done.has(k));
      });
    };
    /** What an update needs that is not there: an entry not in place (nor in the batch), one that does not exist. */
    const missingFor = (item: Item, batch: ReadonlyMap<string, Item>, value = item.whole ?? item.value) => {
      const inBatch = (ref: string) => {
        const k = sameKind(ref);
        return k !== null && (batch.get(k)?.op === 'update' || done.has(k));
      };
      return [
        ...depsOf(d, item.key, value).filter((ref) => !inBatch(ref) && !inPlace(ref)),
        ...needsOf(d, item.key, value).filter((ref) => !inBatch(ref) && !exists(ref)),
      ];
    };
    /** Drops what is held back (until nothing more is), reporting it; the rest in dependency order. */
    const eligible = (items: Item[]): Item[] => {
      const batch = new Map(items.map((i) => [i.key, i]));
      for (let again = true; again;) {
        again = false;
        for (const item of batch.values()) {
          if (item.whole !== undefined) {
            item.value = item.whole;
            item.whole = item.on = undefined;
          }
          const on = blocker(item, batch);
          if (!on) continue;
          const missing = item.op === 'update' && !item.finish ? missingFor(item, batch) : [];
          const part = missing.length > 0 ? d.without?.(item.key, item.value, new Set(missing)) : null;
          // Written in part unless the kernel already holds that part.
          if (part !== null && part !== undefined && JSON.stringify(part) !== JSON.stringify(t.cache.get(item.key))) {
            [item.whole, item.value, item.on] = [item.value, part, on];
            continue;
          }
          batch.delete(item.key);
          report.held.push({ op: item.finish ? 'update' : item.op, kind: d.kind, key: item.key, on });
          again = true;
        }
      }
      for (const item of batch.values())
        if (item.on)
          report.held.push({ op: 'update', kind: d.kind, key: item.key, on: `${item.on} (written without it)` });
      return ordered(batch);
    };
    const ordered = (batch: Map<string, Item>): Item[] => {
      const out: Item[] = [];
      const seen = new Set<string>();
      const after = (item: Item): string[] =>
        item.op === 'update'
          ? [...depsOf(d, item.key, item.value), ...needsOf(d, item.key, item.value)]
              .map(sameKind)
              .filter((k): k is string => k !== null)
          : (users.get(`${d.kind}/${item.key}`) ?? []).map(sameKind).filter((k): k is string => k !== null);
      const visit = (item: Item) => {
        if (seen.has(item.key)) return;
        seen.add(item.key);
        for (const k of after(item)) {
          const first = batch.get(k);
          if (first) visit(first);
        }
        out.push(item);
      };
      // Finishing updates first: the removal batch deletes what they stopped using.
      for (const item of batch.values()) if (item.finish) visit(item);
      for (const item of batch.values()) visit(item);
      return out;
    };
    let requests = 0;
    let wrote = false;
    const run = async (items: Item[]): Promise<void> => {
      if (items.length === 0) return;
      requests++;
      try {
        const held = await d.access.applyBatch!(op, items);
        for (const item of items) {
          done.add(item.key);
          if (item.op === 'update') {
            t.updated(item.key, held?.get(item.key) ?? (item.whole !== undefined ? item.value : undefined));
            wrote = true;
          } else t.deleted(item.key);
          report.changes.push({ op: item.op, kind: d.kind, key: item.key });
        }
      } catch (err) {
        if (items.length === 1 || requests >= MAX_BATCH_REQUESTS) {
          for (const item of items) failedChange(d, item.op, item.key, err, report);
          return;
        }
        const half = Math.ceil(items.length / 2);
        await run(items.slice(0, half));
        // What the first half's failures leave without a dependency is held back now.
        await run(eligible(items.slice(half)));
      }
    };
    await run(eligible([...candidates.values()]));
    return wrote;
  }

  async function apply(): Promise<ApplyReport> {
    const report: ApplyReport = { reads: [], readFailures: [], drift: [], changes: [], failed: [], held: [] };
    const unreadable = new Set<string>();
    // Kinds that live on no other are read side by side now (spawned programs in parallel); the others (on the
    // device) before their first phase, after the device is in place.
    const early = new Map<string, Promise<Map<string, unknown>>>();
    for (const kind of new Set(opts.order.map((p) => p.kind))) {
      const d = drivers.get(kind)!;
      if (livesOn.has(kind) || !d.table.needsResync || resting.has(kind) || (d.ready && !d.ready())) continue;
      d.table.beginResync();
      const read = d.access.read();
      read.catch(() => {});
      early.set(kind, read);
    }
    const resync = async (d: Driver<unknown>) => {
      const started = early.get(d.kind);
      early.delete(d.kind);
      if (!started) {
        if (!d.table.needsResync || resting.has(d.kind) || unreadable.has(d.kind) || report.reads.includes(d.kind))
          return;
        d.table.beginResync();
      }
      try {
        const actual = await (started ?? d.access.read());
        const before = d.table.cache;
        for (const { key } of d.table.replaceCache(actual)) report.drift.push({ kind: d.kind, key });
        report.reads.push(d.kind);
        d.onRead?.();
        // Entries that live on one of this kind (the device) are gone with it when it was re-made behind Weft's back.
        const dependents = opts.dependents?.[d.kind] ?? [];
        const changed =
          dependents.length > 0 &&
          [...before.keys(), ...actual.keys()].some(
            (k) => JSON.stringify(before.get(k)) !== JSON.stringify(actual.get(k)),
          );
        if (changed) for (const k of dependents) drivers.get(k)?.table.markForResync();
      } catch (err) {
        d.table.markForResync();
        unreadable.add(d.kind);
        if (d.optional) resting.add(d.kind);
        report.readFailures.push({ kind: d.kind, error: (err as Error).message, optional: !!d.optional });
      }
    };

    const rewritten = new Set<string>();
    for (const phase of opts.order) {
      const d = drivers.get(phase.kind)!;
      if (d.ready && !d.ready()) continue;
      await resync(d);
      if (resting.has(d.kind) || unreadable.has(d.kind)) {
        const pending = phase.op === 'update' ? d.table.pendingUpdates : d.table.pendingDeletes;
        for (const key of pending.keys())
          report.held.push({ op: phase.op, kind: d.kind, key, on: `${d.kind} (not readable)` });
        continue;
      }
      if (d.access.applyBatch) {
        if (await applyBatched(d, phase.op, report)) rewritten.add(d.kind);
        continue;
      }
      const items: [string, unknown][] = [];
      if (phase.op === 'update') {
        for (const [key, value] of d.table.pendingUpdates) {
          const missing =
            depsOf(d, key, value).find((ref) => !inPlace(ref)) ?? needsOf(d, key, value).find((ref) => !exists(ref));
          if (missing) report.held.push({ op: 'update', kind: d.kind, key, on: missing });
          else items.push([key, value]);
        }
      } else {
        const inUse = usersOf();
        for (const [key, value] of d.table.pendingDeletes) {
          const user = inUse.get(`${d.kind}/${key}`)?.[0];
          if (user) report.held.push({ op: 'delete', kind: d.kind, key, on: user });
          else items.push([key, value]);
        }
      }
      await forEachBounded(items, maxInFlight, async ([key, value]) => {
        try {
          if (phase.op === 'update') {
            const held = await d.access.write(key, value, d.table.cache.get(key));
            d.table.updated(key, held ?? undefined);
            rewritten.add(d.kind);
          } else {
            await d.access.remove(key, value);
            d.table.deleted(key);
          }
          report.changes.push({ op: phase.op, kind: d.kind, key });
        } catch (err) {
          failedChange(d, phase.op, key, err, report);
        }
      });
      if (rewritten.delete(d.kind))
        for (const k of opts.dependents?.[d.kind] ?? []) drivers.get(k)?.table.markForResync();
    }
    return report;
  }

  return {
    apply,
    markForResync(kinds) {
      for (const kind of kinds ?? [...drivers.keys()]) {
        drivers.get(kind)?.table.markForResync();
        resting.delete(kind);
      }
    },
    driver: <V>(kind: string) => {
      const d = drivers.get(kind);
      if (!d) throw new Error(`no driver for ${kind}`);
      return d as Driver<V>;
    },
    pending(kinds) {
      let n = 0;
      for (const kind of kinds ?? [...drivers.keys()]) {
        const t = drivers.get(kind)?.table;
        if (t) n += t.pendingUpdates.size + t.pendingDeletes.size;
      }
      return n;
    },
  };
}
