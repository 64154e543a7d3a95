import netlinkPkg from 'netlink';
import type { rt } from 'netlink';
import type { Logger } from '../../lib/logger.js';
import {
  AF_BRIDGE,
  AF_INET,
  AF_INET6,
  RTM_DELADDR,
  RTM_DELLINK,
  RTM_DELNEIGH,
  RTM_DELROUTE,
  RTM_NEWADDR,
  RTM_NEWLINK,
  RTM_NEWNEIGH,
  RTM_NEWROUTE,
  RTNLGRP_IPV4_IFADDR,
  RTNLGRP_IPV4_ROUTE,
  RTNLGRP_IPV6_ROUTE,
  RTNLGRP_LINK,
  RTNLGRP_NEIGH,
} from '../../lib/net/netlink-constants.js';
import {
  agreesWithTarget,
  concernsOverlay,
  type EventOp,
  type KernelEvent,
  type OverlayView,
} from '../domain/kernel-events.js';
import { bufIp, bufMac, routeProtocolNumber } from '../kernel/netlink-overlay.js';

const { createNetlink, Protocol, rt: rtStructs } = netlinkPkg;

/**
 * Follows the kernel's rtnetlink notifications (IPv4 and IPv6 routes, neighbours and FDB entries, links) so that drift is
 * repaired within milliseconds rather than at the next periodic resync. Like every watch handler it only marks the
 * reconciler dirty: it never reads or writes kernel state itself (the pass does, through the drivers).
 *
 * The socket is unreferenced, so it never keeps the process alive. When the kernel drops notifications (the socket's
 * buffer overflowed) or one cannot be parsed, `onLost` is called: events may have been missed, so the caller should
 * run a full pass.
 */
const RECV_BUFFER_BYTES = 4 << 20;
const NEW_TYPES = new Set([RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE, RTM_NEWNEIGH]);
const DEL_TYPES = new Set([RTM_DELLINK, RTM_DELADDR, RTM_DELROUTE, RTM_DELNEIGH]);
/** The notifications followed: links, neighbours and FDB entries, IPv4 addresses, IPv4 and IPv6 routes. */
const GROUPS = [RTNLGRP_LINK, RTNLGRP_NEIGH, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE];

export interface KernelWatch {
  close(): void;
}

/**
 * Reduces a parsed rtnetlink message to a KernelEvent, or null when it is of no kind the overlay cares about. With the
 * message type (`NEW…`/`DEL…`), route and neighbour events also carry `op` and the entry's details, so that the
 * agent's own writes can be told from drift (`agreesWithTarget`).
 */
export function toKernelEvent(m: rt.Message, type?: number): KernelEvent | null {
  const op: EventOp | undefined =
    type === undefined ? undefined : NEW_TYPES.has(type) ? 'new' : DEL_TYPES.has(type) ? 'del' : undefined;
  switch (m.kind) {
    case 'route': {
      if (m.data.family !== AF_INET && m.data.family !== AF_INET6) return null;
      const dst =
        m.attrs.dst && (m.attrs.dst.length === 4 || m.attrs.dst.length === 16)
          ? bufIp(m.attrs.dst)
          : m.data.family === AF_INET
            ? '0.0.0.0'
            : '::';
      const e: KernelEvent = {
        kind: 'route',
        cidr: `${dst}/${m.data.dstLen}`,
        protocol: routeProtocolNumber(m.data.protocol),
        table: Number(m.attrs.table ?? m.data.table),
        oif: m.attrs.oif ?? null,
      };
      if (op)
        Object.assign(e, {
          op,
          gateway:
            m.attrs.gateway && (m.attrs.gateway.length === 4 || m.attrs.gateway.length === 16)
              ? bufIp(m.attrs.gateway)
              : null,
        });
      return e;
    }
    case 'neighbor': {
      const family =
        m.data.family === AF_INET
          ? 'inet'
          : m.data.family === AF_INET6
            ? 'inet6'
            : m.data.family === AF_BRIDGE
              ? 'bridge'
              : null;
      if (!family || m.data.ifindex === undefined) return null;
      const e: KernelEvent = {
        kind: 'neighbour',
        family,
        ifindex: m.data.ifindex,
        permanent: m.data.state?.permanent === true,
      };
      if (op) {
        const dst = m.attrs.dst && (m.attrs.dst.length === 4 || m.attrs.dst.length === 16) ? bufIp(m.attrs.dst) : null;
        Object.assign(e, { op, ip: dst, mac: m.attrs.lladdr ? bufMac(m.attrs.lladdr) : null });
      }
      return e;
    }
    case 'link':
      return m.data.index !== undefined ? { kind: 'link', ifindex: m.data.index, ifname: m.attrs.ifname ?? '' } : null;
    case 'address':
      return m.data.family === AF_INET && m.data.index !== undefined
        ? { kind: 'address', ifindex: m.data.index }
        : null;
    default:
      return null;
  }
}

export function watchKernel(deps: {
  view: () => OverlayView;
  /** Called for each event that concerns the overlay and disagrees with the agent's target (drift); it must only mark dirty. */
  onChange: (e: KernelEvent) => void;
  /** Called for each event that concerns the overlay but agrees with the target: the echo of the agent's own write. */
  onEcho?: (e: KernelEvent) => void;
  /** Notifications may have been lost. */
  onLost: (reason: string) => void;
  /** An IPv4 address or a link changed somewhere: the underlay may have moved (the caller re-detects it). */
  onInterfaces?: (e: KernelEvent) => void;
  logger: Logger;
}): KernelWatch {
  // A larger receive buffer rides out bursts (a snapshot's worth of writes echoes back as notifications); the
  // kernel caps it at net.core.rmem_max. The package's typings require a send buffer size: 0 leaves the default.
  // The plain netlink socket (not the package's rtnetlink wrapper, which drops each message's type) gives the type,
  // which says whether an entry was announced or removed.
  const nl = createNetlink(Protocol.ROUTE, { ref: false, recvBufferSize: RECV_BUFFER_BYTES, sendBufferSize: 0 });
  for (const group of GROUPS) nl.addMembership(group);
  nl.on('message', (msgs: { type: number; data: Buffer }[]) => {
    let view: OverlayView | null = null;
    for (const raw of msgs) {
      let e: KernelEvent | null;
      try {
        e = toKernelEvent(rtStructs.parseMessage(raw.type, raw.data), raw.type);
      } catch (err) {
        deps.onLost(`unparsable notification: ${(err as Error)?.message ?? err}`);
        continue;
      }
      if (e && (e.kind === 'address' || e.kind === 'link')) deps.onInterfaces?.(e);
      if (!e) continue;
      view ??= deps.view();
      if (!concernsOverlay(e, view)) continue;
      if (agreesWithTarget(e, view)) {
        deps.onEcho?.(e);
        continue;
      }
      deps.logger.debug('kernel event', { event: e });
      deps.onChange(e);
    }
  });
  nl.on('invalid', (err: unknown) => deps.onLost(`unparsable notification: ${(err as Error)?.message ?? err}`));
  nl.on('error', (err: Error) => deps.onLost(`netlink socket error: ${err.message}`));
  return { close: () => nl.close() };
}
