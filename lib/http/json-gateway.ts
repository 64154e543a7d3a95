import http from 'node:http';
import { status, Metadata, type ServiceDefinition } from '@grpc/grpc-js';
import { SpanKind } from '@opentelemetry/api';
import type { Logger } from '../logger.js';
import { extractContext, tracer } from '../telemetry.js';
import { requestIdOf, whenDrainedOrAborted, type CallContext, type Handlers } from '../grpc/server.js';
import { NO_IDENTITY } from '../auth/identity.js';
import { toServiceError } from '../grpc/errors.js';

/**
 * The same API over HTTP with JSON, from the same handlers as gRPC: `POST /<package>.<Service>/<Method>` with the
 * request in the protobuf JSON mapping answers the response in it (curl-able). A server-streaming method answers
 * newline-delimited JSON. Errors: an HTTP status from the gRPC code, and {"code","message","errorCode"}.
 */
interface MessageFns {
  fromJSON(o: unknown): unknown;
  toJSON(m: unknown): unknown;
}

const MAX_BODY = 1024 * 1024;

/** Google's mapping from gRPC codes to HTTP statuses. */
const httpStatus: Partial<Record<status, number>> = {
  [status.INVALID_ARGUMENT]: 400, [status.FAILED_PRECONDITION]: 400, [status.OUT_OF_RANGE]: 400, [status.UNAUTHENTICATED]: 401,
  [status.PERMISSION_DENIED]: 403, [status.NOT_FOUND]: 404, [status.ALREADY_EXISTS]: 409, [status.ABORTED]: 409,
  [status.RESOURCE_EXHAUSTED]: 429, [status.CANCELLED]: 499, [status.UNIMPLEMENTED]: 501, [status.UNAVAILABLE]: 503,
  [status.DEADLINE_EXCEEDED]: 504,
};

const capitalize = (s: string) => s[0]!.toUpperCase() + s.slice(1);

export function createJsonGateway<D extends ServiceDefinition>(
  definition: D,
  handlers: Handlers<D>,
  messages: Record<string, unknown>,
  logger: Logger,
): (req: http.IncomingMessage, res: http.ServerResponse) => boolean {
  const routes = new Map<string, { name: string; stream: boolean; request: MessageFns; response: MessageFns }>();
  for (const [name, method] of Object.entries(definition)) {
    const request = messages[`${capitalize(name)}Request`] as MessageFns | undefined;
    const response = messages[`${capitalize(name)}Response`] as MessageFns | undefined;
    if (!request || !response) throw new Error(`no JSON codec for ${method.path}`);
    routes.set(method.path, { name, stream: Boolean(method.responseStream), request, response });
  }

  const fail = (res: http.ServerResponse, code: status, message: string, errorCode = '') => {
    if (res.headersSent) return void res.end();
    res.writeHead(httpStatus[code] ?? 500, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ code: status[code], message, errorCode }) + '\n');
  };

  return (req, res) => {
    const route = routes.get((req.url ?? '').split('?')[0]!);
    if (!route) return false;
    if (req.method !== 'POST') {
      fail(res, status.INVALID_ARGUMENT, `use POST with a JSON body for ${req.url}`);
      return true;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size <= MAX_BODY) chunks.push(c);
    });
    req.on('end', () => {
      if (size > MAX_BODY) return fail(res, status.INVALID_ARGUMENT, `request body is over ${MAX_BODY} bytes`);
      let input: unknown;
      try {
        const text = Buffer.concat(chunks).toString('utf8').trim();
        input = route.request.fromJSON(text === '' ? {} : JSON.parse(text));
      } catch (err) {
        return fail(res, status.INVALID_ARGUMENT, `request body is not a valid ${capitalize(route.name)}Request in JSON: ${(err as Error).message}`);
      }
      const ac = new AbortController();
      res.on('close', () => ac.abort());
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(req.headers)) if (typeof v === 'string') headers[k] = v;
      const metadata = new Metadata();
      if (headers['x-request-id']) metadata.set('x-request-id', headers['x-request-id']);
      // No client certificate over HTTP (yet): the caller is `none` until the gateway authenticates.
      const ctx: CallContext = { signal: ac.signal, logger: logger.child({ rpc: req.url, via: 'http' }), metadata, identity: NO_IDENTITY, requestId: requestIdOf(metadata) };
      const handler = (handlers as Record<string, (r: unknown, c: CallContext) => unknown>)[route.name]!;
      void tracer().startActiveSpan(`HTTP ${req.url}`, { kind: SpanKind.SERVER }, extractContext(headers), async (span) => {
        try {
          if (route.stream) {
            res.writeHead(200, { 'content-type': 'application/x-ndjson' });
            for await (const msg of handler(input, ctx) as AsyncIterable<unknown>) {
              if (ac.signal.aborted) break;
              // Back-pressure: a client that reads slowly (or not at all) holds the handler, not a growing buffer.
              if (!res.write(JSON.stringify(route.response.toJSON(msg)) + '\n')) await whenDrainedOrAborted(res, ac.signal);
            }
            res.end();
          } else {
            const out = await (handler(input, ctx) as Promise<unknown>);
            res.writeHead(200, { 'content-type': 'application/json' });
            res.end(JSON.stringify(route.response.toJSON(out)) + '\n');
          }
        } catch (err) {
          const { error, expected } = toServiceError(err);
          if (!expected) ctx.logger.error('failed', { err });
          fail(res, error.code ?? status.INTERNAL, error.details ?? 'internal error', String(error.metadata?.get('weft-error-code')[0] ?? ''));
        } finally {
          span.end();
        }
      });
    });
    return true;
  };
}

/** An HTTP server for gateways; unknown paths get 404 with a JSON error. */
export function createHttpServer(routes: ((req: http.IncomingMessage, res: http.ServerResponse) => boolean)[]): http.Server {
  return http.createServer((req, res) => {
    for (const r of routes) if (r(req, res)) return;
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ code: 'NOT_FOUND', message: `no method at ${req.url}; paths look like /weft.ipam.v1.IpamService/ListPools` }) + '\n');
  });
}
