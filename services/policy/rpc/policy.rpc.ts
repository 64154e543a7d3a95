import type { Handlers } from '../../../lib/grpc/server.js';
import { DomainError } from '../../../lib/errors.js';
import { formatAddress } from '../../../lib/net/ip.js';
import {
  ListPoliciesResponse,
  PolicyServiceService,
  type CompiledPod as PbCompiledPod,
  type Verdict as PbVerdict,
  type WatchNodePolicyResponse,
} from '../../../gen/weft/policy/v1/policy.js';
import { CHUNK_BYTES, chunkBySize, ensureFitsOneMessage, stringFieldBytes } from '../../../lib/grpc/limits.js';
import { decodePageToken, encodePageToken, pageSizeOf } from '../../../lib/paging.js';
import type { Notifier } from '../../../lib/db/notifier.js';
import type { NodePolicy } from '../domain/compile.js';
import { explain, type Endpoint, type Verdict } from '../domain/evaluate.js';
import {
  invalidPolicy,
  parseIp,
  parseLabels,
  parsePolicyObject,
  portName,
  portNumber,
  PROTOCOLS,
  resourceName,
  type Policy,
  type Protocol,
} from '../domain/model.js';
import type { ListedPodRecord, PodRecord, PolicyRepository, Snapshot } from '../store/policy.repository.js';
import {
  createPolicyFanout,
  sharePolicyViews,
  type NodePolicyMessage,
  type NodePolicyWatchOptions,
} from '../watch-node-policy.js';
import type { Logger } from '../../../lib/logger.js';
import { toPod, worldOf } from '../world.js';

/** The gRPC adapter of the policy service: validation at the edge, the store, and the evaluator. */
const MAX_OBJECTS = 500;
const KINDS = ['NetworkPolicy', 'AdminNetworkPolicy', 'BaselineAdminNetworkPolicy'];

function protocolOf(v: string, field: string): Protocol {
  const p = (v || 'TCP').toUpperCase();
  if (!PROTOCOLS.includes(p as Protocol))
    throw invalidPolicy(field, `${JSON.stringify(v)} is not one of TCP, UDP, SCTP`);
  return p as Protocol;
}

function validatePod(p: {
  namespace: string;
  name: string;
  labels: Record<string, string>;
  node: string;
  addresses: string[];
  ports: { name: string; port: number; protocol: string }[];
}): PodRecord {
  return {
    namespace: resourceName(p.namespace, 'pod.namespace'),
    name: resourceName(p.name, 'pod.name'),
    labels: parseLabels(p.labels, 'pod.labels'),
    node: p.node,
    addresses: p.addresses.map((a, i) => {
      parseIp(a, `pod.addresses[${i}]`);
      return a;
    }),
    ports: p.ports.map((x, i) => {
      // The same rules as a policy's named and numbered ports.
      return {
        name: portName(x.name, `pod.ports[${i}].name`),
        port: portNumber(x.port, `pod.ports[${i}].port`),
        protocol: protocolOf(x.protocol, `pod.ports[${i}].protocol`),
      };
    }),
  };
}

/** ListNamespaces and ListPods: page_size 0 means DEFAULT_PAGE; a page also stops at about CHUNK_BYTES. */
const DEFAULT_PAGE = 500;
const MAX_PAGE = 1000;
const labelBytes = (labels: Record<string, string>) =>
  Object.entries(labels).reduce((s, [k, v]) => s + stringFieldBytes(k) + stringFieldBytes(v) + 8, 0);
const listedPodBytes = (p: ListedPodRecord) =>
  stringFieldBytes(p.namespace) +
  stringFieldBytes(p.name) +
  stringFieldBytes(p.node) +
  stringFieldBytes(p.containerId) +
  labelBytes(p.labels) +
  p.addresses.reduce((s, a) => s + stringFieldBytes(a), 0) +
  p.ports.reduce((s, x) => s + stringFieldBytes(x.name) + stringFieldBytes(x.protocol) + 16, 0) +
  16;

