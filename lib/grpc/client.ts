import {
  Client,
  Metadata,
  type ChannelCredentials,
  type ClientReadableStream,
  type MethodDefinition,
  type ServiceDefinition,
  type ChannelOptions,
} from '@grpc/grpc-js';
import { context, SpanKind } from '@opentelemetry/api';
import { injectContext, tracer } from '../telemetry.js';
import { channelCredentials, channelOptions, type TransportSecurity } from './credentials.js';
import { messageSizeOptions } from './limits.js';
import { errorCodeOf } from './status.js';
import { CONTROL_PLANE_SERVICE_CONFIG, controlPlaneGrpcTarget, spreadTarget } from './endpoints.js';

/** A gRPC target as given (it names its scheme), else endpoints as a user gives them (endpoints.ts: one or a list). */
const targetOf = (address: string) =>
  /^(dns|ipv4|ipv6|unix|unix-abstract):/.test(address) ? address : controlPlaneGrpcTarget(address);

type Req<M> = M extends { requestDeserialize: (b: Buffer) => infer R } ? R : never;
type Res<M> = M extends { responseDeserialize: (b: Buffer) => infer R } ? R : never;

export interface CallOptions {
  signal?: AbortSignal;
  /** Milliseconds from now. */
  timeoutMs?: number;
  /**
   * While the channel has no connection (the control plane is away, or its reconnect backoff has not run out), the
   * call waits for one (until its deadline, if any) instead of failing at once with the last connection error. For
   * the agent's watches and lease: a restart of the control plane then costs each stream one break, not one per retry.
   */
  waitForReady?: boolean;
}

/**
 * A promise-based client typed from a generated service definition. Requests may leave top-level fields out: they
 * take the protobuf defaults (what decoding an empty message gives), so adding a field never breaks a caller.
 * Nested messages (e.g. BatchAllocate's items) are built complete with the generated `X.fromPartial`.
 */
export type PromiseClient<D> = {
  [K in keyof D]: D[K] extends { responseStream: true }
    ? (req: Partial<Req<D[K]>>, opts?: CallOptions) => AsyncIterable<Res<D[K]>>
    : (req: Partial<Req<D[K]>>, opts?: CallOptions) => Promise<Res<D[K]>>;
} & { close(): void; raw: Client };

function outgoingMetadata(token?: string, waitForReady = false): Metadata {
  const md = new Metadata(waitForReady ? { waitForReady: true } : undefined);
  if (token) md.set('authorization', `Bearer ${token}`);
  const carrier: Record<string, string> = {};
  injectContext(carrier);
  for (const [k, v] of Object.entries(carrier)) md.set(k, v);
  return md;
}

/**
 * Cancels `call` when `signal` aborts, for as long as the call runs: the returned function removes the listener, and
 * the caller runs it when the call ends. An agent passes one signal for its whole life to every call it makes, so a
 * listener left behind per call would grow without bound. An already aborted signal cancels at once.
 */
function cancelOnAbort(signal: AbortSignal | undefined, call: { cancel(): void }): () => void {
  if (!signal) return () => {};
  if (signal.aborted) {
    call.cancel();
    return () => {};
  }
  const cancel = () => call.cancel();
  signal.addEventListener('abort', cancel, { once: true });
  return () => signal.removeEventListener('abort', cancel);
}

/**
 * HTTP/2 keepalive of a client: a ping every `timeMs` (also while no call is open), and the connection is given up when
 * one is not answered within `timeoutMs`, so an agent notices a control plane that vanished (its watch streams fail
 * and are reopened, possibly on another replica) instead of waiting on a dead connection.
 */
export const CLIENT_KEEPALIVE = Object.freeze({ timeMs: 20_000, timeoutMs: 10_000 });

/**
 * How a client's channel reconnects after its connection is lost: a first try after `initialMs`, then ×1.6 up to
 * `maxMs` (grpc-js adds ±20% jitter). grpc-js's own cap is 120 s: after a control-plane restart of ten seconds the
 * channel's next try could come a minute after the control plane served again, and until then every call failed at
 * once with the old connection error. Capped here, a control plane that is back is found within `maxMs` (+20%): 2 s
 * (not 5) because a restart's reconnects waited mostly on this (300 agents in sync a median 5.8 s after serving with
 * 5 s, 2.4-3.3 s with 2 s); a refused attempt costs the control plane's host a SYN and a RST.
 */
