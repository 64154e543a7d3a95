import { createBackoff, sleep } from '../../lib/backoff.js';
import type { Logger } from '../../lib/logger.js';
import type { AttachmentEvents } from '../domain/pod-attachment.js';
import type { HostAttachment } from '../domain/pod-host.js';

/**
 * The node's pod attachments, the input of the pod drivers (drivers/pod-links.ts, drivers/pod-routes.ts): IPAM's
 * allocations of this node once at start (every page, retried until it answers: unknown until then), then the CNI
 * endpoint's own ADD, DEL and GC as they happen (every attachment of the node is made and ended through it; IPAM has
 * no allocation watch). A change made while the listing is on its way is applied again over its answer, so an
 * attachment made meanwhile is never taken for stale. Also tells which host veths an ADD is making right now.
 * Like every source it only records and calls `onChange`; it never touches the kernel.
 */
export interface AttachmentsSource {
  /** This node's attachments by host veth; null until IPAM's allocations of the node have been listed. */
  attachments(): ReadonlyMap<string, HostAttachment> | null;
  /** Whether an ADD is making this host veth right now. */
  attaching(hostIfname: string): boolean;
  /** What the CNI endpoint tells (cni-endpoint/endpoint.ts `pods`). */
  events: AttachmentEvents;
}

export function followAttachments(deps: {
  /** This node's attachments from IPAM (every page); throws when IPAM cannot be asked. */
  list: () => Promise<Map<string, HostAttachment>>;
  logger: Logger;
  signal: AbortSignal;
  onChange: () => void;
  retryMs?: number;
}): AttachmentsSource {
  let current: Map<string, HostAttachment> | null = null;
  const attaching = new Set<string>();
  /** Changes made before the listing answered (null once it has), applied again over its answer. */
  let meanwhile: ((m: Map<string, HostAttachment>) => void)[] | null = [];
  const change = (apply: (m: Map<string, HostAttachment>) => void) => {
    if (current) apply(current);
    meanwhile?.push(apply);
  };
  const retry = createBackoff({ baseMs: deps.retryMs ?? 1000, capMs: 15_000 });
  void (async () => {
    while (!deps.signal.aborted) {
      try {
        const listed = await deps.list();
        for (const apply of meanwhile ?? []) apply(listed);
        meanwhile = null;
        current = listed;
        deps.logger.info("the node's attachments are known", { attachments: listed.size });
        deps.onChange();
        return;
      } catch (err) {
        if (deps.signal.aborted) return;
        deps.logger.warn("cannot list the node's attachments in IPAM; pod veths and host routes are left as they are", {
          err: (err as Error).message,
        });
      }
      await sleep(retry.next(), deps.signal, { unref: true });
    }
  })();
  return {
    attachments: () => current,
    attaching: (name) => attaching.has(name),
    events: {
      attaching: (name) => void attaching.add(name),
      attachEnded: (name) => void attaching.delete(name),
      attached: (a) => change((m) => m.set(a.hostIfname, a)),
      detached: (name) => change((m) => m.delete(name)),
    },
  };
}
