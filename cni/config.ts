import { isIP } from './ip.js';
import { CniCode, CniError } from './errors.js';

/**
 * The network config the runtime streams to weft-cni on stdin, parsed and validated in one place.
 *
 *   { "cniVersion": "1.1.0", "name": "weft", "type": "weft", "agentSocket": "/run/weft/agent.sock", "pool": "" }
 *
 * The fields the runtime adds are kept as they came (`runtimeConfig`, `args`, `prevResult`, the GC attachment
 * lists): only the verbs that use them read them (readAttachOptions, readValidAttachments, result.ts), so that a
 * value that would fail ADD never makes the DEL that follows fail too. Other fields are ignored.
 */
export interface NetworkConfig {
  readonly cniVersion: string;
  readonly name: string;
  readonly type: string;
  /** Absolute path of the node agent's gRPC unix socket. */
  readonly agentSocket: string;
  /** Pool to allocate from; empty means the agent's default pool. */
  readonly pool: string;
  /** The result of the previous ADD (CHECK, DEL) or of the previous plugin in the chain (ADD), as sent; undefined when absent. */
  readonly prevResult: unknown;
  /** Capability arguments (`mac`, `ips`, ...); empty when absent. */
  readonly runtimeConfig: Readonly<Record<string, unknown>>;
  /** The `args` object (conventionally `args.cni.ips`, `args.cni.mac`); empty when absent. */
  readonly args: Readonly<Record<string, unknown>>;
  /** GC (1.1.0): `cni.dev/valid-attachments` and the older spelling `cni.dev/attachments`, as sent. */
  readonly gcAttachments: { readonly valid: unknown; readonly legacy: unknown };
  /** The network's `dns` settings, as sent (read by readDns for ADD's result). */
  readonly dns: unknown;
}

/**
 * The spec versions weft-cni speaks, oldest first. 0.3.0, 0.3.1 and 0.4.0 share one result format (ips carry a
 * `version`); 1.0.0 and 1.1.0 share the other. Results are only ever written in the config's version.
 */
export const SUPPORTED_VERSIONS: readonly string[] = Object.freeze(['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0']);
/** The version of answers to a runtime that declared none (VERSION without input, errors before the config is read). */
export const DEFAULT_CNI_VERSION = '1.1.0';
export const DEFAULT_AGENT_SOCKET = '/run/weft/agent.sock';
/** Larger configs are refused unread: no legitimate Weft config comes near this. */
export const MAX_CONFIG_BYTES = 1024 * 1024;

/** Linux sun_path is 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH_BYTES = 107;
/** SPEC.md: starts with an alphanumeric, then alphanumerics, '_', '.' or '-'. */
const NETWORK_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

/**
 * Parses the raw stdin bytes into a frozen NetworkConfig, or throws a CniError:
 * code 7 for an oversize config (unparsed) or a missing/invalid field, 6 for bytes that are not a JSON object,
 * 1 for a cniVersion this plugin does not support.
 */