export const CLIENT_RECONNECT = Object.freeze({ initialMs: 1000, maxMs: 2000 });

export function createClient<D extends ServiceDefinition>(
  definition: D,
  address: string,
  options: {
    security?: TransportSecurity;
    channel?: ChannelOptions;
    keepalive?: { timeMs: number; timeoutMs: number };
    /** An API token's secret, sent with every call as `authorization: Bearer <secret>`: the calls are the token's. */
    token?: string;
    /** Replaces the credentials `security` makes (its channel options stay): a test's client with no certificate. */
    credentials?: ChannelCredentials;
  } = {},
): PromiseClient<D> {
  const token = options.token;
  const keepalive = options.keepalive ?? CLIENT_KEEPALIVE;
  const target = targetOf(address);
  // A caller that sets its own service config (a test's pick_first in the order given) gets the list as given.
  const spread = options.channel?.['grpc.service_config'] === undefined;
  const connect = () =>
    new Client(spread ? spreadTarget(target) : target, options.credentials ?? channelCredentials(options.security), {
      // Several replicas: one per channel, shuffled, another when it goes (endpoints.ts).
      'grpc.service_config': CONTROL_PLANE_SERVICE_CONFIG,
      // No channelz, as on the server (server.ts): nothing reads it, and each channel's and connection's trace costs.
      'grpc.enable_channelz': 0,
      'grpc.keepalive_time_ms': keepalive.timeMs,
      'grpc.keepalive_timeout_ms': keepalive.timeoutMs,
      'grpc.keepalive_permit_without_calls': 1,
      'grpc.initial_reconnect_backoff_ms': CLIENT_RECONNECT.initialMs,
      'grpc.max_reconnect_backoff_ms': CLIENT_RECONNECT.maxMs,
      ...messageSizeOptions,
      ...channelOptions(options.security),
      ...options.channel,
    });
  let client = connect();
  let closed = false;
  /**
   * A call refused because this client's certificate is revoked (services/auth) was made on a TLS connection opened
   * with it, which the server keeps open: the next calls would go the same way even once a new certificate is on disk.
   * So the channel is replaced, and the next call connects anew with the files as they are then.
   */
  const reconnectIfRevoked = (err: unknown) => {
    if (closed || errorCodeOf(err) !== 'auth.certificate_revoked') return;
    const old = client;
    client = connect();
    old.close();
  };
  const out: Record<string, unknown> = {
    close: () => {
      closed = true;
      client.close();
    },
    get raw() {
      return client;
    },
  };
  for (const [name, m] of Object.entries(definition)) {
    const method = m as MethodDefinition<unknown, unknown>;
    const defaults = method.requestDeserialize(Buffer.alloc(0)) as object;
    const serialize = (req: unknown) => method.requestSerialize({ ...defaults, ...(req as object) });
    if (method.responseStream) {
      out[name] = (req: unknown, opts: CallOptions = {}) => {
        const call: ClientReadableStream<unknown> = client.makeServerStreamRequest(
          method.path,
          serialize,
          method.responseDeserialize,
          req,
          outgoingMetadata(token, opts.waitForReady),
          opts.timeoutMs ? { deadline: Date.now() + opts.timeoutMs } : {},
        );
        const release = cancelOnAbort(opts.signal, call);
        // 'status' ends every call (also a cancelled one); 'close' also comes when the reader stops early.
        call.once('status', release);
        call.once('status', reconnectIfRevoked);
        call.once('close', release);
        return call as AsyncIterable<unknown>;
      };
    } else {
      out[name] = (req: unknown, opts: CallOptions = {}) =>
        tracer().startActiveSpan(
          method.path,
          { kind: SpanKind.CLIENT },
          context.active(),
          (span) =>
            new Promise((resolve, reject) => {
              let release = () => {};
              const call = client.makeUnaryRequest(
                method.path,
                serialize,
                method.responseDeserialize,
                req,
                outgoingMetadata(token, opts.waitForReady),
                opts.timeoutMs ? { deadline: Date.now() + opts.timeoutMs } : {},
                (err, res) => {
                  release();
                  span.end();
                  if (err) reconnectIfRevoked(err);
                  if (err) reject(err);
                  else resolve(res);
                },
              );
              release = cancelOnAbort(opts.signal, call);
            }),
        );
    }
  }
  return out as PromiseClient<D>;
}
