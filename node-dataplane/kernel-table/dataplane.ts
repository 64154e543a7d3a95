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

/**
 * Thrown by a kernel access when an entry cannot be changed yet because of something outside Weft's tables (a pod's
 * veth that only the runtime's ADD makes, or that an ADD is making right now). Not a failure: the entry stays pending
 * without marking its table for resync, what depends on it is held (reported `waiting`), and the pass does not fail.
 * Each apply tries it again.
 */
export class EntryWaiting extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'EntryWaiting';
  }
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
  /**
   * Its manager, when the driver carries one: its desired entries from the current inputs (pure), taken at the start
   * of every apply; null while they are not known (then, as with `ready`, it neither reads nor writes). A driver
   * with it needs nothing of the scheduler but a place in the list of drivers.
   */
  desired?: () => ReadonlyMap<string, V> | null;
  /** After a read-back, before anything is applied: for desired entries that depend on what the kernel holds. */
  onRead?: () => void;
  /**
   * Batch drivers: an update whose written part is in force and whose rest is removals only (what the kernel holds
   * is the desired value plus more) is completed in the delete phase's batch, before the deletes it may allow.
   */
  finishedByRemoval?(key: string, want: V, held: V): boolean;
}

/** A reference to an entry (`kind/key`), split, with its kind's table (none: a kind this dataplane does not run). */
interface Ref {
  ref: string;
  kind: string;
  key: string;
  table: KernelTable<unknown> | undefined;
}

/** A change of a batch phase, with its references resolved once. */
interface BatchItem extends BatchChange<unknown> {
  op: 'update' | 'delete';
  /** Its position among the phase's changes: the order holds are looked at and reported in. */
  index: number;
  /** An update's entries that must be in place, and those that must exist (from its whole value). */
  deps: Ref[];
  needs: Ref[];
  /** A delete's users: entries still in the kernel and still to change that use it. */
  users: Ref[];
  /** Keys of its own kind that it comes after when they are in the same batch (deps and needs; users). */
  after: string[];
  /** The desired value of an update written without some parts (Driver.without). */
  whole?: unknown;
  /** What it is written without, when in part. */
  on?: string;
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
  /**
   * Changes not attempted because what they depend on is not in place, with the first such entry (`waiting`: that
   * entry is waiting for something outside Weft, not failed).
   */
  held: (Change & { on: string; waiting?: boolean })[];
  /** Changes that wait for something outside Weft's tables (EntryWaiting): pending, but no failure. */
  waiting: (Change & { reason: string })[];
}

export interface Dataplane {
  apply(): Promise<ApplyReport>;
  /**
   * Begins now the read-backs the next apply would begin first (kinds marked for resync, on no other kind, ready,
   * without a manager of their own), so that they run while the managers compute; the next apply takes them.
   */
  prefetch(): void;
  /** Marks the given kinds (default: all) for resync; a resting optional driver is tried again. */
  markForResync(kinds?: readonly string[]): void;
  driver<V>(kind: string): Driver<V>;
  /** Changes still pending in the given kinds (default: all), held and failed ones included. */
  pending(kinds?: readonly string[]): number;
}

