import { chmodSync } from 'node:fs';
import net from 'node:net';
import { Metadata, type Server } from '@grpc/grpc-js';
import type { Logger } from '../logger.js';
import { serverCredentials } from './credentials.js';
import { GrpcStatus } from './status.js';
import type { UnaryMethods } from './server.js';
import { encodeFrame, MAGIC, MAX_HEADER_BYTES, metadataOf, readFrame } from './unary-frames.js';

/**
 * Serves a grpc-js server on a unix socket and, on the same socket, the same server's unary methods as Weft's unary
 * frames (unary-frames.ts: the CNI plugin's cheap way in). The first bytes of each connection decide: the frames'
 * magic goes to `unaryMethods` (filled by addService), anything else (an HTTP/2 preface) is handed, with the bytes
 * already read, to grpc-js through its connection injector, so every gRPC client works as before.
 */
export interface UnixSocketServer {
  /** Stops accepting connections (in-flight calls finish; grpc-js sessions are closed by shutting the server down). */
  close(): Promise<void>;
}

const DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024;

export function listenUnixSocket(opts: {
  server: Server;
  socketPath: string;
  unaryMethods: UnaryMethods;
  logger: Logger;
  maxRequestBytes?: number;
  /**
   * How long a connection may stay silent before its protocol is known, and a frame connection before its request is
   * complete (default 10 s): a client that connects and sends nothing (or half a request) is closed, so stuck or
   * hostile local processes cannot pile up open connections. gRPC connections, once handed over, are grpc-js's (with
   * its keepalive), and a request being handled is bounded by its own deadline.
   */
  readTimeoutMs?: number;
  /**
   * The socket's mode (default 0600: only its owner, root for the agent, may connect; connecting needs write). It is
   * created with the umask's mode (0755 with the usual 022, which already lets no one else connect) and set at once.
   */
  mode?: number;
}): Promise<UnixSocketServer> {
  const injector = opts.server.createConnectionInjector(serverCredentials());
  const maxRequestBytes = opts.maxRequestBytes ?? DEFAULT_MAX_REQUEST_BYTES;
  const readTimeoutMs = opts.readTimeoutMs ?? 10_000;
  const listener = net.createServer((socket) => {
    socket.setTimeout(readTimeoutMs, () => socket.destroy());
    let head: Buffer = Buffer.alloc(0);
    const onFirstBytes = (chunk: Buffer) => {
      head = head.length === 0 ? chunk : Buffer.concat([head, chunk]);
      const n = Math.min(head.length, MAGIC.length);
      const frames = head.subarray(0, n).equals(MAGIC.subarray(0, n));
      if (frames && head.length < MAGIC.length) return; // not decided yet
      socket.off('data', onFirstBytes);
      socket.pause();
      if (frames) {
        serveFrame(socket, head.subarray(MAGIC.length), opts.unaryMethods, maxRequestBytes, opts.logger);
      } else {
        socket.setTimeout(0);
        socket.unshift(head);
        injector.injectConnection(socket);
      }
    };
    socket.on('data', onFirstBytes);
    socket.on('error', () => {}); // a client that goes away is not the server's problem
  });
  return new Promise((resolve, reject) => {
    listener.once('error', reject);
    listener.listen(opts.socketPath, () => {
      listener.off('error', reject);
      try {
        chmodSync(opts.socketPath, opts.mode ?? 0o600);
      } catch (err) {
        listener.close();
        return reject(err as Error);
      }
      resolve({
        close: () =>
          new Promise<void>((done) => {
            injector.destroy();
            listener.close(() => done());
          }),
      });
    });
  });
}

/** Reads the one request frame of a connection, runs the method, writes the answer frame, and closes. */
function serveFrame(
  socket: net.Socket,
  initial: Buffer,
  methods: UnaryMethods,
  maxRequestBytes: number,
  logger: Logger,
): void {
  let data = initial;
  const ac = new AbortController();
  let answered = false;
  const answer = (
    header: { status: number; message: string; metadata: Record<string, string> },
    message: Uint8Array = new Uint8Array(0),
  ) => {
    if (answered) return;
    answered = true;
    clearTimeout(deadline);
    if (!socket.destroyed) socket.end(encodeFrame(header, message));
  };
  const refuse = (code: number, message: string) => answer({ status: code, message, metadata: {} });
  let deadline: NodeJS.Timeout | undefined;
  // The client going away cancels the handler, as a cancelled gRPC call does.
  socket.on('close', () => ac.abort());

  const onData = (chunk: Buffer) => {
    data = data.length === 0 ? chunk : Buffer.concat([data, chunk]);
    tryRequest();
  };
  const tryRequest = () => {
    const frame = readFrame(data, maxRequestBytes);
    if (frame === null) {
      if (data.length > 8 + MAX_HEADER_BYTES + maxRequestBytes)
        refuse(GrpcStatus.RESOURCE_EXHAUSTED, 'request too large');
      return;
    }
    socket.off('data', onData);
    socket.setTimeout(0);
    if (typeof frame === 'string') {
      return refuse(
        frame.startsWith('message of') ? GrpcStatus.RESOURCE_EXHAUSTED : GrpcStatus.INTERNAL,
        `bad request frame: ${frame}`,
      );
    }
    const path = frame.header.path;
    const method = typeof path === 'string' ? methods.get(path) : undefined;
    if (!method) return refuse(GrpcStatus.UNIMPLEMENTED, `unknown method ${JSON.stringify(path)}`);
    const timeoutMs = frame.header.timeoutMs;
    if (typeof timeoutMs === 'number' && timeoutMs > 0) {
      deadline = setTimeout(() => {
        ac.abort();
        refuse(GrpcStatus.DEADLINE_EXCEEDED, 'Deadline exceeded');
      }, timeoutMs);
    }
    const metadata = new Metadata();
    for (const [k, v] of Object.entries(metadataOf(frame.header.metadata))) {
      try {
        metadata.set(k, v);
      } catch {
        // A key grpc-js would refuse (e.g. binary "-bin" keys) is dropped, as it could not have come over gRPC.
      }
    }
    method(Buffer.from(frame.message), metadata, ac.signal).then(
      (outcome) => {
        if (outcome.ok) return answer({ status: GrpcStatus.OK, message: '', metadata: {} }, outcome.response);
        const trailers: Record<string, string> = {};
        for (const [k, v] of Object.entries(outcome.metadata.getMap())) if (typeof v === 'string') trailers[k] = v;
        answer({ status: outcome.code, message: outcome.details, metadata: trailers });
      },
      (err: unknown) => {
        logger.error('unary frame call failed', { err, path });
        refuse(GrpcStatus.INTERNAL, 'internal error; see the server log');
      },
    );
  };
  socket.on('data', onData);
  socket.resume();
  tryRequest();
}
