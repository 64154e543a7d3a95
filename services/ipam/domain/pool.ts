import {
  bitsOf,
  formatAddress,
  formatCidr,
  parseAddress,
  parseCidr,
  type Cidr,
  type Family,
} from '../../../lib/net/ip.js';
import { ipamErrors } from './ipam.errors.js';
import { USES } from './pool-selection.js';
import { labelProblem } from '../../../lib/labels.js';
import { parseSelector } from './selector.js';

/** Pure rules for pools, handles and allocation requests. No I/O. */
export interface PoolSpec {
  name: string;
  cidr: Cidr;
  blockPrefixLength: number;
  cooldownSeconds: number;
  stickySeconds: number;
  disabled: boolean;
  nodeSelector: string;
  namespaceSelector: string;
  allowedUses: string[];
  maxBlocksPerNode: number;
  /** Name of the routing domain; pools overlap only across domains. */
  routingDomain: string;
}

const NAME = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
export const DEFAULT_COOLDOWN_SECONDS = 30;
export const DEFAULT_STICKY_SECONDS = 600;
/** Blocks hold at most 2^16 addresses: a block's free-address bookkeeping stays small. */
const MAX_BLOCK_HOST_BITS = 16;

export function validatePoolName(name: string): string {
  if (!NAME.test(name))
    throw ipamErrors.invalid(
      'pool_name',
      `pool name ${JSON.stringify(name)} must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit`,
    );
  return name;
}

export interface PoolRulesInput {
  maxBlocksPerNode?: number;
  cooldownSeconds?: number;
  stickySeconds?: number;
  disabled?: boolean;
  nodeSelector?: string;
  namespaceSelector?: string;
  allowedUses?: string[];
}

/** Checks the changeable rules of a pool; fields left out stay unset. */
export function validatePoolRules(input: PoolRulesInput): PoolRulesInput {
  const out: PoolRulesInput = {};
  const seconds = (field: string, what: string, v: number, max: number) => {
    if (!Number.isInteger(v) || v < 0 || v > max)
      throw ipamErrors.invalid(field, `${what} of ${v} s must be 0 to ${max} seconds`);
    return v;
  };
  if (input.cooldownSeconds !== undefined)
    out.cooldownSeconds = seconds('cooldown_seconds', 'a cool-down', input.cooldownSeconds, 30 * 86400);
  if (input.stickySeconds !== undefined)
    out.stickySeconds = seconds('sticky_seconds', 'a sticky time', input.stickySeconds, 365 * 86400);
  if (input.disabled !== undefined) out.disabled = input.disabled;
  if (input.maxBlocksPerNode !== undefined) {
    if (!Number.isInteger(input.maxBlocksPerNode) || input.maxBlocksPerNode < 0 || input.maxBlocksPerNode > 1_000_000)
      throw ipamErrors.invalid(
        'max_blocks_per_node',
        `max blocks per node ${input.maxBlocksPerNode} must be 0 (no limit) to 1000000`,
      );
    out.maxBlocksPerNode = input.maxBlocksPerNode;
  }
  if (input.nodeSelector !== undefined) {
    parseSelector(input.nodeSelector, 'node_selector');
    out.nodeSelector = input.nodeSelector.trim();
  }
  if (input.namespaceSelector !== undefined) {
    parseSelector(input.namespaceSelector, 'namespace_selector');
    out.namespaceSelector = input.namespaceSelector.trim();
  }
  if (input.allowedUses !== undefined) {
    if (input.allowedUses.length === 0)
      throw ipamErrors.invalid('allowed_uses', `allowed uses must name at least one of ${USES.join(', ')}`);
    for (const u of input.allowedUses)
      if (!(USES as readonly string[]).includes(u))
        throw ipamErrors.invalid('allowed_uses', `unknown use ${JSON.stringify(u)}; uses are ${USES.join(', ')}`);
    out.allowedUses = [...new Set(input.allowedUses)].sort();
  }
  return out;
}

