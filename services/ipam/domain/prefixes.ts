import { cidrSize, type Cidr } from '../../../lib/net/ip.js';

/**
 * Carving prefixes (a cluster's pod CIDR, say) out of an aggregate: the lowest free, aligned prefix of the asked
 * length. Pure and 128-bit; it walks the taken prefixes once (sorted), never the address space. The lowest free
 * aligned slot is either the aggregate's start or the first aligned slot after some taken prefix's end.
 */
export function lowestFreePrefix(aggregate: Cidr, taken: Cidr[], prefixLength: number): Cidr | null {
  if (prefixLength < aggregate.prefixLength) return null;
  const size = cidrSize(aggregate.family, prefixLength);
  const end = aggregate.base + cidrSize(aggregate.family, aggregate.prefixLength);
  const sorted = taken
    .filter((t) => t.family === aggregate.family)
    .map((t) => ({ start: t.base, end: t.base + cidrSize(t.family, t.prefixLength) }))
    .sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  const alignUp = (x: bigint) => (x % size === 0n ? x : x + size - (x % size));
  const candidates = [aggregate.base, ...sorted.map((t) => alignUp(t.end))].sort((a, b) =>
    a < b ? -1 : a > b ? 1 : 0,
  );
  for (const c of candidates) {
    if (c < aggregate.base || c + size > end) continue;
    if (!sorted.some((t) => t.start < c + size && c < t.end))
      return { family: aggregate.family, base: c, prefixLength };
  }
  return null;
}
