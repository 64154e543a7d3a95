import { LABEL_KEY as KEY, LABEL_VALUE as VALUE, matches, type Requirement } from '../../../lib/labels.js';
import { ipamErrors } from './ipam.errors.js';

/**
 * Kubernetes-style label selectors, as text: "zone=a,tier!=db,env in (prod,stage),env notin (dev),gpu,!spot".
 * An empty selector matches everything. Pure: parsed once, matched many times (lib/labels.ts).
 */
export { matches, type Requirement };

/** Splits on commas that are not inside parentheses. */
function clauses(text: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let cur = '';
  for (const ch of text) {
    if (ch === '(') depth++;
    if (ch === ')') depth--;
    if (ch === ',' && depth === 0) {
      out.push(cur);
      cur = '';
    } else cur += ch;
  }
  out.push(cur);
  return out.map((c) => c.trim());
}

export function parseSelector(text: string, field = 'selector'): Requirement[] {
  const bad = (clause: string, why: string) =>
    ipamErrors.invalid(
      field,
      `${field} ${JSON.stringify(text)}: ${JSON.stringify(clause)} ${why} (e.g. "zone=a,env in (prod,stage),!spot")`,
    );
  if (text.trim() === '') return [];
  return clauses(text).map((c): Requirement => {
    let m: RegExpExecArray | null;
    const key = (k: string) => {
      if (!KEY.test(k)) throw bad(c, `has an invalid label key ${JSON.stringify(k)}`);
      return k;
    };
    const values = (vs: string[]) => {
      for (const v of vs) if (!VALUE.test(v)) throw bad(c, `has an invalid label value ${JSON.stringify(v)}`);
      return vs;
    };
    if ((m = /^(\S+)\s+(in|notin)\s+\(([^)]*)\)$/.exec(c)))
      return { key: key(m[1]!), op: m[2] as 'in' | 'notin', values: values(m[3]!.split(',').map((v) => v.trim())) };
    if ((m = /^([^!=\s]+)\s*(==|=|!=)\s*(\S*)$/.exec(c)))
      return { key: key(m[1]!), op: m[2] === '!=' ? 'notin' : 'in', values: values([m[3]!]) };
    if ((m = /^!\s*(\S+)$/.exec(c))) return { key: key(m[1]!), op: 'doesnotexist' };
    if ((m = /^(\S+)$/.exec(c))) return { key: key(m[1]!), op: 'exists' };
    throw bad(c, 'is not a requirement');
  });
}

/** Pools' selectors are few and rarely change: each text is parsed once, not on every allocation. */
const parsed = new Map<string, Requirement[]>();

export function parseSelectorOnce(text: string): Requirement[] {
  let r = parsed.get(text);
  if (!r) {
    r = parseSelector(text);
    if (parsed.size >= 1024) parsed.clear();
    parsed.set(text, r);
  }
  return r;
}
