import { status as grpcStatus } from '@grpc/grpc-js';
import { ConfigError } from '../../lib/config.js';
import { PolicyInputError } from '../policy.js';
import { UsageError } from './command.js';

/**
 * The one place that turns what a command threw into an exit status and a message for stderr:
 *
 * | what                                                        | status | message                                     |
 * |-------------------------------------------------------------|--------|---------------------------------------------|
 * | bad usage: unknown command or flag, bad value, bad file     | 2      | what to fix, usually with the usage         |
 * | invalid configuration (environment, settings)               | 2      | every problem                               |
 * | a gRPC status from the control plane (refused, not found …) | 1      | the server's message                        |
 * | the control plane not reachable (UNAVAILABLE, deadline)     | 1      | the server's message and where it was tried |
 * | anything else                                               | 1      | its message                                 |
 *
 * Commands return other statuses themselves where they mean something (`policy explain` 3 when denied, `routes` and
 * `ipam check` 1 when they find a difference).
 */
export const EXIT = Object.freeze({ ok: 0, failed: 1, usage: 2 });

export interface Failure {
  status: number;
  message: string;
}

const isGrpcError = (e: unknown): e is { code: number; details: string; message: string } =>
  typeof e === 'object' &&
  e !== null &&
  typeof (e as { code?: unknown }).code === 'number' &&
  typeof (e as { details?: unknown }).details === 'string';

export function describeFailure(err: unknown, server?: string): Failure {
  if (err instanceof UsageError || err instanceof PolicyInputError || err instanceof ConfigError)
    return { status: EXIT.usage, message: err.message };
  if (isGrpcError(err)) {
    const details = err.details || err.message;
    if (err.code === grpcStatus.UNAVAILABLE || err.code === grpcStatus.DEADLINE_EXCEEDED) {
      return {
        status: EXIT.failed,
        message: `${details}${server ? ` (control plane ${server}: ${grpcStatus[err.code]})` : ''}`,
      };
    }
    return { status: EXIT.failed, message: details };
  }
  if (err instanceof Error) return { status: EXIT.failed, message: err.message };
  return { status: EXIT.failed, message: `failed: ${String(err)}` };
}