const canonical = (a: { family: 4 | 6; value: bigint }) => formatAddress(a.family, a.value);

/** "ns/name" is a pod (which must exist and have an address); anything else must be an address, a pod's or an outside one. */
function endpoint(s: Snapshot, text: string, field: string): Endpoint {
  if (text.includes('/')) {
    const [ns, name] = text.split('/', 2);
    const r = s.pods.find((p) => p.namespace === ns && p.name === name);
    if (!r)
      throw new DomainError(
        'policy.pod_not_found',
        'not_found',
        `${field}: no pod ${text} (pods are reported by the agents or with UpsertPod)`,
      );
    if (r.addresses.length === 0)
      throw new DomainError(
        'policy.pod_without_address',
        'failed_precondition',
        `${field}: pod ${text} has no address yet`,
      );
    const pod = toPod(r);
    return { kind: 'pod', pod, address: pod.addresses[0]! };
  }
  const address = parseIp(text, field);
  const owner = s.pods.find((p) =>
    p.addresses.some((a) => {
      const b = parseIp(a, 'address');
      return b.value === address.value && b.family === address.family;
    }),
  );
  return owner ? { kind: 'pod', pod: toPod(owner), address } : { kind: 'external', address };
}

const toPbVerdict = (v: Verdict): PbVerdict => ({ ...v });

const toPbNodePolicy = (p: Pick<NodePolicy, 'pods' | 'sets'>): Pick<WatchNodePolicyResponse, 'pods' | 'sets'> => ({
  pods: p.pods.map((pod) => {
    const entries = (es: NodePolicy['pods'][number]['ingress']) =>
      es.map((e) => ({
        tier: e.tier,
        action: e.action,
        peerSet: e.peerSet ?? '',
        protocol: e.protocol ?? '',
        portFrom: e.ports?.from ?? 0,
        portTo: e.ports?.to ?? 0,
        source: e.source,
      }));
    return {
      namespace: pod.namespace,
      name: pod.name,
      addresses: pod.addresses,
      ingress: entries(pod.ingress),
      egress: entries(pod.egress),
    };
  }),
  sets: [...p.sets].map(([name, cidrs]) => ({ name, cidrs })),
});

/** A stream message as it goes on the wire (also used by bench/policy, which measures the path through it). */
export const toPbWatchResponse = (m: NodePolicyMessage): WatchNodePolicyResponse => ({
  revision: m.revision,
  bookmark: m.bookmark,
  ...(m.policy ? toPbNodePolicy(m.policy) : m.delta ? toPbNodePolicy(m.delta) : { pods: [], sets: [] }),
  delta: m.delta !== null,
  removedPods: m.delta?.removedPods ?? [],
  removedSets: m.delta?.removedSets ?? [],
  more: false,
});

const podBytes = (p: PbCompiledPod) =>
  stringFieldBytes(p.namespace) +
  stringFieldBytes(p.name) +
  p.addresses.reduce((s, a) => s + stringFieldBytes(a), 8) +
  [...p.ingress, ...p.egress].reduce(
    (s, e) =>
      s +
      stringFieldBytes(e.tier) +
      stringFieldBytes(e.action) +
      stringFieldBytes(e.peerSet) +
      stringFieldBytes(e.protocol) +
      stringFieldBytes(e.source) +
      20,
    0,
  );

/**
 * A stream message as it goes to a watcher that joins chunks (accept_chunks): split into messages of at most `budget`
 * bytes of content, each but the last marked `more`; a set larger than that (150,000 addresses are about 2.7 MB)
 * spans chunks under its one name. Every chunk carries the message's revision and delta flag. A message that fits is
 * sent as it is.
 */
