/**
 * Kubernetes label selectors, matched: a selector is a list of requirements that must all hold (an empty list matches
 * everything). IPAM parses them from text ("zone=a,env in (prod,stage),!spot"), policy from LabelSelector objects
 * (matchLabels, matchExpressions); both match with this.
 */
export type Requirement =
  { key: string; op: 'in' | 'notin'; values: string[] } | { key: string; op: 'exists' | 'doesnotexist' };

/** Label keys and values as Kubernetes accepts them: an optional DNS-subdomain prefix and a name of at most 63. */
export const LABEL_KEY =
  /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
export const LABEL_VALUE = /^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$/;

/**
 * What is wrong with a label (key and value) as Kubernetes judges it, or null: LABEL_KEY and LABEL_VALUE, and a key's
 * prefix (before "/") at most 253 characters.
 */
export function labelProblem(key: string, value: string): string | null {
  if (!LABEL_KEY.test(key) || key.indexOf('/') > 253) {
    return `label key ${JSON.stringify(key.slice(0, 300))} is invalid: an optional DNS-subdomain prefix (at most 253 characters) and '/', then a name of 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit`;
  }
  if (!LABEL_VALUE.test(value)) {
    return `label ${key}'s value ${JSON.stringify(value.slice(0, 100))} is invalid: empty, or 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit`;
  }
  return null;
}

export function matches(selector: readonly Requirement[], labels: Readonly<Record<string, string>>): boolean {
  return selector.every((r) => {
    const has = Object.prototype.hasOwnProperty.call(labels, r.key);
    switch (r.op) {
      case 'exists':
        return has;
      case 'doesnotexist':
        return !has;
      case 'in':
        return has && r.values.includes(labels[r.key]!);
      case 'notin':
        return !has || !r.values.includes(labels[r.key]!);
    }
  });
}
