/** What IPAM hands out and records. Addresses and CIDRs are text in their canonical form. */
export interface Pool {
  name: string;
  cidr: string;
  blockPrefixLength: number;
  createdAt: Date;
}

export interface Allocation {
  handle: string;
  address: string;
  pool: string;
  blockCidr: string;
  node: string;
  podNamespace: string;
  podName: string;
  containerId: string;
  allocatedAt: Date;
}

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
