import { CommandError } from '../../lib/exec.js';

/**
 * What a failed kernel request means, in one place, for every way Weft talks to the kernel: rtnetlink through the
 * `netlink` package (which rejects with `Request rejected: <errno name>`), and the commands iproute2 (`ip`),
 * iptables/ip6tables(-restore) and ipset (a CommandError carrying the command's stderr).
 *
 * - 'not-found': the object is not there (ENOENT, ESRCH, ENODEV; "Cannot find device", "… does not exist", "No such
 *   file or directory"/"No such process" from RTNETLINK, iptables' "No chain/target/match by that name" and "Bad
 *   rule", ipset's "not added"). Deleting it is then done already (CONVENTIONS.md: "not found" on delete is success).
 * - 'exists': the object is there already (EEXIST; "File exists", "Address already assigned", iptables' "Chain already
 *   exists", ipset's "same name already exists" and "already added").
 * - null: anything else, including a command that could not run at all (a missing `ip` is ENOENT from spawn, not a
 *   missing device) and `nsenter` failing to enter a namespace that is gone: those are real failures.
 */
export type KernelErrorKind = 'not-found' | 'exists';

/** errno names (and numbers, when Node cannot name one) as the netlink package reports them. */
const ERRNO_KIND: Readonly<Record<string, KernelErrorKind>> = {
  ENOENT: 'not-found',
  ESRCH: 'not-found',
  ENODEV: 'not-found',
  EEXIST: 'exists',
  '-2': 'not-found',
  '-3': 'not-found',
  '-19': 'not-found',
  '-17': 'exists',
};
const NETLINK_REJECTED = /^Request rejected: (\S+)$/;

/** Lines of iproute2's, iptables' and ipset's stderr, by what they mean. */
const COMMAND_NOT_FOUND = [
  /Cannot find device/, // ip link del|set, ip route … dev X
  /does not exist/, // ip link show: Device "X" does not exist.; ip route del: FIB table does not exist.; ipset: The set with the given name does not exist
  /^RTNETLINK answers: (No such file or directory|No such process|No such device)/m, // ip neigh|route|addr del of an absent entry
  /No chain\/target\/match by that name/, // iptables -F|-X|-D of an absent chain
  /Bad rule \(does a matching rule exist in that chain\?\)/, // iptables -D of an absent rule
  /Element cannot be deleted from the set: it's not added/, // ipset del
];
const COMMAND_EXISTS = [
  /^RTNETLINK answers: File exists/m, // ip link|route|neigh add of a present entry
  /Address already assigned/, // ip addr add
  /Chain already exists/, // iptables -N
  /set with the same name already exists/, // ipset create
  /it's already added/, // ipset add
];

export function kernelErrorKind(err: unknown): KernelErrorKind | null {
  if (err instanceof CommandError) {
    if (COMMAND_NOT_FOUND.some((re) => re.test(err.stderr))) return 'not-found';
    if (COMMAND_EXISTS.some((re) => re.test(err.stderr))) return 'exists';
    return null;
  }
  if (err instanceof Error && !('code' in err)) {
    const name = NETLINK_REJECTED.exec(err.message)?.[1];
    if (name !== undefined) return ERRNO_KIND[name] ?? null;
  }
  return null;
}

/** The object the request named is not there: on delete, the work is done. */
export const isNotFound = (err: unknown): boolean => kernelErrorKind(err) === 'not-found';

/** The object the request would create is there already. */
export const isExists = (err: unknown): boolean => kernelErrorKind(err) === 'exists';
