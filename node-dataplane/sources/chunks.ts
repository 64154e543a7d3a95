import type { WatchRoutesResponse } from '../../gen/weft/routes/v1/routes.js';
import type { WatchNodePolicyResponse } from '../../gen/weft/policy/v1/policy.js';

/**
 * Joins a watch stream's chunks into whole messages. A server splits a large message (a snapshot of thousands of
 * nodes, a set of 150,000 addresses) into chunks, each but the last marked `more`, for a watcher that asked for
 * chunks; the watcher acts on nothing until it holds the whole message. `reset()` drops a partly received message:
 * call it whenever a stream (re)opens, since a broken stream's chunks are never continued by the next one.
 */
export interface ChunkJoiner<T> {
  /** The whole message once its last chunk is in, else null (more to come). */
  push(chunk: T): T | null;
  reset(): void;
}

function createJoiner<T extends { more: boolean }>(
  start: (first: T) => T,
  append: (into: T, chunk: T) => void,
): ChunkJoiner<T> {
  let pending: T | null = null;
  return {
    push(chunk) {
      if (!pending && !chunk.more) return chunk;
      if (!pending) pending = start(chunk);
      else append(pending, chunk);
      if (chunk.more) return null;
      const whole = pending;
      pending = null;
      whole.more = false;
      return whole;
    },
    reset() {
      pending = null;
    },
  };
}

/** WatchRoutes: upserts and deletes concatenated. */
export const createRoutesChunkJoiner = (): ChunkJoiner<WatchRoutesResponse> =>
  createJoiner(
    (first) => ({ ...first, upserts: [...first.upserts], deletes: [...first.deletes] }),
    (into, c) => {
      for (const u of c.upserts) into.upserts.push(u);
      for (const d of c.deletes) into.deletes.push(d);
    },
  );

/** WatchNodePolicy: pods, removed pods and removed sets concatenated; a set's CIDRs joined across chunks, in order. */
export function createPolicyChunkJoiner(): ChunkJoiner<WatchNodePolicyResponse> {
  let setIndex = new Map<string, number>();
  const addSets = (into: WatchNodePolicyResponse, sets: WatchNodePolicyResponse['sets']) => {
    for (const s of sets) {
      const at = setIndex.get(s.name);
      if (at === undefined) {
        setIndex.set(s.name, into.sets.length);
        into.sets.push({ name: s.name, cidrs: [...s.cidrs] });
      } else {
        const cidrs = into.sets[at]!.cidrs;
        for (const c of s.cidrs) cidrs.push(c);
      }
    }
  };
  return createJoiner(
    (first) => {
      setIndex = new Map();
      const into = {
        ...first,
        pods: [...first.pods],
        sets: [],
        removedPods: [...first.removedPods],
        removedSets: [...first.removedSets],
      };
      addSets(into, first.sets);
      return into;
    },
    (into, c) => {
      for (const p of c.pods) into.pods.push(p);
      addSets(into, c.sets);
      for (const r of c.removedPods) into.removedPods.push(r);
      for (const r of c.removedSets) into.removedSets.push(r);
    },
  );
}
