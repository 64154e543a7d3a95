import { ipamErrors } from './ipam.errors.js';
import { matches, parseSelectorOnce } from './selector.js';

/**
 * Which pools an allocation may use, in order. Precedence (documented in DESIGN.md):
 *  1. the pool the pod asks for by name, else the pool its namespace asks for: only that pool, which must be
 *     enabled, allow the use, and select the node (a pool's node selector is about where its blocks can be routed,
 *     so no request overrides it);
 *  2. otherwise every enabled pool that allows the use and whose node and namespace selectors match, pools with a
 *     selector first (the more specific), then by name.
 */
export interface PoolRule {
  name: string;
  family: number;
  disabled: boolean;
  nodeSelector: string;
  namespaceSelector: string;
  allowedUses: string[];
}

export interface SelectionContext {
  /** The node and the pod's namespace, for messages. */
  node?: string;
  namespace?: string;
  pool: string | null;
  namespacePool: string | null;
  nodeLabels: Record<string, string>;
  namespaceLabels: Record<string, string>;
  use: string;
}

export const USES = ['workload', 'tunnel', 'loadbalancer'] as const;

export function selectPools<P extends PoolRule>(pools: P[], ctx: SelectionContext): P[] {
  const asked = ctx.pool ?? ctx.namespacePool;
  if (asked) {
    const p = pools.find((x) => x.name === asked);
    if (!p) throw ipamErrors.poolNotFound(asked);
    if (p.disabled) throw ipamErrors.poolDisabled(asked);
    if (!p.allowedUses.includes(ctx.use)) throw ipamErrors.useNotAllowed(asked, ctx.use, p.allowedUses);
    if (!matches(parseSelectorOnce(p.nodeSelector), ctx.nodeLabels))
      throw ipamErrors.nodeNotSelected(asked, p.nodeSelector);
    return [p];
  }
  const usable = pools.filter((p) => !p.disabled && p.allowedUses.includes(ctx.use));
  const onNode = usable.filter((p) => matches(parseSelectorOnce(p.nodeSelector), ctx.nodeLabels));
  const selected = onNode.filter((p) => matches(parseSelectorOnce(p.namespaceSelector), ctx.namespaceLabels));
  // Pools there are, but their selectors leave this pod none: say which selector and which labels.
  if (usable.length > 0 && onNode.length === 0)
    throw ipamErrors.noPoolSelectsNode(
      ctx.node ?? '',
      ctx.nodeLabels,
      usable.map((p) => `${p.name} (${p.nodeSelector})`),
    );
  if (onNode.length > 0 && selected.length === 0)
    throw ipamErrors.noPoolSelectsNamespace(
      ctx.namespace ?? '',
      ctx.namespaceLabels,
      onNode.map((p) => `${p.name} (${p.namespaceSelector})`),
    );
  return selected.sort((a, b) => {
    const sa = a.nodeSelector || a.namespaceSelector ? 0 : 1;
    const sb = b.nodeSelector || b.namespaceSelector ? 0 : 1;
    return sa - sb || a.name.localeCompare(b.name);
  });
}
