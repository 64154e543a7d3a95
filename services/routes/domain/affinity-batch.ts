/** One message of IPAM's WatchBlockAffinities as the affinity follower writes it (chunks already joined). */
export interface AffinityMessage {
  /** True: `upserts` is every block affinity, replacing everything held before. */
  reset: boolean;
  upserts: { cidr: string; node: string }[];
  /** CIDRs no longer affine to any node. */
  deletes: string[];
}

/**
 * IPAM's affinity messages that arrived while the follower was writing, merged into the one message that has the
 * same effect as writing each in turn: per block, the last word (a node, or gone); a reset among them starts over
 * from that reset's set, and the messages after it change that set. So a backlog of thousands of block claims (every
 * node's first pod) is one transaction instead of one each. Within a message, an upsert wins over a delete of the same
 * block (as the follower's write applies them). Memory is bounded by the number of blocks, whatever the backlog.
 */
export interface AffinityBatch {
  add(msg: AffinityMessage): void;
  /** Whether nothing was added since the last `take`. */
  readonly empty: boolean;
  /** How many messages the batch holds. */
  readonly messages: number;
  /** The merged message, and an empty batch after it. */
  take(): AffinityMessage;
}

export function createAffinityBatch(): AffinityBatch {
  let reset = false;
  let messages = 0;
  // cidr -> its node, or null for a block that is no longer affine. Insertion order is kept only for stable output.
  let blocks = new Map<string, string | null>();
  return {
    add(msg) {
      messages++;
      if (msg.reset) {
        reset = true;
        blocks = new Map();
      } else for (const d of msg.deletes) blocks.set(d, null);
      for (const u of msg.upserts) blocks.set(u.cidr, u.node);
    },
    get empty() {
      return messages === 0;
    },
    get messages() {
      return messages;
    },
    take() {
      const upserts: { cidr: string; node: string }[] = [];
      const deletes: string[] = [];
      for (const [cidr, node] of blocks) {
        if (node !== null) upserts.push({ cidr, node });
        else if (!reset) deletes.push(cidr);
      }
      const merged = { reset, upserts, deletes };
      reset = false;
      messages = 0;
      blocks = new Map();
      return merged;
    },
  };
}