export function parseNetworkConfig(raw: Uint8Array | string): NetworkConfig {
  const size = typeof raw === 'string' ? Buffer.byteLength(raw) : raw.byteLength;
  if (size > MAX_CONFIG_BYTES) {
    throw new CniError(
      CniCode.invalidConfig,
      `network config on stdin is larger than ${MAX_CONFIG_BYTES} bytes; refusing to parse it`,
      `got more than ${MAX_CONFIG_BYTES} bytes`,
    );
  }
  const doc = decodeObject(raw);

  const version = doc.cniVersion;
  if (version === undefined) {
    throw invalid(`network config has no "cniVersion"; set it to one of ${SUPPORTED_VERSIONS.join(', ')}`);
  }
  if (typeof version !== 'string' || version === '') {
    throw invalid(`network config "cniVersion" must be a non-empty string, got ${show(version)}`);
  }
  if (!SUPPORTED_VERSIONS.includes(version)) {
    throw new CniError(
      CniCode.incompatibleVersion,
      `unsupported cniVersion ${show(version)}; weft-cni supports ${SUPPORTED_VERSIONS.join(', ')}`,
      `supported versions: ${show(SUPPORTED_VERSIONS)}`,
    );
  }

  const name = doc.name;
  if (name === undefined) throw invalid('network config has no "name"');
  if (typeof name !== 'string' || !NETWORK_NAME.test(name)) {
    throw invalid(
      `network config "name" must start with a letter or digit and contain only letters, digits, '_', '.' or '-'; got ${show(name)}`,
    );
  }

  // The runtime chose this executable by "type", so it is present; its value is not checked, so that the
  // binary can be installed under another name.
  const type = doc.type;
  if (typeof type !== 'string' || type === '') {
    throw invalid(`network config "type" must be a non-empty string (normally "weft"), got ${show(type)}`);
  }

  const agentSocket = doc.agentSocket ?? DEFAULT_AGENT_SOCKET;
  if (typeof agentSocket !== 'string' || !agentSocket.startsWith('/')) {
    throw invalid(`network config "agentSocket" must be an absolute path, got ${show(agentSocket)}`);
  }
  if (Buffer.byteLength(agentSocket) > MAX_SOCKET_PATH_BYTES) {
    throw invalid(
      `network config "agentSocket" is longer than ${MAX_SOCKET_PATH_BYTES} bytes, too long for a unix socket`,
    );
  }

  const pool = doc.pool ?? '';
  if (typeof pool !== 'string') {
    throw invalid(`network config "pool" must be a string (empty for the default pool), got ${show(pool)}`);
  }

  return Object.freeze({
    cniVersion: version,
    name,
    type,
    agentSocket,
    pool,
    prevResult: doc.prevResult ?? undefined,
    runtimeConfig: Object.freeze(optionalObject(doc, 'runtimeConfig')),
    args: Object.freeze(optionalObject(doc, 'args')),
    gcAttachments: Object.freeze({ valid: doc['cni.dev/valid-attachments'], legacy: doc['cni.dev/attachments'] }),
    dns: doc.dns,
  });
}

/** Orders two x.y.z versions: negative when a is older than b. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < 3; i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** True when results in this version use the 0.3.x/0.4.0 format (ips carry "version"). */
export function isLegacyResultVersion(version: string): boolean {
  return compareVersions(version, '1.0.0') < 0;
}

/** What ADD asks for beyond the pod itself: a MAC for the pod interface and specific addresses. */
export interface AttachOptions {
  /** Lower-case MAC for the pod interface; empty: the kernel picks one. */
  readonly mac: string;
  /** Addresses the runtime asked for (without prefix length), in the order given; empty: IPAM picks. */
  readonly requestedAddresses: readonly string[];
  /** The pod's Kubernetes UID (CNI_ARGS K8S_POD_UID), recorded with its addresses in IPAM; empty outside Kubernetes. */
  readonly podUid: string;
}

/**
 * Reads ADD's options from the places the CNI conventions put them: runtimeConfig `mac` and `ips` (capabilities),
 * `args.cni.mac` and `args.cni.ips`, and CNI_ARGS `MAC=` and `IP=` (comma-separated); the pod's UID from CNI_ARGS
 * `K8S_POD_UID=`. Config values that are wrong are code 7, CNI_ARGS values code 4; two places asking for different MACs
 * is code 7.
 */
