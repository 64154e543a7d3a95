import {
  AttachRequest,
  AttachResponse,
  CheckRequest,
  CheckResponse,
  DetachRequest,
  DetachResponse,
  GarbageCollectRequest,
  GarbageCollectResponse,
  StatusRequest,
  StatusResponse,
} from '../gen/codec/weft/agent/v1/agent.js';
import { errorCodeOf, GrpcStatus, statusName } from '../lib/grpc/status.js';
import { callUnary, newTraceparent, type MessageCodec } from '../lib/grpc/unary-client.js';
import { CniCode, CniError } from './errors.js';

/**
 * The plugin's side of the node agent's API (proto/weft/agent/v1/agent.proto), over the agent's unix socket.
 * It makes gRPC's unary calls through lib/grpc/unary-client.ts (Weft's unary frames) with the codec generated
 * without service code (gen/codec), so the plugin never loads @grpc/grpc-js: see DESIGN.md, "Start-up". Loaded through agent-loader.ts.
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
  /** The pod's Kubernetes UID (CNI_ARGS K8S_POD_UID); empty outside Kubernetes. */
  podUid: string;
  pool: string;
  requestedAddresses: readonly string[];
  mac: string;
  /** The network config's name, which the attachment records (GC collects only its own network's). */
  network: string;
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
  /** Called once the connection to the agent is up (for timing). */
  onConnected?: () => void;
}

/** The agent's methods: their paths (agent.test.ts checks them against the generated service) and codecs. */
export const AGENT_METHODS = {
  Attach: { path: '/weft.agent.v1.AgentService/Attach', request: AttachRequest, response: AttachResponse },
  Detach: { path: '/weft.agent.v1.AgentService/Detach', request: DetachRequest, response: DetachResponse },
  Check: { path: '/weft.agent.v1.AgentService/Check', request: CheckRequest, response: CheckResponse },
  Status: { path: '/weft.agent.v1.AgentService/Status', request: StatusRequest, response: StatusResponse },
  GarbageCollect: {
    path: '/weft.agent.v1.AgentService/GarbageCollect',
    request: GarbageCollectRequest,
    response: GarbageCollectResponse,
  },
} as const;

type Method = keyof typeof AGENT_METHODS;
type RequestOf<M extends Method> = (typeof AGENT_METHODS)[M]['request'] extends MessageCodec<infer T> ? T : never;
type ResponseOf<M extends Method> = (typeof AGENT_METHODS)[M]['response'] extends MessageCodec<infer T> ? T : never;

export async function attachPod(
  socketPath: string,
  params: AttachParams,
  options: CallOptions = {},
): Promise<AttachResponse> {
  return callAgent(
    socketPath,
    'Attach',
    AttachRequest.fromPartial({ ...params, requestedAddresses: [...params.requestedAddresses] }),
    options,
  );
}

/** Resolves when the attachment is what ADD made; a difference is a CniError (code 101) saying what differs. */
export async function checkPod(socketPath: string, params: CheckParams, options: CallOptions = {}): Promise<void> {
  await callAgent(
    socketPath,
    'Check',
    CheckRequest.fromPartial({ ...params, reportedAddresses: [...params.reportedAddresses] }),
    options,
  );
}

/** Whether the agent can serve ADD: resolves with why not (empty when it can). Unreachable agents throw as usual. */
export async function agentStatus(
  socketPath: string,
  options: CallOptions = {},
): Promise<{ ipamReachable: boolean; detail: string }> {
  return callAgent(socketPath, 'Status', StatusRequest.fromPartial({}), { timeoutMs: STATUS_TIMEOUT_MS, ...options });
}

export async function garbageCollect(
  socketPath: string,
  network: string,
  validAttachments: readonly ValidAttachmentParam[],
  options: CallOptions = {},
): Promise<GarbageCollectResponse> {
  return callAgent(
    socketPath,
    'GarbageCollect',
    GarbageCollectRequest.fromPartial({ network, validAttachments: validAttachments.map((a) => ({ ...a })) }),
    { timeoutMs: GC_TIMEOUT_MS, ...options },
  );
}

