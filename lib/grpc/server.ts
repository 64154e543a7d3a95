import { Metadata, Server, status, type ServerUnaryCall, type ServerWritableStream, type ServiceDefinition, type sendUnaryData, type MethodDefinition } from '@grpc/grpc-js';
import { SpanKind } from '@opentelemetry/api';
import type { Logger } from '../logger.js';
import { extractContext, tracer } from '../telemetry.js';
import { serverCredentials, type TransportSecurity } from './credentials.js';
import { toServiceError } from './errors.js';

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

function carrierOf(md: Metadata): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(md.getMap())) if (typeof v === 'string') out[k] = v;
  return out;
}

/**
 * Adds a service to a server. Every call gets a span (parented by the caller's trace context from metadata), a
 * child logger, an AbortSignal that fires when the client goes away, and errors mapped through the one table.
 */
export function addService<D extends ServiceDefinition>(
  server: Server,
  definition: D,
  handlers: Handlers<D>,
  logger: Logger,
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
        const ac = new AbortController();
        // grpc-js reports 'cancelled' when a finished call's stream closes too: aborting then only cost an AbortError
        // (a stack trace) per call, so the listener goes once the call has its answer.
        const cancel = () => ac.abort();
        call.on('cancelled', cancel);
        const parent = extractContext(carrierOf(call.metadata));
        void tracer().startActiveSpan(method.path, { kind: SpanKind.SERVER }, parent, async (span) => {
          try {
            const res = await (handler(call.request, { signal: ac.signal, logger: log, metadata: call.metadata }) as Promise<unknown>);
            callback(null, res);
          } catch (err) {
            const { error, expected } = toServiceError(err);
            if (expected) log.debug('rejected', { code: error.code, details: error.details });
            else log.error('failed', { err });
            span.setAttribute('rpc.grpc.status_code', error.code ?? status.UNKNOWN);
            callback(error, null);
          } finally {
            call.off('cancelled', cancel);
            span.end();
          }
        });
      };
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
  return new Server({ 'grpc.max_receive_message_length': 4 * 1024 * 1024 });
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
