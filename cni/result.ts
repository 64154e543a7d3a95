import { isIP } from './ip.js';
import type { AttachResponse } from '../gen/codec/weft/agent/v1/agent.js';
import { isLegacyResultVersion } from './config.js';
import { CniCode, CniError } from './errors.js';

/**
 * CNI results: the agent's AttachResponse turned into a result, a result read from the config's `prevResult`, and a
 * result written in the config's version. Inside the plugin a result always has the 1.0.0 shape (CniResult); only
 * formatResult writes the 0.3.x/0.4.0 shape, and parsePrevResult reads either.
 *
 * The two formats (SPEC.md of 0.4.0 and 1.0.0, "Result"):
 *   0.3.0, 0.3.1, 0.4.0  ips[] = { "version": "4" | "6", "address", "gateway"?, "interface"? }
 *   1.0.0, 1.1.0         ips[] = { "address", "gateway"?, "interface"? }          ("version" was removed)
 * Everything else (interfaces[] name/mac/sandbox, routes[] dst/gw, dns) is the same. 0.3.0's text calls the list
 * "ip", a typo that 0.3.1 fixed; libcni and every reference plugin write "ips" for 0.3.0 too, and so does Weft.
 */
export interface CniResult {
  interfaces: CniInterface[];
  ips: CniIpConfig[];
  routes: CniRoute[];
  dns: Record<string, unknown>;
}

/** Fields beyond the known ones (e.g. 1.1.0's mtu, socketPath) come through from a prevResult unchanged. */
export interface CniInterface {
  name: string;
  mac?: string;
  /** The netns path for the pod-side interface; absent for a host-side one. */
  sandbox?: string;
  [extra: string]: unknown;
}

export interface CniIpConfig {
  address: string;
  gateway?: string;
  /** Index into interfaces. */
  interface?: number;
  [extra: string]: unknown;
}

export interface CniRoute {
  dst: string;
  gw?: string;
  [extra: string]: unknown;
}

/**
 * Turns the agent's AttachResponse into a result. The only module that reads the generated type. It refuses (code
 * 999) a response the runtime could not use, rather than printing a broken result.
 */
