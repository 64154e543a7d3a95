import { LABEL_KEY, LABEL_VALUE, type Requirement } from '../../../lib/labels.js';
import { parseAddress, parseCidr, type Cidr } from '../../../lib/net/ip.js';
import { DomainError } from '../../../lib/errors.js';

/**
 * Policy objects as Weft holds them, parsed from the Kubernetes API's JSON shape (networking.k8s.io/v1 NetworkPolicy,
 * policy.networking.k8s.io/v1alpha1 AdminNetworkPolicy and BaselineAdminNetworkPolicy). Pure. A missing field and
 * an empty one are kept apart where Kubernetes gives them different meanings; every error names the field to fix.
 */
export type Protocol = 'TCP' | 'UDP' | 'SCTP';
export const PROTOCOLS: readonly Protocol[] = ['TCP', 'UDP', 'SCTP'];

export interface Selector {
  /** Requirements that must all hold; empty selects everything. */
  requirements: Requirement[];
}

export interface IpBlock {
  cidr: Cidr;
  except: Cidr[];
}

/** A NetworkPolicy peer: podSelector and namespaceSelector ANDed; an ipBlock alone. */
export interface Peer {
  podSelector?: Selector;
  namespaceSelector?: Selector;
  ipBlock?: IpBlock;
}

/** A port: `port` absent means every port of the protocol; a name is resolved on the destination pod. */
export interface PortRule {
  protocol: Protocol;
  port?: number | string;
  endPort?: number;
}

export interface Rule {
  /** undefined or empty: every peer (the field `from`/`to` missing or empty). */
  peers?: Peer[];
  /** undefined or empty: every port and protocol. */
  ports?: PortRule[];
}

export interface NetworkPolicy {
  kind: 'NetworkPolicy';
  namespace: string;
  name: string;
  podSelector: Selector;
  /** After defaulting: Ingress always unless listed otherwise; Egress when listed or when egress rules exist. */
  affectsIngress: boolean;
  affectsEgress: boolean;
  ingress: Rule[];
  egress: Rule[];
}

export type AdminAction = 'Allow' | 'Deny' | 'Pass';

/** Who an admin rule or subject means: whole namespaces, or pods (namespace and pod selectors ANDed). */
export interface AdminPeer {
  namespaces?: Selector;
  pods?: { namespaceSelector: Selector; podSelector: Selector };
  /** Egress only: CIDRs outside (or inside) the cluster. */
  networks?: Cidr[];
}

export type AdminPort =
  | { kind: 'number'; protocol: Protocol; port: number }
  | { kind: 'range'; protocol: Protocol; start: number; end: number }
  | { kind: 'named'; name: string };

export interface AdminRule {
  name: string;
  action: AdminAction;
  peers: AdminPeer[];
  /** undefined: every port. */
  ports?: AdminPort[];
}

export interface AdminPolicy {
  kind: 'AdminNetworkPolicy' | 'BaselineAdminNetworkPolicy';
  name: string;
  /** AdminNetworkPolicy: 0..1000, lower first. The baseline has none. */
  priority: number;
  subject: AdminPeer;
  ingress: AdminRule[];
  egress: AdminRule[];
}

export type Policy = NetworkPolicy | AdminPolicy;

export const invalidPolicy = (field: string, message: string) =>
  new DomainError('policy.invalid', 'invalid_argument', `${field}: ${message}`);

const NAME = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;
type Json = Record<string, unknown>;

/**
 * A value as JSON, for an error message. JSON.parse accepts nesting deeper than JSON.stringify can print back (a
 * RangeError, INTERNAL instead of INVALID_ARGUMENT); such a value is named instead. Found by the property test.
 */
function show(v: unknown): string {
  try {
    return JSON.stringify(v);
  } catch {
    return `a ${Array.isArray(v) ? 'list' : typeof v} nested too deeply to print`;
  }
}

const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

function object(v: unknown, field: string): Json {
  if (!isObject(v)) throw invalidPolicy(field, `must be an object, not ${show(v)}`);
  return v;
}

function list(v: unknown, field: string): unknown[] {
  if (!Array.isArray(v)) throw invalidPolicy(field, `must be a list, not ${show(v)}`);
  return v;
}