export function readAttachOptions(
  config: NetworkConfig,
  cniArgs: { mac: string; ip: string; podUid?: string },
): AttachOptions {
  const argsCni = config.args.cni;
  const fromArgs =
    typeof argsCni === 'object' && argsCni !== null && !Array.isArray(argsCni)
      ? (argsCni as Record<string, unknown>)
      : {};

  const macs: [string, string][] = [];
  for (const [where, value] of [
    ['runtimeConfig.mac', config.runtimeConfig.mac],
    ['args.cni.mac', fromArgs.mac],
  ] as const) {
    if (value === undefined || value === '') continue;
    if (typeof value !== 'string' || macProblem(value)) {
      throw invalid(
        `network config ${where} ${show(value)} is not a usable MAC: ${typeof value === 'string' ? macProblem(value) : 'it must be a string'}`,
      );
    }
    macs.push([where, value.toLowerCase()]);
  }
  if (cniArgs.mac !== '') {
    const problem = macProblem(cniArgs.mac);
    if (problem)
      throw new CniError(CniCode.invalidEnvironment, `CNI_ARGS MAC=${cniArgs.mac} is not a usable MAC: ${problem}`);
    macs.push(['CNI_ARGS MAC', cniArgs.mac.toLowerCase()]);
  }
  const distinct = new Set(macs.map(([, m]) => m));
  if (distinct.size > 1) {
    throw invalid(`conflicting MACs for the pod interface: ${macs.map(([w, m]) => `${w}=${m}`).join(', ')}; give one`);
  }

  const requested: string[] = [];
  for (const [where, value] of [
    ['runtimeConfig.ips', config.runtimeConfig.ips],
    ['args.cni.ips', fromArgs.ips],
  ] as const) {
    if (value === undefined) continue;
    if (!Array.isArray(value)) throw invalid(`network config ${where} must be a list of addresses, got ${show(value)}`);
    for (const item of value) {
      const address = typeof item === 'string' ? addressOf(item) : undefined;
      if (address === undefined)
        throw invalid(
          `network config ${where} has ${show(item)}, which is not an IP address (with an optional /prefix)`,
        );
      requested.push(address);
    }
  }
  if (cniArgs.ip !== '') {
    for (const item of cniArgs.ip.split(',')) {
      const address = addressOf(item.trim());
      if (address === undefined)
        throw new CniError(
          CniCode.invalidEnvironment,
          `CNI_ARGS IP=${cniArgs.ip} has ${show(item)}, which is not an IP address`,
        );
      requested.push(address);
    }
  }
  // Kubernetes UIDs are UUIDs; IPAM takes at most 128 of these characters (AllocateRequest.pod_uid).
  const podUid = cniArgs.podUid ?? '';
  if (podUid !== '' && !/^[A-Za-z0-9-]{1,128}$/.test(podUid)) {
    throw new CniError(
      CniCode.invalidEnvironment,
      `CNI_ARGS K8S_POD_UID=${show(podUid.slice(0, 140))} is not a pod UID: at most 128 letters, digits or '-' (a UUID)`,
    );
  }
  return Object.freeze({ mac: macs[0]?.[1] ?? '', requestedAddresses: Object.freeze([...new Set(requested)]), podUid });
}

/** The spec's DNS object: what the network config's `dns` holds, reported in ADD's result. */
export interface DnsSettings {
  nameservers?: string[];
  domain?: string;
  search?: string[];
  options?: string[];
}

/**
 * The network config's `dns` (SPEC: nameservers, domain, search, options), for ADD's result as the reference plugins
 * report it; {} when absent. Only those four keys are kept. A wrong type or a nameserver that is not an IP address
 * is code 7.
 */
export function readDns(config: NetworkConfig): DnsSettings {
  const v = config.dns;
  if (v === undefined || v === null) return {};
  if (typeof v !== 'object' || Array.isArray(v))
    throw invalid(
      `network config "dns" must be an object with nameservers, domain, search and options, got ${show(v)}`,
    );
  const doc = v as Record<string, unknown>;
  const out: DnsSettings = {};
  for (const key of ['nameservers', 'search', 'options'] as const) {
    const list = doc[key];
    if (list === undefined || list === null) continue;
    if (!Array.isArray(list) || !list.every((x) => typeof x === 'string'))
      throw invalid(`network config "dns.${key}" must be a list of strings, got ${show(list)}`);
    out[key] = [...list] as string[];
  }
  const bad = out.nameservers?.find((n) => isIP(n) === 0);
  if (bad !== undefined) throw invalid(`network config "dns.nameservers" has ${show(bad)}, which is not an IP address`);
  if (doc.domain !== undefined && doc.domain !== null) {
    if (typeof doc.domain !== 'string')
      throw invalid(`network config "dns.domain" must be a string, got ${show(doc.domain)}`);
    out.domain = doc.domain;
  }
  return out;
}

/** One attachment a GC keeps: the CNI_CONTAINERID and CNI_IFNAME of its ADD. */
export interface ValidAttachment {
  readonly containerId: string;
  readonly ifname: string;
}

/**
 * GC's list of attachments that are still valid: the union of `cni.dev/valid-attachments` and the older
 * `cni.dev/attachments` (libcni sends both). A config with neither is refused (code 7) rather than read as "nothing
 * is valid", which would free every address on the node; so is any malformed entry, since skipping one could free
 * a live pod's address.
 */