export function chunkWatchResponse(m: WatchNodePolicyResponse, budget = CHUNK_BYTES): WatchNodePolicyResponse[] {
  const empty = (): WatchNodePolicyResponse => ({
    ...m,
    pods: [],
    sets: [],
    removedPods: [],
    removedSets: [],
    more: true,
  });
  const out: WatchNodePolicyResponse[] = [];
  let cur = empty();
  let used = 0;
  /** Room for `size` more bytes: a chunk that would pass the budget (and holds something) is closed first. */
  const room = (size: number) => {
    if (used > 0 && used + size > budget) {
      out.push(cur);
      cur = empty();
      used = 0;
      return false;
    }
    return true;
  };
  for (const p of m.pods) {
    const size = podBytes(p);
    room(size);
    cur.pods.push(p);
    used += size;
  }
  for (const s of m.sets) {
    let part: { name: string; cidrs: string[] } | null = null;
    const nameBytes = stringFieldBytes(s.name) + 8;
    if (s.cidrs.length === 0) {
      room(nameBytes);
      cur.sets.push({ name: s.name, cidrs: [] });
      used += nameBytes;
    }
    for (const c of s.cidrs) {
      const size = stringFieldBytes(c);
      if (!room(size + (part ? 0 : nameBytes))) part = null;
      if (!part) {
        part = { name: s.name, cidrs: [] };
        cur.sets.push(part);
        used += nameBytes;
      }
      part.cidrs.push(c);
      used += size;
    }
  }
  for (const [list, key] of [
    [m.removedPods, 'removedPods'],
    [m.removedSets, 'removedSets'],
  ] as const) {
    for (const r of list) {
      const size = stringFieldBytes(r);
      room(size);
      cur[key].push(r);
      used += size;
    }
  }
  out.push(cur);
  if (out.length === 1) return [m];
  out[out.length - 1]!.more = false;
  return out;
}