function onlyKeys(o: Json, field: string, allowed: readonly string[]): void {
  for (const k of Object.keys(o))
    if (!allowed.includes(k))
      throw invalidPolicy(`${field}.${k}`, `is not a field here (expected one of: ${allowed.join(', ')})`);
}

export function resourceName(v: unknown, field: string): string {
  if (typeof v !== 'string' || !NAME.test(v))
    throw invalidPolicy(field, `must be a lowercase DNS name (letters, digits, '-', '.'), not ${show(v)}`);
  return v;
}

export function parseLabels(v: unknown, field: string): Record<string, string> {
  if (v === undefined || v === null) return {};
  const o = object(v, field);
  const out: Record<string, string> = {};
  for (const [k, val] of Object.entries(o)) {
    if (!LABEL_KEY.test(k)) throw invalidPolicy(`${field}.${k}`, 'is not a valid label key');
    if (typeof val !== 'string' || !LABEL_VALUE.test(val))
      throw invalidPolicy(`${field}.${k}`, `value ${show(val)} is not a valid label value`);
    out[k] = val;
  }
  return out;
}

/** A Kubernetes LabelSelector object: matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist). */
export function parseSelector(v: unknown, field: string): Selector {
  const o = object(v, field);
  onlyKeys(o, field, ['matchLabels', 'matchExpressions']);
  const requirements: Requirement[] = Object.entries(parseLabels(o.matchLabels, `${field}.matchLabels`)).map(
    ([key, value]) => ({ key, op: 'in', values: [value] }),
  );
  if (o.matchExpressions !== undefined) {
    list(o.matchExpressions, `${field}.matchExpressions`).forEach((e, i) => {
      const f = `${field}.matchExpressions[${i}]`;
      const x = object(e, f);
      onlyKeys(x, f, ['key', 'operator', 'values']);
      if (typeof x.key !== 'string' || !LABEL_KEY.test(x.key))
        throw invalidPolicy(`${f}.key`, `${show(x.key)} is not a valid label key`);
      const values = x.values === undefined ? [] : list(x.values, `${f}.values`);
      values.forEach((val, j) => {
        if (typeof val !== 'string' || !LABEL_VALUE.test(val))
          throw invalidPolicy(`${f}.values[${j}]`, `${show(val)} is not a valid label value`);
      });
      switch (x.operator) {
        case 'In':
        case 'NotIn':
          if (values.length === 0) throw invalidPolicy(`${f}.values`, `must not be empty for operator ${x.operator}`);
          requirements.push({ key: x.key, op: x.operator === 'In' ? 'in' : 'notin', values: values as string[] });
          break;
        case 'Exists':
        case 'DoesNotExist':
          if (values.length > 0) throw invalidPolicy(`${f}.values`, `must be empty for operator ${x.operator}`);
          requirements.push({ key: x.key, op: x.operator === 'Exists' ? 'exists' : 'doesnotexist' });
          break;
        default:
          throw invalidPolicy(`${f}.operator`, `${show(x.operator)} is not one of In, NotIn, Exists, DoesNotExist`);
      }
    });
  }
  return { requirements };
}

function protocol(v: unknown, field: string): Protocol {
  if (v === undefined) return 'TCP';
  if (!PROTOCOLS.includes(v as Protocol)) throw invalidPolicy(field, `${show(v)} is not one of TCP, UDP, SCTP`);
  return v as Protocol;
}

export function portNumber(v: unknown, field: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 65535)
    throw invalidPolicy(field, `${show(v)} is not a port number (1-65535)`);
  return v;
}

