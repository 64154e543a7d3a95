import { GrpcStatus, statusName } from './status.js';
import { encodeFrame, MAGIC, metadataOf, readFrame } from './unary-frames.js';

/**
 * One unary call to a Weft server on a unix socket, for the CNI plugin, which runs once per pod operation and so pays
 * for every module it loads and every round trip it makes. It speaks Weft's unary frames (unary-frames.ts) on a plain
 * unix-socket connection: the server's method path, the same protobuf messages, metadata (e.g. `traceparent`) and
 * deadline, and the answer's gRPC status, message and trailing metadata. The node agent serves them beside gRPC on
 * the same socket (frame-server.ts). The connection is a `node:net` socket, the module loaded only when a call is
 * made (public APIs only: the plugin runs on whatever Node the host has). Loading `node:http2` and opening an HTTP/2
 * session for the call cost about 20 ms of each ADD; grpc-js about 80 ms before that. Everything else in Weft uses
 * grpc-js through client.ts.
 * What it does not do: streaming, compression, TLS, retries, keepalive, connection reuse.
 *
 * Failures are GrpcCallError with the code grpc-js would give for the same event, so callers map them as before:
 * a socket that refuses or is missing and a connection that drops are UNAVAILABLE, the deadline DEADLINE_EXCEEDED,
 * an abort CANCELLED, an answer over the size limit RESOURCE_EXHAUSTED, an answer that is not a frame INTERNAL.
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
  /** Deadline, in milliseconds from now; sent to the server (which stops the handler then) and enforced here. */
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

/**
 * A W3C trace context header for a new trace (sampled), so a call's server side joins one trace from its start.
 * The ids come from Math.random, as OpenTelemetry JS's own id generator does: trace ids need to be unique, not
 * secret, and `node:crypto` would cost the plugin a module load.
 */
export function newTraceparent(): string {
  return `00-${randomHex(32)}-${randomHex(16)}-01`;
}

function randomHex(digits: number): string {
  let out = '';
  while (out.length < digits)
    out += Math.floor(Math.random() * 0x100000000)
      .toString(16)
      .padStart(8, '0');
  // An all-zero id is invalid; make the last digit non-zero in that (improbable) case.
  out = out.slice(0, digits);
  return /^0+$/.test(out) ? out.slice(0, -1) + '1' : out;
}

const DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024;

export function callUnary<Req, Res>(call: UnaryCall<Req, Res>): Promise<Res> {
  const maxBytes = call.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
  return new Promise<Res>((resolve, reject) => {
    let settled = false;
    let connected = false;
    let received: Buffer = Buffer.alloc(0);

    const finish = (err: GrpcCallError | null, res?: Res): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      call.signal?.removeEventListener('abort', onAbort);
      socket?.destroy();
      if (err) reject(err);
      else resolve(res as Res);
    };
    const fail = (code: number, details: string, metadata?: CallMetadata) =>
      finish(new GrpcCallError(code, details, metadata));
    const onAbort = () => fail(GrpcStatus.CANCELLED, 'Cancelled on client');
    const timer = setTimeout(
      () => fail(GrpcStatus.DEADLINE_EXCEEDED, `Deadline exceeded after ${(call.timeoutMs / 1000).toFixed(3)}s`),
      call.timeoutMs,
    );
    let socket: Connection | undefined;
    if (call.signal?.aborted) return onAbort();
    call.signal?.addEventListener('abort', onAbort, { once: true });

    /** The call's outcome from the server's answer frame. */
    const settleFromAnswer = (header: Record<string, unknown>, message: Buffer): void => {
      const status = header.status;
      if (typeof status !== 'number' || !Number.isInteger(status))
        return fail(GrpcStatus.INTERNAL, 'The answer carries no gRPC status');
      const metadata = new CallMetadata(metadataOf(header.metadata));
      if (status !== GrpcStatus.OK)
        return fail(status, typeof header.message === 'string' ? header.message : '', metadata);
      try {
        return finish(null, call.responseCodec.decode(message));
      } catch (err) {
        return fail(GrpcStatus.INTERNAL, `Response message parsing error: ${(err as Error).message}`);
      }
    };

    socket = connectUnixSocket(call.socketPath, {
      connected: () => {
        connected = true;
        call.onConnected?.();
      },
      data: (chunk: Buffer) => {
        received = received.length === 0 ? chunk : Buffer.concat([received, chunk]);
        const frame = readFrame(received, maxBytes);
        if (frame === null) return;
        if (typeof frame === 'string') {
          return frame.startsWith('message of')
            ? fail(GrpcStatus.RESOURCE_EXHAUSTED, `Received message larger than max (${frame})`)
            : fail(GrpcStatus.INTERNAL, `The answer is not a frame: ${frame}`);
        }
        settleFromAnswer(frame.header, frame.message);
      },
      error: (err: Error) =>
        fail(
          GrpcStatus.UNAVAILABLE,
          connected ? `Connection dropped: ${err.message}` : `No connection established. Last error: ${err.message}`,
        ),
      closed: () =>
        fail(GrpcStatus.UNAVAILABLE, connected ? 'Connection dropped before the answer' : 'No connection established'),
    });

    const body = call.requestCodec.encode(call.request).finish();
    // Written, not ended: the server answers on the same connection and then closes it.
    socket.write(
      Buffer.concat([
        MAGIC,
        encodeFrame(
          { path: call.path, timeoutMs: Math.max(1, Math.ceil(call.timeoutMs)), metadata: { ...call.metadata } },
          body,
        ),
      ]),
    );
  });
}

/** What happens on a connection: connected, a chunk read, an error (connecting, reading, writing), the peer's end. */
interface ConnectionEvents {
  connected(): void;
  data(chunk: Buffer): void;
  error(err: Error): void;
  closed(): void;
}

/** A client connection: writes (queued until connected) and destroy (no event after it). */
interface Connection {
  write(data: Buffer): void;
  destroy(): void;
}

/**
 * The connection, through `node:net`, loaded on the first call only: a plugin run that makes no call (VERSION, a bad
 * config) never loads it.
 */
function connectUnixSocket(path: string, on: ConnectionEvents): Connection {
  let socket: import('node:net').Socket | undefined;
  let destroyed = false;
  const pending: Buffer[] = [];
  void import('node:net').then(
    (net) => {
      if (destroyed) return;
      const s = net.connect(path);
      socket = s;
      s.once('connect', () => on.connected());
      s.on('data', (chunk: Buffer) => on.data(chunk));
      s.on('error', (err) => on.error(err));
      s.on('close', () => on.closed());
      for (const data of pending) s.write(data);
    },
    (err: Error) => on.error(err),
  );
  return {
    write: (data) => (socket ? void socket.write(data) : void pending.push(data)),
    destroy: () => {
      destroyed = true;
      socket?.destroy();
    },
  };
}