export function validatePoolSpec(
  input: { name: string; cidr: string; blockPrefixLength: number; routingDomain?: string } & PoolRulesInput,
): PoolSpec {
  const name = validatePoolName(input.name);
  const cidr = parseCidr(input.cidr, 'pool CIDR');
  const bits = bitsOf(cidr.family);
  const minPrefix = cidr.family === 4 ? 8 : 16;
  if (cidr.prefixLength < minPrefix)
    throw ipamErrors.invalid(
      'cidr',
      `pool CIDR ${formatCidr(cidr)} is larger than a /${minPrefix}; split it into smaller pools`,
    );
  const b = input.blockPrefixLength;
  if (!Number.isInteger(b) || b < 1 || b > bits)
    throw ipamErrors.invalid(
      'block_prefix_length',
      `block prefix length ${b} must be between 1 and ${bits} for IPv${cidr.family} (e.g. ${cidr.family === 4 ? 26 : 122} for blocks of 64 addresses)`,
    );
  if (b < cidr.prefixLength)
    throw ipamErrors.invalid(
      'block_prefix_length',
      `block prefix length /${b} is larger than the pool ${formatCidr(cidr)}; use /${cidr.prefixLength} or longer`,
    );
  if (bits - b > MAX_BLOCK_HOST_BITS)
    throw ipamErrors.invalid(
      'block_prefix_length',
      `blocks of /${b} hold more than 2^${MAX_BLOCK_HOST_BITS} addresses; use /${bits - MAX_BLOCK_HOST_BITS} or longer`,
    );
  const rules = validatePoolRules({ ...input, allowedUses: input.allowedUses?.length ? input.allowedUses : undefined });
  return {
    name,
    cidr,
    blockPrefixLength: b,
    cooldownSeconds: rules.cooldownSeconds ?? DEFAULT_COOLDOWN_SECONDS,
    stickySeconds: rules.stickySeconds ?? DEFAULT_STICKY_SECONDS,
    disabled: rules.disabled ?? false,
    nodeSelector: rules.nodeSelector ?? '',
    namespaceSelector: rules.namespaceSelector ?? '',
    allowedUses: rules.allowedUses ?? ['workload'],
    maxBlocksPerNode: rules.maxBlocksPerNode ?? 0,
    routingDomain: input.routingDomain ? validatePoolName(input.routingDomain) : 'default',
  };
}

export interface AllocationRequest {
  handle: string;
  node: string;
  pool: string | null;
  /** null: every family that has a pool. */
  families: Family[] | null;
  podNamespace: string;
  podName: string;
  containerId: string;
  /** Exact addresses wanted, at most one per family. */
  addresses: { family: Family; text: string }[];
  owner: string;
  namespacePool: string | null;
  nodeLabels: Record<string, string>;
  namespaceLabels: Record<string, string>;
  use: string;
  /** A registered cluster: only its routing domain's pools are used. null: the default domain. */
  cluster: string | null;
  /** Names this attempt; a Release naming it fences it (it then commits nothing). null: not fenced. */
  attemptId: string | null;
  /** The pod's Kubernetes UID, recorded on the allocation; '' when none. */
  podUid: string;
}

export function validateHandle(handle: string): string {
  if (handle.length === 0) throw ipamErrors.invalid('handle', 'handle is empty; use "<containerID>/<ifname>"');
  if (handle.length > 512 || /[\u0000-\u001f]/.test(handle))
    throw ipamErrors.invalid('handle', 'handle must be at most 512 printable characters ("<containerID>/<ifname>")');
  return handle;
}

export function validateNodeName(node: string): string {
  if (!/^[a-zA-Z0-9]([-a-zA-Z0-9.]{0,251}[a-zA-Z0-9])?$/.test(node))
    throw ipamErrors.invalid(
      'node',
      `node name ${JSON.stringify(node)} must be a DNS name (letters, digits, '-', '.')`,
    );
  return node;
}

export type AllocationInput = Omit<
  AllocationRequest,
  | 'addresses'
  | 'use'
  | 'owner'
  | 'namespacePool'
  | 'nodeLabels'
  | 'namespaceLabels'
  | 'cluster'
  | 'attemptId'
  | 'podUid'
