import { randomBytes } from 'node:crypto';
import http2 from 'node:http2';
import net from 'node:net';
import { GrpcStatus, statusName } from './status.js';

/**
 * One unary gRPC call over a unix socket on Node's built-in `node:http2`, for the CNI plugin, which runs once per pod
 * operation and so pays for every module it loads: loading @grpc/grpc-js took about 80 ms of each ADD. Everything
 * else in Weft uses grpc-js through client.ts; this speaks the same wire protocol (PROTOCOL-HTTP2.md) for the one
 * case where the library's load time is the cost. What it implements: POST with `content-type: application/grpc`,
 * `te: trailers`, `grpc-timeout` and caller metadata (e.g. `traceparent`); one length-prefixed, uncompressed
 * message each way; the status from the trailers (or a trailers-only answer), `grpc-message` percent-decoded.
 * What it does not: streaming, compression, TLS, retries, keepalive, channel reuse.
 *
 * Failures are GrpcCallError with the code grpc-js would give for the same event, so callers map them as before:
 * a socket that refuses or is missing and a connection that drops are UNAVAILABLE, the deadline DEADLINE_EXCEEDED,
 * an abort CANCELLED, an answer without grpc-status follows the gRPC HTTP-to-status table (200: UNKNOWN), a stream
 * that ends without any status INTERNAL.
 */

/** The generated ts-proto codec of a message (`AttachRequest`, …): all the client needs of it. */
export interface MessageCodec<T> {
  encode(message: T): { finish(): Uint8Array };
  decode(input: Uint8Array): T;
}

export interface UnaryCall<Req, Res> {
  /** Path of the server's unix socket. */
  socketPath: string;
  /** "/<package>.<Service>/<Method>", e.g. "/weft.agent.v1.AgentService/Attach". */
  path: string;
  request: Req;
  requestCodec: MessageCodec<Req>;
  responseCodec: MessageCodec<Res>;
  /** Deadline, in milliseconds from now; sent as grpc-timeout and enforced here. */
  timeoutMs: number;
  signal?: AbortSignal;
  /** Called once the connection is established (for timing). */
  onConnected?: () => void;
  /** Custom metadata (lower-case ASCII keys), e.g. { traceparent }. */
  metadata?: Readonly<Record<string, string>>;
  /** Largest response message accepted (grpc-js's default receive limit: 4 MiB). */
  maxResponseBytes?: number;
}

/** Trailing metadata of a failed call, readable like grpc-js's Metadata (`get(key)` returns the values). */
export class CallMetadata {
  constructor(private readonly map: Readonly<Record<string, string>> = {}) {}
  get(key: string): string[] {
    const v = this.map[key.toLowerCase()];
    return v === undefined ? [] : [v];
  }
  getMap(): Record<string, string> {
    return { ...this.map };
  }
}

/** A failed call, shaped like grpc-js's ServiceError: code, details, metadata, and the same message text. */
export class GrpcCallError extends Error {
  constructor(
    readonly code: number,
    readonly details: string,
    readonly metadata: CallMetadata = new CallMetadata(),
  ) {
    super(`${code} ${statusName(code)}: ${details}`);
    this.name = 'GrpcCallError';
  }
}

/** A W3C trace context header for a new trace (sampled), so a call's server side joins one trace from its start. */
export function newTraceparent(): string {
  return `00-${randomBytes(16).toString('hex')}-${randomBytes(8).toString('hex')}-01`;
}

const DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024;
const RESERVED_HEADERS = new Set(['grpc-status', 'grpc-message', 'grpc-status-details-bin']);

