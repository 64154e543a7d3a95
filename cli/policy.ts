import { readFileSync } from 'node:fs';
import { parseAllDocuments } from 'yaml';
import type { NamedPort } from '../gen/weft/policy/v1/policy.js';

/** Helpers of `weft policy …` and the local cluster's `--labels`/`--ports`: flag and file parsing only. */
export class PolicyInputError extends Error {}

/** "app=web,tier=front" → labels. */
export function parseLabelsFlag(text: string | undefined): Record<string, string> {
  if (!text) return {};
  const out: Record<string, string> = {};
  for (const part of text
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean)) {
    const i = part.indexOf('=');
    if (i <= 0)
      throw new PolicyInputError(
        `--labels ${JSON.stringify(text)}: ${JSON.stringify(part)} is not key=value (e.g. --labels app=web,tier=front)`,
      );
    out[part.slice(0, i)] = part.slice(i + 1);
  }
  return out;
}

/** "http:80/tcp,dns:53/udp" → named ports (protocol TCP when left out). */
export function parsePortsFlag(text: string | undefined): NamedPort[] {
  if (!text) return [];
  return text
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean)
    .map((part) => {
      const m = /^([a-z0-9-]+):(\d+)(?:\/(tcp|udp|sctp))?$/i.exec(part);
      if (!m)
        throw new PolicyInputError(
          `--ports ${JSON.stringify(text)}: ${JSON.stringify(part)} is not name:port[/proto] (e.g. --ports http:80/tcp,dns:53/udp)`,
        );
      return { name: m[1]!, port: Number(m[2]), protocol: (m[3] ?? 'TCP').toUpperCase() };
    });
}

/** "80/tcp", "53/udp" or "80" → port and protocol. */
export function parsePortProto(text: string): { port: number; protocol: string } {
  const m = /^(\d+)(?:\/(tcp|udp|sctp))?$/i.exec(text);
  if (!m) throw new PolicyInputError(`${JSON.stringify(text)} is not PORT[/PROTO] (e.g. 80/tcp)`);
  return { port: Number(m[1]), protocol: (m[2] ?? 'TCP').toUpperCase() };
}

/**
 * The objects of a YAML or JSON file ("-" reads standard input): every document, and the items of a `kind: List`.
 * A syntax error names the file and the line.
 */
export function readPolicyObjects(file: string): unknown[] {
  const text = readFileSync(file === '-' ? 0 : file, 'utf8');
  const docs = parseAllDocuments(text);
  const out: unknown[] = [];
  for (const [n, doc] of (Array.isArray(docs) ? docs : [docs]).entries()) {
    if (doc.errors.length > 0) {
      const e = doc.errors[0]!;
      throw new PolicyInputError(`${file}: line ${e.linePos?.[0]?.line ?? '?'}: ${e.message.split('\n')[0]}`);
    }
    let v: unknown;
    try {
      v = doc.toJS() as unknown;
      // Each object is sent as JSON: an alias inside its own anchor (`a: &x [*x]`) makes a value that refers to
      // itself, which JSON.stringify refused later with a TypeError; too many aliases (a "billion laughs" file) make
      // toJS refuse. Found by the property test.
      JSON.stringify(v);
    } catch (err) {
      throw new PolicyInputError(`${file}: document ${n + 1}: ${(err as Error).message.split('\n')[0]}`);
    }
    if (v === null || v === undefined) continue;
    const list = v as { kind?: unknown; items?: unknown };
    if (list.kind === 'List' && Array.isArray(list.items)) out.push(...list.items);
    else out.push(v);
  }
  if (out.length === 0) throw new PolicyInputError(`${file} holds no objects`);
  return out;
}
