import {
  Metadata,
  Server,
  status,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ServiceDefinition,
  type sendUnaryData,
} from '@grpc/grpc-js';
import { SpanKind, trace } from '@opentelemetry/api';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import { ensureAuthorized, type AccessLookups } from '../auth/authorization.js';
import {
  bearerSecretOf,
  canonicalSerial,
  whenExpired,
  NO_IDENTITY,
  type CredentialRevocations,
  type Identity,
} from '../auth/identity.js';
import type { CallLimiter } from '../auth/limits.js';
import { DomainError } from '../errors.js';
import type { Logger } from '../logger.js';
import { extractContext, tracer } from '../telemetry.js';
import { CLIENT_KEEPALIVE } from './client.js';
import { checkSecurityFiles, peerIdentity, serverCredentials, type TransportSecurity } from './credentials.js';
import { toServiceError } from './errors.js';
import { messageSizeOptions } from './limits.js';

/** What a handler knows about its call. */
export interface CallContext {
  signal: AbortSignal;
  logger: Logger;
  metadata: Metadata;
  /** Who is calling: from the verified client certificate (lib/auth/identity.ts); `none` without one. */
  identity: Identity;
  /** The caller's `x-request-id` when it is sane (1-128 of [A-Za-z0-9._:-]), else a new UUID: ties log lines and audit rows to one call. */
  requestId: string;
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** A call's request id: the caller's `x-request-id` if sane, else a new one. */
export function requestIdOf(md: Metadata): string {
  const v = md.get('x-request-id')[0];
  return typeof v === 'string' && REQUEST_ID.test(v) ? v : randomUUID();
}

/**
 * How a server learns who calls and whether it refuses what they may not do (createServer's `access`).
 * By default (`identifyCaller`) a call's identity is its bearer token's when its metadata has
 * `authorization: Bearer <secret>` (checked by `tokens`), else its verified client certificate's, else `none`.
 * `identify` replaces that. With `enforce`, every call is checked against lib/auth/authorization.ts before its
 * handler runs, and a refused one fails with UNAUTHENTICATED or PERMISSION_DENIED.
 */
export interface ServerAccess {
  /**
   * Who calls. May be async (a token is looked up in the database); a caller it cannot tell is `{ kind: 'none' }`,
   * and a credential it refuses (a wrong, expired or revoked token) is an error the call fails with (UNAUTHENTICATED).
   */
  identify?: (call: IdentifiableCall) => Identity | Promise<Identity>;
  /** Checks a bearer secret: the token's identity, or an error (services/auth createTokenAuthority). */
  tokens?: (secret: string) => Promise<Identity>;
  enforce?: boolean;
  /**
   * Limits per identity (lib/auth/limits.ts), applied right after authorization: each call counts against its
   * caller's rate, each server stream holds one of its caller's stream slots until it ends (however it ends).
   */
  limits?: CallLimiter;
  /**
   * Revoked certificates and tokens (services/auth/revocations.ts). A call whose client certificate is revoked fails
   * UNAUTHENTICATED (`auth.certificate_revoked`) before anything else, whatever token it carries; an open stream whose
   * certificate or token is revoked is ended with UNAUTHENTICATED as soon as the list learns of it.
   */
  revocations?: CredentialRevocations;
}

/**
 * The default identification: a bearer token, when the call has one, is the identity (whatever the certificate:
 * the transport still requires one); a token this server cannot check, or that is wrong, expired or revoked, fails
 * the call with UNAUTHENTICATED saying which. Without one, the verified client certificate's identity.
 */
export async function identifyCaller(call: IdentifiableCall, tokens: ServerAccess['tokens']): Promise<Identity> {
  const secret = bearerSecretOf(call.metadata.get('authorization')[0]);
  if (secret === null) return peerIdentity(call);
  if (!tokens)
    throw new DomainError(
      'auth.invalid_token',
      'unauthenticated',
      'this server accepts no API tokens; call with a client certificate',
    );
  return tokens(secret);
}

/** What of a call (unary or streaming) tells who makes it: its peer's certificate, its metadata. */
export type IdentifiableCall = Pick<ServerUnaryCall<unknown, unknown>, 'metadata' | 'getPeer' | 'getAuthContext'>;

/** Each server's access, as createServer was given it (addService reads it: services are mounted on a server). */
const accessOf = new WeakMap<Server, ServerAccess>();

type Req<M> = M extends { requestDeserialize: (b: Buffer) => infer R } ? R : never;
type Res<M> = M extends { responseDeserialize: (b: Buffer) => infer R } ? R : never;

/** Handlers typed against a generated service definition: unary ones return a promise, streaming ones an async iterable. */
export type Handlers<D> = {
  [K in keyof D]: D[K] extends { responseStream: true }
    ? (req: Req<D[K]>, ctx: CallContext) => AsyncIterable<Res<D[K]>>
    : (req: Req<D[K]>, ctx: CallContext) => Promise<Res<D[K]>>;
};

/** The trace context entries of a call's metadata (the W3C propagator reads only these): not every header. */
function carrierOf(md: Metadata): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of ['traceparent', 'tracestate']) {
    const v = md.get(k)[0];
    if (typeof v === 'string') out[k] = v;
  }
  return out;
}