export function createDataplane(opts: {
  drivers: readonly Driver<unknown>[];
  /** The phases, in order (drivers/registry.ts derives them); phases of kinds without a driver here are passed over. */
  order: readonly Phase[];
  /** Kinds whose entries live on an entry of this kind: re-created or found changed, they are read back too. */
  dependents?: Readonly<Record<string, readonly string[]>>;
  /** Requests in flight per phase (the netlink package aborts the process near 512). */
  maxInFlight?: number;
}): Dataplane {
  const drivers = new Map<string, Driver<unknown>>(opts.drivers.map((d) => [d.kind, d]));
  // A dataplane may run some of the kinds (a test of the overlay alone): phases of others are passed over. A driver
  // the order does not name would never apply.
  for (const kind of drivers.keys())
    if (!opts.order.some((p) => p.kind === kind)) throw new Error(`driver ${kind} has no place in the dataplane order`);
  const order = opts.order.filter((p) => drivers.has(p.kind));
  const maxInFlight = Math.min(opts.maxInFlight ?? 64, 256);
  /** Kinds whose entries live on an entry of another kind. */
  const livesOn = new Set(Object.values(opts.dependents ?? {}).flat());
  const resting = new Set<string>();
  /** Each kind once, in the order of its first phase. */
  const kinds = [...new Set(order.map((p) => p.kind))];
  /** Read-backs begun by `prefetch`, taken by the next apply. */
  const prefetched = new Map<string, Promise<Map<string, unknown>>>();
  /** Whether a kind is read back before the phases: marked, on no other kind, not resting, ready. */
  const readsEarly = (d: Driver<unknown>) =>
    !livesOn.has(d.kind) && d.table.needsResync && !resting.has(d.kind) && (!d.ready || d.ready());
  const beginRead = (d: Driver<unknown>) => {
    d.table.beginResync();
    const read = d.access.read();
    read.catch(() => {});
    return read;
  };

  const lookup: Lookup = (kind, key) => {
    const t = drivers.get(kind)?.table;
    return t?.desired.get(key) ?? t?.cache.get(key);
  };
  const depsOf = (d: Driver<unknown>, key: string, value: unknown) => d.dependsOn?.(key, value, lookup) ?? [];
  const needsOf = (d: Driver<unknown>, key: string, value: unknown) => d.needs?.(key, value) ?? [];
  /** References (`kind/key`) split once per apply: a pass asks about the same ones many times. */
  let refs = new Map<string, Ref>();
  const resolve = (ref: string): Ref => {
    let r = refs.get(ref);
    if (!r) {
      const i = ref.indexOf('/');
      const kind = ref.slice(0, i);
      r = { ref, kind, key: ref.slice(i + 1), table: drivers.get(kind)?.table };
      refs.set(ref, r);
    }
    return r;
  };
  /** An entry another one depends on is in place when its kind has it in the kernel as desired. */
  const inPlace = (r: Ref) => !r.table || !r.table.pendingUpdates.has(r.key);
  /** An entry another one needs exists when its kind's kernel holds it, as desired or not. */
  const exists = (r: Ref) => !r.table || r.table.cache.has(r.key);

  /** Entries still in the kernel and still to change (`kind/key`), by what they use: those are not deleted yet. */
  const usersOf = () => {
    const inUse = new Map<string, string[]>();
    const use = (ref: string, user: string) => {
      const users = inUse.get(ref);
      if (users) users.push(user);
      else inUse.set(ref, [user]);
    };
    for (const other of drivers.values()) {
      const t = other.table;
      for (const pending of [t.pendingUpdates, t.pendingDeletes]) {
        for (const key of pending.keys()) {
          const held = t.cache.get(key);
          if (held === undefined) continue;
          const user = `${other.kind}/${key}`;
          for (const ref of depsOf(other, key, held)) use(ref, user);
          for (const ref of needsOf(other, key, held)) use(ref, user);
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
   *
   * Each change's references are resolved once (`links`); holding back is a worklist over the entries of the batch
   * that refer to a dropped one, so a phase costs time in proportion to its changes and their references.
   */
  async function applyBatched(d: Driver<unknown>, op: 'update' | 'delete', report: ApplyReport): Promise<boolean> {
    const t = d.table;
    const candidates: BatchItem[] = [];
    const users = op === 'delete' ? usersOf() : null;
    const add = (item: BatchChange<unknown> & { op: 'update' | 'delete' }) =>
      candidates.push(link(d, item, candidates.length, users));
    if (op === 'update') {
      for (const [key, value] of t.pendingUpdates) add({ op, key, value, held: t.cache.get(key) });
    } else {
      for (const [key, value] of t.pendingUpdates) {
        const held = t.cache.get(key);
        if (held !== undefined && d.finishedByRemoval?.(key, value, held))
          add({ op: 'update', key, value, held, finish: true });
      }
      for (const [key, value] of t.pendingDeletes) add({ op, key, value, held: value });
    }
    /** Keys of this phase whose request succeeded. */
    const done = new Set<string>();
    /** Whether a reference of an update to its own kind is met by the batch: written in it, or done before. */
    const inBatch = (r: Ref, batch: ReadonlyMap<string, BatchItem>) =>
      r.kind === d.kind && (batch.get(r.key)?.op === 'update' || done.has(r.key));
    /** What an update needs that is not there: an entry not in place (nor in the batch), one that does not exist. */
    const missingFor = (item: BatchItem, batch: ReadonlyMap<string, BatchItem>, first: boolean): string[] => {
      const out: string[] = [];
      for (const r of item.deps)
        if (!inBatch(r, batch) && !inPlace(r)) {
          out.push(r.ref);
          if (first) return out;
        }
      for (const r of item.needs)
        if (!inBatch(r, batch) && !exists(r)) {
          out.push(r.ref);
          if (first) return out;
        }
      return out;
    };
    /**
     * What holds an item back: an entry it needs that is not in place, nor written or to be written in this batch;
     * or, for a delete, an entry still using it whose change is not in this batch (nor done).
     */
    const blocker = (item: BatchItem, batch: ReadonlyMap<string, BatchItem>): string | undefined => {
      if (item.op === 'update') return missingFor(item, batch, true)[0];
      return item.users.find((u) => u.kind !== d.kind || (u.key !== item.key && !batch.has(u.key) && !done.has(u.key)))
        ?.ref;
    };
    /** Whether an item stays in the batch (whole, or written without what is missing); reports it when not. */
    const keep = (item: BatchItem, batch: Map<string, BatchItem>): boolean => {
      if (item.whole !== undefined) {
        item.value = item.whole;
        item.whole = item.on = undefined;
      }
      const on = blocker(item, batch);
      if (!on) return true;
      const missing = item.op === 'update' && !item.finish ? missingFor(item, batch, false) : [];
      const part = missing.length > 0 ? d.without?.(item.key, item.value, new Set(missing)) : null;
      // Written in part unless the kernel already holds that part.
      if (part !== null && part !== undefined && JSON.stringify(part) !== JSON.stringify(t.cache.get(item.key))) {
        [item.whole, item.value, item.on] = [item.value, part, on];
        return true;
      }
      batch.delete(item.key);
      report.held.push({ op: item.finish ? 'update' : item.op, kind: d.kind, key: item.key, on });
      return false;
    };
    /**
     * Drops what is held back, reporting it; the rest in dependency order. An item is looked at again only when one
     * of the batch that it refers to (same kind) was dropped, in the order the phase's changes came in.
     */
    const eligible = (items: BatchItem[]): BatchItem[] => {
      const batch = new Map(items.map((i) => [i.key, i]));
      /** Same-kind keys of the batch → the items of the batch whose holds look at them. */
      const referrers = new Map<string, BatchItem[]>();
      for (const item of items)
        for (const k of item.after) {
          if (!batch.has(k)) continue;
          const list = referrers.get(k);
          if (list) list.push(item);
          else referrers.set(k, [item]);
        }
      for (let round = items; round.length > 0;) {
        const again = new Set<BatchItem>();
        for (const item of round) {
          if (batch.get(item.key) !== item || keep(item, batch)) continue;
          for (const r of referrers.get(item.key) ?? []) if (batch.get(r.key) === r) again.add(r);
        }
        round = [...again].sort((a, b) => a.index - b.index);
      }
      for (const item of batch.values())
        if (item.on)
          report.held.push({ op: 'update', kind: d.kind, key: item.key, on: `${item.on} (written without it)` });
      return ordered(batch);
    };
    let requests = 0;
    let wrote = false;
    const run = async (items: BatchItem[]): Promise<void> => {
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
    await run(eligible(candidates));
    return wrote;
  }

  /** A change of a batch phase with its references resolved (from its whole value), once per phase. */
  const link = (
    d: Driver<unknown>,
    change: BatchChange<unknown> & { op: 'update' | 'delete' },
    index: number,
    users: ReadonlyMap<string, string[]> | null,
  ): BatchItem => {
    // Built field by field: an object spread followed by more fields takes V8's slow path (~10 µs an item).
    const item: BatchItem = {
      op: change.op,
      key: change.key,
      value: change.value,
      held: change.held,
      finish: change.finish,
      index,
      deps: [],
      needs: [],
      users: [],
      after: [],
      whole: undefined,
      on: undefined,
    };
    if (change.op === 'update') {
      for (const ref of depsOf(d, change.key, change.value)) item.deps.push(resolve(ref));
      for (const ref of needsOf(d, change.key, change.value)) item.needs.push(resolve(ref));
      for (const r of item.deps) if (r.kind === d.kind) item.after.push(r.key);
      for (const r of item.needs) if (r.kind === d.kind) item.after.push(r.key);
    } else {
      for (const ref of users?.get(`${d.kind}/${change.key}`) ?? []) item.users.push(resolve(ref));
      for (const r of item.users) if (r.kind === d.kind) item.after.push(r.key);
    }
    return item;
  };

  /**
   * Dependency order within a batch: each item after the items of the batch it refers to (what an update needs; the
   * users of what a delete removes); finishing updates first, since the removal batch deletes what they stopped using.
   */
  const ordered = (batch: ReadonlyMap<string, BatchItem>): BatchItem[] => {
    const out: BatchItem[] = [];
    const seen = new Set<string>();
    const visit = (item: BatchItem) => {
      if (seen.has(item.key)) return;
      seen.add(item.key);
      for (const k of item.after) {
        const first = batch.get(k);
        if (first) visit(first);
      }
      out.push(item);
    };
    for (const item of batch.values()) if (item.finish) visit(item);
    for (const item of batch.values()) visit(item);
    return out;
  };

  async function apply(): Promise<ApplyReport> {
    const report: ApplyReport = {
      reads: [],
      readFailures: [],
      drift: [],
      changes: [],
      failed: [],
      held: [],
      waiting: [],
    };
    refs = new Map();
    const waitingRefs = new Set<string>();
    const unknown = new Set<string>();
    for (const d of drivers.values()) {
      if (!d.desired) continue;
      const want = d.desired();
      if (want) d.table.replaceDesired(want);
      else unknown.add(d.kind);
    }
    const unreadable = new Set<string>();
    // Kinds that live on no other are read side by side now (spawned programs in parallel), unless a prefetch began
    // them already; the others (on the device) before their first phase, after the device is in place.
    const early = new Map(prefetched);
    prefetched.clear();
    for (const kind of kinds) {
      const d = drivers.get(kind)!;
      if (!early.has(kind) && readsEarly(d) && !unknown.has(kind)) early.set(kind, beginRead(d));
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
    for (const phase of order) {
      const d = drivers.get(phase.kind)!;
      if ((d.ready && !d.ready()) || unknown.has(d.kind)) continue;
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
            depsOf(d, key, value).find((ref) => !inPlace(resolve(ref))) ??
            needsOf(d, key, value).find((ref) => !exists(resolve(ref)));
          if (missing) {
            const waiting = waitingRefs.has(missing);
            report.held.push({ op: 'update', kind: d.kind, key, on: missing, ...(waiting ? { waiting } : {}) });
            if (waiting) waitingRefs.add(`${d.kind}/${key}`);
          } else items.push([key, value]);
        }
      } else {
        const inUse = usersOf();
        for (const [key, value] of d.table.pendingDeletes) {
          const users = inUse.get(`${d.kind}/${key}`);
          const user = users?.find((u) => waitingRefs.has(u)) ?? users?.[0];
          if (user) {
            const waiting = waitingRefs.has(user);
            report.held.push({ op: 'delete', kind: d.kind, key, on: user, ...(waiting ? { waiting } : {}) });
            if (waiting) waitingRefs.add(`${d.kind}/${key}`);
          } else items.push([key, value]);
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
          if (err instanceof EntryWaiting) {
            waitingRefs.add(`${d.kind}/${key}`);
            report.waiting.push({ op: phase.op, kind: d.kind, key, reason: err.message });
            return;
          }
          failedChange(d, phase.op, key, err, report);
        }
      });
      if (rewritten.delete(d.kind))
        for (const k of opts.dependents?.[d.kind] ?? []) drivers.get(k)?.table.markForResync();
    }
    // A read begun for a kind that no phase took (it stopped being ready) is not lost: the kind is read next time.
    for (const kind of early.keys()) drivers.get(kind)!.table.markForResync();
    return report;
  }

  return {
    apply,
    prefetch() {
      for (const kind of kinds) {
        const d = drivers.get(kind)!;
        if (!d.desired && !prefetched.has(kind) && readsEarly(d)) prefetched.set(kind, beginRead(d));
      }
    },
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
