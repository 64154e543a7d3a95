import type { Logger } from '../lib/logger.js';
import type { DesiredState } from './domain/desired.js';
import { OVERLAY_KINDS } from './drivers/registry.js';
import type { ApplyReport } from './kernel-table/dataplane.js';
import type { AgentMetrics } from './metrics.js';

/**
 * The metrics and logs of a reconcile pass: what the managers want (sizes, peers, refused nodes) and what the
 * dataplane did (reads, drift, changes, failures, holds). Logs that would repeat every pass (a refused node, an
 * optional kind that keeps failing) are written when they start or change.
 */
export interface PassReporter {
  desired(desired: DesiredState): void;
  /** Reports one dataplane apply; true when it left something required undone (the pass failed). */
  applied(r: ApplyReport, why: readonly string[], seconds: number): boolean;
}

export function createPassReporter(opts: {
  logger: Logger;
  metrics: AgentMetrics;
  /** Kinds whose failures do not fail the pass. */
  optional: readonly string[];
  /** Kinds counted as `masquerade` (Weft's nat chains), not drift. */
  masquerade: readonly string[];
  pools: () => string[] | null;
}): PassReporter {
  const { logger, metrics } = opts;
  const overlay = new Set<string>(OVERLAY_KINDS);
  const masquerade = new Set(opts.masquerade);
  const optional = new Set(opts.optional);
  let refusedLogged = '';
  let waitingLogged = '';
  const optionalFailures = new Map<string, string>();
  const logOptionalFailure = (kind: string, message: string, err: string) => {
    if (optionalFailures.get(kind) !== err) logger.warn(message, { err });
    optionalFailures.set(kind, err);
  };
  const count = (xs: { kind: string }[]) => {
    const out: Record<string, number> = {};
    for (const x of xs) out[x.kind] = (out[x.kind] ?? 0) + 1;
    return out;
  };

  return {
    desired(desired) {
      for (const mode of ['vxlan', 'direct', 'refused'] as const)
        metrics.peers.set(desired.peers.filter((p) => p.mode === mode).length, { mode });
      metrics.desiredEntries.set(desired.neighbours.size, { kind: 'neighbour' });
      metrics.desiredEntries.set(desired.fdb.size, { kind: 'fdb' });
      metrics.desiredEntries.set(desired.routes.size, { kind: 'route' });
      const refused = desired.peers.filter((p) => p.mode === 'refused');
      const refusedKey = refused.map((p) => `${p.node}@${p.underlayAddress}`).join(',');
      if (refusedKey === refusedLogged) return;
      if (refused.length > 0)
        logger.error('refusing nodes that direct routing cannot reach; their pods are unreachable from here', {
          count: refused.length,
          nodes: refused.slice(0, 10).map((p) => p.reason),
        });
      else logger.info('no node refused any more');
      refusedLogged = refusedKey;
    },

    applied(r, why, seconds) {
      metrics.overlayReads.add(1, { source: r.reads.some((k) => overlay.has(k)) ? 'kernel' : 'trusted' });
      const drift = r.drift.filter((d) => !masquerade.has(d.kind));
      for (const [kind, n] of Object.entries(count(drift))) metrics.driftRepairs.add(n, { kind });
      if (drift.length > 0)
        logger.warn('repairing drift: entries Weft had programmed are gone or changed', {
          count: drift.length,
          byKind: count(drift),
          sample: drift.slice(0, 5).map((d) => `${d.kind} ${d.key}`),
        });
      for (const c of r.changes) {
        const nat = masquerade.has(c.kind);
        metrics.kernelChanges.add(1, { op: c.op === 'update' ? 'add' : 'delete', kind: nat ? 'masquerade' : c.kind });
        if (nat) logger.info('masquerade rules written', { kind: c.kind, pools: opts.pools() });
        optionalFailures.delete(c.kind);
      }
      let failed = false;
      for (const f of r.readFailures) {
        metrics.netlinkFailures.add(1, { op: 'read' });
        if (f.optional) logOptionalFailure(f.kind, `cannot read ${f.kind} back; retried at the next resync`, f.error);
        else {
          failed = true;
          logger.error('cannot read the kernel back; retrying', { kind: f.kind, err: f.error });
        }
      }
      for (const f of r.failed) {
        metrics.netlinkFailures.add(1, { op: 'apply' });
        if (f.optional)
          logOptionalFailure(
            f.kind,
            `cannot program ${f.kind} (IPv6 ${f.kind.startsWith('nat') ? 'NAT' : 'ip6tables or ipset'} missing on this node?); retried at the next resync`,
            f.error,
          );
        else {
          failed = true;
          logger.warn('kernel update failed; will retry', { op: f.op, kind: f.kind, key: f.key, err: f.error });
        }
      }
      // Entries waiting for something outside Weft (a pod veth the runtime has not made, or is making): logged when
      // that set changes; not a failure.
      const waiting = [...r.waiting.map((w) => `${w.op} ${w.kind} ${w.key}: ${w.reason}`)].sort();
      if (waiting.join('\n') !== waitingLogged) {
        if (waiting.length > 0)
          logger.info('entries waiting for the runtime', { count: waiting.length, sample: waiting.slice(0, 5) });
        waitingLogged = waiting.join('\n');
      }
      const held = r.held.filter((h) => !optional.has(h.kind) && !h.waiting);
      if (held.length > 0) {
        failed = true;
        logger.warn('holding back entries whose dependencies are not in place', {
          count: held.length,
          sample: held.slice(0, 5).map((h) => `${h.op} ${h.kind} ${h.key} (needs ${h.on})`),
        });
      }
      if (r.changes.length > 0 || r.failed.length > 0)
        logger.info('applied', {
          applied: r.changes.length,
          failed: r.failed.length,
          held: r.held.length,
          ms: Math.round(seconds * 1000),
          why,
        });
      return failed;
    },
  };
}
