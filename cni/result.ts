import { isIP } from 'node:net';
import type { AttachResponse } from '../gen/weft/agent/v1/agent.js';
import { CniCode, CniError } from './errors.js';

/** The CNI 1.0.0 ADD result (SPEC.md, "ADD Success"). Optional fields are left out rather than empty. */
export interface CniResult {
  cniVersion: string;
  interfaces: CniInterface[];
  ips: CniIpConfig[];
  routes: CniRoute[];
  dns: Record<string, never>;
}

export interface CniInterface {
  name: string;
  mac?: string;
  /** The netns path for the pod-side interface; absent for a host-side one. */
  sandbox?: string;
}

export interface CniIpConfig {
  address: string;
  gateway?: string;
  /** Index into interfaces. */
  interface: number;
}

export interface CniRoute {
  dst: string;
  gw?: string;
}

/**
 * Turns the agent's AttachResponse into the result printed for ADD. The only module that reads the generated
 * type. It refuses (code 999) a response the runtime could not use, rather than printing a broken result.
 */
export function buildResult(cniVersion: string, attached: AttachResponse): CniResult {
  const problems: string[] = [];

  const interfaces = attached.interfaces.map((i, n): CniInterface => {
    if (i.name === '') problems.push(`interfaces[${n}] has no name`);
    return { name: i.name, ...(i.mac ? { mac: i.mac } : {}), ...(i.sandbox ? { sandbox: i.sandbox } : {}) };
  });

  if (attached.ips.length === 0) problems.push('no IP addresses');
  const ips = attached.ips.map((ip, n): CniIpConfig => {
    if (!isCidr(ip.address)) problems.push(`ips[${n}].address ${JSON.stringify(ip.address)} is not an address in CIDR notation`);
    if (ip.gateway && isIP(ip.gateway) === 0) problems.push(`ips[${n}].gateway ${JSON.stringify(ip.gateway)} is not an IP address`);
    if (ip.interface >= interfaces.length) {
      problems.push(`ips[${n}].interface ${ip.interface} is out of range (${interfaces.length} interfaces)`);
    }
    return { address: ip.address, ...(ip.gateway ? { gateway: ip.gateway } : {}), interface: ip.interface };
  });

  const routes = attached.routes.map((r, n): CniRoute => {
    if (!isCidr(r.dst)) problems.push(`routes[${n}].dst ${JSON.stringify(r.dst)} is not a prefix in CIDR notation`);
    if (r.gw && isIP(r.gw) === 0) problems.push(`routes[${n}].gw ${JSON.stringify(r.gw)} is not an IP address`);
    return { dst: r.dst, ...(r.gw ? { gw: r.gw } : {}) };
  });

  if (problems.length > 0) {
    throw new CniError(CniCode.internal, 'the weft agent returned an unusable attach result', problems.join('; '));
  }
  return { cniVersion, interfaces, ips, routes, dns: {} };
}

function isCidr(s: string): boolean {
  const slash = s.indexOf('/');
  if (slash < 0) return false;
  const family = isIP(s.slice(0, slash));
  const bits = s.slice(slash + 1);
  if (family === 0 || !/^\d{1,3}$/.test(bits)) return false;
  return Number(bits) <= (family === 4 ? 32 : 128);
}
