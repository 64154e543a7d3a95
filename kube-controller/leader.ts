import { CoordinationV1Api, V1MicroTime, type KubeConfig, type V1Lease } from '@kubernetes/client-node';
import type { Logger } from '../lib/logger.js';

/**
 * Leader election through a coordination.k8s.io Lease, as Kubernetes' own controllers do it: the leader renews the
 * Lease every third of its duration; a replica takes it over when its record has not changed for a whole duration by
 * this replica's own clock (never by comparing clocks across machines); every write carries the resourceVersion it
 * read, so two replicas never both win. A leader that cannot renew for a whole duration stops leading before anyone
 * else can have taken over. On a clean stop the leader empties the holder so a standby takes over at once.
 */
export interface LeaderElection {
  isLeader(): boolean;
  /** Stops campaigning; a leader gives the Lease up. */
  stop(): Promise<void>;
}

export function runLeaderElection(opts: {
  kubeConfig: KubeConfig;
  namespace: string;
  name: string;
  identity: string;
  leaseSeconds: number;
  logger: Logger;
  /** Called when this replica becomes leader; `signal` aborts when it stops leading. */
  onStartedLeading: (signal: AbortSignal) => void;
}): LeaderElection {
  const api = opts.kubeConfig.makeApiClient(CoordinationV1Api);
  const log = opts.logger.child({ lease: `${opts.namespace}/${opts.name}`, identity: opts.identity });
  const durationMs = opts.leaseSeconds * 1000;
  const retryMs = Math.max(500, Math.floor(durationMs / 3));
  let stopped = false;
  let leading: AbortController | null = null;
  let lastRenewed = 0;
  /** The record last read and, by this replica's clock, when it last changed. */
  let observed: { holder: string; renew: string; at: number } | null = null;
  let timer: NodeJS.Timeout | undefined;

  const stepDown = (why: string) => {
    if (!leading) return;
    log.warn('stopped leading', { why });
    leading.abort();
    leading = null;
  };

  const spec = (
    prev: V1Lease['spec'] | undefined,
    now: V1MicroTime,
    takeover: boolean,
  ): NonNullable<V1Lease['spec']> => ({
    holderIdentity: opts.identity,
    leaseDurationSeconds: opts.leaseSeconds,
    acquireTime: takeover ? now : (prev?.acquireTime ?? now),
    renewTime: now,
    leaseTransitions: (prev?.leaseTransitions ?? 0) + (takeover && prev?.holderIdentity ? 1 : 0),
  });

  const tryOnce = async (): Promise<void> => {
    const now = new V1MicroTime();
    let lease: V1Lease;
    try {
      lease = await api.readNamespacedLease({ name: opts.name, namespace: opts.namespace });
    } catch (err) {
      if ((err as { code?: number }).code !== 404) throw err;
      await api.createNamespacedLease({
        namespace: opts.namespace,
        body: { metadata: { name: opts.name, namespace: opts.namespace }, spec: spec(undefined, now, true) },
      });
      return becameLeader();
    }
    const holder = lease.spec?.holderIdentity ?? '';
    const renew = lease.spec?.renewTime ? new Date(lease.spec.renewTime).toISOString() : '';
    if (!observed || observed.holder !== holder || observed.renew !== renew)
      observed = { holder, renew, at: Date.now() };
    const mine = holder === opts.identity;
    const expired =
      holder === '' || Date.now() - observed.at > (lease.spec?.leaseDurationSeconds ?? opts.leaseSeconds) * 1000;
    if (!mine && !expired) {
      stepDown(`the Lease is held by ${holder}`);
      return;
    }
    await api.replaceNamespacedLease({
      name: opts.name,
      namespace: opts.namespace,
      body: { ...lease, spec: spec(lease.spec, now, !mine) },
    });
    if (!mine) log.info('took the Lease over', { from: holder || '(released)' });
    becameLeader();
  };

  const becameLeader = () => {
    lastRenewed = Date.now();
    observed = null;
    if (leading) return;
    leading = new AbortController();
    log.info('leading');
    opts.onStartedLeading(leading.signal);
  };

  const loop = async () => {
    if (stopped) return;
    try {
      await tryOnce();
    } catch (err) {
      const e = err as { code?: number; message?: string };
      // 409: another replica wrote the Lease between our read and write; it won this round.
      if (e.code !== 409) log.warn('Lease read or write failed', { error: e.message ?? String(err), status: e.code });
      if (leading && Date.now() - lastRenewed > durationMs - retryMs) stepDown('could not renew the Lease in time');
    }
    if (!stopped)
      timer = setTimeout(() => void loop(), leading ? retryMs : retryMs + Math.floor((Math.random() * retryMs) / 2));
  };
  void loop();

  return {
    isLeader: () => leading !== null,
    async stop() {
      stopped = true;
      clearTimeout(timer);
      if (!leading) return;
      stepDown('stopping');
      try {
        const lease = await api.readNamespacedLease({ name: opts.name, namespace: opts.namespace });
        if (lease.spec?.holderIdentity === opts.identity) {
          await api.replaceNamespacedLease({
            name: opts.name,
            namespace: opts.namespace,
            body: { ...lease, spec: { ...lease.spec, holderIdentity: '', renewTime: new V1MicroTime() } },
          });
        }
      } catch (err) {
        log.warn('could not give the Lease up; a standby takes over when it expires', {
          error: (err as Error).message,
        });
      }
    },
  };
}
