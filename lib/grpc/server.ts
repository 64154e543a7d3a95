import { Metadata, Server, status, type ServerUnaryCall, type ServerWritableStream, type ServiceDefinition, type sendUnaryData, type MethodDefinition } from '@grpc/grpc-js';
import { SpanKind } from '@opentelemetry/api';
import type { Logger } from '../logger.js';
import { extractContext, tracer } from '../telemetry.js';
import { serverCredentials, type TransportSecurity } from './credentials.js';
import { toServiceError } from './errors.js';
import { messageSizeOptions } from './limits.js';

/** What a handler knows about its call. */
export interface CallContext {
  signal: AbortSignal;
  logger: Logger;
  metadata: Metadata;
}

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

/** A unary call's outcome, as a gRPC server sends it: the response, or a status with message and trailing metadata. */
export type UnaryOutcome = { ok: true; response: unknown } | { ok: false; code: number; details: string; metadata: Metadata };

/**
 * Unary methods by path ("/weft.agent.v1.AgentService/Attach"), for a server that takes calls other than through
 * grpc-js (frame-server.ts): each deserializes the request, runs the handler exactly as addService does, and
 * serializes the response.
 */
export type UnaryMethods = Map<string, (request: Buffer, metadata: Metadata, signal: AbortSignal) => Promise<
  { ok: true; response: Buffer } | { ok: false; code: number; details: string; metadata: Metadata }
>>;

/** Runs one unary handler: a span parented by the caller's trace context, and errors mapped through the one table. */
function runUnary(
  path: string,
  handler: (req: unknown, ctx: CallContext) => unknown,
  log: Logger,
  request: unknown,
  metadata: Metadata,
  signal: () => AbortSignal,
): Promise<UnaryOutcome> {
  const parent = extractContext(carrierOf(metadata));
  return tracer().startActiveSpan(path, { kind: SpanKind.SERVER }, parent, async (span) => {
    try {
      // The signal is made only for a handler that asks for it (most unary ones never do).
      const ctx: CallContext = { get signal() { return signal(); }, logger: log, metadata };
      const response = await (handler(request, ctx) as Promise<unknown>);
      return { ok: true as const, response };
    } catch (err) {
      const { error, expected } = toServiceError(err);
      if (expected) log.debug('rejected', { code: error.code, details: error.details });
      else log.error('failed', { err });
      span.setAttribute('rpc.grpc.status_code', error.code ?? status.UNKNOWN);
      return { ok: false as const, code: error.code ?? status.UNKNOWN, details: error.details ?? '', metadata: error.metadata ?? new Metadata() };
    } finally {
      span.end();
    }
  });
}

/**
 * Adds a service to a server. Every call gets a span (parented by the caller's trace context from metadata), a
 * child logger, an AbortSignal that fires when the client goes away, and errors mapped through the one table.
 * With `unaryMethods`, its unary methods are also added there, to be served the same way outside grpc-js.
 */
export function addService<D extends ServiceDefinition>(
  server: Server,
  definition: D,
  handlers: Handlers<D>,
  logger: Logger,
  unaryMethods?: UnaryMethods,
): void {
  const impl: Record<string, unknown> = {};
  for (const [name, method] of Object.entries(definition)) {
    const handler = handlers[name as keyof D] as unknown as (req: unknown, ctx: CallContext) => unknown;
    const log = logger.child({ rpc: method.path });
    if (method.responseStream) {
      impl[name] = (call: ServerWritableStream<unknown, unknown>) => {
        const ac = new AbortController();
        call.on('cancelled', () => ac.abort());
        call.on('close', () => ac.abort());
        const parent = extractContext(carrierOf(call.metadata));
        void tracer().startActiveSpan(method.path, { kind: SpanKind.SERVER }, parent, async (span) => {
          try {
            for await (const msg of handler(call.request, { signal: ac.signal, logger: log, metadata: call.metadata }) as AsyncIterable<unknown>) {
              if (ac.signal.aborted) break;
              if (!call.write(msg)) await new Promise((r) => call.once('drain', r));
            }
            if (!ac.signal.aborted) call.end();
          } catch (err) {
            if (ac.signal.aborted) return;
            const { error, expected } = toServiceError(err);
            if (!expected) log.error('stream failed', { err });
            call.emit('error', error);
          } finally {
            span.end();
          }
        });
      };
    } else {
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
        void runUnary(method.path, handler, log, call.request, call.metadata, signal).then((outcome) => {
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
          return { ok: false, code: status.INTERNAL, details: `Request message parsing error: ${(err as Error).message}`, metadata: new Metadata() };
        }
        const outcome = await runUnary(method.path, handler, log, request, metadata, () => signal);
        return outcome.ok ? { ok: true, response: method.responseSerialize(outcome.response) } : outcome;
      });
    }
  }
  server.addService(definition, impl as never);
}

/** Binds a server to an address ("host:port", "unix:///path"); returns the bound port (useful for port 0). */
export function bindServer(server: Server, address: string, security?: TransportSecurity): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, serverCredentials(security), (err, port) => (err ? reject(err) : resolve(port)));
  });
}

export function createServer(): Server {
  // No channelz: nothing reads it, and its per-call bookkeeping was about 3% of a busy IPAM server's CPU.
  return new Server({ ...messageSizeOptions, 'grpc.enable_channelz': 0 });
}

/** Stops accepting calls, ends streams, and waits for in-flight calls (up to graceMs). */
export function shutdownServer(server: Server, graceMs = 2000): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, graceMs);
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}
