import { Address4, Address6 } from 'ip-address';
import { invalidArgument } from '../errors.js';

/** IPv4 address arithmetic on top of ip-address. Addresses are numbers (0 .. 2^32-1) inside this module's callers. */
export interface Cidr4 {
  /** Network address as a number. */
  base: number;
  prefixLength: number;
}

export function parseIPv4(text: string, what = 'address'): number {
  if (!Address4.isValid(text) || text.includes('/'))
    throw invalidArgument(
      'invalid_address',
      `${what} ${JSON.stringify(text)} is not an IPv4 address (e.g. 10.244.0.5)`,
    );
  return Number(new Address4(text).bigInt());
}

export function formatIPv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/** Parses "a.b.c.d/len" strictly: no host bits may be set. */
export function parseCidr4(text: string, what = 'CIDR'): Cidr4 {
  const m = /^([0-9.]+)\/(\d{1,3})$/.exec(text);
  if (!m)
    throw invalidArgument('invalid_cidr', `${what} ${JSON.stringify(text)} is not an IPv4 CIDR (e.g. 10.244.0.0/16)`);
  const prefixLength = Number(m[2]);
  if (prefixLength > 32)
    throw invalidArgument('invalid_cidr', `${what} ${JSON.stringify(text)}: prefix length must be 0-32`);
  if (!Address4.isValid(text))
    throw invalidArgument('invalid_cidr', `${what} ${JSON.stringify(text)} is not an IPv4 CIDR (e.g. 10.244.0.0/16)`);
  const addr = parseIPv4(m[1]!, what);
  const base = networkOf(addr, prefixLength);
  if (base !== addr)
    throw invalidArgument(
      'invalid_cidr',
      `${what} ${JSON.stringify(text)} has host bits set; did you mean ${formatIPv4(base)}/${prefixLength}?`,
    );
  return { base, prefixLength };
}

export function networkOf(addr: number, prefixLength: number): number {
  if (prefixLength === 0) return 0;
  return (addr & (~0 << (32 - prefixLength))) >>> 0;
}

export function sizeOf(prefixLength: number): number {
  return 2 ** (32 - prefixLength);
}

export function formatCidr4(c: Cidr4): string {
  return `${formatIPv4(c.base)}/${c.prefixLength}`;
}

export function containsAddress(c: Cidr4, addr: number): boolean {
  return networkOf(addr, c.prefixLength) === c.base;
}

export function isMac(text: string): boolean {
  return /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(text);
}

/** Family-generic CIDRs with 128-bit arithmetic (bigint); nothing here enumerates a range. */
export type Family = 4 | 6;

export interface Cidr {
  family: Family;
  base: bigint;
  prefixLength: number;
}

export const bitsOf = (family: Family) => (family === 4 ? 32 : 128);

/** An IPv4 address in canonical form (decimal octets without leading zeros): parsed without ip-address. */
const CANONICAL_IPV4 =
  /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;

export function parseAddress(text: string, what = 'address'): { family: Family; value: bigint } {
  // The common case by arithmetic (every pod address of a node's policy); anything else through ip-address.
  const m = CANONICAL_IPV4.exec(text);
  if (m) return { family: 4, value: BigInt(((+m[1]! << 24) | (+m[2]! << 16) | (+m[3]! << 8) | +m[4]!) >>> 0) };
  if (!text.includes('/')) {
    if (Address4.isValid(text)) return { family: 4, value: new Address4(text).bigInt() };
    if (Address6.isValid(text) && !text.includes('%')) return { family: 6, value: new Address6(text).bigInt() };
  }
  throw invalidArgument(
    'invalid_address',
    `${what} ${JSON.stringify(text)} is not an IPv4 or IPv6 address (e.g. 10.244.0.5 or fd00:10:244::5)`,
  );
}

export function formatAddress(family: Family, value: bigint): string {
  // IPv4 by arithmetic: hot in policy compilation (every member of every address set); IPv6 through ip-address.
  if (family === 4) {
    const n = Number(value);
    return `${(n >>> 24) & 255}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
  }
  return Address6.fromBigInt(value).correctForm();
}

/** Parses an IPv4 or IPv6 CIDR strictly: no host bits may be set. */
export function parseCidr(text: string, what = 'CIDR'): Cidr {
  const m = /^([0-9a-fA-F.:]+)\/(\d{1,3})$/.exec(text);
  if (!m)
    throw invalidArgument(
      'invalid_cidr',
      `${what} ${JSON.stringify(text)} is not a CIDR (e.g. 10.244.0.0/16 or fd00:10:244::/48)`,
    );
  let parsed: { family: Family; value: bigint };
  try {
    parsed = parseAddress(m[1]!, what);
  } catch {
    throw invalidArgument(
      'invalid_cidr',
      `${what} ${JSON.stringify(text)} is not a CIDR (e.g. 10.244.0.0/16 or fd00:10:244::/48)`,
    );
  }
  const { family, value } = parsed;
  const prefixLength = Number(m[2]);
  const bits = bitsOf(family);
  if (prefixLength > bits)
    throw invalidArgument(
      'invalid_cidr',
      `${what} ${JSON.stringify(text)}: prefix length must be 0-${bits} for IPv${family}`,
    );
  const base = maskOf(value, prefixLength, bits);
  if (base !== value)
    throw invalidArgument(
      'invalid_cidr',
      `${what} ${JSON.stringify(text)} has host bits set; did you mean ${formatAddress(family, base)}/${prefixLength}?`,
    );
  return { family, base, prefixLength };
}

function maskOf(value: bigint, prefixLength: number, bits: number): bigint {
  const hostBits = BigInt(bits - prefixLength);
  return (value >> hostBits) << hostBits;
}

export function formatCidr(c: Cidr): string {
  return `${formatAddress(c.family, c.base)}/${c.prefixLength}`;
}

export function cidrContains(c: Cidr, family: Family, value: bigint): boolean {
  return family === c.family && maskOf(value, c.prefixLength, bitsOf(family)) === c.base;
}

/** Number of addresses in a prefix of this length. */
export function cidrSize(family: Family, prefixLength: number): bigint {
  return 1n << BigInt(bitsOf(family) - prefixLength);
}
