import type { Logger } from '../lib/logger.js';
import { computeDesired, planChanges, planSize } from './domain/desired.js';
import type { OverlayDriver } from './kernel/netlink-overlay.js';
import type { RoutesSnapshot } from './sources/routes-watch.js';

/**
 * One loop decides when to reconcile: after a change (debounced a little) and every resync period. Each pass
 * computes desired state, reads the kernel back, plans the difference and applies it. Nothing is written before
 * the first complete snapshot.
 */
export interface Reconciler {
  markDirty(): void;
  /** Resolves after the next complete pass. */
  flush(): Promise<void>;
  stop(): void;
}

export function createReconciler(deps: {
  self: string;
  snapshot: () => RoutesSnapshot;
  driver: OverlayDriver;
  ensureDevice: () => Promise<number>;
  resyncMs: number;
  logger: Logger;
}): Reconciler {
  let dirty = true;
  let running = false;
  let stopped = false;
  let waiters: (() => void)[] = [];
  let timer: NodeJS.Timeout | null = null;

  async function pass(): Promise<void> {
    const snap = deps.snapshot();
    if (!snap.synced) return;
    const ifindex = await deps.ensureDevice();
    const desired = computeDesired(deps.self, snap.nodes.values());
    const actual = await deps.driver.readActual(ifindex);
    const plan = planChanges(desired, actual);
    if (planSize(plan) === 0) return;
    const t0 = performance.now();
    const { applied, failed } = await deps.driver.apply(ifindex, plan);
    deps.logger.info('applied', { revision: snap.revision, applied, failed, ms: Math.round(performance.now() - t0) });
    if (failed > 0) dirty = true;
  }

  async function loop(): Promise<void> {
    if (running || stopped) return;
    running = true;
    try {
      while (dirty && !stopped) {
        dirty = false;
        const done = waiters;
        waiters = [];
        try {
          await pass();
        } catch (err) {
          deps.logger.error('reconcile pass failed; retrying', { err });
          dirty = true;
          await new Promise((r) => setTimeout(r, 500));
        }
        for (const w of done) w();
      }
    } finally {
      running = false;
    }
    schedule();
  }

  function schedule(): void {
    if (timer) clearTimeout(timer);
    if (stopped) return;
    timer = setTimeout(() => {
      dirty = true;
      void loop();
    }, deps.resyncMs);
  }

  return {
    markDirty() {
      dirty = true;
      void loop();
    },
    flush() {
      return new Promise<void>((r) => {
        waiters.push(r);
        dirty = true;
        void loop();
      });
    },
    stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      for (const w of waiters) w();
    },
  };
}
