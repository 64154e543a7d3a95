import type { BatchChange, KernelAccess } from './dataplane.js';

/**
 * An in-memory kernel of one kind, behind the same `KernelAccess` as netlink, iproute2 or iptables: the test harness
 * of every driver (drivers/drivers.test.ts) and of the scheduler (reconciler.test.ts). It records each request,
 * can fail chosen requests, and answers asynchronously so that concurrency is real. With `batch`, it also takes a
 * phase's changes in one request, all or nothing, as iptables-restore does: a failing change fails the request.
 */
export interface FakeKernel<V> extends KernelAccess<V> {
  /** What the kernel holds. */
  entries: Map<string, V>;
  /** Requests in order: `write <key>`, `remove <key>`. */
  requests: string[];
  reads: number;
  /** Most requests outstanding at once. */
  maxInFlight: number;
  /** The next `times` requests of `op` on `key` (any key: '*') fail with `error`. */
  fail(op: 'write' | 'remove', key: string, times?: number, error?: string): void;
  /** Ends every failure asked for. */
  clearFailures(): void;
  /** The next `times` reads fail. */
  failReads(times?: number, error?: string): void;
  /** Called after each successful write or remove (a kernel notification, say). */
  onChange?: (op: 'write' | 'remove', key: string) => void;
  /** Batch requests in order, each as `update|delete key…` (finishing updates as `key+`). */
  batches: string[];
}

export function createFakeKernel<V>(
  initial: Iterable<[string, V]> = [],
  opts: {
    /** What the kernel holds after a write of `value` (`before`: what it held). */
    held?: (key: string, value: V, before: V | undefined) => V;
    /** Takes batch requests (`applyBatch`). */
    batch?: boolean;
    /** A kernel rule: an error message when the change cannot be made on what the kernel holds now. */
    refuse?: (op: 'write' | 'remove', key: string, value: V, entries: ReadonlyMap<string, V>) => string | null;
  } = {},
): FakeKernel<V> {
  const failures: { op: string; key: string; times: number; error: string }[] = [];
  let readFailures: { times: number; error: string } = { times: 0, error: '' };
  let inFlight = 0;
  const tick = () => new Promise<void>((r) => setImmediate(r));
  const failIfAsked = (op: 'write' | 'remove', key: string, value?: V) => {
    const f = failures.find((x) => x.op === op && (x.key === key || x.key === '*') && x.times > 0);
    if (f) {
      f.times--;
      throw new Error(f.error);
    }
    const refused = value !== undefined ? opts.refuse?.(op, key, value, k.entries) : null;
    if (refused) throw new Error(refused);
  };
  const request = async (op: 'write' | 'remove', key: string, body: () => void) => {
    inFlight++;
    k.maxInFlight = Math.max(k.maxInFlight, inFlight);
    try {
      await tick();
      failIfAsked(op, key);
      k.requests.push(`${op} ${key}`);
      body();
      k.onChange?.(op, key);
    } finally {
      inFlight--;
    }
  };
  const k: FakeKernel<V> = {
    entries: new Map(initial),
    requests: [],
    batches: [],
    reads: 0,
    maxInFlight: 0,
    fail(op, key, times = 1, error = 'EBUSY: device or resource busy') {
      failures.push({ op, key, times, error });
    },
    clearFailures() {
      failures.length = 0;
    },
    failReads(times = 1, error = 'ENOBUFS: no buffer space') {
      readFailures = { times, error };
    },
    async read() {
      await tick();
      if (readFailures.times > 0) {
        readFailures.times--;
        throw new Error(readFailures.error);
      }
      k.reads++;
      return new Map(k.entries);
    },
    async write(key, value) {
      let held = value;
      await request('write', key, () => {
        held = opts.held ? opts.held(key, value, k.entries.get(key)) : value;
        k.entries.set(key, held);
      });
      return opts.held ? held : undefined;
    },
    async remove(key) {
      // Gone already is success, as with the real kernels.
      await request('remove', key, () => k.entries.delete(key));
    },
  };
  if (opts.batch) {
    k.applyBatch = async (op: 'update' | 'delete', changes: readonly BatchChange<V>[]) => {
      inFlight++;
      k.maxInFlight = Math.max(k.maxInFlight, inFlight);
      const before = new Map(k.entries);
      try {
        await tick();
        k.batches.push(`${op} ${changes.map((c) => (c.finish ? `${c.key}+` : c.key)).join(' ')}`);
        const out = new Map<string, V>();
        for (const c of changes) {
          const write = op === 'update' || c.finish;
          failIfAsked(write ? 'write' : 'remove', c.key, c.value);
          if (!write) {
            k.entries.delete(c.key);
            continue;
          }
          const held = op === 'update' && opts.held ? opts.held(c.key, c.value, k.entries.get(c.key)) : c.value;
          k.entries.set(c.key, held);
          if (held !== c.value) out.set(c.key, held);
        }
        for (const c of changes) k.requests.push(`${op === 'update' || c.finish ? 'write' : 'remove'} ${c.key}`);
        return out;
      } catch (err) {
        // All or nothing, as one iptables-restore transaction.
        k.entries = before;
        throw err;
      } finally {
        inFlight--;
      }
    };
  }
  return k;
}
