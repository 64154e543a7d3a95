import { readFileSync } from 'node:fs';
import { writeFileAtomic } from '../lib/atomic-file.js';
import { createBackoff } from '../lib/backoff.js';
import type { Logger } from '../lib/logger.js';

/**
 * Releases that IPAM has not taken yet. A DEL while IPAM is unreachable (the control plane down, or restarting)
 * removes the pod's interface at once and answers success: a runtime must be able to tear a pod down whatever the
 * control plane does. The handle's release is recorded here, in a file written atomically before DEL answers, and
 * retried in the background (jittered backoff) until IPAM takes it; a restarted agent reads the file and goes on.
 * Until then the address stays live in IPAM under its handle, so nobody else is given it: nothing is leaked and
 * nothing is shared.
 *
 * Each entry keeps the allocation attempts of failed ADDs of its handle that were never fenced: they are fenced
 * first (a Release naming the attempt), then the handle is released, so that an Allocate whose answer was lost
 * cannot commit after the release. An ADD of a handle with a pending release settles it first (`settle`), because
 * IPAM's Allocate is idempotent by handle and would otherwise hand the new pod the old allocation, which the
 * background release would then free under it.
 */
export interface PendingRelease {
  handle: string;
  /** Allocation attempts of failed ADDs of this handle to fence before the release. */
  attemptIds: string[];
  /** When DEL recorded it (ISO 8601). */
  since: string;
}

export interface PendingReleases {
  /** Records a handle's release (merging attempts into an entry already there); resolves once it is on disk. */
  add(handle: string, attemptIds: readonly string[]): Promise<void>;
  has(handle: string): boolean;
  /** Releases the handle now; rejects (leaving it pending) when IPAM does not take it. No entry: resolves at once. */
  settle(handle: string): Promise<void>;
  list(): readonly PendingRelease[];
  stop(): void;
}

export interface PendingReleasesDeps {
  /** IPAM's Release, by handle, or of one allocation attempt (fencing it). */
  release(handle: string, attemptId?: string): Promise<{ released: boolean; address: string }>;
  /** Where the entries are kept; null: in memory only (tests). */
  file: string | null;
  logger: Logger;
  /** Retry delays (default 500 ms to 5 s: the release is taken soon after IPAM is back). */
  retry?: { baseMs: number; capMs: number };
  /** Told the number of pending releases whenever it changes (a metric). */
  onSize?: (n: number) => void;
}

export function createPendingReleases(deps: PendingReleasesDeps): PendingReleases {
  const entries = new Map<string, PendingRelease>(readEntries(deps.file, deps.logger).map((e) => [e.handle, e]));
  const backoff = createBackoff(deps.retry ?? { baseMs: 500, capMs: 5000 });
  let timer: NodeJS.Timeout | null = null;
  let stopped = false;
  /** Saves are chained, so the file always ends with the latest content. */
  let saving: Promise<void> = Promise.resolve();
  const save = () => {
    deps.onSize?.(entries.size);
    const file = deps.file;
    if (!file) return Promise.resolve();
    const content = JSON.stringify({ releases: [...entries.values()] }, null, 2) + '\n';
    saving = saving.catch(() => {}).then(() => writeFileAtomic(file, content, 0o600).then(() => {}));
    return saving;
  };
  /** One try per handle at a time: a settle by ADD and the background retry share it. */
  const running = new Map<string, Promise<void>>();
  const settleOnce = (handle: string): Promise<void> => {
    const already = running.get(handle);
    if (already) return already;
    const entry = entries.get(handle);
    if (!entry) return Promise.resolve();
    const attempt = (async () => {
      for (const attemptId of [...entry.attemptIds]) {
        await deps.release(handle, attemptId);
        entry.attemptIds = entry.attemptIds.filter((a) => a !== attemptId);
      }
      const r = await deps.release(handle);
      // An add() during the release recorded attempts this release did not fence: the entry stays for them.
      if (entries.get(handle) === entry && entry.attemptIds.length === 0) entries.delete(handle);
      deps.logger.info('released a detached pod’s address that IPAM could not take at DEL', {
        handle,
        since: entry.since,
        released: r.released,
        address: r.address,
      });
      await save();
    })().finally(() => running.delete(handle));
    running.set(handle, attempt);
    return attempt;
  };
  const schedule = () => {
    if (stopped || timer || entries.size === 0) return;
    timer = setTimeout(() => {
      timer = null;
      void (async () => {
        let failed = 0;
        for (const handle of [...entries.keys()]) {
          if (stopped) return;
          await settleOnce(handle).catch(() => failed++);
        }
        if (failed === 0) backoff.reset();
        schedule();
      })();
    }, backoff.next());
    timer.unref();
  };
  deps.onSize?.(entries.size);
  if (entries.size > 0) {
    deps.logger.info('releases recorded before the restart are still to be taken by IPAM', {
      handles: [...entries.keys()],
    });
    schedule();
  }
  return {
    async add(handle, attemptIds) {
      const entry = entries.get(handle) ?? { handle, attemptIds: [], since: new Date().toISOString() };
      entry.attemptIds = [...new Set([...entry.attemptIds, ...attemptIds])];
      entries.set(handle, entry);
      await save();
      schedule();
    },
    has: (handle) => entries.has(handle),
    settle: (handle) => settleOnce(handle),
    list: () => [...entries.values()],
    stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      timer = null;
    },
  };
}

/** The recorded entries; a missing file is none, an unreadable one is logged and treated as none. */
function readEntries(file: string | null, logger: Logger): PendingRelease[] {
  if (!file) return [];
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT')
      logger.error('cannot read the pending releases; they are not retried', { file, err: (err as Error).message });
    return [];
  }
  try {
    const parsed = JSON.parse(text) as { releases?: unknown };
    if (!Array.isArray(parsed.releases)) throw new Error('no "releases" list');
    return parsed.releases.filter(
      (e): e is PendingRelease =>
        typeof e === 'object' &&
        e !== null &&
        typeof (e as PendingRelease).handle === 'string' &&
        Array.isArray((e as PendingRelease).attemptIds) &&
        (e as PendingRelease).attemptIds.every((a) => typeof a === 'string') &&
        typeof (e as PendingRelease).since === 'string',
    );
  } catch (err) {
    logger.error('the pending releases file is not valid; its releases are not retried', {
      file,
      err: (err as Error).message,
    });
    return [];
  }
}
