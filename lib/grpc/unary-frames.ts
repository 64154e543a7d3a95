/**
 * Weft's unary frames: one gRPC unary call on one unix-socket connection, without HTTP/2. The node agent serves them
 * beside gRPC on the same socket (frame-server.ts tells the two apart by the connection's first bytes), for the CNI
 * plugin, which runs once per pod operation and would otherwise pay for loading `node:http2` and an HTTP/2 session
 * on every ADD (about 20 ms: see cni/DESIGN.md, "Start-up"). The call is the same as over gRPC: the method's path,
 * the same protobuf messages, the caller's metadata and deadline, and the answer's gRPC status, message and trailing
 * metadata (e.g. weft-error-code). This module has no imports, so the plugin can load it for nothing.
 *
 * On the wire, the client writes MAGIC, then one frame; the server answers with one frame and closes. A frame is
 *
 *   u32 (big-endian) header length, header (UTF-8 JSON), u32 message length, message (protobuf bytes)
 *
 * Request header: {"path": "/weft.agent.v1.AgentService/Attach", "timeoutMs": 30000, "metadata": {"traceparent": …}}
 * Answer header:  {"status": 0, "message": "", "metadata": {"weft-error-code": …}}; its message is empty unless status is 0.
 */

/** The first bytes of a unary-frames connection; an HTTP/2 connection starts "PRI * HTTP/2.0". */
export const MAGIC = Buffer.from('WEFTRPC1');
/** Largest header either side accepts. */
export const MAX_HEADER_BYTES = 64 * 1024;

export interface RequestHeader {
  path: string;
  timeoutMs: number;
  metadata: Record<string, string>;
}

export interface AnswerHeader {
  status: number;
  message: string;
  metadata: Record<string, string>;
}

export function encodeFrame(header: object, message: Uint8Array): Buffer {
  const head = Buffer.from(JSON.stringify(header));
  const out = Buffer.allocUnsafe(8 + head.length + message.length);
  out.writeUInt32BE(head.length, 0);
  head.copy(out, 4);
  out.writeUInt32BE(message.length, 4 + head.length);
  out.set(message, 8 + head.length);
  return out;
}

/**
 * Reads one frame from the front of `data`: null while it is incomplete, a string saying what is wrong when it
 * cannot be a frame (a header or message over the limits, a header that is not a JSON object).
 */
export function readFrame(
  data: Buffer,
  maxMessageBytes: number,
): { header: Record<string, unknown>; message: Buffer; rest: Buffer } | null | string {
  if (data.length < 4) return null;
  const headLength = data.readUInt32BE(0);
  if (headLength > MAX_HEADER_BYTES)
    return `frame header of ${headLength} bytes is over the limit of ${MAX_HEADER_BYTES}`;
  if (data.length < 8 + headLength) return null;
  const messageLength = data.readUInt32BE(4 + headLength);
  if (messageLength > maxMessageBytes)
    return `message of ${messageLength} bytes is over the limit of ${maxMessageBytes}`;
  if (data.length < 8 + headLength + messageLength) return null;
  let header: unknown;
  try {
    header = JSON.parse(data.subarray(4, 4 + headLength).toString('utf8'));
  } catch (err) {
    return `frame header is not JSON: ${(err as Error).message}`;
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header))
    return 'frame header is not a JSON object';
  const end = 8 + headLength + messageLength;
  return {
    header: header as Record<string, unknown>,
    message: data.subarray(8 + headLength, end),
    rest: data.subarray(end),
  };
}

/** Metadata from a header: string values only, lower-case keys. */
export function metadataOf(value: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  if (typeof value !== 'object' || value === null) return out;
  for (const [k, v] of Object.entries(value)) if (typeof v === 'string') out[k.toLowerCase()] = v;
  return out;
}
