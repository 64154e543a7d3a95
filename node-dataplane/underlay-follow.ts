import type { Logger } from '../lib/logger.js';
import type { DetectedUnderlay } from './kernel/underlay.js';

/**
 * Follows the node's underlay after start: an address added or removed, or a link changed (kernel events), and at
 * least every `intervalMs`, it detects the underlay again by the same rules (WEFT_UNDERLAY_*) and, when the address,
 * its prefix, the device or its MTU changed, hands the new underlay to `onMoved` (which rebuilds the VXLAN device
 * and registers the node's new address and VTEP MAC, so that every other node follows). Detection runs at most once
 * at a time, `debounceMs` after the first event of a burst. A failed detection (the address gone with nothing to
 * replace it) keeps the current underlay and is logged once per distinct message.
 */
export interface UnderlayFollower {
  /** Something about the interfaces changed: detect again soon. */
  poke(): void;
  current(): DetectedUnderlay;
  close(): void;
}

export const sameUnderlay = (a: DetectedUnderlay, b: DetectedUnderlay) =>
  a.address === b.address &&
  a.prefixLength === b.prefixLength &&
  a.interface === b.interface &&
  a.ifindex === b.ifindex &&
  a.mtu === b.mtu;

export function followUnderlay(deps: {
  initial: DetectedUnderlay;
  detect: () => Promise<DetectedUnderlay>;
  onMoved: (next: DetectedUnderlay, previous: DetectedUnderlay) => Promise<void>;
  logger: Logger;
  intervalMs: number;
  debounceMs?: number;
}): UnderlayFollower {
  let current = deps.initial;
  let timer: NodeJS.Timeout | null = null;
  let running = false;
  let again = false;
  let closed = false;
  let lastError = '';

  const check = async () => {
    timer = null;
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      const next = await deps.detect();
      lastError = '';
      if (!sameUnderlay(next, current)) {
        deps.logger.warn('the underlay changed; following it', { from: current, to: next });
        await deps.onMoved(next, current);
        current = next;
      }
    } catch (err) {
      const msg = (err as Error).message;
      if (msg !== lastError)
        deps.logger.error('cannot detect the underlay again; keeping the current one', { current, err: msg });
      lastError = msg;
    } finally {
      running = false;
      if (again && !closed) {
        again = false;
        poke();
      }
    }
  };
  const poke = () => {
    if (closed || timer) return;
    timer = setTimeout(() => void check(), deps.debounceMs ?? 100);
  };
  const interval = setInterval(poke, deps.intervalMs);
  interval.unref();
  return {
    poke,
    current: () => current,
    close() {
      closed = true;
      clearInterval(interval);
      if (timer) clearTimeout(timer);
    },
  };
}
