import { TransientConflict } from '../domain/ipam.errors.js';

/** Retries after a lost race (a store's TransientConflict) at most this many times. */
export const MAX_RETRIES = 10;

/** Runs `fn` again while it loses races (a concurrent allocation of the same handle or address, a deadlock). */
export async function withRetry<T>(fn: () => Promise<T>): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (!(err instanceof TransientConflict) || attempt >= MAX_RETRIES) throw err;
    }
  }
}
