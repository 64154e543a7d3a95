import { run } from '../../lib/exec.js';
import { isNotFound } from './kernel-errors.js';

/** Link-level operations through iproute2's JSON interface (device creation and pod plumbing; see DESIGN.md). */
export interface LinkInfo {
  ifindex: number;
  ifname: string;
  mtu: number;
  address: string;
  flags: string[];
  linkinfo?: { info_kind?: string; info_data?: Record<string, unknown> };
  addr_info?: { family: string; local: string; prefixlen: number; scope: string }[];
}

/** Runs `ip` in this process's network namespace, or inside the namespace at nsPath. */
export function ip(args: string[], opts: { nsPath?: string; input?: string | Promise<string> } = {}): Promise<string> {
  return opts.nsPath ? run('nsenter', [`--net=${opts.nsPath}`, 'ip', ...args], opts) : run('ip', args, opts);
}

export async function showLink(name: string, nsPath?: string): Promise<LinkInfo | null> {
  try {
    const out = await ip(['-j', '-d', 'link', 'show', 'dev', name], { nsPath });
    return (JSON.parse(out) as LinkInfo[])[0] ?? null;
  } catch (err) {
    if (isNotFound(err)) return null;
    throw err;
  }
}

export async function listAddresses(nsPath?: string): Promise<LinkInfo[]> {
  return JSON.parse(await ip(['-j', 'addr', 'show'], { nsPath })) as LinkInfo[];
}

/** Deletes a link; a link that is already gone is success. */
export async function deleteLink(name: string, nsPath?: string): Promise<void> {
  try {
    await ip(['link', 'del', 'dev', name], { nsPath });
  } catch (err) {
    if (isNotFound(err)) return;
    throw err;
  }
}
