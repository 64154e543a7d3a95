import type { Family } from '../../../lib/net/ip.js';

/** What IPAM hands out and records. Addresses and CIDRs are text in their canonical form. */
export interface Pool {
  name: string;
  cidr: string;
  family: Family;
  blockPrefixLength: number;
  cooldownSeconds: number;
  stickySeconds: number;
  disabled: boolean;
  nodeSelector: string;
  namespaceSelector: string;
  allowedUses: string[];
  maxBlocksPerNode: number;
  routingDomain: string;
  /** Opaque; changes with every update. */
  etag: string;
  liveAllocations: number;
  createdAt: Date;
}

export interface PoolChanges {
  maxBlocksPerNode?: number;
  cooldownSeconds?: number;
  stickySeconds?: number;
  disabled?: boolean;
  nodeSelector?: string;
  namespaceSelector?: string;
  allowedUses?: string[];
}

export interface Reservation {
  id: number;
  pool: string;
  first: string;
  last: string;
  reason: string;
  createdAt: Date;
}

export interface Allocation {
  handle: string;
  address: string;
  family: Family;
  pool: string;
  blockCidr: string;
  node: string;
  podNamespace: string;
  podName: string;
  containerId: string;
  owner: string;
  /** The registered cluster named by the caller, or ''. */
  cluster: string;
  routingDomain: string;
  /** The pod's Kubernetes UID, or ''. */
  podUid: string;
  allocatedAt: Date;
}

export interface HistoryEntry {
  allocation: Allocation;
  releasedAt: Date | null;
}

/** One history question; exactly one of the forms. */
export type HistoryQuery =
  | { kind: 'address'; address: string; at: Date; routingDomain: string | null; limit: number }
  | { kind: 'pod'; podNamespace: string; podName: string; limit: number }
  | { kind: 'node'; node: string; from: Date | null; until: Date; limit: number }
  | { kind: 'handle'; handle: string; limit: number };

export interface BlockAffinity {
  cidr: string;
  pool: string;
  node: string;
}

/** One step of the affinity watch: reset replaces everything; otherwise upserts and deletes apply in order. */
export interface AffinityChange {
  revision: number;
  reset: boolean;
  upserts: BlockAffinity[];
  deletes: string[];
}

/** Address counts; totals are bigint because an IPv6 pool holds more than 2^64 addresses. */
export interface UsageCounts {
  total: bigint;
  allocated: number;
  coolingDown: number;
  reserved: bigint;
  free: bigint;
}

export interface PoolUsage {
  pool: string;
  cidr: string;
  counts: UsageCounts;
  blocks: { cidr: string; node: string; counts: UsageCounts }[];
  nodes: { node: string; counts: UsageCounts }[];
}
