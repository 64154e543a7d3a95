import { status } from '@grpc/grpc-js';
import type { PromiseClient } from '../lib/grpc/client.js';
import { createBackoff, sleep } from '../lib/backoff.js';
import type { Logger } from '../lib/logger.js';
import type { PolicyServiceService } from '../gen/weft/policy/v1/policy.js';
import type { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';

/**
 * Reports the pods the CNI plugin attaches and detaches to the policy service (AttachPod / DetachPod), so that a
 * pod's namespace policies select it from its first packet, before any controller has described it. The dataplane
 * drops a local pod's traffic until its rules are held (domain/network-policy.ts), so the attach itself never
 * waits for a report: reports go out in the background, in order per sandbox, retried with backoff until the policy
 * service takes them. A report the service refuses as invalid is logged and dropped (retrying cannot help).
 */
export interface PodReporter {
  attached(
    pod: { podNamespace: string; podName: string; containerId: string; addresses: string[] },
    resync?: boolean,
  ): void;
  detached(containerId: string): void;
  /** Reports not yet taken by the policy service. */
  pending(): number;
  close(): void;
}

const NAME = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;

/**
 * The identity a pod is reported under: Kubernetes' namespace and name from CNI_ARGS; a runtime outside Kubernetes
 * (podman, say) gives none or names that are not DNS names, so such a pod is `default/sandbox-<container id>`.
 */
export function reportedIdentity(
  podNamespace: string,
  podName: string,
  containerId: string,
): { namespace: string; name: string } {
  if (NAME.test(podNamespace) && NAME.test(podName)) return { namespace: podNamespace, name: podName };
  const id = containerId
    .toLowerCase()
    .replace(/[^a-z0-9.-]/g, '-')
    .slice(0, 40)
    .replace(/[-.]+$/, '');
  return { namespace: 'default', name: `sandbox-${id}` };
}

type Report =
  { kind: 'attach'; namespace: string; name: string; addresses: string[]; resync: boolean } | { kind: 'detach' };

export function createPodReporter(deps: {
  node: string;
  policy: PromiseClient<typeof PolicyServiceService>;
  logger: Logger;
  retryInitialMs?: number;
  retryMaxMs?: number;
}): PodReporter {
  const queues = new Map<string, Report[]>();
  let closed = false;
  /** Aborted by close(): a report waiting to be retried stops waiting. */
  const closing = new AbortController();

  const send = async (containerId: string, r: Report) => {
    if (r.kind === 'attach') {
      const res = await deps.policy.attachPod(
        {
          namespace: r.namespace,
          name: r.name,
          node: deps.node,
          containerId,
          addresses: r.addresses,
          resync: r.resync,
        },
        { timeoutMs: 10_000 },
      );
      deps.logger.info('pod reported to policy', {
        pod: `${r.namespace}/${r.name}`,
        containerId,
        known: res.known,
        revision: res.revision,
      });
    } else {
      const res = await deps.policy.detachPod({ containerId }, { timeoutMs: 10_000 });
      if (res.name)
        deps.logger.info('pod detach reported to policy', {
          pod: `${res.namespace}/${res.name}`,
          containerId,
          deleted: res.deleted,
        });
    }
  };

  const drain = async (containerId: string) => {
    const queue = queues.get(containerId)!;
    const backoff = createBackoff({ baseMs: deps.retryInitialMs ?? 200, capMs: deps.retryMaxMs ?? 5000 });
    while (queue.length > 0 && !closed) {
      try {
        await send(containerId, queue[0]!);
        queue.shift();
        backoff.reset();
      } catch (err) {
        const e = err as { code?: number; details?: string; message?: string };
        if (e.code === status.INVALID_ARGUMENT || e.code === status.UNIMPLEMENTED) {
          deps.logger.error('the policy service refused a pod report; the pod keeps no policy identity', {
            containerId,
            report: queue[0]!.kind,
            err: e.details ?? e.message,
          });
          queue.shift();
          continue;
        }
        const delay = backoff.next();
        deps.logger.warn('pod report failed; retrying', {
          containerId,
          report: queue[0]!.kind,
          retryMs: delay,
          err: e.details ?? e.message,
        });
        await sleep(delay, closing.signal);
      }
    }
    queues.delete(containerId);
  };

  const enqueue = (containerId: string, r: Report) => {
    if (closed) return;
    const queue = queues.get(containerId);
    if (queue) {
      queue.push(r);
      return;
    }
    queues.set(containerId, [r]);
    void drain(containerId);
  };

  return {
    attached(pod, resync = false) {
      const { namespace, name } = reportedIdentity(pod.podNamespace, pod.podName, pod.containerId);
      enqueue(pod.containerId, { kind: 'attach', namespace, name, addresses: pod.addresses, resync });
    },
    detached(containerId) {
      enqueue(containerId, { kind: 'detach' });
    },
    pending: () => [...queues.values()].reduce((n, q) => n + q.length, 0),
    close() {
      closed = true;
      closing.abort();
    },
  };
}

/** Reports every attachment IPAM holds for the node (allocations the agent made: handle `<container id>/<ifname>`). */
export async function reportHeldAttachments(
  ipam: PromiseClient<typeof IpamServiceService>,
  node: string,
  reports: PodReporter,
): Promise<number> {
  let pageToken = '';
  let n = 0;
  do {
    const page = await ipam.listAllocations({ pool: '', node, pageSize: 5000, pageToken }, { timeoutMs: 30_000 });
    const bySandbox = new Map<
      string,
      { podNamespace: string; podName: string; containerId: string; addresses: string[] }
    >();
    for (const a of page.allocations) {
      if (!a.containerId || !a.handle.startsWith(`${a.containerId}/`)) continue;
      const held = bySandbox.get(a.containerId);
      if (held) held.addresses.push(a.address);
      else
        bySandbox.set(a.containerId, {
          podNamespace: a.podNamespace,
          podName: a.podName,
          containerId: a.containerId,
          addresses: [a.address],
        });
    }
    for (const pod of bySandbox.values()) reports.attached(pod, true);
    n += bySandbox.size;
    pageToken = page.nextPageToken;
  } while (pageToken);
  return n;
}
