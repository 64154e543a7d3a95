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
}

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
  /** Marks the given kinds (default: all) for resync; a resting optional driver is tried again. */
  markForResync(kinds?: readonly string[]): void;
  driver<V>(kind: string): Driver<V>;
  /** Changes still pending in the given kinds (default: all), held and failed ones included. */
  pending(kinds?: readonly string[]): number;
}

export function createDataplane(opts: {
  drivers: readonly Driver<unknown>[];
  /** The phases, in order (drivers/order.ts); phases of kinds without a driver here are passed over. */
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
  const resting = new Set<string>();

  const lookup: Lookup = (kind, key) => {
    const t = drivers.get(kind)?.table;
    return t?.desired.get(key) ?? t?.cache.get(key);
  };
  const depsOf = (d: Driver<unknown>, key: string, value: unknown) => d.dependsOn?.(key, value, lookup) ?? [];
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
    const waitingRefs = new Set<string>();
    const unknown = new Set<string>();
    for (const d of drivers.values()) {
      if (!d.desired) continue;
      const want = d.desired();
      if (want) d.table.replaceDesired(want);
      else unknown.add(d.kind);
    }
    const unreadable = new Set<string>();
    const resync = async (d: Driver<unknown>) => {
      if (!d.table.needsResync || resting.has(d.kind) || unreadable.has(d.kind) || report.reads.includes(d.kind))
        return;
      d.table.beginResync();
      try {
        const actual = await d.access.read();
        const before = d.table.cache;
        for (const { key } of d.table.replaceCache(actual)) report.drift.push({ kind: d.kind, key });
        report.reads.push(d.kind);
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
      const items: [string, unknown][] = [];
      if (phase.op === 'update') {
        for (const [key, value] of d.table.pendingUpdates) {
          const missing = depsOf(d, key, value).find((ref) => !inPlace(ref));
          if (missing) {
            const waiting = waitingRefs.has(missing);
            report.held.push({ op: 'update', kind: d.kind, key, on: missing, ...(waiting ? { waiting } : {}) });
            if (waiting) waitingRefs.add(`${d.kind}/${key}`);
          } else items.push([key, value]);
        }
      } else {
        // Entries still in the kernel and still to change, and what they use: those are not deleted yet.
        const inUse = new Map<string, string>();
        for (const other of drivers.values()) {
          for (const pending of [other.table.pendingUpdates, other.table.pendingDeletes]) {
            for (const key of pending.keys()) {
              const held = other.table.cache.get(key);
              if (held === undefined) continue;
              for (const ref of depsOf(other, key, held)) if (!inUse.has(ref)) inUse.set(ref, `${other.kind}/${key}`);
            }
          }
        }
        for (const [key, value] of d.table.pendingDeletes) {
          const user = inUse.get(`${d.kind}/${key}`);
          if (user) {
            const waiting = waitingRefs.has(user);
            report.held.push({ op: 'delete', kind: d.kind, key, on: user, ...(waiting ? { waiting } : {}) });
            if (waiting) waitingRefs.add(`${d.kind}/${key}`);
          } else items.push([key, value]);
        }
      }
      let rewritten = false;
      await forEachBounded(items, maxInFlight, async ([key, value]) => {
        try {
          if (phase.op === 'update') {
            const held = await d.access.write(key, value, d.table.cache.get(key));
            d.table.updated(key, held ?? undefined);
            rewritten = true;
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
          d.table.markForResync();
          if (d.optional) resting.add(d.kind);
          report.failed.push({
            op: phase.op,
            kind: d.kind,
            key,
            error: (err as Error).message,
            optional: !!d.optional,
          });
        }
      });
      if (rewritten) for (const k of opts.dependents?.[d.kind] ?? []) drivers.get(k)?.table.markForResync();
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
