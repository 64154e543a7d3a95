import { status, type ServiceError } from '@grpc/grpc-js';
import { AgentServiceService, type AttachResponse, type GarbageCollectResponse } from '../gen/weft/agent/v1/agent.js';
import { createClient } from '../lib/grpc/client.js';
import { errorCodeOf } from '../lib/grpc/errors.js';
import { CniCode, CniError } from './errors.js';

/**
 * The plugin's side of the node agent's API (proto/weft/agent/v1/agent.proto), over the agent's unix socket.
 * Loaded only through agent-loader.ts, so that VERSION and argument errors never pay for loading gRPC.
 * Every failure leaves as a CniError with the code the runtime should act on.
 */

/** How long ADD, DEL and CHECK wait for the agent before answering "try again later". */
export const AGENT_CALL_TIMEOUT_MS = 30_000;
/** STATUS is a readiness probe: it answers quickly or not at all. */
export const STATUS_TIMEOUT_MS = 10_000;
/** GC may release many addresses. */
export const GC_TIMEOUT_MS = 120_000;

export interface AttachParams {
  containerId: string;
  netns: string;
  ifname: string;
  podNamespace: string;
  podName: string;
  pool: string;
  requestedAddresses: readonly string[];
  mac: string;
}

export interface DetachParams {
  containerId: string;
  netns: string;
  ifname: string;
}

export interface CheckParams {
  containerId: string;
  netns: string;
  ifname: string;
  /** From prevResult; empty: not compared. */
  reportedAddresses: readonly string[];
  reportedMac: string;
}

export interface ValidAttachmentParam {
  containerId: string;
  ifname: string;
}

export interface CallOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
}

type AgentClient = ReturnType<typeof createClient<typeof AgentServiceService>>;

export async function attachPod(socketPath: string, params: AttachParams, options: CallOptions = {}): Promise<AttachResponse> {
  return callAgent(socketPath, 'Attach', (client, opts) => client.attach({ ...params, requestedAddresses: [...params.requestedAddresses] }, opts), options);
}

/** Resolves when the attachment is what ADD made; a difference is a CniError (code 101) saying what differs. */
export async function checkPod(socketPath: string, params: CheckParams, options: CallOptions = {}): Promise<void> {
  await callAgent(socketPath, 'Check', (client, opts) => client.check({ ...params, reportedAddresses: [...params.reportedAddresses] }, opts), options);
}

/** Whether the agent can serve ADD: resolves with why not (empty when it can). Unreachable agents throw as usual. */
export async function agentStatus(socketPath: string, options: CallOptions = {}): Promise<{ ipamReachable: boolean; detail: string }> {
  return callAgent(socketPath, 'Status', (client, opts) => client.status({}, opts), { timeoutMs: STATUS_TIMEOUT_MS, ...options });
}

export async function garbageCollect(
  socketPath: string,
  validAttachments: readonly ValidAttachmentParam[],
  options: CallOptions = {},
): Promise<GarbageCollectResponse> {
  return callAgent(
    socketPath,
    'GarbageCollect',
    (client, opts) => client.garbageCollect({ validAttachments: validAttachments.map((a) => ({ ...a })) }, opts),
    { timeoutMs: GC_TIMEOUT_MS, ...options },
  );
}

/** An agent answer of NOT_FOUND counts as success: DEL is idempotent. */
export async function detachPod(socketPath: string, params: DetachParams, options: CallOptions = {}): Promise<void> {
  const detach = async (client: AgentClient, opts: Required<Pick<CallOptions, 'timeoutMs'>> & CallOptions): Promise<void> => {
    try {
      await client.detach({ ...params }, opts);
    } catch (err) {
      if ((err as Partial<ServiceError>)?.code !== status.NOT_FOUND) throw err;
    }
  };
  await callAgent(socketPath, 'Detach', detach, options);
}

async function callAgent<T>(
  socketPath: string,
  rpc: string,
  call: (client: AgentClient, opts: Required<Pick<CallOptions, 'timeoutMs'>> & CallOptions) => Promise<T>,
  options: CallOptions,
): Promise<T> {
  // One call per process: a fresh channel, closed when the call ends so the process can exit.
  const client = createClient(AgentServiceService, `unix://${socketPath}`);
  try {
    return await call(client, { signal: options.signal, timeoutMs: options.timeoutMs ?? AGENT_CALL_TIMEOUT_MS });
  } catch (err) {
    if (options.signal?.aborted) {
      const why = options.signal.reason instanceof Error ? options.signal.reason.message : 'interrupted';
      throw new CniError(CniCode.tryAgainLater, `${why} while waiting for the weft agent's ${rpc} answer; try again later`);
    }
    throw cniErrorFromAgent(err, socketPath, rpc);
  } finally {
    client.close();
  }
}

/** Agent errors whose stable code (the weft-error-code trailer) says more than their gRPC status. */
const CODE_FOR_AGENT_ERROR: Readonly<Record<string, CniCode>> = {
  'agent.check_failed': CniCode.attachmentDiffers,
  'agent.requested_address_unsupported': CniCode.invalidConfig,
};

/** The one table from the agent's answer (stable error code first, then gRPC status) to CNI error codes. */
export function cniErrorFromAgent(err: unknown, socketPath: string, rpc: string): CniError {
  const e = err as Partial<ServiceError>;
  if (typeof e?.code !== 'number') {
    const message = err instanceof Error ? err.message : String(err);
    return new CniError(CniCode.internal, `calling the weft agent (${rpc}) at ${socketPath} failed: ${message}`);
  }
  const agentMsg = e.details || e.message || 'no message';
  const details = `agent ${rpc} returned gRPC status ${status[e.code] ?? e.code} (${e.code}): ${agentMsg}`;
  const agentCode = errorCodeOf(err);
  if (agentCode !== undefined && Object.hasOwn(CODE_FOR_AGENT_ERROR, agentCode)) {
    return new CniError(CODE_FOR_AGENT_ERROR[agentCode]!, agentMsg, details);
  }
  switch (e.code) {
    case status.UNAVAILABLE:
      return new CniError(CniCode.tryAgainLater, `weft agent at ${socketPath} is unavailable; try again later`, details);
    case status.DEADLINE_EXCEEDED:
      return new CniError(CniCode.tryAgainLater, `weft agent at ${socketPath} did not answer ${rpc} in time; try again later`, details);
    case status.INVALID_ARGUMENT:
      return new CniError(CniCode.invalidConfig, agentMsg, details);
    case status.RESOURCE_EXHAUSTED:
      return new CniError(CniCode.poolExhausted, agentMsg, details);
    default:
      return new CniError(CniCode.internal, agentMsg, details);
  }
}
