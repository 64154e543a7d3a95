import { createHash } from 'node:crypto';
import { createJsonLogger } from '../../lib/json-logger.js';
import type { LogFields, Logger } from '../../lib/logger.js';
import type { ObservedAttachment } from '../domain/attachment-check.js';
import type { HostLink } from '../domain/garbage-collection.js';
import {
  IpamCallError,
  type AllocationRequest,
  type AttachmentEvents,
  type AttachmentRecords,
  type IpamPort,
  type NodeAllocation,
  type PodNetwork,
  type PodReports,
  type PolicyPort,
} from './ports.js';

/**
 * In-memory ports for the use cases' unit tests (use-cases.test.ts): an IPAM, a kernel with pod veths and their
 * records, network policy and the pod reports. Every call is written to one shared `events` list, in the order it
 * was made, so that a test can assert what happened in which order; each answers asynchronously, so that calls
 * running at once interleave as they do on the real ones.
 */
export interface FakeWorld {
  events: string[];
  ipam: FakeIpam;
  kernel: FakeKernel;
  policy: PolicyPort & { inForceError: Partial<Record<4 | 6, Error>>; passes: number; holdPass?: Promise<void> };
  reports: PodReports;
  /** The attachment events, in order (`attaching <veth>`, `attached <veth> <addresses>`, `ended <veth>`, `detached <veth>`). */
  attachments: AttachmentEvents & { told: string[] };
  logger: Logger & { lines: (LogFields & { level: string; msg: string })[] };
}

export interface FakeIpam extends IpamPort {
  /** The live allocations, by handle. */
  held: Map<string, { containerId: string; ipv4?: string; ipv6?: string; podNamespace: string; podName: string }>;
  /** Attempts fenced by a release naming them: an Allocate naming one is refused. */
  fenced: Set<string>;
  /** Replaces the next Allocate's outcome (the allocation is still recorded when it returns addresses). */
  nextAllocate?: (req: AllocationRequest) => Promise<{ ipv4?: string; ipv6?: string }>;
  /** While set, every call fails with this error. */
  down?: IpamCallError;
  /** Give an IPv6 address too (IPAM has an IPv6 pool). */
  ipv6: boolean;
}

export interface FakeKernel extends PodNetwork, AttachmentRecords {
  /** The host veths, by name, with the record on each. */
  links: Map<string, HostLink & { containerId: string; ifname: string }>;
  /** The next attach fails with this message once its address settled (after removing what it made). */
  failAttach?: string;
  /** While set, a detach's deletion waits for it. */
  holdDetach?: Promise<void>;
  /** What observe reports (beside the kernel's links); defaults to a whole, healthy attachment. */
  observed?: Omit<ObservedAttachment, 'allocation'>;
}

export const unavailable = (details = 'connect ECONNREFUSED 127.0.0.1:7400') =>
  new IpamCallError('unavailable', undefined, details, true, `14 UNAVAILABLE: ${details}`);
export const refused = (code: string, details: string, kind: IpamCallError['kind'] = 'failed_precondition') =>
  new IpamCallError(kind, code, details, false, `9 FAILED_PRECONDITION: ${details}`);

const tick = () => new Promise<void>((r) => setImmediate(r));

