import http from 'node:http';
import net from 'node:net';
import { status, Metadata, type ServiceDefinition } from '@grpc/grpc-js';
import { SpanKind } from '@opentelemetry/api';
import type { Logger } from '../logger.js';
import { extractContext, tracer } from '../telemetry.js';
import { trace } from '@opentelemetry/api';
import {
  requestIdOf,
  whenDrainedOrAborted,
  type CallContext,
  type CallObserver,
  type Handlers,
} from '../grpc/server.js';
import {
  bearerSecretOf,
  NO_IDENTITY,
  whenExpired,
  type CredentialRevocations,
  type Identity,
} from '../auth/identity.js';
import { ensureAuthorized, type AccessLookups } from '../auth/authorization.js';
import { toServiceError } from '../grpc/errors.js';
import { DomainError } from '../errors.js';
import type { CallLimiter } from '../auth/limits.js';
import { RETRY_AFTER_KEY } from '../grpc/status.js';

/**
 * The same API over HTTP with JSON, from the same handlers as gRPC: `POST /<package>.<Service>/<Method>` with the
 * request in the protobuf JSON mapping answers the response in it (curl-able). A server-streaming method answers
 * newline-delimited JSON. Errors: an HTTP status from the gRPC code, and {"code","message","errorCode"}.
 *
 * Every call is authorized exactly as over gRPC (lib/auth/authorization.ts, with the service's lookups), for the
 * identity of its `Authorization: Bearer <secret>` header (an API token); without one the caller is `none` and is
 * refused with 401. Unary calls are reported to the server's call observer (the audit log) like gRPC calls.
 */
interface MessageFns {
  fromJSON(o: unknown): unknown;
  toJSON(m: unknown): unknown;
}

/** The largest request body read (bytes); a larger one is refused with 413 and not read further. */
export const MAX_BODY_BYTES = 1024 * 1024;

/** Google's mapping from gRPC codes to HTTP statuses. */
const httpStatus: Partial<Record<status, number>> = {
  [status.INVALID_ARGUMENT]: 400,
  [status.FAILED_PRECONDITION]: 400,
  [status.OUT_OF_RANGE]: 400,
  [status.UNAUTHENTICATED]: 401,
  [status.PERMISSION_DENIED]: 403,
  [status.NOT_FOUND]: 404,
  [status.ALREADY_EXISTS]: 409,
  [status.ABORTED]: 409,
  [status.RESOURCE_EXHAUSTED]: 429,
  [status.CANCELLED]: 499,
  [status.UNIMPLEMENTED]: 501,
  [status.UNAVAILABLE]: 503,
  [status.DEADLINE_EXCEEDED]: 504,
};

const capitalize = (s: string) => s[0]!.toUpperCase() + s.slice(1);

/** Who calls the gateway and what authorization needs to know. */
export interface GatewayAccess {
  /** Checks a bearer secret (services/auth createTokenAuthority); absent: every bearer token is refused. */
  tokens?: (secret: string) => Promise<Identity>;
  /** What the service's rules look up (which node holds a handle), as given to addService. */
  lookups?: AccessLookups;
  /** Sees each finished unary call, and each refused call (the audit log): the gRPC server's observer. */
  observe?: CallObserver;
  /**
   * Limits per identity, the gRPC server's own (lib/auth/limits.ts), so a token's calls over HTTP and over gRPC draw
   * on one budget: past its rate a call gets 429 with `Retry-After` (seconds) and a JSON error; a stream holds a slot.
   */
  limits?: CallLimiter;
  /** Revoked tokens (services/auth/revocations.ts): a stream whose token is revoked is ended. */
  revocations?: CredentialRevocations;
}

/** The identity of an HTTP request: its bearer token's, else none; a bad token fails (UNAUTHENTICATED). */
async function identifyRequest(header: string | undefined, access: GatewayAccess): Promise<Identity> {
  const secret = bearerSecretOf(header);
  if (secret === null) return NO_IDENTITY;
  if (!access.tokens) throw new DomainError('auth.invalid_token', 'unauthenticated', 'this API accepts no tokens');
  return access.tokens(secret);
}