const PORT_NAME = /^(?=.*[a-z])[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$/;
export function portName(v: unknown, field: string): string {
  if (typeof v !== 'string' || !PORT_NAME.test(v) || v.includes('--'))
    throw invalidPolicy(
      field,
      `${show(v)} is not a port name (at most 15 lowercase letters, digits and '-', with a letter)`,
    );
  return v;
}

function cidr(v: unknown, field: string): Cidr {
  if (typeof v !== 'string') throw invalidPolicy(field, `must be a CIDR such as "10.0.0.0/8", not ${show(v)}`);
  try {
    return parseCidr(v, field);
  } catch (err) {
    throw invalidPolicy(field, (err as Error).message);
  }
}

const within = (inner: Cidr, outer: Cidr) =>
  inner.family === outer.family &&
  inner.prefixLength >= outer.prefixLength &&
  inner.base >> BigInt((inner.family === 4 ? 32 : 128) - outer.prefixLength) ===
    outer.base >> BigInt((outer.family === 4 ? 32 : 128) - outer.prefixLength);

function parsePeer(v: unknown, field: string): Peer {
  const o = object(v, field);
  onlyKeys(o, field, ['podSelector', 'namespaceSelector', 'ipBlock']);
  const peer: Peer = {};
  if (o.podSelector !== undefined) peer.podSelector = parseSelector(o.podSelector, `${field}.podSelector`);
  if (o.namespaceSelector !== undefined)
    peer.namespaceSelector = parseSelector(o.namespaceSelector, `${field}.namespaceSelector`);
  if (o.ipBlock !== undefined) {
    if (peer.podSelector || peer.namespaceSelector)
      throw invalidPolicy(
        `${field}.ipBlock`,
        'must be the only field of its peer (podSelector and namespaceSelector go in another peer)',
      );
    const b = object(o.ipBlock, `${field}.ipBlock`);
    onlyKeys(b, `${field}.ipBlock`, ['cidr', 'except']);
    const block = cidr(b.cidr, `${field}.ipBlock.cidr`);
    const except =
      b.except === undefined
        ? []
        : list(b.except, `${field}.ipBlock.except`).map((e, i) => {
            const c = cidr(e, `${field}.ipBlock.except[${i}]`);
            if (!within(c, block) || c.prefixLength === block.prefixLength)
              throw invalidPolicy(`${field}.ipBlock.except[${i}]`, `must lie strictly inside ${String(b.cidr)}`);
            return c;
          });
    peer.ipBlock = { cidr: block, except };
  }
  if (!peer.podSelector && !peer.namespaceSelector && !peer.ipBlock)
    throw invalidPolicy(field, 'a peer needs podSelector, namespaceSelector or ipBlock');
  return peer;
}

function parsePort(v: unknown, field: string): PortRule {
  const o = object(v, field);
  onlyKeys(o, field, ['protocol', 'port', 'endPort']);
  const p: PortRule = { protocol: protocol(o.protocol, `${field}.protocol`) };
  if (o.port !== undefined)
    p.port =
      typeof o.port === 'string' && !/^\d+$/.test(o.port)
        ? portName(o.port, `${field}.port`)
        : portNumber(typeof o.port === 'string' ? Number(o.port) : o.port, `${field}.port`);
  if (o.endPort !== undefined) {
    if (typeof p.port !== 'number')
      throw invalidPolicy(`${field}.endPort`, 'needs a numeric port (a range cannot start at a named port)');
    p.endPort = portNumber(o.endPort, `${field}.endPort`);
    if (p.endPort < p.port) throw invalidPolicy(`${field}.endPort`, `${p.endPort} is below port ${p.port}`);
  }
  return p;
}

function parseRules(v: unknown, field: string, peersKey: 'from' | 'to'): Rule[] {
  return list(v, field).map((r, i) => {
    const f = `${field}[${i}]`;
    const o = object(r, f);
    onlyKeys(o, f, [peersKey, 'ports']);
    const rule: Rule = {};
    if (o[peersKey] !== undefined)
      rule.peers = list(o[peersKey], `${f}.${peersKey}`).map((p, j) => parsePeer(p, `${f}.${peersKey}[${j}]`));
    if (o.ports !== undefined) rule.ports = list(o.ports, `${f}.ports`).map((p, j) => parsePort(p, `${f}.ports[${j}]`));
    return rule;
  });
}

function metadata(o: Json, namespaced: boolean, defaultNamespace: string): { name: string; namespace: string } {
  const m = object(o.metadata, 'metadata');
  const name = resourceName(m.name, 'metadata.name');
  if (!namespaced) return { name, namespace: '' };
  return {
    name,
    namespace: m.namespace === undefined ? defaultNamespace : resourceName(m.namespace, 'metadata.namespace'),
  };
}

export function parseNetworkPolicy(o: Json, defaultNamespace = 'default'): NetworkPolicy {
  const { name, namespace } = metadata(o, true, defaultNamespace);
  const spec = object(o.spec, 'spec');
  onlyKeys(spec, 'spec', ['podSelector', 'policyTypes', 'ingress', 'egress']);
  if (spec.podSelector === undefined)
    throw invalidPolicy('spec.podSelector', 'is required ({} selects every pod in the namespace)');
  const ingress = spec.ingress === undefined ? [] : parseRules(spec.ingress, 'spec.ingress', 'from');
  const egress = spec.egress === undefined ? [] : parseRules(spec.egress, 'spec.egress', 'to');
  let affectsIngress = true;
  let affectsEgress = egress.length > 0;
  if (spec.policyTypes !== undefined) {
    const types = list(spec.policyTypes, 'spec.policyTypes');
    types.forEach((t, i) => {
      if (t !== 'Ingress' && t !== 'Egress')
        throw invalidPolicy(`spec.policyTypes[${i}]`, `${show(t)} is not Ingress or Egress`);
    });
    // An empty list defaults like a missing one, as the Kubernetes API server does.
    if (types.length > 0) {
      affectsIngress = types.includes('Ingress');
      affectsEgress = types.includes('Egress');
    }
  }
  return {
    kind: 'NetworkPolicy',
    namespace,
    name,
    podSelector: parseSelector(spec.podSelector, 'spec.podSelector'),
    affectsIngress,
    affectsEgress,
    ingress,
    egress,
  };
}

function parseAdminPeer(v: unknown, field: string, allowNetworks: boolean): AdminPeer {
  const o = object(v, field);
  const keys = Object.keys(o);
  const allowed = allowNetworks ? ['namespaces', 'pods', 'networks'] : ['namespaces', 'pods'];
  onlyKeys(o, field, allowed);
  if (keys.length !== 1) throw invalidPolicy(field, `needs exactly one of ${allowed.join(', ')}`);
  if (o.namespaces !== undefined) return { namespaces: parseSelector(o.namespaces, `${field}.namespaces`) };
  if (o.networks !== undefined) {
    const nets = list(o.networks, `${field}.networks`);
    if (nets.length === 0) throw invalidPolicy(`${field}.networks`, 'must name at least one CIDR');
    return { networks: nets.map((n, i) => cidr(n, `${field}.networks[${i}]`)) };
  }
  const p = object(o.pods, `${field}.pods`);
  onlyKeys(p, `${field}.pods`, ['namespaceSelector', 'podSelector']);
  if (p.namespaceSelector === undefined || p.podSelector === undefined)
    throw invalidPolicy(`${field}.pods`, 'needs both namespaceSelector and podSelector ({} selects all)');
  return {
    pods: {
      namespaceSelector: parseSelector(p.namespaceSelector, `${field}.pods.namespaceSelector`),
      podSelector: parseSelector(p.podSelector, `${field}.pods.podSelector`),
    },
  };
}

function parseAdminPorts(v: unknown, field: string): AdminPort[] {
  return list(v, field).map((p, i) => {
    const f = `${field}[${i}]`;
    const o = object(p, f);
    onlyKeys(o, f, ['portNumber', 'portRange', 'namedPort']);
    if (Object.keys(o).length !== 1) throw invalidPolicy(f, 'needs exactly one of portNumber, portRange, namedPort');
    if (o.namedPort !== undefined) return { kind: 'named', name: portName(o.namedPort, `${f}.namedPort`) };
    if (o.portNumber !== undefined) {
      const n = object(o.portNumber, `${f}.portNumber`);
      return {
        kind: 'number',
        protocol: protocol(n.protocol, `${f}.portNumber.protocol`),
        port: portNumber(n.port, `${f}.portNumber.port`),
      };
    }
    const r = object(o.portRange, `${f}.portRange`);
    const start = portNumber(r.start, `${f}.portRange.start`);
    const end = portNumber(r.end, `${f}.portRange.end`);
    if (end < start) throw invalidPolicy(`${f}.portRange.end`, `${end} is below start ${start}`);
    return { kind: 'range', protocol: protocol(r.protocol, `${f}.portRange.protocol`), start, end };
  });
}

function parseAdminRules(
  v: unknown,
  field: string,
  peersKey: 'from' | 'to',
  actions: readonly AdminAction[],
): AdminRule[] {
  const rules = list(v, field);
  if (rules.length > 100) throw invalidPolicy(field, `holds ${rules.length} rules; at most 100`);
  return rules.map((r, i) => {
    const f = `${field}[${i}]`;
    const o = object(r, f);
    onlyKeys(o, f, ['name', 'action', peersKey, 'ports']);
    if (!actions.includes(o.action as AdminAction))
      throw invalidPolicy(`${f}.action`, `${show(o.action)} is not one of ${actions.join(', ')}`);
    const peers = list(o[peersKey], `${f}.${peersKey}`);
    if (peers.length === 0) throw invalidPolicy(`${f}.${peersKey}`, 'must name at least one peer');
    // The name ends up in the agents' rule comments: a string of printable characters, at most 100 as in the API's
    // CRD. (String(o.name) of {"toString": 1} threw a TypeError, INTERNAL; a newline made every agent refuse the pods
    // the policy selects. Found by the property test.)
    if (
      o.name !== undefined &&
      (typeof o.name !== 'string' || o.name.length > 100 || /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/.test(o.name))
    ) {
      throw invalidPolicy(
        `${f}.name`,
        `${typeof o.name === 'string' ? show(o.name.slice(0, 120)) : show(o.name)} must be a string of at most 100 printable characters`,
      );
    }
    const rule: AdminRule = {
      name: o.name === undefined ? `${peersKey === 'from' ? 'ingress' : 'egress'}-${i}` : o.name,
      action: o.action as AdminAction,
      peers: peers.map((p, j) => parseAdminPeer(p, `${f}.${peersKey}[${j}]`, peersKey === 'to')),
    };
    if (o.ports !== undefined) rule.ports = parseAdminPorts(o.ports, `${f}.ports`);
    return rule;
  });
}

export function parseAdminPolicy(o: Json, kind: AdminPolicy['kind']): AdminPolicy {
  const { name } = metadata(o, false, '');
  if (kind === 'BaselineAdminNetworkPolicy' && name !== 'default')
    throw invalidPolicy(
      'metadata.name',
      'a BaselineAdminNetworkPolicy must be named "default" (there is one per cluster)',
    );
  const spec = object(o.spec, 'spec');
  onlyKeys(
    spec,
    'spec',
    kind === 'AdminNetworkPolicy' ? ['priority', 'subject', 'ingress', 'egress'] : ['subject', 'ingress', 'egress'],
  );
  let priority = 0;
  if (kind === 'AdminNetworkPolicy') {
    if (
      typeof spec.priority !== 'number' ||
      !Number.isInteger(spec.priority) ||
      spec.priority < 0 ||
      spec.priority > 1000
    ) {
      throw invalidPolicy('spec.priority', `${show(spec.priority)} must be an integer from 0 (first) to 1000`);
    }
    priority = spec.priority;
  }
  const actions: AdminAction[] = kind === 'AdminNetworkPolicy' ? ['Allow', 'Deny', 'Pass'] : ['Allow', 'Deny'];
  return {
    kind,
    name,
    priority,
    subject: parseAdminPeer(spec.subject, 'spec.subject', false),
    ingress: spec.ingress === undefined ? [] : parseAdminRules(spec.ingress, 'spec.ingress', 'from', actions),
    egress: spec.egress === undefined ? [] : parseAdminRules(spec.egress, 'spec.egress', 'to', actions),
  };
}

/** One Kubernetes object (already parsed from YAML or JSON) to a policy. */
export function parsePolicyObject(v: unknown, defaultNamespace = 'default'): Policy {
  const o = object(v, 'object');
  switch (o.kind) {
    case 'NetworkPolicy':
      if (o.apiVersion !== undefined && o.apiVersion !== 'networking.k8s.io/v1')
        throw invalidPolicy('apiVersion', `${show(o.apiVersion)}: NetworkPolicy is networking.k8s.io/v1`);
      return parseNetworkPolicy(o, defaultNamespace);
    case 'AdminNetworkPolicy':
    case 'BaselineAdminNetworkPolicy':
      return parseAdminPolicy(o, o.kind);
    default:
      throw invalidPolicy(
        'kind',
        `${show(o.kind)} is not NetworkPolicy, AdminNetworkPolicy or BaselineAdminNetworkPolicy`,
      );
  }
}

/** An address as Weft compares it: family and 128-bit value. */
export function parseIp(text: string, field: string): { family: 4 | 6; value: bigint } {
  try {
    return parseAddress(text, field);
  } catch {
    throw invalidPolicy(field, `${show(text)} is not an IP address`);
  }
}
