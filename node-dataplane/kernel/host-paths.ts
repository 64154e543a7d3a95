import { writeFileSync } from 'node:fs';
import path from 'node:path';

/**
 * Where the agent reads and writes the host's network sysctls and sysfs (WEFT_PROC_SYS_NET, WEFT_SYS_DIR). A
 * container that is not privileged sees its own /proc/sys and /sys read-only, so on Kubernetes these point at
 * hostPath mounts of the host's (deploy/base/agent.yaml): /proc/sys/net at /host/proc/sys/net and the whole /sys at
 * /host/sys (the entries of /sys/class/net are relative links into /sys/devices). Both show the agent's own network
 * namespace: /proc/sys/net that of the process reading it, and the host's sysfs that of the host, which is the
 * agent's (host network). Passed explicitly from main.ts to every function that touches these files.
 */
export interface HostPaths {
  /** The host's /proc/sys/net. */
  procSysNet: string;
  /** The host's /sys. */
  sysDir: string;
}

export const DEFAULT_HOST_PATHS: HostPaths = Object.freeze({ procSysNet: '/proc/sys/net', sysDir: '/sys' });

/** A network sysctl's file: `netSysctl(p, 'ipv4', 'conf', dev, 'proxy_arp')`. */
export function netSysctl(paths: HostPaths, ...parts: string[]): string {
  return path.join(paths.procSysNet, ...parts);
}

/** /sys/class/net, or a file of one device there: `classNet(p, dev, 'ifalias')`. */
export function classNet(paths: HostPaths, ...parts: string[]): string {
  return path.join(paths.sysDir, 'class', 'net', ...parts);
}

/**
 * Switches IPv4 forwarding on, and IPv6 forwarding when the kernel has IPv6 (false when it cannot: then IPv6 pod
 * blocks are not forwarded). Throws when IPv4 forwarding cannot be switched on.
 */
export function enableForwarding(
  paths: HostPaths = DEFAULT_HOST_PATHS,
): { ipv6: true } | { ipv6: false; reason: string } {
  const ipv4 = netSysctl(paths, 'ipv4', 'ip_forward');
  try {
    writeFileSync(ipv4, '1');
  } catch (err) {
    throw new Error(
      `cannot switch IPv4 forwarding on through ${ipv4} (${(err as Error).message}); in a container whose /proc/sys is read-only, mount the host's /proc/sys/net and set WEFT_PROC_SYS_NET to it`,
      { cause: err },
    );
  }
  try {
    writeFileSync(netSysctl(paths, 'ipv6', 'conf', 'all', 'forwarding'), '1');
    return { ipv6: true };
  } catch (err) {
    return { ipv6: false, reason: (err as Error).message };
  }
}
