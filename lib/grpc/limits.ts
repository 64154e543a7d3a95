import { DomainError } from '../errors.js';

/**
 * How large a gRPC message may be, and how Weft keeps its messages far below that. Every server and client sets the
 * limit explicitly (grpc-js's receive default, 4 MiB, is also what other languages' gRPC clients accept by default,
 * so an external caller of the IPAM API with default settings can read anything Weft sends). Nothing that grows with
 * the cluster is sent whole: lists are paged, watch messages are split into chunks of about CHUNK_BYTES, a sixteenth
 * of the limit, so that a size estimate that is off by a lot still never reaches it, and no single message holds up a
 * stream's flow control for long.
 */
export const MAX_MESSAGE_BYTES = 4 * 1024 * 1024;

/** What a chunk of a watch message or a default page aims at. */
export const CHUNK_BYTES = 256 * 1024;

/** Channel and server options that set both directions' limit. */
export const messageSizeOptions = {
  'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
  'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
} as const;

/**
 * The encoded size of a string field at most: its UTF-8 bytes plus a tag (2 bytes for field numbers up to 2047) and a
 * length prefix (up to 5 bytes), rounded up for the nesting of the message around it.
 */
export const stringFieldBytes = (s: string): number => Buffer.byteLength(s) + 8;

/**
 * Splits items, in order, into runs whose sizes (as `sizeOf` estimates them) add up to at most `budget`; an item
 * larger than the budget goes alone. Always at least one run (perhaps empty), so that a message with nothing in it is
 * still sent.
 */
export function chunkBySize<T>(items: readonly T[], sizeOf: (item: T) => number, budget = CHUNK_BYTES): T[][] {
  const out: T[][] = [[]];
  let used = 0;
  for (const item of items) {
    const size = sizeOf(item);
    if (used + size > budget && out[out.length - 1]!.length > 0) {
      out.push([]);
      used = 0;
    }
    out[out.length - 1]!.push(item);
    used += size;
  }
  return out;
}

/**
 * For a list that a caller asked for whole (page_size 0, as callers that predate paging do): refuses one that would
 * not fit a message, saying how to page, rather than sending a short list that the caller would take as complete.
 */
export function ensureFitsOneMessage(code: string, encodedBytes: number, what: string): void {
  if (encodedBytes > MAX_MESSAGE_BYTES - 64 * 1024)
    throw new DomainError(
      code,
      'exhausted',
      `${what} take ${encodedBytes} bytes, more than one message holds (${MAX_MESSAGE_BYTES}): set page_size and follow next_page_token`,
    );
}