/** An agent answer of NOT_FOUND counts as success: DEL is idempotent. */
export async function detachPod(socketPath: string, params: DetachParams, options: CallOptions = {}): Promise<void> {
  await callAgent(socketPath, 'Detach', DetachRequest.fromPartial({ ...params }), options, { notFoundIsSuccess: true });
}

async function callAgent<M extends Method>(
  socketPath: string,
  rpc: M,
  request: RequestOf<M>,
  options: CallOptions,
  { notFoundIsSuccess = false } = {},
): Promise<ResponseOf<M>> {
  const method = AGENT_METHODS[rpc] as unknown as {
    path: string;
    request: MessageCodec<RequestOf<M>>;
    response: MessageCodec<ResponseOf<M>>;
  };
  try {
    // One call per process: a fresh connection, closed when the call ends so the process can exit. A new trace per
    // call: the agent continues it into IPAM, so one pod's attach is one trace.
    return await callUnary({
      socketPath,
      path: method.path,
      request,
      requestCodec: method.request,
      responseCodec: method.response,
      timeoutMs: options.timeoutMs ?? AGENT_CALL_TIMEOUT_MS,
      signal: options.signal,
      onConnected: options.onConnected,
      metadata: { traceparent: newTraceparent() },
    });
  } catch (err) {
    if (notFoundIsSuccess && (err as { code?: unknown })?.code === GrpcStatus.NOT_FOUND)
      return method.response.decode(new Uint8Array(0));
    if (options.signal?.aborted) {
      const why = options.signal.reason instanceof Error ? options.signal.reason.message : 'interrupted';
      throw new CniError(
        CniCode.tryAgainLater,
        `${why} while waiting for the weft agent's ${rpc} answer; try again later`,
      );
    }
    throw cniErrorFromAgent(err, socketPath, rpc);
  }
}

/** Agent errors whose stable code (the weft-error-code trailer) says more than their gRPC status. */
const CODE_FOR_AGENT_ERROR: Readonly<Record<string, CniCode>> = {
  'agent.check_failed': CniCode.attachmentDiffers,
  'agent.requested_address_unsupported': CniCode.invalidConfig,
  // The network config names a pool IPAM does not have.
  'agent.unknown_pool': CniCode.invalidConfig,
  // A requested address is still cooling down after its release; the message says when it frees.
  'agent.address_cooling_down': CniCode.tryAgainLater,
  // The agent runs but IPAM (the control plane) does not answer: the message names IPAM, not the agent.
  'agent.ipam_unavailable': CniCode.tryAgainLater,
};

/** The one table from the agent's answer (stable error code first, then gRPC status) to CNI error codes. */
export function cniErrorFromAgent(err: unknown, socketPath: string, rpc: string): CniError {
  const e = err as { code?: unknown; details?: string; message?: string };
  if (typeof e?.code !== 'number') {
    const message = err instanceof Error ? err.message : String(err);
    return new CniError(CniCode.internal, `calling the weft agent (${rpc}) at ${socketPath} failed: ${message}`);
  }
  const agentMsg = e.details || e.message || 'no message';
  const details = `agent ${rpc} returned gRPC status ${statusName(e.code)} (${e.code}): ${agentMsg}`;
  const agentCode = errorCodeOf(err);
  if (agentCode !== undefined && Object.hasOwn(CODE_FOR_AGENT_ERROR, agentCode)) {
    return new CniError(CODE_FOR_AGENT_ERROR[agentCode]!, agentMsg, details);
  }
  switch (e.code) {
    case GrpcStatus.UNAVAILABLE:
      return new CniError(
        CniCode.tryAgainLater,
        `weft agent at ${socketPath} is unavailable; try again later`,
        details,
      );
    case GrpcStatus.DEADLINE_EXCEEDED:
      return new CniError(
        CniCode.tryAgainLater,
        `weft agent at ${socketPath} did not answer ${rpc} in time; try again later`,
        details,
      );
    case GrpcStatus.INVALID_ARGUMENT:
      return new CniError(CniCode.invalidConfig, agentMsg, details);
    case GrpcStatus.RESOURCE_EXHAUSTED:
      return new CniError(CniCode.poolExhausted, agentMsg, details);
    default:
      return new CniError(CniCode.internal, agentMsg, details);
  }
}