export function buildResult(attached: AttachResponse): CniResult {
  const problems: string[] = [];

  const interfaces = attached.interfaces.map((i, n): CniInterface => {
    if (i.name === '') problems.push(`interfaces[${n}] has no name`);
    return { name: i.name, ...(i.mac ? { mac: i.mac } : {}), ...(i.sandbox ? { sandbox: i.sandbox } : {}) };
  });

  if (attached.ips.length === 0) problems.push('no IP addresses');
  const ips = attached.ips.map((ip, n): CniIpConfig => {
    if (!isCidr(ip.address))
      problems.push(`ips[${n}].address ${JSON.stringify(ip.address)} is not an address in CIDR notation`);
    if (ip.gateway && isIP(ip.gateway) === 0)
      problems.push(`ips[${n}].gateway ${JSON.stringify(ip.gateway)} is not an IP address`);
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
  return { interfaces, ips, routes, dns: {} };
}

/**
 * The result printed for ADD, in the config's version: 1.0.0/1.1.0 as is; 0.3.x/0.4.0 with each ips entry's
 * "version" ("4" or "6", from its address). Optional fields stay absent rather than empty; dns is always an object.
 */
export function formatResult(cniVersion: string, result: CniResult): Record<string, unknown> {
  const legacy = isLegacyResultVersion(cniVersion);
  const ips = result.ips.map(({ version: _, ...ip }) => (legacy ? { version: familyOf(ip.address), ...ip } : ip));
  return { cniVersion, interfaces: result.interfaces, ips, routes: result.routes, dns: result.dns };
}

/**
 * Appends this plugin's result to the previous plugin's (ADD in a chain), so that what came before reaches the
 * runtime unchanged: our interfaces go after the earlier ones and our ips' interface indexes move along with them.
 */
export function appendResult(previous: CniResult, ours: CniResult): CniResult {
  const offset = previous.interfaces.length;
  return {
    interfaces: [...previous.interfaces, ...ours.interfaces],
    ips: [
      ...previous.ips,
      ...ours.ips.map((ip) => (ip.interface === undefined ? ip : { ...ip, interface: ip.interface + offset })),
    ],
    routes: [...previous.routes, ...ours.routes],
    // This network's own dns settings, when it has any (as the reference plugins set it); else what came before.
    dns: Object.keys(ours.dns).length > 0 ? ours.dns : previous.dns,
  };
}

/**
 * Reads a `prevResult` written in the config's version (so 0.3.x/0.4.0 ips may carry "version", which must agree
 * with the address). A prevResult that is not a usable result is an invalid config (code 7), naming what is wrong.
 * Unknown fields are kept.
 */
export function parsePrevResult(cniVersion: string, value: unknown): CniResult {
  const problems: string[] = [];
  const doc = asObject(value);
  if (!doc) throw invalidPrev(`it must be an object, got ${JSON.stringify(value)}`);

  const list = (key: string): Record<string, unknown>[] => {
    const v = doc[key];
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v)) {
      problems.push(`"${key}" must be a list`);
      return [];
    }
    return v.map((item, n) => {
      const o = asObject(item);
      if (!o) problems.push(`${key}[${n}] must be an object`);
      return o ?? {};
    });
  };

  const interfaces = list('interfaces').map((i, n): CniInterface => {
    if (typeof i.name !== 'string' || i.name === '') problems.push(`interfaces[${n}].name must be a non-empty string`);
    for (const key of ['mac', 'sandbox']) {
      if (i[key] !== undefined && typeof i[key] !== 'string') problems.push(`interfaces[${n}].${key} must be a string`);
    }
    return { ...i, name: String(i.name) };
  });

  const legacy = isLegacyResultVersion(cniVersion);
  const ips = list('ips').map((ip, n): CniIpConfig => {
    const address = typeof ip.address === 'string' ? ip.address : '';
    if (!isCidr(address))
      problems.push(`ips[${n}].address ${JSON.stringify(ip.address)} is not an address in CIDR notation`);
    if (ip.gateway !== undefined && (typeof ip.gateway !== 'string' || isIP(ip.gateway) === 0)) {
      problems.push(`ips[${n}].gateway ${JSON.stringify(ip.gateway)} is not an IP address`);
    }
    if (
      ip.interface !== undefined &&
      !(Number.isInteger(ip.interface) && (ip.interface as number) >= 0 && (ip.interface as number) < interfaces.length)
    ) {
      problems.push(
        `ips[${n}].interface ${JSON.stringify(ip.interface)} is not an index into interfaces (${interfaces.length} of them)`,
      );
    }
    if (legacy && ip.version !== undefined && isCidr(address) && ip.version !== familyOf(address)) {
      problems.push(`ips[${n}].version ${JSON.stringify(ip.version)} does not match address ${address}`);
    }
    const { version: _, ...rest } = ip;
    return { ...rest, address };
  });

  const routes = list('routes').map((r, n): CniRoute => {
    if (typeof r.dst !== 'string' || !isCidr(r.dst))
      problems.push(`routes[${n}].dst ${JSON.stringify(r.dst)} is not a prefix in CIDR notation`);
    if (r.gw !== undefined && (typeof r.gw !== 'string' || isIP(r.gw) === 0))
      problems.push(`routes[${n}].gw ${JSON.stringify(r.gw)} is not an IP address`);
    return { ...r, dst: String(r.dst) };
  });

  const dns = doc.dns === undefined || doc.dns === null ? {} : asObject(doc.dns);
  if (!dns) problems.push('"dns" must be an object');

  if (problems.length > 0) throw invalidPrev(problems.join('; '));
  return { interfaces, ips, routes, dns: dns ?? {} };
}

/** "4" or "6": the 0.x `version` of an ips entry. */
function familyOf(cidr: string): '4' | '6' {
  return isIP(cidr.slice(0, cidr.indexOf('/'))) === 6 ? '6' : '4';
}

function asObject(v: unknown): Record<string, unknown> | undefined {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
}

function invalidPrev(why: string): CniError {
  return new CniError(CniCode.invalidConfig, `network config "prevResult" is not a usable CNI result: ${why}`);
}

function isCidr(s: string): boolean {
  const slash = s.indexOf('/');
  if (slash < 0) return false;
  const family = isIP(s.slice(0, slash));
  const bits = s.slice(slash + 1);
  if (family === 0 || !/^\d{1,3}$/.test(bits)) return false;
  return Number(bits) <= (family === 4 ? 32 : 128);
}
