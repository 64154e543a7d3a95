import { getSystemErrorName } from 'node:util';
import { GrpcStatus, statusName } from './status.js';
import { encodeFrame, MAGIC, metadataOf, readFrame } from './unary-frames.js';

/**
 * One unary call to a Weft server on a unix socket, for the CNI plugin, which runs once per pod operation and so pays
 * for every module it loads and every round trip it makes. It speaks Weft's unary frames (unary-frames.ts) on a plain
 * unix-socket connection: the server's method path, the same protobuf messages, metadata (e.g. `traceparent`) and
 * deadline, and the answer's gRPC status, message and trailing metadata. The node agent serves them beside gRPC on
 * the same socket (frame-server.ts). The connection is libuv's pipe handle used directly where Node offers it, else
 * `node:net` (connectUnixSocket). Loading `node:http2` and opening an HTTP/2 session for the call cost about
 * 20 ms of each ADD; grpc-js about 80 ms before that. Everything else in Weft uses grpc-js through client.ts.
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
  /**
   * 'pipe': Node's pipe handle directly where its bindings are offered (`node:net` otherwise); 'net' (the default):
   * `node:net`. The pipe handle is Node's internals: only a caller that knows it runs on the Node it was tested with
   * asks for it (weft-cni, on the Node it was built with).
   */
  transport?: 'pipe' | 'net';
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
  while (out.length < digits) out += Math.floor(Math.random() * 0x100000000).toString(16).padStart(8, '0');
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
    const fail = (code: number, details: string, metadata?: CallMetadata) => finish(new GrpcCallError(code, details, metadata));
    const onAbort = () => fail(GrpcStatus.CANCELLED, 'Cancelled on client');
    const timer = setTimeout(() => fail(GrpcStatus.DEADLINE_EXCEEDED, `Deadline exceeded after ${(call.timeoutMs / 1000).toFixed(3)}s`), call.timeoutMs);
    let socket: Connection | undefined;
    if (call.signal?.aborted) return onAbort();
    call.signal?.addEventListener('abort', onAbort, { once: true });

    /** The call's outcome from the server's answer frame. */
    const settleFromAnswer = (header: Record<string, unknown>, message: Buffer): void => {
      const status = header.status;
      if (typeof status !== 'number' || !Number.isInteger(status)) return fail(GrpcStatus.INTERNAL, 'The answer carries no gRPC status');
      const metadata = new CallMetadata(metadataOf(header.metadata));
      if (status !== GrpcStatus.OK) return fail(status, typeof header.message === 'string' ? header.message : '', metadata);
      try {
        return finish(null, call.responseCodec.decode(message));
      } catch (err) {
        return fail(GrpcStatus.INTERNAL, `Response message parsing error: ${(err as Error).message}`);
      }
    };

    socket = (call.transport === 'pipe' ? connectUnixSocket : connectWithNet)(call.socketPath, {
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
        fail(GrpcStatus.UNAVAILABLE, connected ? `Connection dropped: ${err.message}` : `No connection established. Last error: ${err.message}`),
      closed: () => fail(GrpcStatus.UNAVAILABLE, connected ? 'Connection dropped before the answer' : 'No connection established'),
    });

    const body = call.requestCodec.encode(call.request).finish();
    // Written, not ended: the server answers on the same connection and then closes it.
    socket.write(Buffer.concat([MAGIC, encodeFrame({ path: call.path, timeoutMs: Math.max(1, Math.ceil(call.timeoutMs)), metadata: { ...call.metadata } }, body)]));
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

/** The internal bindings behind `node:net`'s unix sockets, or null when this Node does not offer them as expected. */
type PipeBindings = {
  Pipe: new (type: number) => PipeHandle;
  PipeConnectWrap: new () => { oncomplete?: (status: number) => void };
  SOCKET: number;
  WriteWrap: new () => { handle?: PipeHandle; oncomplete?: (status: number) => void; async?: boolean };
  state: Int32Array;
  kReadBytesOrError: number;
  kArrayBufferOffset: number;
};
interface PipeHandle {
  connect(req: object, path: string): number;
  readStart(): number;
  writeBuffer(req: object, data: Buffer): number;
  close(): void;
  onread: (buffer: ArrayBuffer | undefined) => void;
}
let pipeBindings: PipeBindings | null | undefined;
function loadPipeBindings(): PipeBindings | null {
  if (pipeBindings !== undefined) return pipeBindings;
  pipeBindings = null;
  try {
    const binding = (process as unknown as { binding?: (name: string) => Record<string, unknown> }).binding;
    if (typeof binding !== 'function') return null;
    const pipe = binding('pipe_wrap') as { Pipe?: unknown; PipeConnectWrap?: unknown; constants?: { SOCKET?: unknown } };
    const stream = binding('stream_wrap') as { WriteWrap?: unknown; streamBaseState?: unknown; kReadBytesOrError?: unknown; kArrayBufferOffset?: unknown };
    if (typeof pipe.Pipe !== 'function' || typeof pipe.PipeConnectWrap !== 'function' || typeof pipe.constants?.SOCKET !== 'number') return null;
    if (typeof stream.WriteWrap !== 'function' || !(stream.streamBaseState instanceof Int32Array)) return null;
    if (typeof stream.kReadBytesOrError !== 'number' || typeof stream.kArrayBufferOffset !== 'number') return null;
    const proto = (pipe.Pipe as { prototype: Record<string, unknown> }).prototype;
    if (!['connect', 'readStart', 'writeBuffer', 'close'].every((m) => typeof proto[m] === 'function')) return null;
    pipeBindings = {
      Pipe: pipe.Pipe as PipeBindings['Pipe'], PipeConnectWrap: pipe.PipeConnectWrap as PipeBindings['PipeConnectWrap'], SOCKET: pipe.constants.SOCKET,
      WriteWrap: stream.WriteWrap as PipeBindings['WriteWrap'], state: stream.streamBaseState,
      kReadBytesOrError: stream.kReadBytesOrError, kArrayBufferOffset: stream.kArrayBufferOffset,
    };
  } catch {
    pipeBindings = null;
  }
  return pipeBindings;
}