export function callUnary<Req, Res>(call: UnaryCall<Req, Res>): Promise<Res> {
  const maxBytes = call.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
  return new Promise<Res>((resolve, reject) => {
    let settled = false;
    let connected = false;
    let session: http2.ClientHttp2Session | undefined;
    let stream: http2.ClientHttp2Stream | undefined;
    let httpStatus = 0;
    let trailers: http2.IncomingHttpHeaders | undefined;
    const chunks: Buffer[] = [];
    let received = 0;

    const finish = (err: GrpcCallError | null, res?: Res): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      call.signal?.removeEventListener('abort', onAbort);
      if (stream && !stream.closed) stream.close(http2.constants.NGHTTP2_CANCEL);
      session?.destroy();
      if (err) reject(err);
      else resolve(res as Res);
    };
    const fail = (code: number, details: string, metadata?: CallMetadata) => finish(new GrpcCallError(code, details, metadata));
    const onAbort = () => fail(GrpcStatus.CANCELLED, 'Cancelled on client');
    const timer = setTimeout(() => fail(GrpcStatus.DEADLINE_EXCEEDED, `Deadline exceeded after ${(call.timeoutMs / 1000).toFixed(3)}s`), call.timeoutMs);
    if (call.signal?.aborted) return onAbort();
    call.signal?.addEventListener('abort', onAbort, { once: true });

    /** The call's outcome from what the server sent, once it has sent all it will. */
    const settleFromResponse = (rstCode: number): void => {
      const status = trailers?.['grpc-status'];
      if (typeof status === 'string') {
        const code = Number(status);
        const metadata = metadataOf(trailers!);
        if (code !== GrpcStatus.OK) return fail(code, decodeGrpcMessage(trailers!['grpc-message']), metadata);
        const message = readOneMessage(Buffer.concat(chunks));
        if (typeof message === 'string') return fail(GrpcStatus.INTERNAL, message);
        if (message === null) return fail(GrpcStatus.UNIMPLEMENTED, 'No message received for unary call');
        try {
          return finish(null, call.responseCodec.decode(message));
        } catch (err) {
          return fail(GrpcStatus.INTERNAL, `Response message parsing error: ${(err as Error).message}`);
        }
      }
      // Never connected: the session's own error says why (ECONNREFUSED, ENOENT), and it follows this close.
      if (!connected) return;
      if (rstCode !== http2.constants.NGHTTP2_NO_ERROR) {
        if (rstCode === http2.constants.NGHTTP2_REFUSED_STREAM) return fail(GrpcStatus.UNAVAILABLE, 'Stream refused by server');
        if (rstCode === http2.constants.NGHTTP2_CANCEL || session?.destroyed || session?.closed) return fail(GrpcStatus.UNAVAILABLE, 'Connection dropped');
        return fail(GrpcStatus.INTERNAL, `Received RST_STREAM with code ${rstCode}`);
      }
      if (trailers || (httpStatus !== 0 && httpStatus !== 200)) {
        return fail(statusForHttp(httpStatus), `Received HTTP status code ${httpStatus}`, trailers ? metadataOf(trailers) : undefined);
      }
      fail(GrpcStatus.INTERNAL, 'Received RST_STREAM with code 0 (Call ended without gRPC status)');
    };

    session = http2.connect('http://localhost', { createConnection: () => net.connect(call.socketPath) });
    session.once('connect', () => {
      connected = true;
      call.onConnected?.();
    });
    const onSessionGone = (err?: Error) => {
      if (settled) return;
      if (typeof trailers?.['grpc-status'] === 'string') return settleFromResponse(http2.constants.NGHTTP2_NO_ERROR);
      fail(
        GrpcStatus.UNAVAILABLE,
        connected ? `Connection dropped${err ? `: ${err.message}` : ''}` : `No connection established. Last error: ${err?.message ?? 'connection closed'}`,
      );
    };
    session.on('error', onSessionGone);
    session.on('close', () => onSessionGone());

    stream = session.request({
      ':method': 'POST',
      ':path': call.path,
      'content-type': 'application/grpc',
      te: 'trailers',
      'grpc-timeout': grpcTimeout(call.timeoutMs),
      'user-agent': 'weft-unary-client',
      ...call.metadata,
    });
    stream.on('error', () => {}); // reported through 'close' (rstCode) or the session
    stream.on('response', (headers) => {
      httpStatus = Number(headers[':status']);
      if (typeof headers['grpc-status'] === 'string') trailers = headers; // a trailers-only answer
    });
    stream.on('trailers', (headers) => (trailers = headers));
    stream.on('data', (chunk: Buffer) => {
      received += chunk.length;
      if (received > maxBytes + 5) return fail(GrpcStatus.RESOURCE_EXHAUSTED, `Received message larger than max (${received - 5} vs. ${maxBytes})`);
      chunks.push(chunk);
    });
    stream.on('close', () => settleFromResponse(stream!.rstCode ?? http2.constants.NGHTTP2_NO_ERROR));

    const body = call.requestCodec.encode(call.request).finish();
    const frame = Buffer.allocUnsafe(5 + body.length);
    frame[0] = 0; // not compressed
    frame.writeUInt32BE(body.length, 1);
    frame.set(body, 5);
    stream.end(frame);
  });
}

/** The one message of a unary response: null when there is none, a string saying what is wrong with the framing. */
function readOneMessage(data: Buffer): Uint8Array | null | string {
  if (data.length === 0) return null;
  if (data.length < 5) return `Response frame too short (${data.length} bytes)`;
  if (data[0] !== 0) return 'Received a compressed message, but no compression was negotiated';
  const length = data.readUInt32BE(1);
  if (data.length !== 5 + length) return `Response frame holds ${data.length - 5} bytes, its prefix says ${length}: exactly one message was expected`;
  return data.subarray(5);
}

/** grpc-message is percent-encoded (PROTOCOL-HTTP2.md); a malformed one is passed on as it came. */
function decodeGrpcMessage(raw: string | string[] | undefined): string {
  const s = Array.isArray(raw) ? raw.join(',') : raw ?? '';
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

function metadataOf(headers: http2.IncomingHttpHeaders): CallMetadata {
  const map: Record<string, string> = {};
  for (const [k, v] of Object.entries(headers)) {
    if (k.startsWith(':') || RESERVED_HEADERS.has(k) || v === undefined) continue;
    map[k] = Array.isArray(v) ? v.join(',') : String(v);
  }
  return new CallMetadata(map);
}

/** grpc-timeout: at most 8 digits and a unit. */
function grpcTimeout(ms: number): string {
  const n = Math.max(1, Math.ceil(ms));
  return n < 1e8 ? `${n}m` : `${Math.ceil(n / 1000)}S`;
}

/** gRPC's table for an answer without grpc-status (doc/http-grpc-status-mapping.md), as grpc-js applies it. */
function statusForHttp(httpStatus: number): number {
  switch (httpStatus) {
    case 400: return GrpcStatus.INTERNAL;
    case 401: return GrpcStatus.UNAUTHENTICATED;
    case 403: return GrpcStatus.PERMISSION_DENIED;
    case 404: return GrpcStatus.UNIMPLEMENTED;
    case 429: case 502: case 503: case 504: return GrpcStatus.UNAVAILABLE;
    default: return GrpcStatus.UNKNOWN;
  }
}
