import { cidrSize, parseCidr } from '../../../lib/net/ip.js';
import type { IpamStore, NodeBlockUsage, PoolRecord } from '../domain/ipam-store.js';

/**
 * Block prefetch. When a new allocation leaves its block with a quarter or less of its never-used addresses, the
 * node's next block is claimed in the background (one claim at a time per node and pool), so the node's next pods
 * find room on the fast path instead of claiming under the global claim lock, and the new block's routes reach every
 * node before a pod needs them. Only a node whose blocks are at least three quarters live gets one: a node with
 * churn reuses its released addresses instead of collecting blocks, and a prefetch never takes one of the pool's
 * last tenth of blocks (at least two): near exhaustion a block goes to the node that needs it now. Prefetches run
 * one at a time per replica (they take the global claim lock anyway): waiting ones hold no database connection.
 */

/** Whether an allocation that left `room` never-used addresses in its block should start a prefetch. */
export const blockRunningLow = (pool: PoolRecord, room: bigint) =>
  room * 4n <= cidrSize(pool.family, pool.blockPrefixLength);

/** Whether the node needs another block: its blocks are at least three quarters live and none is roomy. */
export function nodeNeedsBlock(usage: NodeBlockUsage, blockSize: bigint): boolean {
  return usage.live * 4n >= BigInt(usage.blocks) * blockSize * 3n && usage.roomy === 0;
}

/** Whether the pool can spare a block for a prefetch: more than its last tenth (at least two) are free. */
export function poolCanSpare(pool: PoolRecord, blocksBelowHint: bigint): boolean {
  const cidr = parseCidr(pool.cidr);
  const total = cidrSize(cidr.family, cidr.prefixLength) / cidrSize(pool.family, pool.blockPrefixLength);
  const keep = total / 10n > 2n ? total / 10n : 2n;
  return total - blocksBelowHint > keep;
}

export function createBlockPrefetch(
  store: Pick<IpamStore, 'transaction'>,
  onError: (what: string, err: unknown) => void,
) {
  const prefetching = new Set<string>();
  let chain: Promise<void> = Promise.resolve();

  async function prefetchNow(pool: PoolRecord, node: string): Promise<void> {
    await store
      .transaction(async (tx) => {
        await tx.lockClaims();
        if (!nodeNeedsBlock(await tx.nodeBlockUsage(pool, node), cidrSize(pool.family, pool.blockPrefixLength))) return;
        if (poolCanSpare(pool, await tx.blocksBelowClaimHint(pool))) await tx.claimBlock(pool, node);
      })
      .catch((err) => onError(`prefetching a block of pool ${pool.name} for node ${node}`, err));
  }

  return {
    /** Starts a prefetch for the node in the pool, unless one is already waiting or running. */
    request(pool: PoolRecord, node: string): void {
      const key = `${pool.id}/${node}`;
      if (prefetching.has(key)) return;
      prefetching.add(key);
      chain = chain.then(() => prefetchNow(pool, node)).finally(() => prefetching.delete(key));
    },
    /** Resolves when every prefetch requested so far has ended (tests). */
    settled: (): Promise<void> => chain,
  };
}
