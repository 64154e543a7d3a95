import { createBackoff } from '../../lib/backoff.js';
import type { Logger } from '../../lib/logger.js';
import type { IpamPort } from './ports.js';

/**
 * What the endpoint's calls running now must know of each other (one per agent, shared by the use cases).
 */
export interface InProgress {
  /** Attach calls running now, by handle, with their host interface: GC never touches them. */
  readonly attaching: Map<string, string>;
  /**
   * Attach calls running now, by handle, settling when each ends (whatever its outcome). A Detach of that handle
   * waits for it: a DEL that ran beside its ADD would find nothing to remove, answer, and leave the ADD to attach the
   * pod afterwards with an address nobody will ever release.
   */
  readonly addsRunning: Map<string, Promise<void>>;
  /** Veth deletions of Detach calls running now: an Attach waits for them before giving its pod an address. */
  readonly linkDeletions: Set<Promise<unknown>>;
  readonly fences: AttemptFences;
}

export function createInProgress(ipam: IpamPort): InProgress {
  return {
    attaching: new Map(),
    addsRunning: new Map(),
    linkDeletions: new Set(),
    fences: createAttemptFences(ipam),
  };
}

/**
 * Allocation attempts whose undoing Release did not get through (IPAM unreachable, or the fence timed out behind
 * the very Allocate it fences), by handle. They are retried in the background and named by the handle's next DEL:
 * a Release by handle alone does not stop an Allocate that commits after it.
 */
export interface AttemptFences {
  /** Releases naming the attempt; true when IPAM took it (the attempt is then forgotten). */
  fence(handle: string, attemptId: string): Promise<boolean>;
  /** Keeps trying to fence an attempt, with jittered backoff, for about two minutes (then DEL still names it). */
  fenceInBackground(handle: string, attemptId: string, log: Logger): void;
  /** The handle's attempts not fenced yet. */
  unfenced(handle: string): string[];
  /** Forgets the handle's attempts (a pending release took them over, ../pending-releases.ts). */
  forget(handle: string): void;
}

/** How long a failed attach's attempt is retried in the background. */
export const FENCE_RETRY_MS = 120_000;

export function createAttemptFences(ipam: IpamPort): AttemptFences {
  const unfenced = new Map<string, Set<string>>();
  const fence = async (handle: string, attemptId: string): Promise<boolean> => {
    try {
      await ipam.release(handle, attemptId);
      const left = unfenced.get(handle);
      left?.delete(attemptId);
      if (left?.size === 0) unfenced.delete(handle);
      return true;
    } catch {
      return false;
    }
  };
  return {
    fence,
    fenceInBackground(handle, attemptId, log) {
      unfenced.set(handle, (unfenced.get(handle) ?? new Set()).add(attemptId));
      const retry = createBackoff({ baseMs: 500, capMs: 15_000 });
      const deadline = Date.now() + FENCE_RETRY_MS;
      const again = () =>
        setTimeout(() => {
          if (!unfenced.get(handle)?.has(attemptId)) return;
          void fence(handle, attemptId).then((ok) => {
            if (ok) log.info("a failed attach's allocation attempt is fenced", { attemptId });
            else if (Date.now() < deadline) again();
            else
              log.error("cannot fence a failed attach's allocation attempt; the runtime's DEL names it", {
                attemptId,
              });
          });
        }, retry.next()).unref();
      again();
    },
    unfenced: (handle) => [...(unfenced.get(handle) ?? [])],
    forget: (handle) => void unfenced.delete(handle),
  };
}
