import {
  CoreV1Api,
  CustomObjectsApi,
  NetworkingV1Api,
  PatchStrategy,
  setHeaderOptions,
  type KubeConfig,
  type KubernetesListObject,
  type KubernetesObject,
} from '@kubernetes/client-node';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { PolicyServiceService } from '../gen/weft/policy/v1/policy.js';
import { RoutesServiceService } from '../gen/weft/routes/v1/routes.js';
import type { PromiseClient } from '../lib/grpc/client.js';
import { GrpcStatus } from '../lib/grpc/status.js';
import type { Logger } from '../lib/logger.js';
import { planPodReleases, type PodAllocation } from './domain/pod-release.js';
import {
  describePod,
  networkAvailablePatch,
  podMayHoldAddress,
  policyObjectJson,
  POLICY_KINDS,
  type KubeNode,
  type KubePod,
  type PolicyKind,
} from './domain/translate.js';
import { watchKind, type KindWatch } from './kube.js';
import { createWorkQueue, type WorkQueue } from './work-queue.js';

export interface WeftClients {
  ipam: PromiseClient<typeof IpamServiceService>;
  routes: PromiseClient<typeof RoutesServiceService>;
  policy: PromiseClient<typeof PolicyServiceService>;
}

/** The label the controller adds to every node's labels in IPAM: the cluster it belongs to. */
export const CLUSTER_LABEL = 'weft.io/cluster';

export interface ControllerOptions {
  kubeConfig: KubeConfig;
  /** This cluster's name in IPAM; with `podAggregate`, its pod CIDR is carved from that aggregate. */
  cluster: { name: string; podAggregate: string; podPrefixLength: number; podBlockPrefixLength: number };
  /** False: namespaces, pods and policies are not sent to the policy service (another cluster feeds it). */
  policy: boolean;
  weft: WeftClients;
  logger: Logger;
  releaseGraceMs: number;
  fullSweepMs: number;
  nodeStatusMs: number;
  /** Deadline of each call to Weft's services. */
  callTimeoutMs?: number;
}

/** Keys of the work queue: "<kind>:<namespace>/<name>" (namespace empty for cluster-scoped kinds). */
type Kind = 'Node' | 'Namespace' | 'Pod' | PolicyKind;

const CRD_GROUP = 'policy.networking.k8s.io';
const CRD_VERSION = 'v1alpha1';
const CRD_PLURAL: Record<'AdminNetworkPolicy' | 'BaselineAdminNetworkPolicy', string> = {
  AdminNetworkPolicy: 'adminnetworkpolicies',
  BaselineAdminNetworkPolicy: 'baselineadminnetworkpolicies',
};

/**
 * The Kubernetes controller: keeps Weft's policy service and IPAM in line with one cluster's API server.
 *
 * Every replica watches (its caches stay warm); only the leader writes. Events mark keys in a work queue; a worker
 * reads the key's current state from the cache and makes Weft agree (see DESIGN.md for what each kind becomes).
 */
export interface KubeController {
  /** True once every watch of a kind Weft needs has listed once. */
  ready(): boolean;
  /** Begins writing (this replica leads); ends when `signal` aborts. */
  lead(signal: AbortSignal): void;
  /** Resolves when the queue is empty (for tests and orderly shutdown). */
  idle(): Promise<void>;
  stop(): Promise<void>;
}

