import pg from 'pg';
import { createBackoff, sleep } from '../backoff.js';
import type { Logger } from '../logger.js';

/**
 * Wakes watchers when PostgreSQL NOTIFYs a channel. It is only a wake-up: the tables are the record, and every
 * watcher also re-reads on a timer, so a lost notification (e.g. across a reconnect) delays but never loses a change.
 */
export interface Notifier {
  /** Resolves at the next notification on channel, after timeoutMs, or when signal aborts. */
  wait(channel: string, timeoutMs: number, signal: AbortSignal): Promise<void>;
  /**
   * How many wake-ups (notifications, and reconnects, which wake everyone) channel has had. A read begun when it is n
   * began after every wake-up up to n; watchers use it to share one read (see services/routes/watch-routes.ts).
   */
  generation(channel: string): number;
  close(): Promise<void>;
}

/** `session`: a URL, or a session config with timeouts and keepalive (DatabaseHandle.session). */
export function createNotifier(session: string | pg.ClientConfig, channels: string[], logger: Logger): Notifier {
  const waiters = new Map<string, Set<() => void>>();
  const generations = new Map<string, number>(channels.map((ch) => [ch, 0]));
  let client: pg.Client | null = null;
  let closed = false;
  // Reconnects back off with jitter, so the replicas of every service do not reconnect in step after a database restart.
  const backoff = createBackoff({ baseMs: 250, capMs: 5000 });

  const wakeAll = () => {
    for (const [ch, g] of generations) generations.set(ch, g + 1);
    for (const set of waiters.values()) for (const w of [...set]) w();
  };

  async function connect(): Promise<void> {
    while (!closed) {
      const c = new pg.Client(typeof session === 'string' ? { connectionString: session } : session);
      try {
        c.on('notification', (n) => {
          generations.set(n.channel, (generations.get(n.channel) ?? 0) + 1);
          for (const w of [...(waiters.get(n.channel) ?? [])]) w();
        });
        c.on('error', (err) => {
          if (closed) return;
          logger.warn('notifier connection lost; reconnecting', { err: err.message });
          client = null;
          void c.end().catch(() => {});
          wakeAll();
          if (!closed) setTimeout(() => void connect(), backoff.next());
        });
        await c.connect();
        for (const ch of channels) await c.query(`LISTEN ${pg.escapeIdentifier(ch)}`);
        // Closed while this session was being opened: close() could not end it, so it ends here.
        if (closed) {
          await c.end().catch(() => {});
          return;
        }
        client = c;
        backoff.reset();
        wakeAll();
        return;
      } catch (err) {
        await c.end().catch(() => {});
        logger.warn('notifier cannot connect; retrying', { err: (err as Error).message });
        await sleep(backoff.next());
      }
    }
  }
  void connect();

  return {
    wait(channel, timeoutMs, signal) {
      return new Promise<void>((resolve) => {
        let set = waiters.get(channel);
        if (!set) waiters.set(channel, (set = new Set()));
        const done = () => {
          clearTimeout(timer);
          set!.delete(done);
          signal.removeEventListener('abort', done);
          resolve();
        };
        const timer = setTimeout(done, timeoutMs);
        signal.addEventListener('abort', done, { once: true });
        set.add(done);
      });
    },
    generation: (channel) => generations.get(channel) ?? 0,
    async close() {
      closed = true;
      wakeAll();
      await client?.end().catch(() => {});
    },
  };
}