const UV_EOF = -4095;
const uvError = (status: number, syscall: string, path: string) => {
  let name: string;
  try {
    name = getSystemErrorName(status);
  } catch {
    name = `error ${status}`;
  }
  return Object.assign(new Error(`${syscall} ${name} ${path}`), { code: name, errno: status, syscall });
};

/**
 * Connects to a unix socket through the handle `node:net` itself uses (libuv's pipe, from Node's `pipe_wrap` and
 * `stream_wrap` bindings), without `node:net`: loading it and the stream modules behind it, and building a
 * `net.Socket`, cost the plugin about 4 ms of every ADD (cni/DESIGN.md, "Start-up"), for one write and a few reads.
 * The bindings are Node's internals (reached through the deprecated `process.binding`), so they are checked for
 * everything used here, and a Node without them gets `node:net` (connectWithNet) instead.
 */
function connectUnixSocket(path: string, on: ConnectionEvents): Connection {
  const b = loadPipeBindings();
  if (!b) return connectWithNet(path, on);
  const handle = new b.Pipe(b.SOCKET);
  let open = true;
  let connected = false;
  let pending: Buffer[] = [];
  const inFlight = new Set<object>(); // write requests, kept alive until they complete
  const close = () => {
    if (!open) return;
    open = false;
    handle.onread = () => {}; // Node asserts (and aborts) when this is anything but a function
    handle.close();
  };
  const failed = (err: Error) => {
    if (!open) return;
    close();
    on.error(err);
  };
  const send = (data: Buffer) => {
    const req = new b.WriteWrap();
    req.handle = handle;
    req.async = false;
    req.oncomplete = (status) => {
      inFlight.delete(req);
      if (status < 0) failed(uvError(status, 'write', path));
    };
    inFlight.add(req);
    const err = handle.writeBuffer(req, data);
    if (err < 0) {
      inFlight.delete(req);
      failed(uvError(err, 'write', path));
    }
  };
  const connect = new b.PipeConnectWrap();
  connect.oncomplete = (status) => {
    if (!open) return;
    if (status < 0) return failed(uvError(status, 'connect', path));
    connected = true;
    handle.onread = (buffer) => {
      const n = b.state[b.kReadBytesOrError]!;
      if (n > 0 && buffer) return on.data(Buffer.from(buffer, b.state[b.kArrayBufferOffset]!, n));
      if (n === UV_EOF) {
        close();
        return on.closed();
      }
      if (n < 0) failed(uvError(n, 'read', path));
    };
    const err = handle.readStart();
    if (err < 0) return failed(uvError(err, 'read', path));
    on.connected();
    const queued = pending;
    pending = [];
    for (const data of queued) if (open) send(data);
  };
  const err = handle.connect(connect, path);
  if (err < 0) {
    // Reported as net.Socket does: after this call has returned.
    setImmediate(() => failed(uvError(err, 'connect', path)));
  }
  return {
    write: (data) => (connected ? send(data) : void pending.push(data)),
    destroy: close,
  };
}

/** The same connection through `node:net`, loaded only here. */
function connectWithNet(path: string, on: ConnectionEvents): Connection {
  let socket: import('node:net').Socket | undefined;
  let destroyed = false;
  const pending: Buffer[] = [];
  void import('node:net').then((net) => {
    if (destroyed) return;
    const s = net.connect(path);
    socket = s;
    s.once('connect', () => on.connected());
    s.on('data', (chunk: Buffer) => on.data(chunk));
    s.on('error', (err) => on.error(err));
    s.on('close', () => on.closed());
    for (const data of pending) s.write(data);
  }, (err: Error) => on.error(err));
  return {
    write: (data) => (socket ? void socket.write(data) : void pending.push(data)),
    destroy: () => {
      destroyed = true;
      socket?.destroy();
    },
  };
}