export function createKubeController(o: ControllerOptions): KubeController {
  const log = o.logger;
  const core = o.kubeConfig.makeApiClient(CoreV1Api);
  const networking = o.kubeConfig.makeApiClient(NetworkingV1Api);
  const custom = o.kubeConfig.makeApiClient(CustomObjectsApi);
  const call = { timeoutMs: o.callTimeoutMs ?? 15_000 };
  let leading: AbortSignal | null = null;
  let queue: WorkQueue | null = null;
  const timers: NodeJS.Timeout[] = [];
  /** What the leader last told Weft per key: a repeated event that changes nothing costs no call. */
  const applied = new Map<string, string>();
  /** Last known node of each pod key, to sweep that node's addresses after the pod is gone. */
  const podNode = new Map<string, string>();
  /** When the leader saw each pod's delete event ("namespace/name"), until its node was swept. */
  const podDeletedAt = new Map<string, { at: number; node: string }>();
  /** Pod-address sweep: when each allocation's pod was first seen missing. */
  let missingSince = new Map<string, number>();

  const mark = (kind: Kind) => (key: string) => {
    queue?.add(`${kind}:${key}`);
  };
  const crdList = (kind: 'AdminNetworkPolicy' | 'BaselineAdminNetworkPolicy') => async () => {
    const r = (await custom.listClusterCustomObject({
      group: CRD_GROUP,
      version: CRD_VERSION,
      plural: CRD_PLURAL[kind],
    })) as KubernetesListObject<KubernetesObject>;
    return r;
  };
  const watches = {
    Node: watchKind<KubeNode & KubernetesObject>({
      kind: 'Node',
      kubeConfig: o.kubeConfig,
      path: '/api/v1/nodes',
      list: () => core.listNode() as never,
      onChange: mark('Node'),
      logger: log,
    }),
    Namespace: watchKind<KubernetesObject>({
      kind: 'Namespace',
      kubeConfig: o.kubeConfig,
      path: '/api/v1/namespaces',
      list: () => core.listNamespace() as never,
      onChange: mark('Namespace'),
      logger: log,
    }),
    Pod: watchKind<KubePod & KubernetesObject>({
      kind: 'Pod',
      kubeConfig: o.kubeConfig,
      path: '/api/v1/pods',
      list: () => core.listPodForAllNamespaces() as never,
      onChange: mark('Pod'),
      logger: log,
    }),
    NetworkPolicy: watchKind<KubernetesObject>({
      kind: 'NetworkPolicy',
      kubeConfig: o.kubeConfig,
      path: '/apis/networking.k8s.io/v1/networkpolicies',
      list: () => networking.listNetworkPolicyForAllNamespaces() as never,
      onChange: mark('NetworkPolicy'),
      logger: log,
    }),
    AdminNetworkPolicy: watchKind<KubernetesObject>({
      kind: 'AdminNetworkPolicy',
      kubeConfig: o.kubeConfig,
      path: `/apis/${CRD_GROUP}/${CRD_VERSION}/${CRD_PLURAL.AdminNetworkPolicy}`,
      list: crdList('AdminNetworkPolicy'),
      onChange: mark('AdminNetworkPolicy'),
      logger: log,
    }),
    BaselineAdminNetworkPolicy: watchKind<KubernetesObject>({
      kind: 'BaselineAdminNetworkPolicy',
      kubeConfig: o.kubeConfig,
      path: `/apis/${CRD_GROUP}/${CRD_VERSION}/${CRD_PLURAL.BaselineAdminNetworkPolicy}`,
      list: crdList('BaselineAdminNetworkPolicy'),
      onChange: mark('BaselineAdminNetworkPolicy'),
      logger: log,
    }),
  } satisfies Record<Kind, KindWatch<KubernetesObject>>;
  /** The admin policy kinds are CRDs a cluster may not have installed: they never hold readiness back. */
  const required: Kind[] = ['Node', 'Namespace', 'Pod', 'NetworkPolicy'];
  const ready = () => required.every((k) => watches[k].synced());

  const splitKey = (key: string) => {
    const colon = key.indexOf(':');
    const kind = key.slice(0, colon) as Kind;
    const rest = key.slice(colon + 1);
    const slash = rest.indexOf('/');
    return { kind, namespace: rest.slice(0, slash), name: rest.slice(slash + 1) };
  };

  /** Runs `fn` once per change of `fingerprint` for `key`. */
  const once = async (key: string, fingerprint: string, fn: () => Promise<void>) => {
    if (applied.get(key) === fingerprint) return;
    await fn();
    applied.set(key, fingerprint);
  };

  const syncNamespace = async (key: string, name: string) => {
    const ns = watches.Namespace.get(name);
    if (ns) {
      const labels = ns.metadata?.labels ?? {};
      await once(key, JSON.stringify(labels), async () => {
        if (o.policy) await o.weft.policy.upsertNamespace({ name, labels }, call);
        await o.weft.ipam.setNamespaceLabels({ namespace: name, labels }, call);
      });
    } else {
      await once(key, '', async () => {
        if (o.policy) await o.weft.policy.deleteNamespace({ name }, call);
        await o.weft.ipam.setNamespaceLabels({ namespace: name, labels: {} }, call);
      });
    }
  };

  /**
   * The cluster in IPAM: registered, and with a pod aggregate, its own prefix of it (idempotent per cluster) and the
   * pool `<cluster>-pods` over that prefix, selecting the nodes labelled with the cluster. Prefixes never overlap
   * within a routing domain (the database refuses it), so neither do clusters' pods.
   */
  const ensureCluster = async () => {
    const c = o.cluster;
    await o.weft.ipam.registerCluster({ name: c.name }, call);
    if (!c.podAggregate) return;
    const prefix = (
      await o.weft.ipam.allocatePrefix(
        { cluster: c.name, aggregate: c.podAggregate, prefixLength: c.podPrefixLength, purpose: 'pods' },
        call,
      )
    ).prefix!;
    const pool = `${c.name}-pods`;
    try {
      await o.weft.ipam.createPool(
        {
          name: pool,
          cidr: prefix.cidr,
          blockPrefixLength: c.podBlockPrefixLength,
          nodeSelector: `${CLUSTER_LABEL}=${c.name}`,
        },
        call,
      );
      log.info('cluster pool made', { pool, cidr: prefix.cidr, prefix: prefix.name });
    } catch (err) {
      if ((err as { code?: number }).code !== GrpcStatus.ALREADY_EXISTS) throw err;
      const held = (await o.weft.ipam.listPools({ pageSize: 1000 }, call)).pools.find((p) => p.name === pool);
      if (held && held.cidr !== prefix.cidr)
        log.warn("the cluster pool exists over another CIDR than the cluster's prefix; leaving it", {
          pool,
          cidr: held.cidr,
          prefix: prefix.cidr,
        });
      if (!held) throw err; // the CIDR overlaps another pool: say so and retry
    }
  };

  const syncPod = async (key: string, namespace: string, name: string) => {
    const pod = watches.Pod.get(name, namespace);
    const d = pod ? describePod(pod) : null;
    const podKey = `${namespace}/${name}`;
    if (d) {
      if (d.node) podNode.set(podKey, d.node);
      await once(key, JSON.stringify([d.labels, d.node, d.ports]), async () => {
        if (o.policy)
          await o.weft.policy.upsertPod(
            {
              pod: { namespace, name, labels: d.labels, node: d.node, addresses: [], ports: d.ports },
              keepAttachment: true,
            },
            call,
          );
      });
    } else {
      await once(key, '', async () => {
        if (o.policy) await o.weft.policy.deletePod({ namespace, name }, call);
      });
    }
    // A pod gone (or finished) may leave its address behind if its runtime never runs DEL: sweep its node once the
    // grace has passed.
    if (!pod || !podMayHoldAddress(pod)) {
      const node = podNode.get(podKey);
      if (node) {
        if (!podDeletedAt.has(podKey)) podDeletedAt.set(podKey, { at: Date.now(), node });
        queue?.addAfter(`Sweep:/${node}`, o.releaseGraceMs + 500);
        if (!pod) podNode.delete(podKey);
      }
    }
  };

  const syncPolicy = async (key: string, kind: PolicyKind, namespace: string, name: string) => {
    if (!o.policy) return;
    const obj = watches[kind].get(name, kind === 'NetworkPolicy' ? namespace : undefined);
    if (obj) {
      const json = policyObjectJson(kind, obj as never);
      await once(key, json, async () => {
        try {
          await o.weft.policy.applyPolicies({ objectsJson: [json] }, call);
        } catch (err) {
          // A policy the service refuses (it names the bad field) will not become valid by retrying: say so and
          // wait for the next change of the object.
          if ((err as { code?: number }).code === GrpcStatus.INVALID_ARGUMENT) {
            log.warn('policy refused by Weft', {
              policy: `${kind}/${namespace ? `${namespace}/` : ''}${name}`,
              error: (err as Error).message,
            });
            return;
          }
          throw err;
        }
      });
    } else {
      await once(key, '', async () => {
        await o.weft.policy.deletePolicy({ policy: { kind, namespace, name } }, call);
      });
    }
  };

  const syncNode = async (key: string, name: string) => {
    const node = watches.Node.get(name);
    if (node) {
      const labels = { ...(node.metadata?.labels ?? {}), [CLUSTER_LABEL]: o.cluster.name };
      await once(key, JSON.stringify(labels), async () => {
        await o.weft.ipam.setNodeLabels({ node: name, labels }, call);
      });
      return;
    }
    // The Node object is gone: the machine left the cluster. Its routes go now (not when its lease runs out) and its
    // addresses and blocks are freed at once, every one allocated before this moment.
    await once(key, '', async () => {
      const before = new Date();
      await o.weft.routes.deregisterNode({ name }, call).catch((err: { code?: number }) => {
        if (err.code !== GrpcStatus.NOT_FOUND) throw err;
      });
      const gc = await o.weft.ipam.garbageCollect(
        { node: name, validHandles: [], allocatedBefore: before, releaseBlocks: true },
        call,
      );
      await o.weft.ipam.setNodeLabels({ node: name, labels: {} }, call);
      log.info('node deleted: routes withdrawn, addresses released', { node: name, released: gc.released.length });
    });
  };

  /** Compares the addresses IPAM holds for pods (on `node`, or on every node of the cluster) with the API's pods. */
  const sweepAddresses = async (node: string | null) => {
    const nodes = new Set(watches.Node.list().map((n) => n.metadata?.name ?? ''));
    const allocations: PodAllocation[] = [];
    const handles = new Set<string>();
    for (let token = ''; ;) {
      const page = await o.weft.ipam.listAllocations({ node: node ?? '', pageSize: 5000, pageToken: token }, call);
      for (const a of page.allocations) {
        if (handles.has(a.handle)) continue; // one handle, two families: one release frees both
        handles.add(a.handle);
        allocations.push({
          handle: a.handle,
          node: a.node,
          podNamespace: a.podNamespace,
          podName: a.podName,
          podUid: a.podUid,
          allocatedAt: a.allocateTime ?? new Date(0),
        });
      }
      token = page.nextPageToken;
      if (!token) break;
    }
    const previous = node === null ? missingSince : new Map([...missingSince].filter(([h]) => handles.has(h)));
    const plan = planPodReleases({
      allocations,
      nodes,
      missingSince: previous,
      now: Date.now(),
      graceMs: o.releaseGraceMs,
      deletedAt: (ns, n) => podDeletedAt.get(`${ns}/${n}`)?.at,
      pod: (ns, n) => {
        const p = watches.Pod.get(n, ns);
        return p ? { uid: p.metadata?.uid ?? '', mayHoldAddress: podMayHoldAddress(p) } : undefined;
      },
    });
    if (node === null) missingSince = plan.missingSince;
    else {
      for (const h of handles) missingSince.delete(h);
      for (const [h, t] of plan.missingSince) missingSince.set(h, t);
      if (plan.missingSince.size > 0) queue?.addAfter(`Sweep:/${node}`, o.releaseGraceMs + 1000);
    }
    // A delete event is remembered until a sweep of its node finds no address of that pod waiting (the runtime's DEL
    // released it, or this sweep does).
    const waiting = new Set(
      allocations.filter((a) => plan.missingSince.has(a.handle)).map((a) => `${a.podNamespace}/${a.podName}`),
    );
    for (const [k, d] of podDeletedAt)
      if ((node === null || d.node === node) && !waiting.has(k)) podDeletedAt.delete(k);
    for (const handle of plan.release) {
      const r = await o.weft.ipam.release({ handle }, call);
      missingSince.delete(handle);
      if (r.released)
        log.info('released the address of a pod gone from the API server', { handle, addresses: r.addresses });
    }
  };

  /** NetworkUnavailable=False on every node whose agent holds a live registration. */
  const syncNodeConditions = async () => {
    const live = new Set<string>();
    const now = Date.now();
    for (let token = ''; ;) {
      const page = await o.weft.routes.listNodes({ pageSize: 5000, pageToken: token }, call);
      for (const n of page.nodes) if (n.leaseExpireTime && n.leaseExpireTime.getTime() > now) live.add(n.name);
      token = page.nextPageToken;
      if (!token) break;
    }
    for (const node of watches.Node.list()) {
      const name = node.metadata?.name ?? '';
      if (!live.has(name)) continue;
      const patch = networkAvailablePatch(node, new Date());
      if (!patch) continue;
      await core.patchNodeStatus(
        { name, body: patch },
        setHeaderOptions('Content-Type', PatchStrategy.StrategicMergePatch),
      );
      log.info('node network available', { node: name });
    }
  };

  /** Deletes from Weft what it holds of this cluster but the API server no longer has (changes made while no leader ran). */
  const resyncDeletions = async () => {
    if (!o.policy) return;
    const keys: string[] = [];
    for (let token = ''; ;) {
      const page = await o.weft.policy.listPolicies({ pageSize: 1000, pageToken: token }, call);
      for (const p of page.policies) {
        const kind = p.ref?.kind as PolicyKind;
        if (!POLICY_KINDS.includes(kind) || !watches[kind].synced()) continue;
        if (!watches[kind].get(p.ref!.name, kind === 'NetworkPolicy' ? p.ref!.namespace : undefined))
          keys.push(`${kind}:${p.ref!.namespace}/${p.ref!.name}`);
      }
      token = page.nextPageToken;
      if (!token) break;
    }
    for (let token = ''; ;) {
      const page = await o.weft.policy.listNamespaces({ pageSize: 1000, pageToken: token }, call);
      for (const n of page.namespaces) if (!watches.Namespace.get(n.name)) keys.push(`Namespace:/${n.name}`);
      token = page.nextPageToken;
      if (!token) break;
    }
    for (let token = ''; ;) {
      const page = await o.weft.policy.listPods({ pageSize: 1000, pageToken: token }, call);
      for (const p of page.pods) {
        // Only pods this controller described: a pod the agents alone made known (attached before the API showed it,
        // or outside Kubernetes) is theirs to remove.
        if (p.described && !watches.Pod.get(p.name, p.namespace)) keys.push(`Pod:${p.namespace}/${p.name}`);
      }
      token = page.nextPageToken;
      if (!token) break;
    }
    for (const k of keys) queue?.add(k);
    if (keys.length > 0) log.info('resync: removing what the API server no longer has', { objects: keys.length });
  };

  const work = async (key: string) => {
    if (!leading || leading.aborted) return;
    const { kind, namespace, name } = splitKey(key);
    switch (kind as Kind | 'Sweep' | 'Resync' | 'NodeStatus' | 'Cluster') {
      case 'Namespace':
        return syncNamespace(key, name);
      case 'Pod':
        return syncPod(key, namespace, name);
      case 'Node':
        return syncNode(key, name);
      case 'NetworkPolicy':
      case 'AdminNetworkPolicy':
      case 'BaselineAdminNetworkPolicy':
        return syncPolicy(key, kind as PolicyKind, namespace, name);
      case 'Sweep':
        return sweepAddresses(name === '*' ? null : name);
      case 'Resync':
        return resyncDeletions();
      case 'NodeStatus':
        return syncNodeConditions();
      case 'Cluster':
        return ensureCluster();
      default:
        log.warn('unknown work key', { key });
    }
  };

  return {
    ready,
    lead(signal) {
      leading = signal;
      applied.clear();
      const q = createWorkQueue({
        concurrency: 8,
        work,
        onError: (key, err, retryMs) =>
          log.warn('sync failed; retrying', { key, error: (err as Error).message, retry_ms: retryMs }),
      });
      queue = q;
      const every = (key: string, ms: number) => {
        const t = setInterval(() => q.add(key), ms);
        timers.push(t);
      };
      void (async () => {
        await Promise.all(required.map((k) => watches[k].whenSynced()));
        if (signal.aborted) return;
        log.info('leading with synced caches: bringing Weft in line');
        q.add('Cluster:/');
        for (const kind of Object.keys(watches) as Kind[]) {
          for (const obj of watches[kind].list())
            q.add(`${kind}:${obj.metadata?.namespace ?? ''}/${obj.metadata?.name ?? ''}`);
        }
        q.add('Resync:/');
        q.add('Sweep:/*');
        q.add('NodeStatus:/');
        every('Sweep:/*', o.fullSweepMs);
        every('NodeStatus:/', o.nodeStatusMs);
        every('Resync:/', o.fullSweepMs);
      })();
      signal.addEventListener(
        'abort',
        () => {
          for (const t of timers.splice(0)) clearInterval(t);
          q.stop();
          if (queue === q) queue = null;
          leading = null;
        },
        { once: true },
      );
    },
    idle: () => queue?.idle() ?? Promise.resolve(),
    async stop() {
      for (const t of timers.splice(0)) clearInterval(t);
      queue?.stop();
      await Promise.all(Object.values(watches).map((w) => w.stop()));
    },
  };
}