/**
 * Sees each finished unary call, and each call refused before its handler ran (`refused`: no or a revoked credential,
 * not authorized, over a limit) or a stream ended because its credential was revoked, of any method (the audit log,
 * lib/audit.ts); one per server, set with `observeCalls` before `addService`. `response` is an OK unary call's answer;
 * `peer` the caller's address.
 */
export type CallObserver = (call: {
  path: string;
  request: unknown;
  ctx: CallContext;
  code: number;
  details: string;
  traceId: string;
  refused?: boolean;
  peer?: string;
  response?: unknown;
}) => void;
const observers = new WeakMap<Server, CallObserver>();
export const observeCalls = (server: Server, observer: CallObserver) => void observers.set(server, observer);
/** The server's call observer, for calls it serves other than through grpc-js (the HTTP/JSON gateway). */
export const callObserverOf = (server: Server): CallObserver | undefined => observers.get(server);

/** The handler, reporting each call's outcome to the server's observer (if any) once it is known; never throws for it. */
function observed(server: Server, path: string, handler: (req: unknown, ctx: CallContext) => unknown) {
  if (!observers.has(server)) return handler;
  return async (req: unknown, ctx: CallContext) => {
    const report = (code: number, details: string) => {
      try {
        observers.get(server)?.({
          path,
          request: req,
          ctx,
          code,
          details,
          traceId: trace.getActiveSpan()?.spanContext().traceId ?? '',
        });
      } catch (err) {
        ctx.logger.error('call observer failed', { err });
      }
    };
    try {
      const response = await (handler(req, ctx) as Promise<unknown>);
      try {
        observers.get(server)?.({
          path,
          request: req,
          ctx,
          code: status.OK,
          details: '',
          traceId: trace.getActiveSpan()?.spanContext().traceId ?? '',
          response,
        });
      } catch (err) {
        ctx.logger.error('call observer failed', { err });
      }
      return response;
    } catch (err) {
      const { error } = toServiceError(err);
      report(error.code ?? status.UNKNOWN, error.details ?? '');
      throw err;
    }
  };
}

/** A unary call's outcome, as a gRPC server sends it: the response, or a status with message and trailing metadata. */
export type UnaryOutcome =
  { ok: true; response: unknown } | { ok: false; code: number; details: string; metadata: Metadata };

/**
 * Unary methods by path ("/weft.agent.v1.AgentService/Attach"), for a server that takes calls other than through
 * grpc-js (frame-server.ts): each deserializes the request, runs the handler exactly as addService does, and
 * serializes the response.
 */
export type UnaryMethods = Map<
  string,
  (
    request: Buffer,
    metadata: Metadata,
    signal: AbortSignal,
  ) => Promise<{ ok: true; response: Buffer } | { ok: false; code: number; details: string; metadata: Metadata }>
>;

/** Fails (with the error to answer) when the caller may not make the call. */
type Authorize = (request: unknown, identity: Identity) => Promise<void>;
/** Reports a call refused before its handler ran (to the server's observer). */
type Refused = (ctx: CallContext, code: number, details: string) => void;

/** An open server stream, as the revocation sweep sees it: what it was opened with, and how to end it. */
interface OpenStream {
  serial: string | null;
  tokenKeyId: string | null;
  end(details: string, code: string): void;
  /** Ends the stream with UNAVAILABLE: the server is shutting down. */
  shutdown(): void;
}
const openStreamsOf = new WeakMap<Server, Set<OpenStream>>();
const stopSweepOf = new WeakMap<Server, () => void>();
const shuttingDown = new WeakSet<Server>();

