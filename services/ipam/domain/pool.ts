import { formatCidr4, parseCidr4, type Cidr4 } from '../../../lib/net/ip.js';
import { ipamErrors } from './ipam.errors.js';

/** Pure rules for pools, handles and allocation requests. No I/O. */
export interface PoolSpec {
  name: string;
  cidr: Cidr4;
  blockPrefixLength: number;
}

const NAME = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

export function validatePoolName(name: string): string {
  if (!NAME.test(name)) throw ipamErrors.invalid('pool_name', `pool name ${JSON.stringify(name)} must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit`);
  return name;
}

export function validatePoolSpec(input: { name: string; cidr: string; blockPrefixLength: number }): PoolSpec {
  const name = validatePoolName(input.name);
  const cidr = parseCidr4(input.cidr, 'pool CIDR');
  if (cidr.prefixLength < 8) throw ipamErrors.invalid('cidr', `pool CIDR ${formatCidr4(cidr)} is larger than a /8; split it into smaller pools`);
  const b = input.blockPrefixLength;
  if (!Number.isInteger(b) || b < 1 || b > 32) throw ipamErrors.invalid('block_prefix_length', `block prefix length ${b} must be between 1 and 32 (e.g. 26 for blocks of 64 addresses)`);
  if (b < cidr.prefixLength) throw ipamErrors.invalid('block_prefix_length', `block prefix length /${b} is larger than the pool ${formatCidr4(cidr)}; use /${cidr.prefixLength} or longer`);
  if (b - cidr.prefixLength > 20) throw ipamErrors.invalid('block_prefix_length', `pool ${formatCidr4(cidr)} with /${b} blocks has more than 2^20 blocks; use a shorter block prefix`);
  return { name, cidr, blockPrefixLength: b };
}

export interface AllocationRequest {
  handle: string;
  node: string;
  pool: string | null;
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
  return {
    ...input,
    handle: validateHandle(input.handle),
    node: validateNodeName(input.node),
    pool: input.pool ? validatePoolName(input.pool) : null,
  };
}
