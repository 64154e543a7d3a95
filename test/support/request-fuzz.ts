import assert from 'node:assert/strict';
import fc from 'fast-check';
import { DomainError } from '../../lib/errors.js';

/**
 * Property testing of a gRPC service's request validation, through its handlers, for every unary RPC of a generated
 * service definition. Requests are the RPC's own message (its fields found by decoding an empty message), each field
 * given a random value of its type (strings from `strings`: plausible ones and anything), and sent through the wire
 * encoding and back, so they are what a client could send. The dependencies are one stand-in that throws
 * `ReachedStore` when called: a request either reaches them (validation passed) or is refused with a DomainError of
 * kind invalid_argument (INVALID_ARGUMENT); anything else would be INTERNAL.
 */
export class ReachedStore extends Error {}

/** Every property of it is itself; calling it throws ReachedStore. Stands for any repository, notifier or option. */
export function storeStandIn(): any {
  const fn: any = new Proxy(function standIn() {}, {
    get: (_t, key) => (key === 'then' ? undefined : key === Symbol.toPrimitive ? () => 1 : fn),
    apply: () => {
      throw new ReachedStore('reached the store');
    },
  });
  return fn;
}

interface MethodDef {
  path: string;
  responseStream: boolean;
  requestSerialize: (v: any) => Buffer;
  requestDeserialize: (b: Buffer) => any;
}

const numbers = fc.oneof(
  fc.constantFrom(0, 1, 2, 3, 24, 26, 32, 64, 128, 1000, 65535, 65536),
  fc.nat({ max: 2 ** 32 - 1 }),
  fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
);

const anyString = fc.oneof(
  fc.string({ maxLength: 20 }),
  fc.string({ unit: 'binary', maxLength: 20 }),
  fc.base64String({ maxLength: 24 }),
  fc.constantFrom('', ' ', '\n', '-a', 'A'.repeat(300)),
);

/** `plausible` for most values, anything for the rest. */
export const mostly = (plausible: fc.Arbitrary<string>) => fc.oneof({ arbitrary: plausible, weight: 4 }, anyString);

/** A random value shaped like `example` (a decoded empty message's field). */
function like(example: unknown, strings: fc.Arbitrary<string>): fc.Arbitrary<unknown> {
  if (typeof example === 'string') return strings;
  if (typeof example === 'boolean') return fc.boolean();
  if (typeof example === 'number') return numbers;
  // Repeated fields: of strings or of numbers (enums); the wrong one does not encode and leaves the field empty.
  if (Array.isArray(example)) return fc.oneof(fc.array(strings, { maxLength: 3 }), fc.array(numbers, { maxLength: 3 }));
  if (example instanceof Date) return fc.date({ noInvalidDate: true });
  if (typeof example === 'object' && example !== null) return fc.dictionary(strings, strings, { maxKeys: 3 });
  return fc.constant(example);
}

/** Strings for a field, by its name: mostly plausible ones (so that validation is also passed), sometimes anything. */
export type FieldStrings = (field: string) => fc.Arbitrary<string>;

function requestsOf(def: MethodDef, strings: FieldStrings): fc.Arbitrary<unknown> {
  const empty = def.requestDeserialize(Buffer.alloc(0)) as Record<string, unknown>;
  const fields = Object.fromEntries(Object.entries(empty).map(([k, v]) => [k, like(v, strings(k))]));
  return fc.record(fields, { requiredKeys: [] }).map((partial) => {
    const req = { ...empty, ...partial };
    try {
      return def.requestDeserialize(def.requestSerialize(req));
    } catch {
      // A value the field's type cannot carry (a repeated number field given strings): the field stays empty.
      return def.requestDeserialize(def.requestSerialize(empty));
    }
  });
}

/**
 * For each unary RPC of `service`: `numRuns` random requests, each refused as INVALID_ARGUMENT or reaching the
 * store. Returns, per RPC, how many reached it (so that a caller can see validation is passed by some).
 */
export async function fuzzUnaryRequests(
  service: Record<string, MethodDef>,
  handlers: Record<string, (req: any, ctx: any) => any>,
  strings: FieldStrings,
  opts: { numRuns: number; interruptAfterTimeLimit: number; skip?: readonly string[] },
): Promise<Record<string, { reached: number; refused: number }>> {
  const ctx = {
    signal: new AbortController().signal,
    logger: storeStandIn(),
    metadata: storeStandIn(),
    identity: { kind: 'none' },
    requestId: 'fuzz',
  };
  const counts: Record<string, { reached: number; refused: number }> = {};
  for (const [name, def] of Object.entries(service)) {
    if (def.responseStream || opts.skip?.includes(name)) continue;
    const c = (counts[name] = { reached: 0, refused: 0 });
    await fc.assert(
      fc.asyncProperty(requestsOf(def, strings), async (req) => {
        try {
          await handlers[name]!(req, ctx);
          c.reached++;
        } catch (err) {
          if (err instanceof ReachedStore) {
            c.reached++;
            return;
          }
          if (!(err instanceof DomainError))
            throw new Error(`${def.path} threw ${String(err)} instead of a DomainError (INTERNAL to the caller)`, {
              cause: err,
            });
          assert.equal(err.kind, 'invalid_argument', `${def.path}: ${err.code} ${err.message}`);
          c.refused++;
        }
      }),
      { numRuns: opts.numRuns, interruptAfterTimeLimit: opts.interruptAfterTimeLimit, includeErrorInReport: true },
    );
  }
  return counts;
}