/** Ends every open stream of `server` whose certificate or token `revocations` now refuses. */
function sweepRevoked(streams: Set<OpenStream>, revocations: CredentialRevocations): void {
  for (const s of [...streams]) {
    const why = s.serial !== null ? revocations.certificate(s.serial) : null;
    if (why !== null) {
      s.end(why, 'auth.certificate_revoked');
      continue;
    }
    const tokenWhy = s.tokenKeyId !== null ? revocations.token(s.tokenKeyId) : null;
    if (tokenWhy !== null) s.end(tokenWhy, 'auth.invalid_token');
  }
}

/** The context of a refused call, as the identity its revoked certificate names when that is why (else as it is). */
const presentedBy = (ctx: CallContext, err: unknown): CallContext => {
  const presented = (err as { presented?: Identity }).presented;
  return presented ? { ...ctx, identity: presented } : ctx;
};

/** A call's peer address ("127.0.0.1:53122"; a unix socket's path), for the audit log. */
const peerOf = (call: { getPeer(): string }): string => {
  try {
    return call.getPeer().replace(/^ipv[46]:/, '');
  } catch {
    return '';
  }
};

/** A call's peer certificate serial (canonical), or null without one. */
const serialOf = (auth: ReturnType<IdentifiableCall['getAuthContext']>): string | null => {
  const serial = (auth?.sslPeerCertificate as { serialNumber?: string } | undefined)?.serialNumber;
  return serial ? canonicalSerial(serial) : null;
};

/** Runs one unary handler: a span parented by the caller's trace context, and errors mapped through the one table. */
function runUnary(
  path: string,
  handler: (req: unknown, ctx: CallContext) => unknown,
  log: Logger,
  request: unknown,
  metadata: Metadata,
  signal: () => AbortSignal,
  identify: () => Identity | Promise<Identity>,
  authorize: Authorize | null,
  refused?: Refused,
): Promise<UnaryOutcome> {
  const parent = extractContext(carrierOf(metadata));
  return tracer().startActiveSpan(path, { kind: SpanKind.SERVER }, parent, async (span) => {
    // The signal is made only for a handler that asks for it (most unary ones never do).
    const ctx: CallContext = {
      get signal() {
        return signal();
      },
      logger: log,
      metadata,
      identity: NO_IDENTITY,
      requestId: requestIdOf(metadata),
    };
    let admitted = false;
    try {
      ctx.identity = await identify();
      if (authorize) await authorize(request, ctx.identity);
      admitted = true;
      const response = await (handler(request, ctx) as Promise<unknown>);
      return { ok: true as const, response };
    } catch (err) {
      const { error, expected } = toServiceError(err);
      if (!admitted) refused?.(presentedBy(ctx, err), error.code ?? status.UNKNOWN, error.details ?? '');
      if (expected) log.debug('rejected', { code: error.code, details: error.details });
      else log.error('failed', { err });
      span.setAttribute('rpc.grpc.status_code', error.code ?? status.UNKNOWN);
      return {
        ok: false as const,
        code: error.code ?? status.UNKNOWN,
        details: error.details ?? '',
        metadata: error.metadata ?? new Metadata(),
      };
    } finally {
      span.end();
    }
  });
}

/**
 * Adds a service to a server. Every call gets a span (parented by the caller's trace context from metadata), a
 * child logger, an AbortSignal that fires when the client goes away, the caller's identity, and errors mapped through
 * the one table; on a server that enforces authorization, a call its caller may not make fails before its handler
 * runs (`lookups`: what the service's rules need to know, e.g. which node holds a handle).
 * With `unaryMethods`, its unary methods are also added there, to be served the same way outside grpc-js (whose calls
 * have no identity).
 */