export function createJsonGateway<D extends ServiceDefinition>(
  definition: D,
  handlers: Handlers<D>,
  messages: Record<string, unknown>,
  logger: Logger,
  opts: { access: GatewayAccess; maxBodyBytes?: number },
): (req: http.IncomingMessage, res: http.ServerResponse) => boolean {
  const access = opts.access;
  const maxBody = opts.maxBodyBytes ?? MAX_BODY_BYTES;
  const routes = new Map<
    string,
    { name: string; path: string; stream: boolean; request: MessageFns; response: MessageFns }
  >();
  for (const [name, method] of Object.entries(definition)) {
    const request = messages[`${capitalize(name)}Request`] as MessageFns | undefined;
    const response = messages[`${capitalize(name)}Response`] as MessageFns | undefined;
    if (!request || !response) throw new Error(`no JSON codec for ${method.path}`);
    routes.set(method.path, { name, path: method.path, stream: Boolean(method.responseStream), request, response });
  }

  const fail = (res: http.ServerResponse, code: status, message: string, errorCode = '', retryAfterMs = 0) => {
    if (res.headersSent) return void res.end();
    res.writeHead(httpStatus[code] ?? 500, {
      'content-type': 'application/json',
      ...(code === status.UNAUTHENTICATED ? { 'www-authenticate': 'Bearer' } : {}),
      ...(retryAfterMs > 0 ? { 'retry-after': String(Math.ceil(retryAfterMs / 1000)) } : {}),
    });
    res.end(
      JSON.stringify({ code: status[code], message, errorCode, ...(retryAfterMs > 0 ? { retryAfterMs } : {}) }) + '\n',
    );
  };

  return (req, res) => {
    const route = routes.get((req.url ?? '').split('?')[0]!);
    if (!route) return false;
    if (req.method !== 'POST') {
      fail(res, status.INVALID_ARGUMENT, `use POST with a JSON body for ${req.url}`);
      return true;
    }
    // Only JSON: a browser's cross-site form or simple request cannot send this content type without a CORS preflight,
    // which this server never grants (CSRF).
    if (!isJson(req.headers['content-type'])) {
      refuse(
        res,
        415,
        'INVALID_ARGUMENT',
        `send the request body as JSON with the header "content-type: application/json" (got ${JSON.stringify(req.headers['content-type'] ?? '')})`,
      );
      return true;
    }
    const tooLarge = () => refuse(res, 413, 'RESOURCE_EXHAUSTED', `request body is over ${maxBody} bytes`, true);
    if (Number(req.headers['content-length'] ?? 0) > maxBody) {
      tooLarge();
      return true;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let refused = false;
    req.on('data', (c: Buffer) => {
      if (refused) return;
      size += c.length;
      if (size <= maxBody) return void chunks.push(c);
      // Stop reading at the limit: answer, and close the connection (nothing more of this body is read).
      refused = true;
      chunks.length = 0;
      req.pause();
      tooLarge();
    });
    req.on('end', () => {
      if (refused) return;
      let input: unknown;
      try {
        const text = Buffer.concat(chunks).toString('utf8').trim();
        input = route.request.fromJSON(text === '' ? {} : JSON.parse(text));
      } catch (err) {
        return fail(
          res,
          status.INVALID_ARGUMENT,
          `request body is not a valid ${capitalize(route.name)}Request in JSON: ${(err as Error).message}`,
        );
      }
      const ac = new AbortController();
      res.on('close', () => ac.abort());
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(req.headers)) if (typeof v === 'string') headers[k] = v;
      const metadata = new Metadata();
      if (headers['x-request-id']) metadata.set('x-request-id', headers['x-request-id']);
      const ctx: CallContext = {
        signal: ac.signal,
        logger: logger.child({ rpc: req.url, via: 'http' }),
        metadata,
        identity: NO_IDENTITY,
        requestId: requestIdOf(metadata),
      };
      const handler = (handlers as Record<string, (r: unknown, c: CallContext) => unknown>)[route.name]!;
      let authorized = false;
      const peer = `${req.socket.remoteAddress ?? ''}:${req.socket.remotePort ?? ''}`;
      // Unary calls once authorized, and every call refused before its handler (no or a bad token, forbidden, over its rate).
      const report = (code: number, details: string, response?: unknown) => {
        if ((authorized && route.stream) || !access.observe) return;
        try {
          access.observe({
            path: route.path,
            request: input,
            ctx,
            code,
            details,
            traceId: trace.getActiveSpan()?.spanContext().traceId ?? '',
            refused: !authorized,
            peer,
            response,
          });
        } catch (err) {
          ctx.logger.error('call observer failed', { err });
        }
      };
      let releaseSlot = () => {};
      void tracer().startActiveSpan(
        `HTTP ${req.url}`,
        { kind: SpanKind.SERVER },
        extractContext(headers),
        async (span) => {
          try {
            // No client certificate over HTTP: the bearer token is the identity, or none (refused: 401).
            ctx.identity = await identifyRequest(req.headers.authorization, access);
            await ensureAuthorized(route.path, ctx.identity, input, access.lookups);
            access.limits?.admitCall(ctx.identity);
            if (route.stream && access.limits) releaseSlot = access.limits.openStream(ctx.identity);
            authorized = true;
            if (route.stream) {
              res.writeHead(200, { 'content-type': 'application/x-ndjson' });
              // A stream whose token is revoked or expires while it runs ends with a last line saying so (its status
              // was sent already).
              const endWith = (why: string) => {
                if (ac.signal.aborted) return;
                authorized = false;
                report(status.UNAUTHENTICATED, `stream ended: ${why}`);
                const last = {
                  code: 'UNAUTHENTICATED',
                  message: `stream ended: ${why}`,
                  errorCode: 'auth.invalid_token',
                };
                res.end(JSON.stringify(last) + '\n');
                ac.abort();
              };
              const keyId = bearerSecretOf(req.headers.authorization)?.split('.')[0] ?? '';
              const unsubscribe =
                access.revocations?.subscribe(() => {
                  const why = keyId ? access.revocations!.token(keyId) : null;
                  if (why !== null) endWith(why);
                }) ?? (() => {});
              const identity = ctx.identity;
              if (identity.kind === 'token' && identity.expiresAt)
                whenExpired(identity.expiresAt, ac.signal, () =>
                  endWith(
                    `token ${identity.name} expired at ${identity.expiresAt!.toISOString()}: ask an administrator for a new one`,
                  ),
                );
              try {
                for await (const msg of handler(input, ctx) as AsyncIterable<unknown>) {
                  if (ac.signal.aborted) break;
                  // Back-pressure: a client that reads slowly (or not at all) holds the handler, not a growing buffer.
                  if (!res.write(JSON.stringify(route.response.toJSON(msg)) + '\n'))
                    await whenDrainedOrAborted(res, ac.signal);
                }
              } finally {
                unsubscribe();
              }
              if (!ac.signal.aborted) res.end();
            } else {
              const out = await (handler(input, ctx) as Promise<unknown>);
              report(status.OK, '', out);
              res.writeHead(200, { 'content-type': 'application/json' });
              res.end(JSON.stringify(route.response.toJSON(out)) + '\n');
            }
          } catch (err) {
            const { error, expected } = toServiceError(err);
            if (!expected) ctx.logger.error('failed', { err });
            report(error.code ?? status.INTERNAL, error.details ?? '');
            fail(
              res,
              error.code ?? status.INTERNAL,
              error.details ?? 'internal error',
              String(error.metadata?.get('weft-error-code')[0] ?? ''),
              Number(error.metadata?.get(RETRY_AFTER_KEY)[0] ?? 0),
            );
          } finally {
            releaseSlot();
            span.end();
          }
        },
      );
    });
    return true;
  };
}

