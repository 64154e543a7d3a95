import type { KernelAccess } from './dataplane.js';

/**
 * An in-memory kernel of one kind, behind the same `KernelAccess` as netlink, iproute2 or iptables: the test harness
 * of every driver (drivers/drivers.test.ts) and of the scheduler (reconciler.test.ts). It records each request,
 * can fail chosen requests, and answers asynchronously so that concurrency is real.
 */
export interface FakeKernel<V> extends KernelAccess<V> {
  /** What the kernel holds. */
  entries: Map<string, V>;
  /** Requests in order: `write <key>`, `remove <key>`. */
  requests: string[];
  reads: number;
  /** Most requests outstanding at once. */
  maxInFlight: number;
  /** The next `times` requests of `op` on `key` (any key: '*') fail with `error` (a message, or the error itself). */
  fail(op: 'write' | 'remove', key: string, times?: number, error?: string | Error): void;
  /** The next `times` reads fail. */
  failReads(times?: number, error?: string): void;
  /** Called after each successful write or remove (a kernel notification, say). */
  onChange?: (op: 'write' | 'remove', key: string) => void;
}

export function createFakeKernel<V>(
  initial: Iterable<[string, V]> = [],
  opts: { held?: (key: string, value: V) => V } = {},
): FakeKernel<V> {
  const failures: { op: string; key: string; times: number; error: string | Error }[] = [];
  let readFailures: { times: number; error: string } = { times: 0, error: '' };
  let inFlight = 0;
  const tick = () => new Promise<void>((r) => setImmediate(r));
  const request = async (op: 'write' | 'remove', key: string, body: () => void) => {
    inFlight++;
    k.maxInFlight = Math.max(k.maxInFlight, inFlight);
    try {
      await tick();
      const f = failures.find((x) => x.op === op && (x.key === key || x.key === '*') && x.times > 0);
      if (f) {
        f.times--;
        throw typeof f.error === 'string' ? new Error(f.error) : f.error;
      }
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
    reads: 0,
    maxInFlight: 0,
    fail(op, key, times = 1, error = 'EBUSY: device or resource busy') {
      failures.push({ op, key, times, error });
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
      const held = opts.held ? opts.held(key, value) : value;
      await request('write', key, () => k.entries.set(key, held));
      return opts.held ? held : undefined;
    },
    async remove(key) {
      // Gone already is success, as with the real kernels.
      await request('remove', key, () => k.entries.delete(key));
    },
  };
  return k;
}
