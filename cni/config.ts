import { CniCode, CniError } from './errors.js';

/**
 * The network config the runtime streams to weft-cni on stdin, parsed and validated in one place.
 *
 *   { "cniVersion": "1.0.0", "name": "weft", "type": "weft", "agentSocket": "/run/weft/agent.sock", "pool": "" }
 *
 * Fields the runtime adds (args, runtimeConfig, prevResult, capabilities) and any others are ignored.
 */
export interface NetworkConfig {
  readonly cniVersion: string;
  readonly name: string;
  readonly type: string;
  /** Absolute path of the node agent's gRPC unix socket. */
  readonly agentSocket: string;
  /** Pool to allocate from; empty means the agent's default pool. */
  readonly pool: string;
}

/** The spec versions weft-cni speaks. Results are only ever written in one of these. */
export const SUPPORTED_VERSIONS: readonly string[] = Object.freeze(['1.0.0']);
export const DEFAULT_CNI_VERSION = '1.0.0';
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
    throw invalid('network config has no "cniVersion"; set it to "1.0.0"');
  }
  if (typeof version !== 'string' || version === '') {
    throw invalid(`network config "cniVersion" must be a non-empty string, got ${JSON.stringify(version)}`);
  }
  if (!SUPPORTED_VERSIONS.includes(version)) {
    throw new CniError(
      CniCode.incompatibleVersion,
      `unsupported cniVersion ${JSON.stringify(version)}; weft-cni supports ${SUPPORTED_VERSIONS.join(', ')}`,
      `supported versions: ${JSON.stringify(SUPPORTED_VERSIONS)}`,
    );
  }

  const name = doc.name;
  if (name === undefined) throw invalid('network config has no "name"');
  if (typeof name !== 'string' || !NETWORK_NAME.test(name)) {
    throw invalid(
      `network config "name" must start with a letter or digit and contain only letters, digits, '_', '.' or '-'; got ${JSON.stringify(name)}`,
    );
  }

  // The runtime chose this executable by "type", so it is present; its value is not checked, so that the
  // binary can be installed under another name.
  const type = doc.type;
  if (typeof type !== 'string' || type === '') {
    throw invalid(`network config "type" must be a non-empty string (normally "weft"), got ${JSON.stringify(type)}`);
  }

  const agentSocket = doc.agentSocket ?? DEFAULT_AGENT_SOCKET;
  if (typeof agentSocket !== 'string' || !agentSocket.startsWith('/')) {
    throw invalid(`network config "agentSocket" must be an absolute path, got ${JSON.stringify(agentSocket)}`);
  }
  if (Buffer.byteLength(agentSocket) > MAX_SOCKET_PATH_BYTES) {
    throw invalid(`network config "agentSocket" is longer than ${MAX_SOCKET_PATH_BYTES} bytes, too long for a unix socket`);
  }

  const pool = doc.pool ?? '';
  if (typeof pool !== 'string') {
    throw invalid(`network config "pool" must be a string (empty for the default pool), got ${JSON.stringify(pool)}`);
  }

  return Object.freeze({ cniVersion: version, name, type, agentSocket, pool });
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

function invalid(msg: string): CniError {
  return new CniError(CniCode.invalidConfig, msg);
}

function excerpt(text: string): string {
  return text.length > 200 ? `stdin begins: ${text.slice(0, 200)}…` : `stdin: ${text}`;
}
