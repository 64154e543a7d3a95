import { status, type ServiceError } from '@grpc/grpc-js';
import { AgentServiceService, type AttachResponse } from '../gen/weft/agent/v1/agent.js';
import { createClient } from '../lib/grpc/client.js';
import { CniCode, CniError } from './errors.js';

/**
 * The plugin's side of the node agent's API (proto/weft/agent/v1/agent.proto), over the agent's unix socket.
 * Loaded only through agent-loader.ts, so that VERSION and argument errors never pay for loading gRPC.
 * Every failure leaves as a CniError with the code the runtime should act on.
 */

/** How long ADD and DEL wait for the agent before answering "try again later". */
export const AGENT_CALL_TIMEOUT_MS = 30_000;

export interface AttachParams {
  containerId: string;
  netns: string;
  ifname: string;
  podNamespace: string;
  podName: string;
  pool: string;
}

export interface DetachParams {
  containerId: string;
  netns: string;
  ifname: string;
}

export interface CallOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
}

type AgentClient = ReturnType<typeof createClient<typeof AgentServiceService>>;

export async function attachPod(socketPath: string, params: AttachParams, options: CallOptions = {}): Promise<AttachResponse> {
  return callAgent(socketPath, 'Attach', (client, opts) => client.attach({ ...params }, opts), options);
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

/** The one table from the agent's gRPC status to CNI error codes. */
export function cniErrorFromAgent(err: unknown, socketPath: string, rpc: string): CniError {
  const e = err as Partial<ServiceError>;
  if (typeof e?.code !== 'number') {
    const message = err instanceof Error ? err.message : String(err);
    return new CniError(CniCode.internal, `calling the weft agent (${rpc}) at ${socketPath} failed: ${message}`);
  }
  const agentMsg = e.details || e.message || 'no message';
  const details = `agent ${rpc} returned gRPC status ${status[e.code] ?? e.code} (${e.code}): ${agentMsg}`;
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