/** Whether a Content-Type header names JSON (`application/json`, parameters such as charset allowed). */
function isJson(contentType: string | undefined): boolean {
  return (contentType ?? '').split(';')[0]!.trim().toLowerCase() === 'application/json';
}

/** Answers an error before any handler ran; `close` ends the connection after it (a body left unread). */
function refuse(res: http.ServerResponse, httpCode: number, code: string, message: string, close = false): void {
  if (res.headersSent) return void res.end();
  res.writeHead(httpCode, { 'content-type': 'application/json', ...(close ? { connection: 'close' } : {}) });
  res.end(JSON.stringify({ code, message, errorCode: '' }) + '\n', () => {
    if (close) res.req.socket.destroy();
  });
}

/** Who may call the HTTP API, besides what its address allows (createHttpServer). */
export interface HttpAccess {
  /**
   * Host names (lowercase, no port) the API answers to besides IP addresses, `localhost` and the listen host. A
   * request whose Host header names anything else is refused (403): a DNS-rebinding page reaches the API under its
   * own host name, which is not on this list.
   */
  allowedHosts?: string[];
  /** Browser origins (`scheme://host[:port]`) allowed to call; a request with any other Origin header is refused (403). */
  allowedOrigins?: string[];
  /** The host the server listens on (a name, an address, or a wildcard). */
  listenHost?: string;
}