export function readValidAttachments(config: NetworkConfig): readonly ValidAttachment[] {
  const lists = [
    ['cni.dev/valid-attachments', config.gcAttachments.valid],
    ['cni.dev/attachments', config.gcAttachments.legacy],
  ] as const;
  if (lists.every(([, v]) => v === undefined || v === null)) {
    throw invalid(
      'GC needs the list of valid attachments in "cni.dev/valid-attachments"; without it nothing is collected',
    );
  }
  const seen = new Map<string, ValidAttachment>();
  for (const [key, list] of lists) {
    if (list === undefined || list === null) continue;
    if (!Array.isArray(list))
      throw invalid(`network config "${key}" must be a list of {containerID, ifname}, got ${show(list)}`);
    list.forEach((item: unknown, n) => {
      const o = (typeof item === 'object' && item !== null ? item : {}) as Record<string, unknown>;
      const { containerID, ifname } = o;
      if (typeof containerID !== 'string' || containerID === '' || typeof ifname !== 'string' || ifname === '') {
        throw invalid(
          `network config "${key}"[${n}] must have a non-empty "containerID" and "ifname", got ${show(item)}`,
        );
      }
      seen.set(`${containerID}/${ifname}`, Object.freeze({ containerId: containerID, ifname }));
    });
  }
  return Object.freeze([...seen.values()]);
}

/** Why a MAC cannot be given to the pod interface, or undefined when it can. */
function macProblem(mac: string): string | undefined {
  if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(mac))
    return 'expected six hex pairs separated by colons, e.g. 0a:58:0a:f4:00:05';
  const first = parseInt(mac.slice(0, 2), 16);
  if (first & 1) return 'it is a multicast address; the first byte must be even';
  if (/^0{2}(:0{2}){5}$/.test(mac)) return 'it is all zeroes';
  return undefined;
}

/** The address part of "a.b.c.d", "a.b.c.d/n" or an IPv6 equivalent; undefined when it is not one. */
function addressOf(text: string): string | undefined {
  const slash = text.indexOf('/');
  const address = slash < 0 ? text : text.slice(0, slash);
  const family = isIP(address);
  if (family === 0) return undefined;
  if (slash >= 0) {
    const bits = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(bits) || Number(bits) > (family === 4 ? 32 : 128)) return undefined;
  }
  return address;
}

function optionalObject(doc: Record<string, unknown>, key: string): Record<string, unknown> {
  const v = doc[key];
  if (v === undefined || v === null) return {};
  if (typeof v !== 'object' || Array.isArray(v))
    throw invalid(`network config "${key}" must be an object, got ${show(v)}`);
  return v as Record<string, unknown>;
}

/**
 * The cniVersion the config declares, without validating anything else: the version to answer VERSION and to
 * write errors in. Undefined when stdin is oversize, not a JSON object, or has no non-empty string cniVersion.
 */
export function declaredVersion(raw: Uint8Array | string): string | undefined {
  try {
    const size = typeof raw === 'string' ? Buffer.byteLength(raw) : raw.byteLength;
    if (size > MAX_CONFIG_BYTES) return undefined;
    const v = decodeObject(raw).cniVersion;
    return typeof v === 'string' && v !== '' ? v : undefined;
  } catch {
    return undefined;
  }
}

function decodeObject(raw: Uint8Array | string): Record<string, unknown> {
  let text: string;
  try {
    text = typeof raw === 'string' ? raw : new TextDecoder('utf-8', { fatal: true }).decode(raw);
  } catch {
    throw new CniError(CniCode.decodeFailure, 'network config on stdin is not valid UTF-8');
  }
  if (text.trim() === '') {
    throw new CniError(CniCode.decodeFailure, 'network config on stdin is empty; expected a JSON object');
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new CniError(
      CniCode.decodeFailure,
      `network config on stdin is not valid JSON: ${(err as Error).message}`,
      excerpt(text),
    );
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) {
    const kind = doc === null ? 'null' : Array.isArray(doc) ? 'an array' : `a ${typeof doc}`;
    throw new CniError(CniCode.decodeFailure, `network config on stdin must be a JSON object, got ${kind}`);
  }
  return doc as Record<string, unknown>;
}

/**
 * A value as JSON, for an error message. JSON.parse accepts nesting deeper than JSON.stringify can print back
 * ({"cniVersion": [[[…]]]} some thousands deep: RangeError, so code 999 instead of 7); such a value is named instead.
 * Found by the property test.
 */
function show(v: unknown): string {
  try {
    return JSON.stringify(v);
  } catch {
    return `a ${Array.isArray(v) ? 'list' : typeof v} nested too deeply to print`;
  }
}

function invalid(msg: string): CniError {
  return new CniError(CniCode.invalidConfig, msg);
}

function excerpt(text: string): string {
  return text.length > 200 ? `stdin begins: ${text.slice(0, 200)}…` : `stdin: ${text}`;
}
