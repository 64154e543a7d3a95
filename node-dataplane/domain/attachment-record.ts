import { createHash } from 'node:crypto';

/**
 * What an attachment records about itself on its host veth, as the device's alias (`ip link show` prints it), so that
 * the kernel object that is the attachment carries it for exactly as long as the attachment lives:
 *
 *   weft network=<CNI network name> container=<container id> default-route=yes
 *   weft network=<CNI network name> container=<container id> default-route=no table=<T>
 *
 * - `network`: the network config's `name` of its ADD. GC touches only attachments of the network it names.
 * - `container`: its container id, so that a second interface of the same container (CNI_IFNAME=net1 after eth0)
 *   finds its siblings.
 * - `default-route`: whether this interface holds the pod's default route in the main table (the container's first
 *   Weft interface), or (any later one) its own routing table T, used only by traffic from its addresses (a source
 *   rule), so that it answers through itself while the pod's default route stays with the first.
 *
 * A value too long for the alias (255 bytes in all) is recorded as `sha256:` and 16 hex digits of its hash, and
 * compared the same way. A veth without a record was made before attachments recorded themselves.
 */
export interface AttachmentRecord {
  network: string;
  containerId: string;
  defaultRoute: boolean;
  /** A second interface's routing table in the pod's namespace (with defaultRoute false). */
  table?: number;
}

const MAX_VALUE = 100;

/** The form a value is recorded and compared in: itself, its hash when too long, "-" when empty (an older plugin sent no network name). */
export function recordedValue(value: string): string {
  if (value === '') return '-';
  return value.length <= MAX_VALUE ? value : `sha256:${createHash('sha256').update(value).digest('hex').slice(0, 16)}`;
}

export function formatAttachmentRecord(r: AttachmentRecord): string {
  const table = !r.defaultRoute && r.table !== undefined ? ` table=${r.table}` : '';
  return `weft network=${recordedValue(r.network)} container=${recordedValue(r.containerId)} default-route=${r.defaultRoute ? 'yes' : 'no'}${table}`;
}

/** The record in an alias (values in their recorded form), or null when the alias is not one. */
export function parseAttachmentRecord(alias: string | null | undefined): AttachmentRecord | null {
  const m = /^weft network=(\S+) container=(\S+) default-route=(yes|no)(?: table=(\d{1,10}))?$/.exec(alias ?? '');
  if (!m) return null;
  return {
    network: m[1]!,
    containerId: m[2]!,
    defaultRoute: m[3] === 'yes',
    ...(m[4] !== undefined ? { table: Number(m[4]) } : {}),
  };
}

/** True when a record (values in recorded form) is of this network. An empty network name matches no record. */
export function isOfNetwork(record: AttachmentRecord, network: string): boolean {
  return network !== '' && record.network === recordedValue(network);
}

export function isOfContainer(record: AttachmentRecord, containerId: string): boolean {
  return record.containerId === recordedValue(containerId);
}