/** The host name of a Host header ("a.example:7401", "[::1]:7401", "127.0.0.1"), lowercase; '' when malformed. */
export function hostNameOf(header: string): string {
  const h = header.trim().toLowerCase();
  if (h.startsWith('[')) {
    const end = h.indexOf(']');
    return end > 0 ? h.slice(1, end) : '';
  }
  const colon = h.lastIndexOf(':');
  return colon >= 0 && h.indexOf(':') === colon ? h.slice(0, colon) : h;
}

/** Why a request may not reach the API (Host or Origin), or null when it may. Pure. */
export function accessProblem(headers: http.IncomingHttpHeaders, access: HttpAccess): string | null {
  const host = hostNameOf(headers.host ?? '');
  const allowed = new Set(['localhost', ...(access.allowedHosts ?? []).map((h) => h.toLowerCase())]);
  if (access.listenHost) allowed.add(hostNameOf(access.listenHost));
  if (!host) return 'the request has no valid Host header';
  if (net.isIP(host) === 0 && !allowed.has(host))
    return `Host ${JSON.stringify(headers.host)} is not a name this API answers to; use its address, or add the name to WEFT_HTTP_ALLOWED_HOSTS`;
  const origin = headers.origin;
  if (
    origin !== undefined &&
    !(access.allowedOrigins ?? []).some((o) => o.replace(/\/+$/, '').toLowerCase() === origin.toLowerCase())
  )
    return `requests from the web origin ${JSON.stringify(origin)} are not allowed; add it to WEFT_HTTP_ALLOWED_ORIGINS to allow them`;
  return null;
}

/**
 * An HTTP server for gateways: every request's Host and Origin are checked first (accessProblem: 403), then the
 * routes; unknown paths get 404 with a JSON error.
 */
export function createHttpServer(
  routes: ((req: http.IncomingMessage, res: http.ServerResponse) => boolean)[],
  access: HttpAccess = {},
): http.Server {
  return http.createServer((req, res) => {
    const problem = accessProblem(req.headers, access);
    if (problem) return refuse(res, 403, 'PERMISSION_DENIED', problem, true);
    for (const r of routes) if (r(req, res)) return;
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end(
      JSON.stringify({
        code: 'NOT_FOUND',
        message: `no method at ${req.url}; paths look like /weft.ipam.v1.IpamService/ListPools`,
      }) + '\n',
    );
  });
}
