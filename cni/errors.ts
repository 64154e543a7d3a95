/**
 * The errors weft-cni reports to the container runtime. Codes 1-99 are the CNI spec's well-known codes
 * (SPEC.md, "Error"); 100 and up are Weft's own. The skeleton turns a CniError into the error JSON on stdout.
 */
export const CniCode = {
  /** The config's cniVersion is not one this plugin supports. */
  incompatibleVersion: 1,
  /** A CNI_* environment variable is missing or invalid. */
  invalidEnvironment: 4,
  /** Reading stdin failed. */
  ioFailure: 5,
  /** stdin is not a decodable JSON object. */
  decodeFailure: 6,
  /** The network config is well-formed JSON but not a valid Weft config (or the agent rejected a value). */
  invalidConfig: 7,
  /** The agent cannot be reached right now; the runtime should retry. */
  tryAgainLater: 11,
  /** STATUS (1.1.0): the plugin cannot serve ADD now (the agent does not answer, or cannot reach IPAM). */
  pluginNotAvailable: 50,
  /** The address pool has no free address. */
  poolExhausted: 100,
  /** CHECK: the attachment is not what ADD made (msg says what differs). */
  attachmentDiffers: 101,
  /** Anything else; msg carries the cause. */
  internal: 999,
} as const;

export type CniCode = (typeof CniCode)[keyof typeof CniCode];

export class CniError extends Error {
  constructor(
    readonly code: CniCode,
    msg: string,
    readonly details = '',
  ) {
    super(msg);
    this.name = 'CniError';
  }
}
