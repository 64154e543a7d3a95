import { DomainError } from '../../lib/errors.js';
import { IpamCallError } from './ports.js';

/**
 * IPAM's own error (with its message) goes back to the plugin as the agent's, with its kind chosen for what the
 * runtime should do (the plugin turns kinds and codes into CNI error codes, cni/agent.ts): a pool the network config
 * names that IPAM does not have is the config's fault (INVALID_ARGUMENT `agent.unknown_pool`, CNI code 7), a
 * requested address still cooling down frees at the time IPAM's message gives (UNAVAILABLE
 * `agent.address_cooling_down`, code 11, try again later); the rest keeps IPAM's kind (`agent.ipam_error`). Anything
 * that is not an IPAM error is thrown as it is. IPAM unreachable, late or without its database is UNAVAILABLE
 * `agent.ipam_unavailable` naming where IPAM is (CNI code 11).
 */
export function agentErrorFromIpam(err: unknown, configPool = '', target = ''): never {
  if (!(err instanceof IpamCallError)) throw err;
  const message = `IPAM: ${err.details}`;
  switch (err.code) {
    case 'ipam.pool_not_found':
      throw new DomainError(
        'agent.unknown_pool',
        'invalid_argument',
        configPool
          ? `the network config names pool ${JSON.stringify(configPool)}, which IPAM does not have (${message}); name an existing pool, or leave "pool" out for the default`
          : message,
      );
    case 'ipam.address_cooling_down':
      throw new DomainError('agent.address_cooling_down', 'unavailable', message);
  }
  // Unreachable, not answering in time, or unable to use its database now: the runtime should try again later.
  if (err.kind === 'unavailable')
    throw new DomainError(
      'agent.ipam_unavailable',
      'unavailable',
      `IPAM${target ? ` at ${target}` : ''} is unavailable now (${err.details}); try again later`,
    );
  switch (err.code) {
    default:
      throw new DomainError('agent.ipam_error', err.kind, message);
  }
}