export function addService<D extends ServiceDefinition>(
  server: Server,
  definition: D,
  handlers: Handlers<D>,
  logger: Logger,
  options: { unaryMethods?: UnaryMethods; lookups?: AccessLookups } = {},
): void {
  const { unaryMethods, lookups } = options;
  const access = accessOf.get(server) ?? {};
  const { revocations } = access;
  // A bearer token's identity, else the verified client certificate's, unless the server was given another way.
  const identifyCall = access.identify ?? ((call: IdentifiableCall) => identifyCaller(call, access.tokens));
  /**
   * The caller's identity, after its certificate is checked against the revoked ones (a revoked certificate fails the
   * call whatever token it carries: it is the transport's credential). The peer certificate is read once per call.
   */
  const identify = (call: IdentifiableCall): { serial: string | null; identity: Identity | Promise<Identity> } => {
    const auth = call.getAuthContext();
    const serial = serialOf(auth);
    if (serial !== null && revocations) {
      const why = revocations.certificate(serial);
      // The refusal is audited as the certificate's identity: whose revoked key is still in use, and from where.
      if (why !== null)
        throw Object.assign(new DomainError('auth.certificate_revoked', 'unauthenticated', why), {
          presented: peerIdentity({ getAuthContext: () => auth }),
        });
    }
    return {
      serial,
      identity: identifyCall({ metadata: call.metadata, getPeer: () => call.getPeer(), getAuthContext: () => auth }),
    };
  };
  const impl: Record<string, unknown> = {};
  for (const [name, method] of Object.entries(definition)) {
    const handler = handlers[name as keyof D] as unknown as (req: unknown, ctx: CallContext) => unknown;
    const log = logger.child({ rpc: method.path });
    const { limits } = access;
    const authorize: Authorize | null =
      access.enforce || limits
        ? async (request, identity) => {
            if (access.enforce) await ensureAuthorized(method.path, identity, request, lookups);
            limits?.admitCall(identity);
          }
        : null;
    /** Tells the server's observer (the audit log) of a call refused before its handler, or of a stream ended for a revoked credential. */
    const refusedBy =
      (call: { request: unknown; getPeer(): string }): Refused =>
      (ctx, code, details) => {
        try {
          observers.get(server)?.({
            path: method.path,
            request: call.request,
            ctx,
            code,
            details,
            traceId: trace.getActiveSpan()?.spanContext().traceId ?? '',
            refused: true,
            peer: peerOf(call),
          });
        } catch (err) {
          ctx.logger.error('call observer failed', { err });
        }
      };
    if (method.responseStream) {
      impl[name] = (call: ServerWritableStream<unknown, unknown>) => {
        const ac = new AbortController();
        call.on('cancelled', () => ac.abort());
        call.on('close', () => ac.abort());
        // The caller's stream slot, once taken: freed when the handler is done or the call ends, whichever is first.
        let releaseSlot = () => {};
        let unregister = () => {};
        const refused = refusedBy(call);
        const parent = extractContext(carrierOf(call.metadata));
        void tracer().startActiveSpan(method.path, { kind: SpanKind.SERVER }, parent, async (span) => {
          const ctx: CallContext = {
            signal: ac.signal,
            logger: log,
            metadata: call.metadata,
            identity: NO_IDENTITY,
            requestId: requestIdOf(call.metadata),
          };
          let admitted = false;
          try {
            const { serial, identity } = identify(call);
            ctx.identity = await identity;
            if (authorize) await authorize(call.request, ctx.identity);
            if (limits && !ac.signal.aborted) {
              releaseSlot = limits.openStream(ctx.identity);
              ac.signal.addEventListener('abort', releaseSlot, { once: true });
            }
            admitted = true;
            // Ended while open when its certificate or token is revoked (sweepRevoked) or expires.
            const end = (details: string, code: string) => {
              if (ac.signal.aborted) return;
              const { error } = toServiceError(new DomainError(code, 'unauthenticated', `stream ended: ${details}`));
              log.info('stream ended: its credential was revoked or expired', { details });
              refused(ctx, status.UNAUTHENTICATED, error.details ?? '');
              call.emit('error', error);
              ac.abort();
            };
            const shutdown = () => {
              if (ac.signal.aborted) return;
              call.emit('error', { code: status.UNAVAILABLE, details: SHUTDOWN_DETAILS, metadata: new Metadata() });
              ac.abort();
            };
            const streams = openStreamsOf.get(server);
            if (streams && !ac.signal.aborted) {
              const secret =
                ctx.identity.kind === 'token' ? bearerSecretOf(call.metadata.get('authorization')[0]) : null;
              const open: OpenStream = { serial, tokenKeyId: secret ? secret.split('.')[0]! : null, end, shutdown };
              streams.add(open);
              unregister = () => streams.delete(open);
              ac.signal.addEventListener('abort', unregister, { once: true });
              // Admitted while the server began to shut down: ended like those open then.
              if (shuttingDown.has(server)) shutdown();
            }
            // A token's stream ends when the token expires, as a call made with it then would be refused. (A client
            // certificate is checked at the TLS handshake: a connection made with it may outlive it, as in TLS generally.)
            const caller = ctx.identity;
            if (caller.kind === 'token' && caller.expiresAt && !ac.signal.aborted)
              whenExpired(caller.expiresAt, ac.signal, () =>
                end(
                  `token ${caller.name} expired at ${caller.expiresAt!.toISOString()}: ask an administrator for a new one`,
                  'auth.invalid_token',
                ),
              );
            for await (const msg of handler(call.request, ctx) as AsyncIterable<unknown>) {
              if (ac.signal.aborted) break;
              // Back-pressure: wait for the client to read, or to leave (a client that left never drains).
              if (!call.write(msg)) await whenDrainedOrAborted(call, ac.signal);
            }
            if (!ac.signal.aborted) call.end();
          } catch (err) {
            if (ac.signal.aborted) return;
            const { error, expected } = toServiceError(err);
            if (!admitted) refused(presentedBy(ctx, err), error.code ?? status.UNKNOWN, error.details ?? '');
            if (!expected) log.error('stream failed', { err });
            call.emit('error', error);
          } finally {
            unregister();
            releaseSlot();
            span.end();
          }
        });
      };
    } else {
      const observedHandler = observed(server, method.path, handler);
      impl[name] = (call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => {
        // An AbortController only when the handler reads its signal; a cancellation before that makes it born aborted.
        let ac: AbortController | null = null;
        let cancelled = false;
        const signal = () => {
          if (!ac) {
            ac = new AbortController();
            if (cancelled) ac.abort();
          }
          return ac.signal;
        };
        // grpc-js reports 'cancelled' when a finished call's stream closes too: aborting then only cost an AbortError
        // (a stack trace) per call, so the listener goes once the call has its answer.
        const cancel = () => {
          cancelled = true;
          ac?.abort();
        };
        call.on('cancelled', cancel);
        void runUnary(
          method.path,
          observedHandler,
          log,
          call.request,
          call.metadata,
          signal,
          () => identify(call).identity,
          authorize,
          refusedBy(call),
        ).then((outcome) => {
          call.off('cancelled', cancel);
          if (outcome.ok) callback(null, outcome.response);
          else callback({ code: outcome.code, details: outcome.details, metadata: outcome.metadata }, null);
        });
      };
      unaryMethods?.set(method.path, async (bytes, metadata, signal) => {
        let request: unknown;
        try {
          request = method.requestDeserialize(bytes);
        } catch (err) {
          return {
            ok: false,
            code: status.INTERNAL,
            details: `Request message parsing error: ${(err as Error).message}`,
            metadata: new Metadata(),
          };
        }
        // Calls here come over the agent's local CNI socket (frame-server.ts), which carries no certificate.
        const outcome = await runUnary(
          method.path,
          observedHandler,
          log,
          request,
          metadata,
          () => signal,
          () => NO_IDENTITY,
          authorize,
        );
        return outcome.ok ? { ok: true, response: method.responseSerialize(outcome.response) } : outcome;
      });
    }
  }
  server.addService(definition, impl as never);
}

/**
 * Resolves when `stream` drains or `signal` aborts: a writer honouring back-pressure waits here, and is not held
 * forever by a reader that went away (its stream never drains, but its call's signal aborts).
 */
export function whenDrainedOrAborted(stream: NodeJS.EventEmitter, signal: AbortSignal): Promise<void> {
  return once(stream, 'drain', { signal }).then(
    () => undefined,
    () => undefined,
  );
}

/**
 * Binds a server to an address ("host:port", "unix:///path"); returns the bound port (useful for port 0). Under mTLS
 * the files are checked first, so a missing or bad one fails the start with its name.
 */
export async function bindServer(server: Server, address: string, security?: TransportSecurity): Promise<number> {
  if (security) await checkSecurityFiles(security);
  const tcp = ipListenAddress(address);
  if (!tcp)
    return new Promise((resolve, reject) => {
      server.bindAsync(address, serverCredentials(security), (err, port) => (err ? reject(err) : resolve(port)));
    });
  // An IP address and port: a listener of our own with a long accept queue, whose connections grpc-js takes over.
  const injector = server.createConnectionInjector(serverCredentials(security));
  const listener = net.createServer((socket) => injector.injectConnection(socket));
  await new Promise<void>((resolve, reject) => {
    listener.once('error', reject);
    listener.listen({ host: tcp.host, port: tcp.port, backlog: LISTEN_BACKLOG }, () => {
      listener.off('error', reject);
      // A failed accept (out of file descriptors, say) loses that connection, whose client retries; it must not end
      // the process as an unheard 'error' would.
      listener.on('error', () => {});
      resolve();
    });
  });
  let held = listenersOf.get(server);
  if (!held) {
    listenersOf.set(server, (held = new Set()));
    // However the server is shut down (tryShutdown, forceShutdown, shutdownServer), its listeners close with it.
    const force = server.forceShutdown.bind(server);
    const graceful = server.tryShutdown.bind(server);
    server.forceShutdown = () => {
      closeListeners(server);
      force();
    };
    server.tryShutdown = (callback) => {
      closeListeners(server);
      graceful(callback);
    };
  }
  held.add(listener);
  return (listener.address() as net.AddressInfo).port;
}

/**
 * The accept queue of a server's TCP listeners (the kernel caps it at net.core.somaxconn, 4096 on current kernels).
 * grpc-js listens with Node's default of 511: when thousands of agents reconnect at once after a restart, the
 * connections past it are dropped by the kernel and each client's SYN is retried 1, 3, 7, 15 s later, so agents that
 * the server could serve at once came back over most of a minute (5,000 simulated agents: 4,655 overflows, the server
 * idle meanwhile; bench/SCALE.md).
 */
export const LISTEN_BACKLOG = 4096;

/** The TCP listeners bindServer opened for a server, closed when it shuts down. */
const listenersOf = new WeakMap<Server, Set<net.Server>>();

/** `host:port` with an IPv4 or bracketed IPv6 literal; null for anything else (unix sockets, names: grpc-js binds those). */
function ipListenAddress(address: string): { host: string; port: number } | null {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|(\d{1,3}(?:\.\d{1,3}){3})):(\d{1,5})$/.exec(address);
  if (!m) return null;
  const host = m[1] ?? m[2]!;
  const port = Number(m[3]);
  if (!net.isIP(host) || port > 65535) return null;
  return { host, port };
}

