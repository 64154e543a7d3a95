import { createBackoff, type Backoff } from '../lib/backoff.js';

/**
 * Keys to bring in line, as Kubernetes controllers do it: an event only marks its key; a worker reads the key's
 * current state when it gets to it, so ten changes to one object while the worker was busy cost one pass, and the order
 * of events never matters. A key is never worked on by two workers at once. A failed key is retried after a jittered
 * backoff of its own; a key that succeeds forgets its failures.
 */
export interface WorkQueue {
  add(key: string): void;
  /** Adds `key` after `ms`. */
  addAfter(key: string, ms: number): void;
  /** Keys waiting or being worked on. */
  size(): number;
  /** Resolves when no key waits or is worked on (retries scheduled for later do not count). */
  idle(): Promise<void>;
  stop(): void;
}

export function createWorkQueue(opts: {
  concurrency: number;
  work: (key: string) => Promise<void>;
  onError: (key: string, err: unknown, retryMs: number) => void;
  baseRetryMs?: number;
  capRetryMs?: number;
}): WorkQueue {
  const waiting = new Set<string>();
  const active = new Set<string>();
  /** Keys marked again while being worked on: they go round once more. */
  const again = new Set<string>();
  const failures = new Map<string, Backoff>();
  const timers = new Set<NodeJS.Timeout>();
  const idleWaiters: (() => void)[] = [];
  let stopped = false;

  const settleIdle = () => {
    if (waiting.size === 0 && active.size === 0) for (const w of idleWaiters.splice(0)) w();
  };
  const pump = () => {
    while (!stopped && active.size < opts.concurrency) {
      const key = [...waiting].find((k) => !active.has(k));
      if (key === undefined) break;
      waiting.delete(key);
      active.add(key);
      void opts
        .work(key)
        .then(
          () => failures.delete(key),
          (err: unknown) => {
            let b = failures.get(key);
            if (!b)
              failures.set(
                key,
                (b = createBackoff({ baseMs: opts.baseRetryMs ?? 200, capMs: opts.capRetryMs ?? 60_000 })),
              );
            const ms = b.next();
            opts.onError(key, err, ms);
            q.addAfter(key, ms);
          },
        )
        .finally(() => {
          active.delete(key);
          if (again.delete(key)) waiting.add(key);
          pump();
          settleIdle();
        });
    }
  };
  const q: WorkQueue = {
    add(key) {
      if (stopped) return;
      if (active.has(key)) again.add(key);
      else waiting.add(key);
      pump();
    },
    addAfter(key, ms) {
      if (stopped) return;
      const t = setTimeout(() => {
        timers.delete(t);
        q.add(key);
      }, ms);
      timers.add(t);
    },
    size: () => waiting.size + active.size,
    idle: () =>
      waiting.size === 0 && active.size === 0 ? Promise.resolve() : new Promise<void>((r) => idleWaiters.push(r)),
    stop() {
      stopped = true;
      for (const t of timers) clearTimeout(t);
      timers.clear();
      waiting.clear();
      for (const w of idleWaiters.splice(0)) w();
    },
  };
  return q;
}
