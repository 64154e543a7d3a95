import { bitsOf, formatCidr, parseCidr, type Cidr, type Family } from '../../../lib/net/ip.js';
import { ipamErrors } from './ipam.errors.js';

/** Pure rules for pools, handles and allocation requests. No I/O. */
export interface PoolSpec {
  name: string;
  cidr: Cidr;
  blockPrefixLength: number;
  cooldownSeconds: number;
}

const NAME = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
export const DEFAULT_COOLDOWN_SECONDS = 30;
/** Blocks hold at most 2^16 addresses: a block's free-address bookkeeping stays small. */
const MAX_BLOCK_HOST_BITS = 16;

export function validatePoolName(name: string): string {
  if (!NAME.test(name)) throw ipamErrors.invalid('pool_name', `pool name ${JSON.stringify(name)} must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit`);
  return name;
}

export function validatePoolSpec(input: { name: string; cidr: string; blockPrefixLength: number; cooldownSeconds?: number }): PoolSpec {
  const name = validatePoolName(input.name);
  const cidr = parseCidr(input.cidr, 'pool CIDR');
  const bits = bitsOf(cidr.family);
  const minPrefix = cidr.family === 4 ? 8 : 16;
  if (cidr.prefixLength < minPrefix) throw ipamErrors.invalid('cidr', `pool CIDR ${formatCidr(cidr)} is larger than a /${minPrefix}; split it into smaller pools`);
  const b = input.blockPrefixLength;
  if (!Number.isInteger(b) || b < 1 || b > bits) throw ipamErrors.invalid('block_prefix_length', `block prefix length ${b} must be between 1 and ${bits} for IPv${cidr.family} (e.g. ${cidr.family === 4 ? 26 : 122} for blocks of 64 addresses)`);
  if (b < cidr.prefixLength) throw ipamErrors.invalid('block_prefix_length', `block prefix length /${b} is larger than the pool ${formatCidr(cidr)}; use /${cidr.prefixLength} or longer`);
  if (bits - b > MAX_BLOCK_HOST_BITS) throw ipamErrors.invalid('block_prefix_length', `blocks of /${b} hold more than 2^${MAX_BLOCK_HOST_BITS} addresses; use /${bits - MAX_BLOCK_HOST_BITS} or longer`);
  const cooldownSeconds = input.cooldownSeconds ?? DEFAULT_COOLDOWN_SECONDS;
  if (!Number.isInteger(cooldownSeconds) || cooldownSeconds < 0 || cooldownSeconds > 30 * 86400) throw ipamErrors.invalid('cooldown_seconds', `cool-down ${cooldownSeconds} s must be 0 to 2592000 (30 days)`);
  return { name, cidr, blockPrefixLength: b, cooldownSeconds };
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
}

export function validateHandle(handle: string): string {
  if (handle.length === 0) throw ipamErrors.invalid('handle', 'handle is empty; use "<containerID>/<ifname>"');
  if (handle.length > 512 || /[\u0000-\u001f]/.test(handle)) throw ipamErrors.invalid('handle', 'handle must be at most 512 printable characters ("<containerID>/<ifname>")');
  return handle;
}

export function validateNodeName(node: string): string {
  if (!/^[a-zA-Z0-9]([-a-zA-Z0-9.]{0,251}[a-zA-Z0-9])?$/.test(node)) throw ipamErrors.invalid('node', `node name ${JSON.stringify(node)} must be a DNS name (letters, digits, '-', '.')`);
  return node;
}

export function validateAllocationRequest(input: AllocationRequest): AllocationRequest {
  const families = input.families && input.families.length > 0 ? [...new Set(input.families)].sort() : null;
  return {
    ...input,
    handle: validateHandle(input.handle),
    node: validateNodeName(input.node),
    pool: input.pool ? validatePoolName(input.pool) : null,
    families,
  };
}
