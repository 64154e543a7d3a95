import { statSync } from 'node:fs';
import { CniCode, CniError } from './errors.js';

export type Agent = typeof import('./agent.js');

/**
 * Loads the agent client (and with it gRPC, most of the plugin's start-up cost) only when a verb needs it, and
 * only once the agent's socket exists: while the agent is down, the runtime's retries are answered at once.
 */
export async function loadAgent(socketPath: string): Promise<Agent> {
  assertSocketPresent(socketPath);
  return import('./agent.js');
}

/** A synchronous stat: an asynchronous one would start libuv's thread pool (four threads) for this one call. */
function assertSocketPresent(socketPath: string): void {
  try {
    statSync(socketPath);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      throw new CniError(
        CniCode.tryAgainLater,
        `weft agent socket ${socketPath} does not exist (is the weft agent running on this node?); try again later`,
        `stat ${socketPath}: ${code}`,
      );
    }
    // Anything else (EACCES, ...) is left for the gRPC call to report.
  }
}