export function createFakeWorld(): FakeWorld {
  const events: string[] = [];
  let next = 1;
  const ipam: FakeIpam = {
    target: 'fake-ipam:7400',
    held: new Map(),
    fenced: new Set(),
    ipv6: false,
    async allocate(req) {
      events.push(`ipam allocate ${req.handle} families=${req.families.join(',')} attempt=${req.attemptId}`);
      const custom = ipam.nextAllocate;
      ipam.nextAllocate = undefined;
      await tick();
      if (ipam.down) throw ipam.down;
      if (ipam.fenced.has(req.attemptId)) throw refused('ipam.attempt_fenced', `attempt ${req.attemptId} is fenced`);
      const got = custom
        ? await custom(req)
        : {
            ipv4: req.addresses.find((a) => a.includes('.')) ?? `10.244.0.${next++}`,
            ...(req.families.includes(6) && ipam.ipv6 ? { ipv6: `fd00:10:244::${next++}` } : {}),
          };
      ipam.held.set(req.handle, {
        containerId: req.containerId,
        podNamespace: req.podNamespace,
        podName: req.podName,
        ...got,
      });
      return got;
    },
    async release(handle, attemptId) {
      events.push(`ipam release ${handle}${attemptId ? ` attempt=${attemptId}` : ''}`);
      await tick();
      if (ipam.down) throw ipam.down;
      if (attemptId) ipam.fenced.add(attemptId);
      const h = ipam.held.get(handle);
      ipam.held.delete(handle);
      return { released: h !== undefined, address: h?.ipv4 ?? h?.ipv6 ?? '' };
    },
    async nodeAllocations() {
      events.push('ipam list');
      await tick();
      if (ipam.down) throw ipam.down;
      const out: NodeAllocation[] = [];
      for (const [handle, h] of ipam.held) {
        const row = { handle, containerId: h.containerId, podNamespace: h.podNamespace, podName: h.podName };
        if (h.ipv4) out.push({ ...row, address: h.ipv4, family: 4 });
        if (h.ipv6) out.push({ ...row, address: h.ipv6, family: 6 });
      }
      return out;
    },
    async ping() {
      await tick();
      if (ipam.down) throw ipam.down;
    },
  };

  const hostIfname = (containerId: string, ifname: string) =>
    'weft' + createHash('sha256').update(`${containerId}/${ifname}`).digest('hex').slice(0, 11);
  const kernel: FakeKernel = {
    links: new Map(),
    gateway: '169.254.1.1',
    gateway6: 'fe80::1',
    hostIfname,
    async hostLinkExists(containerId, ifname) {
      return kernel.links.has(hostIfname(containerId, ifname));
    },
    async attach(opts) {
      const name = hostIfname(opts.containerId, opts.ifname);
      events.push(`kernel create ${name}`);
      // Like kernel/pod-network.ts, the address is followed from the start (its rejection is never unhandled).
      const address = opts.address.then((a) => a);
      address.catch(() => {});
      await tick();
      kernel.links.set(name, { name, record: opts.record, containerId: opts.containerId, ifname: opts.ifname });
      const failure = kernel.failAttach;
      kernel.failAttach = undefined;
      try {
        const a = await address;
        events.push(`kernel address ${name} ${a.ipv4}${a.ipv6 ? ` ${a.ipv6}` : ''}`);
        if (failure) throw new Error(failure);
        return {
          hostIfname: name,
          hostMac: '02:00:00:00:00:01',
          podIfname: opts.ifname,
          podMac: opts.mac || '0a:58:0a:f4:00:01',
          address: a.ipv4,
          ...(a.ipv6 ? { address6: a.ipv6 } : {}),
        };
      } catch (err) {
        // Like kernel/pod-network.ts: everything made is removed, then the error is thrown.
        kernel.links.delete(name);
        events.push(`kernel remove ${name}`);
        throw err;
      }
    },
    async detach(opts) {
      const name = hostIfname(opts.containerId, opts.ifname);
      events.push(`kernel delete ${name}`);
      await tick();
      if (kernel.holdDetach) await kernel.holdDetach;
      kernel.links.delete(name);
      events.push(`kernel deleted ${name}`);
    },
    async observe(opts) {
      events.push(`kernel observe ${opts.hostIfname}`);
      await tick();
      return (
        kernel.observed ?? {
          netnsExists: true,
          podLink: null,
          podRoutes: [],
          hostLink: null,
          hostProxyArp: null,
          hostRoutes: [],
        }
      );
    },
    async deleteLink(name) {
      events.push(`kernel delete ${name}`);
      await tick();
      if (!kernel.links.delete(name)) throw new Error(`Cannot find device "${name}"`);
    },
    ofContainer(containerId) {
      let count = 0;
      let defaultRoute = false;
      for (const l of kernel.links.values())
        if (l.record?.containerId === containerId) {
          count++;
          defaultRoute ||= l.record.defaultRoute;
        }
      return { count, defaultRoute };
    },
    async hostLinks() {
      events.push('kernel list');
      await tick();
      return [...kernel.links.values()].map((l) => ({ name: l.name, record: l.record }));
    },
  };

  const policy: FakeWorld['policy'] = {
    inForceError: {},
    passes: 0,
    async inForce(family) {
      events.push(`policy in force ipv${family}?`);
      const err = policy.inForceError[family];
      if (err) throw err;
    },
    async podsChanged() {
      events.push('policy pass');
      policy.passes++;
      if (policy.holdPass) await policy.holdPass;
    },
  };
  const reports: PodReports = {
    attached: (pod) => void events.push(`report attached ${pod.containerId} ${pod.addresses.join(',')}`),
    detached: (containerId) => void events.push(`report detached ${containerId}`),
  };
  const told: string[] = [];
  const attachments: FakeWorld['attachments'] = {
    told,
    attaching: (name) => void told.push(`attaching ${name}`),
    attachEnded: (name) => void told.push(`ended ${name}`),
    attached: (a) => void told.push(`attached ${a.hostIfname} ${a.addresses.join(',')}`),
    detached: (name) => void told.push(`detached ${name}`),
  };
  const lines: FakeWorld['logger']['lines'] = [];
  const logger = Object.assign(
    createJsonLogger({}, { write: (line: string) => void lines.push(JSON.parse(line) as (typeof lines)[number]) }),
    { lines },
  );
  return { events, ipam, kernel, policy, reports, attachments, logger };
}
