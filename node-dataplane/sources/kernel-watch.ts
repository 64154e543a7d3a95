import netlinkPkg from 'netlink';
import type { RtNetlinkSocket, rt } from 'netlink';
import type { Logger } from '../../lib/logger.js';
import { concernsOverlay, type KernelEvent, type OverlayView } from '../domain/kernel-events.js';
import { bufIp, routeProtocolNumber } from '../kernel/netlink-overlay.js';

const { createRtNetlink } = netlinkPkg;

/**
 * Follows the kernel's rtnetlink notifications (IPv4 and IPv6 routes, neighbours and FDB entries, links) so that drift is
 * repaired within milliseconds rather than at the next periodic resync. Like every watch handler it only marks the
 * reconciler dirty: it never reads or writes kernel state itself (the pass does, through the drivers).
 *
 * The socket is unreferenced, so it never keeps the process alive. When the kernel drops notifications (the socket's
 * buffer overflowed) or one cannot be parsed, `onLost` is called: events may have been missed, so the caller should
 * run a full pass.
 */
const AF_INET = 2;
const AF_INET6 = 10;
const AF_BRIDGE = 7;
const RECV_BUFFER_BYTES = 4 << 20;

export interface KernelWatch {
  close(): void;
}

/** Reduces a parsed rtnetlink message to a KernelEvent, or null when it is of no kind the overlay cares about. */
export function toKernelEvent(m: rt.Message): KernelEvent | null {
  switch (m.kind) {
    case 'route': {
      if (m.data.family !== AF_INET && m.data.family !== AF_INET6) return null;
      const dst = m.attrs.dst && (m.attrs.dst.length === 4 || m.attrs.dst.length === 16) ? bufIp(m.attrs.dst) : m.data.family === AF_INET ? '0.0.0.0' : '::';
      return { kind: 'route', cidr: `${dst}/${m.data.dstLen}`, protocol: routeProtocolNumber(m.data.protocol), table: Number(m.attrs.table ?? m.data.table), oif: m.attrs.oif ?? null };
    }
    case 'neighbor': {
      const family = m.data.family === AF_INET ? 'inet' : m.data.family === AF_INET6 ? 'inet6' : m.data.family === AF_BRIDGE ? 'bridge' : null;
      return family && m.data.ifindex !== undefined ? { kind: 'neighbour', family, ifindex: m.data.ifindex, permanent: m.data.state?.permanent === true } : null;
    }
    case 'link':
      return m.data.index !== undefined ? { kind: 'link', ifindex: m.data.index, ifname: m.attrs.ifname ?? '' } : null;
    case 'address':
      return m.data.family === AF_INET && m.data.index !== undefined ? { kind: 'address', ifindex: m.data.index } : null;
    default:
      return null;
  }
}

export function watchKernel(deps: {
  view: () => OverlayView;
  /** Called for each event that concerns the overlay; it must only mark dirty. */
  onChange: (e: KernelEvent) => void;
  /** Notifications may have been lost. */
  onLost: (reason: string) => void;
  /** An IPv4 address or a link changed somewhere: the underlay may have moved (the caller re-detects it). */
  onInterfaces?: (e: KernelEvent) => void;
  logger: Logger;
}): KernelWatch {
  // A larger receive buffer rides out bursts (a snapshot's worth of writes echoes back as notifications); the
  // kernel caps it at net.core.rmem_max. The package's typings require a send buffer size: 0 leaves the default.
  const nl: RtNetlinkSocket = createRtNetlink({ ref: false, recvBufferSize: RECV_BUFFER_BYTES, sendBufferSize: 0 });
  for (const group of ['IPV4_ROUTE', 'IPV6_ROUTE', 'NEIGH', 'LINK', 'IPV4_IFADDR'] as const) nl.addMembership(group);
  nl.on('message', (parts) => {
    const view = deps.view();
    for (const part of parts) {
      const e = toKernelEvent(part);
      if (e && (e.kind === 'address' || e.kind === 'link')) deps.onInterfaces?.(e);
      if (!e || !concernsOverlay(e, view)) continue;
      deps.logger.debug('kernel event', { event: e });
      deps.onChange(e);
    }
  });
  nl.on('invalid', (err) => deps.onLost(`unparsable notification: ${(err as Error)?.message ?? err}`));
  nl.socket.on('error', (err) => deps.onLost(`netlink socket error: ${err.message}`));
  return { close: () => nl.socket.close() };
}
