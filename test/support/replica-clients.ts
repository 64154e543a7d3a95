import type { ServiceDefinition } from '@grpc/grpc-js';
import { status } from '@grpc/grpc-js';
import { createClient, type CallOptions, type PromiseClient } from '../../lib/grpc/client.js';
import type { TransportSecurity } from '../../lib/grpc/credentials.js';
import { errorCodeOf } from '../../lib/grpc/status.js';

/**
 * Whether a call failed because the replica could not be reached (its connection refused or dropped): UNAVAILABLE
 * without Weft's error code, which every refusal by Weft itself carries (a database that cannot serve, for one).
 */
export const isTransportFailure = (err: unknown): boolean =>
  (err as { code?: number }).code === status.UNAVAILABLE && errorCodeOf(err) === undefined;

/**
 * A test's client of several control-plane replicas of the local cluster, each reached by its unix socket: the replicas
 * live in network namespaces of their own, which the test process reaches only through their sockets, one process per
 * socket, while grpc-js balances over the TCP addresses agents are given. It does what those agents' channels do
 * (pick_first, lib/grpc/endpoints.ts): every call goes to one replica, and once a call fails because that replica
 * cannot be reached, the next calls go to the next one. The failed call still fails UNAVAILABLE: its caller retries as
 * after any UNAVAILABLE.
 */
export function replicaFailoverClient<D extends ServiceDefinition>(
  definition: D,
  sockets: string[],
  opts: { first: number; security: TransportSecurity },
): PromiseClient<D> & { replica(): number; moves(): number } {
  const clients = sockets.map((s) => createClient(definition, `unix://${s}`, { security: opts.security }));
  let current = opts.first % sockets.length;
  let moves = 0;
  const moveOff = (used: number, err: unknown) => {
    if (used === current && isTransportFailure(err)) {
      current = (used + 1) % sockets.length;
      moves++;
    }
  };
  type Method = (req: unknown, o?: CallOptions) => unknown;
  const method = (name: string): Method[] => clients.map((c) => (c as unknown as Record<string, Method>)[name]!);
  const out: Record<string, unknown> = {
    close: () => clients.forEach((c) => c.close()),
    replica: () => current,
    moves: () => moves,
  };
  Object.defineProperty(out, 'raw', { get: () => clients[current]!.raw });
  for (const [name, def] of Object.entries(definition)) {
    const onEach = method(name);
    out[name] = def.responseStream
      ? async function* (req: unknown, o?: CallOptions) {
          const used = current;
          try {
            yield* onEach[used]!(req, o) as AsyncIterable<unknown>;
          } catch (err) {
            moveOff(used, err);
            throw err;
          }
        }
      : async (req: unknown, o?: CallOptions) => {
          const used = current;
          try {
            return await (onEach[used]!(req, o) as Promise<unknown>);
          } catch (err) {
            moveOff(used, err);
            throw err;
          }
        };
  }
  return out as PromiseClient<D> & { replica(): number; moves(): number };
}