export function createPolicyHandlers(deps: {
  repo: PolicyRepository;
  /** Where the watch streams' shared view is read (default `repo`): sessions of its own (services/policy/main.ts). */
  viewsRepo?: Pick<PolicyRepository, 'snapshot'>;
  notifier: Notifier;
  watch: NodePolicyWatchOptions;
  logger?: Logger;
}): Handlers<typeof PolicyServiceService> {
  const { repo } = deps;
  // Polls reuse a read begun within half a poll: a replica reads at most twice per poll interval without NOTIFYs.
  const views = sharePolicyViews(deps.viewsRepo ?? repo, deps.notifier, deps.watch.pollMs / 2);
  // One compilation per view for every stream of the replica.
  const fanout = createPolicyFanout({
    views,
    notifier: deps.notifier,
    options: deps.watch,
    onError: (err) =>
      deps.logger?.warn('policy watch cannot read the policy tables; the streams keep their rules and retry', {
        err: (err as Error).message,
      }),
  });
  return {
    async upsertNamespace(req) {
      return {
        revision: await repo.upsertNamespace(resourceName(req.name, 'name'), parseLabels(req.labels, 'labels')),
      };
    },
    async deleteNamespace(req) {
      return repo.deleteNamespace(resourceName(req.name, 'name'));
    },
    async upsertPod(req) {
      if (!req.pod) throw invalidPolicy('pod', 'is required');
      if (!req.keepAttachment) return { revision: await repo.upsertPod(validatePod(req.pod)) };
      // A controller's description: the addresses are the agents' to report (AttachPod).
      if (req.pod.addresses.length > 0)
        throw invalidPolicy(
          'pod.addresses',
          "must be empty with keep_attachment: a pod's addresses come from its attachment (AttachPod), not from UpsertPod",
        );
      const { addresses: _, ...described } = validatePod(req.pod);
      return { revision: await repo.describePod(described) };
    },
    async deletePod(req) {
      return repo.deletePod(resourceName(req.namespace, 'namespace'), resourceName(req.name, 'name'));
    },
    async attachPod(req) {
      const namespace = resourceName(req.namespace, 'namespace');
      const name = resourceName(req.name, 'name');
      if (!req.node) throw invalidPolicy('node', 'is required: the node the pod is attached on');
      if (!req.containerId) throw invalidPolicy('container_id', 'is required: the sandbox the pod is attached in');
      if (req.addresses.length === 0)
        throw invalidPolicy('addresses', 'is empty; an attachment reports the addresses the pod got');
      const addresses = req.addresses.map((a, i) => canonical(parseIp(a, `addresses[${i}]`)));
      return repo.attachPod(namespace, name, req.node, req.containerId, addresses, req.resync);
    },
    async detachPod(req) {
      if (!req.containerId) throw invalidPolicy('container_id', 'is required: the sandbox the pod was attached in');
      return repo.detachPod(req.containerId);
    },
    async applyPolicies(req) {
      if (req.objectsJson.length === 0)
        throw invalidPolicy('objects_json', 'is empty; give at least one policy object');
      if (req.objectsJson.length > MAX_OBJECTS)
        throw invalidPolicy('objects_json', `holds ${req.objectsJson.length} objects; at most ${MAX_OBJECTS} per call`);
      const defaultNamespace = req.defaultNamespace
        ? resourceName(req.defaultNamespace, 'default_namespace')
        : 'default';
      // Every object is checked before anything is written: one bad object refuses the whole request.
      const items = req.objectsJson.map((text, i) => {
        let object: unknown;
        try {
          object = JSON.parse(text);
        } catch (err) {
          throw invalidPolicy(`objects_json[${i}]`, `is not JSON: ${(err as Error).message}`);
        }
        let p: Policy;
        try {
          p = parsePolicyObject(object, defaultNamespace);
        } catch (err) {
          if (!(err instanceof DomainError)) throw err;
          const name = (object as { metadata?: { name?: unknown } })?.metadata?.name;
          // Only a string kind is printed: String() of {"toString": 1} throws TypeError, of [[[…]]] thousands deep
          // RangeError (both INTERNAL). Found by the property test.
          const kind = (object as { kind?: unknown } | null)?.kind;
          throw invalidPolicy(
            `objects_json[${i}]${typeof name === 'string' ? ` (${typeof kind === 'string' ? kind : 'object'} ${name})` : ''}`,
            err.message,
          );
        }
        const namespace = p.kind === 'NetworkPolicy' ? p.namespace : '';
        if (p.kind === 'NetworkPolicy') (object as { metadata: { namespace?: string } }).metadata.namespace = namespace;
        return { kind: p.kind, namespace, name: p.name, object };
      });
      const seen = new Set<string>();
      for (const it of items) {
        const key = `${it.kind}/${it.namespace}/${it.name}`;
        if (seen.has(key)) throw invalidPolicy('objects_json', `${key} appears twice`);
        seen.add(key);
      }
      const revision = await repo.applyPolicies(items);
      return { applied: items.map(({ kind, namespace, name }) => ({ kind, namespace, name })), revision };
    },
    async deletePolicy(req) {
      const ref = req.policy;
      if (!ref || !KINDS.includes(ref.kind))
        throw invalidPolicy('policy.kind', `${JSON.stringify(ref?.kind)} is not one of ${KINDS.join(', ')}`);
      const namespace = ref.kind === 'NetworkPolicy' ? resourceName(ref.namespace, 'policy.namespace') : '';
      return repo.deletePolicy(ref.kind, namespace, resourceName(ref.name, 'policy.name'));
    },
    async listPolicies(req) {
      const namespace = req.namespace ? resourceName(req.namespace, 'namespace') : null;
      const size = pageSizeOf('policy.invalid_page_size', req.pageSize, 1000);
      const after = decodePageToken('policy.invalid_page_token', 'policies', req.pageToken, 3);
      const list = (await repo.listPolicies(namespace, { after, limit: size ? size + 1 : null })).map((p) => ({
        ref: { kind: p.kind, namespace: p.namespace, name: p.name },
        objectJson: JSON.stringify(p.object),
        updateTime: p.updatedAt,
      }));
      if (!size) {
        // A caller that does not page (it may predate paging) gets the whole list or an error, never a short list.
        const whole: ListPoliciesResponse = { policies: list, nextPageToken: '' };
        ensureFitsOneMessage(
          'policy.list_too_large',
          ListPoliciesResponse.encode(whole).finish().length,
          `the ${list.length} policies`,
        );
        return whole;
      }
      // At most page_size, and no more than about CHUNK_BYTES of objects (a policy's JSON can be large).
      const sizes = chunkBySize(
        list.slice(0, size),
        (p) =>
          stringFieldBytes(p.objectJson) +
          stringFieldBytes(p.ref.kind) +
          stringFieldBytes(p.ref.namespace) +
          stringFieldBytes(p.ref.name) +
          16,
      );
      const policies = sizes[0]!;
      const more = policies.length < list.length;
      const last = policies[policies.length - 1];
      return {
        policies,
        nextPageToken:
          more && last ? encodePageToken('policies', [last.ref.kind, last.ref.namespace, last.ref.name]) : '',
      };
    },
    async listNamespaces(req) {
      const size = pageSizeOf('policy.invalid_page_size', req.pageSize, MAX_PAGE) || DEFAULT_PAGE;
      const after = decodePageToken('policy.invalid_page_token', 'namespaces', req.pageToken, 1);
      const list = await repo.listNamespaces({ after: after?.[0] ?? null, limit: size + 1 });
      const namespaces = chunkBySize(list.slice(0, size), (n) => stringFieldBytes(n.name) + labelBytes(n.labels))[0]!;
      const last = namespaces[namespaces.length - 1];
      return {
        namespaces,
        nextPageToken: namespaces.length < list.length && last ? encodePageToken('namespaces', [last.name]) : '',
      };
    },
    async listPods(req) {
      const namespace = req.namespace ? resourceName(req.namespace, 'namespace') : null;
      const size = pageSizeOf('policy.invalid_page_size', req.pageSize, MAX_PAGE) || DEFAULT_PAGE;
      // A token names the list it came from, namespace included: one from another namespace's list is refused.
      const kind = namespace ? `pods of ${namespace}` : 'pods';
      const after = decodePageToken('policy.invalid_page_token', kind, req.pageToken, 2) as [string, string] | null;
      const list = await repo.listPods(namespace, { after, limit: size + 1 });
      const pods = chunkBySize(list.slice(0, size), listedPodBytes)[0]!;
      const last = pods[pods.length - 1];
      return {
        pods,
        nextPageToken: pods.length < list.length && last ? encodePageToken(kind, [last.namespace, last.name]) : '',
      };
    },
    async explain(req) {
      if (!req.from || !req.to)
        throw invalidPolicy(req.from ? 'to' : 'from', 'is required: a pod as "namespace/name" or an IP address');
      if (!Number.isInteger(req.port) || req.port < 1 || req.port > 65535)
        throw invalidPolicy('port', `${req.port} is not a port number (1-65535)`);
      const protocol = protocolOf(req.protocol, 'protocol');
      const s = await repo.snapshot();
      const e = explain(worldOf(s), endpoint(s, req.from, 'from'), endpoint(s, req.to, 'to'), req.port, protocol);
      return {
        allowed: e.allowed,
        egress: toPbVerdict(e.egress),
        ingress: toPbVerdict(e.ingress),
        revision: s.revision,
      };
    },
    async *watchNodePolicy(req, { signal }) {
      if (!req.node) throw invalidPolicy('node', "is required: the watching node's name");
      for await (const m of fanout.watch(req.node, signal, { acceptDeltas: req.acceptDeltas })) {
        const whole = toPbWatchResponse(m);
        if (req.acceptChunks) yield* chunkWatchResponse(whole);
        else yield whole;
      }
    },
  };
}