> &
  Partial<{
    addresses: string[];
    use: string;
    owner: string;
    namespacePool: string | null;
    nodeLabels: Record<string, string>;
    namespaceLabels: Record<string, string>;
    cluster: string | null;
    attemptId: string | null;
    podUid: string;
  }>;

/** A pod's Kubernetes UID (AllocateRequest.pod_uid): '' (none), or at most 128 of A-Z a-z 0-9 '-' (a UUID). */
export function validatePodUid(uid: string | null | undefined): string {
  if (!uid) return '';
  if (!/^[A-Za-z0-9-]{1,128}$/.test(uid)) {
    throw ipamErrors.invalid(
      'pod_uid',
      `pod_uid ${JSON.stringify(uid.slice(0, 140))} must be at most 128 letters, digits or '-' (a Kubernetes UID such as "6f1c1a9e-3b4d-4f57-9a0e-1d2c3b4a5f60"), or empty`,
    );
  }
  return uid;
}

/** A Kubernetes namespace name: a DNS label. */
export function validateNamespaceName(namespace: string): string {
  if (!/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(namespace)) {
    throw ipamErrors.invalid(
      'namespace',
      `namespace ${JSON.stringify(namespace.slice(0, 100))} must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit`,
    );
  }
  return namespace;
}

/** Labels as Kubernetes accepts them (lib/labels.ts); the first bad one is named. */
export function validateLabels(labels: Record<string, string>, field = 'labels'): Record<string, string> {
  for (const [k, v] of Object.entries(labels)) {
    const problem = labelProblem(k, v);
    if (problem) throw ipamErrors.invalid(field, `${field}: ${problem}`);
  }
  return labels;
}

/** An allocation attempt id (AllocateRequest.attempt_id, ReleaseRequest.attempt_id); '' means none (null). */
export function validateAttemptId(id: string | null | undefined): string | null {
  if (!id) return null;
  if (!/^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/.test(id)) {
    throw ipamErrors.invalid(
      'attempt_id',
      `attempt id ${JSON.stringify(id.slice(0, 140))} must be 1-128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit (e.g. a UUID)`,
    );
  }
  return id;
}

export function validateAllocationRequest(input: AllocationInput): AllocationRequest {
  const addresses = (input.addresses ?? []).map((text) => {
    const { family, value } = parseAddress(text, 'requested address');
    return { family, text: formatAddress(family, value) };
  });
  if (new Set(addresses.map((a) => a.family)).size !== addresses.length)
    throw ipamErrors.invalid('addresses', 'ask for at most one address per family');
  let families = input.families && input.families.length > 0 ? [...new Set(input.families)].sort() : null;
  // A requested address brings its family along.
  if (families && addresses.length > 0)
    families = [...new Set([...families, ...addresses.map((a) => a.family)])].sort();
  const use = input.use || 'workload';
  if (!(USES as readonly string[]).includes(use))
    throw ipamErrors.invalid('use', `unknown use ${JSON.stringify(use)}; uses are ${USES.join(', ')}`);
  const owner = input.owner ?? '';
  if (owner.length > 512 || /[\u0000-\u001f]/.test(owner))
    throw ipamErrors.invalid(
      'owner',
      'owner must be at most 512 printable characters (e.g. "statefulset/shop/cart-0")',
    );
  return {
    ...input,
    handle: validateHandle(input.handle),
    node: validateNodeName(input.node),
    pool: input.pool ? validatePoolName(input.pool) : null,
    families,
    addresses,
    use,
    owner,
    namespacePool: input.namespacePool ? validatePoolName(input.namespacePool) : null,
    nodeLabels: input.nodeLabels ?? {},
    namespaceLabels: input.namespaceLabels ?? {},
    cluster: input.cluster ? validatePoolName(input.cluster) : null,
    attemptId: validateAttemptId(input.attemptId),
    podUid: validatePodUid(input.podUid),
  };
}