/** Stops accepting connections on the listeners bindServer opened (connections already taken stay). */
function closeListeners(server: Server): void {
  const held = listenersOf.get(server);
  for (const l of held ?? []) l.close();
  held?.clear();
}

/**
 * HTTP/2 keepalive of a server: it pings each client connection every `timeMs` and closes a connection whose ping is not
 * answered within `timeoutMs`, which ends that connection's calls (their signals abort). Without it a client that
 * vanished without closing (a killed node, a black-holed network) keeps its watch streams, and what they hold, for
 * hours. Clients may ping as often as every CLIENT_KEEPALIVE (grpc-js servers do not police ping rates; the option
 * below says so to servers that do).
 */
export interface ServerKeepalive {
  timeMs: number;
  timeoutMs: number;
}

export const DEFAULT_SERVER_KEEPALIVE: ServerKeepalive = Object.freeze({ timeMs: 30_000, timeoutMs: 10_000 });

export function createServer(keepalive: ServerKeepalive = DEFAULT_SERVER_KEEPALIVE, access: ServerAccess = {}): Server {
  const server = new Server({
    ...messageSizeOptions,
    // No channelz: nothing reads it, and its per-call bookkeeping was about 3% of a busy IPAM server's CPU.
    'grpc.enable_channelz': 0,
    'grpc.keepalive_time_ms': keepalive.timeMs,
    'grpc.keepalive_timeout_ms': keepalive.timeoutMs,
    'grpc.http2.min_ping_interval_without_data_ms': CLIENT_KEEPALIVE.timeMs / 2,
    'grpc.keepalive_permit_without_calls': 1,
  });
  accessOf.set(server, access);
  // Every open stream, so that a shutdown ends them first (and the revocation sweep, when there is one, finds them).
  const streams = new Set<OpenStream>();
  openStreamsOf.set(server, streams);
  if (access.revocations) {
    const revocations = access.revocations;
    stopSweepOf.set(
      server,
      revocations.subscribe(() => sweepRevoked(streams, revocations)),
    );
  }
  return server;
}

/** What a stream ended by a server's shutdown says: its client reconnects (to this server once it is back, or another replica). */
export const SHUTDOWN_DETAILS =
  'the server is shutting down: reconnect (to another replica, or to this one once it is back)';

/**
 * Stops accepting calls, ends every open stream with UNAVAILABLE (SHUTDOWN_DETAILS), and waits for in-flight unary
 * calls (up to graceMs). Streams never end by themselves: without ending them the shutdown would always wait its whole
 * grace and then drop every connection.
 */
export function shutdownServer(server: Server, graceMs = 2000): Promise<void> {
  stopSweepOf.get(server)?.();
  shuttingDown.add(server);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, graceMs);
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
    for (const s of [...(openStreamsOf.get(server) ?? [])]) s.shutdown();
  });
}
