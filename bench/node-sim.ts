import { randomUUID } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { checkServerIdentity } from 'node:tls';
import { credentials, status, type ChannelOptions } from '@grpc/grpc-js';
import { createBackoff } from '../lib/backoff.js';
import { createClient, type PromiseClient } from '../lib/grpc/client.js';
import { SERVER_NAME } from '../lib/grpc/credentials.js';
import type { Logger } from '../lib/logger.js';
import { issueCertificate, type KeyPairPem } from '../lib/pki.js';
import { IpamServiceService } from '../gen/weft/ipam/v1/ipam.js';
import { PolicyServiceService, type WatchNodePolicyResponse } from '../gen/weft/policy/v1/policy.js';
import { RoutesServiceService, type WatchRoutesResponse } from '../gen/weft/routes/v1/routes.js';
import { createPolicyChunkJoiner, createRoutesChunkJoiner } from '../node-dataplane/sources/chunks.js';
import { followStream, reconnectSpreadMs } from '../node-dataplane/sources/follow-stream.js';
import { createRenewalRetry } from '../node-dataplane/node-lease.js';
import { applyPolicyMessage } from '../node-dataplane/sources/policy-watch.js';
import type { NodeRules } from '../node-dataplane/domain/network-policy.js';

/**
 * A simulator of nodes: light agents that speak the control plane's real gRPC API as the node agent
 * (node-dataplane/) does, so that one process stands in for thousands of nodes. Each simulated node
 *
 * - authenticates as itself: a client certificate `weft:node:<name>` issued in memory from the control plane's CA
 *   (an EC P-256 key, as lib/pki.ts makes), one TLS connection shared by its three clients, the agent's keepalive;
 *   the per-identity limits apply to it as to an agent;
 * - registers (RegisterNode, an underlay address from the documentation and benchmarking ranges: it is only data,
 *   nothing is sent there) and renews its lease every third of the lease granted, registering again on NOT_FOUND and
 *   retrying otherwise as the agent does (node-dataplane/node-lease.ts). Renewals run off one shared 50 ms ticker, the
 *   first of each node at a random point of its first third, so that no timer per node fires and no storm forms;
 * - follows WatchRoutes with `accept_chunks` and `accept_coalesced` (as the agent does), resuming from the last revision applied, through the agent's own
 *   `followStream` (jittered backoff 200 ms-5 s) and chunk joiner; it holds the route table as a `RouteTable`: node
 *   names and entry texts numbered once for the whole simulator, each view an array of entry numbers by node number
 *   (off V8's heap, so thousands of full tables cost the garbage collector nothing to trace);
 * - follows WatchNodePolicy with `accept_deltas` and `accept_chunks`, applying each message with the agent's own
 *   `applyPolicyMessage` (the rules a kernel would get);
 * - attaches pods as the CNI path does: Allocate with an attempt id, then the AttachPod report in the background,
 *   in order per sandbox and retried with backoff until taken (node-dataplane/pod-reports.ts); detaches with Release
 *   naming the handle, then DetachPod the same way.
 *
 * Nothing touches a kernel. Listeners see every applied message, to stamp when a change reached each node.
 */
export interface SimNodeSpec {
  name: string;
  underlayAddress: string;
  vtepMac: string;
  /** The IPAM cluster (RegisterCluster) and pool its pods are allocated from. */
  cluster: string;
  pool: string;
}

export interface SimPod {
  namespace: string;
  name: string;
  containerId: string;
  handle: string;
  address: string;
  attemptId: string;
  /** Wall-clock milliseconds when Allocate returned; how long Allocate took. */
  allocatedAt: number;
  allocateMs: number;
}

export interface SimNode {
  readonly spec: SimNodeSpec;
  readonly routes: PromiseClient<typeof RoutesServiceService>;
  readonly ipam: PromiseClient<typeof IpamServiceService>;
  readonly policy: PromiseClient<typeof PolicyServiceService>;
  /** The route table held: node name → "underlay|mac|block,block". */
  readonly routeView: RouteTable;
  routeRevision: number;
  routesSynced: boolean;
  policyRules: NodeRules | null;
  /** Complete policy views received (one per stream opened). */
  policyCompleteViews: number;
  pods: Map<string, SimPod>;
  /** Blocks of `node` in this node's view (0 when unknown). */
  blocksOf(node: string): number;
}

export interface SimStats {
  nodes: number;
  routesSynced: number;
  policySynced: number;
  renewals: number;
  renewalFailures: number;
  reRegistrations: number;
  streamBreaks: number;
  reportFailures: number;
  /** Why streams broke and renewals failed: "<what>: <gRPC error message, digits as #>" → count. */
  reasons: Map<string, number>;
  /** When each stream broke (performance.now()), for a timeline. */
  breakTimes: number[];
}

export interface NodeSimulator {
  /** Issues certificates, connects, registers and starts the watches of `specs`, `concurrency` at a time; resolves once each is registered. */
  addNodes(specs: SimNodeSpec[], concurrency?: number): Promise<SimNode[]>;
  readonly nodes: SimNode[];
  /** A pod attached as the agent's CNI path does: Allocate (with an attempt id), then AttachPod in the background. */
  attachPod(node: SimNode, pod: { namespace: string; name: string }): Promise<SimPod>;
  /** Release (naming the handle), then DetachPod in the background. */
  detachPod(node: SimNode, pod: SimPod): Promise<void>;
  /** Pod reports not yet taken by the policy service. */
  reportsPending(): number;
  /** Milliseconds from each report's cause (Allocate's return, Release's) to the policy service taking it, since the last call. */
  reportLatencies(): number[];
  onRoutes(listener: (node: SimNode, message: WatchRoutesResponse) => void): void;
  onPolicy(listener: (node: SimNode, message: WatchNodePolicyResponse, rules: NodeRules) => void): void;
  stats(): SimStats;
  close(): void;
}

const TICK_MS = 50;

/** Numbers strings once: the same text gets the same number, and the number gives the text back. */
export class Numbering {
  private readonly ids = new Map<string, number>();
  private readonly texts: string[] = [];
  id(text: string): number {
    let id = this.ids.get(text);
    if (id === undefined) {
      id = this.texts.length;
      this.ids.set(text, id);
      this.texts.push(text);
    }
    return id;
  }
  known(text: string): number | undefined {
    return this.ids.get(text);
  }
  text(id: number): string {
    return this.texts[id]!;
  }
}

/**
 * One simulated node's route table: node name → entry text, held as entry number + 1 (0: none) at the node name's
 * number in an Int32Array. The names and texts are numbered once for every table of the simulator. 5,000 tables as
 * maps were 25 million map entries that every full garbage collection marked (a third of the simulator's CPU on
 * its collector's threads, bench/SCALE.md); as arrays they are 100 MB that it does not look into.
 */
export class RouteTable {
  private slots = new Int32Array(0);
  private count = 0;
  constructor(
    private readonly names: Numbering,
    private readonly entries: Numbering,
  ) {}
  get size(): number {
    return this.count;
  }
  get(name: string): string | undefined {
    const i = this.names.known(name);
    const v = i === undefined || i >= this.slots.length ? 0 : this.slots[i]!;
    return v === 0 ? undefined : this.entries.text(v - 1);
  }
  set(name: string, entry: string): void {
    const i = this.names.id(name);
    if (i >= this.slots.length) {
      const grown = new Int32Array(Math.max(i + 1, 2 * this.slots.length, 64));
      grown.set(this.slots);
      this.slots = grown;
    }
    if (this.slots[i] === 0) this.count++;
    this.slots[i] = this.entries.id(entry) + 1;
  }
  delete(name: string): void {
    const i = this.names.known(name);
    if (i === undefined || i >= this.slots.length || this.slots[i] === 0) return;
    this.slots[i] = 0;
    this.count--;
  }
  clear(): void {
    this.slots.fill(0);
    this.count = 0;
  }
  *[Symbol.iterator](): IterableIterator<[string, string]> {
    for (let i = 0; i < this.slots.length; i++)
      if (this.slots[i] !== 0) yield [this.names.text(i), this.entries.text(this.slots[i]! - 1)];
  }
}

/** A documentation or benchmarking address for node `i` (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, then 198.18.0.0/15). */
export function simUnderlay(i: number): string {
  if (i < 254 * 3) return `${['192.0.2', '198.51.100', '203.0.113'][Math.floor(i / 254)]}.${(i % 254) + 1}`;
  const j = i - 254 * 3;
  if (j >= 254 * 512) throw new Error(`no documentation or benchmarking address left for node ${i}`);
  return `198.${18 + Math.floor(j / (254 * 256))}.${Math.floor(j / 254) % 256}.${(j % 254) + 1}`;
}

export const simVtepMac = (i: number) =>
  `02:5e:${[(i >>> 24) & 255, (i >>> 16) & 255, (i >>> 8) & 255, i & 255].map((b) => b.toString(16).padStart(2, '0')).join(':')}`;

export function createNodeSimulator(deps: {
  target: string;
  ca: KeyPairPem;
  logger: Logger;
  leaseMsFallback?: number;
  /** Extra channel options of every node's clients (a test's load-balancing choice). */
  channel?: ChannelOptions;
}): NodeSimulator {
  const nodes: SimNode[] = [];
  const routeListeners: ((n: SimNode, m: WatchRoutesResponse) => void)[] = [];
  const policyListeners: ((n: SimNode, m: WatchNodePolicyResponse, r: NodeRules) => void)[] = [];
  const stopper = new AbortController();
  setMaxListeners(0, stopper.signal);
  // Each node's streams listen on a signal of the node's own (as each agent's do in its process), aborted with the
  // simulator: a listener added to an AbortSignal is compared with every one it holds, so one signal for every node's
  // stream attempts and backoff sleeps was quadratic (5,000 nodes reconnecting: 5.6 s of 23 s in addEventListener).
  const nodeStops: AbortController[] = [];
  const nodeNames = new Numbering();
  const routeEntries = new Numbering();
  const stats = { renewals: 0, renewalFailures: 0, reRegistrations: 0, streamBreaks: 0 };
  const reasons = new Map<string, number>();
  const breakTimes: number[] = [];
  const because = (what: string, err: unknown) => {
    const key = `${what}: ${String((err as Error)?.message ?? err)
      .replace(/\d+/g, '#')
      .slice(0, 160)}`;
    reasons.set(key, (reasons.get(key) ?? 0) + 1);
  };
  // A stream's break is counted, not logged: a control-plane restart breaks thousands at once.
  const quiet: Logger = {
    ...deps.logger,
    warn: (msg: string, fields?: Record<string, unknown>) => {
      if (!msg.includes('reconnecting')) return;
      stats.streamBreaks++;
      breakTimes.push(performance.now());
      because(msg.slice(0, msg.indexOf(' watch')), fields?.err);
    },
    child: () => quiet,
  } as Logger;

  // Renewals: node → due time, walked by one ticker in due order (buckets of TICK_MS). A failed one is tried again as
  // the agent does (node-dataplane/node-lease.ts createRenewalRetry).
  type RenewalRetry = ReturnType<typeof createRenewalRetry>;
  const renewalRetry = (leaseMs: number) => {
    const r = createRenewalRetry();
    r.renewed(leaseMs);
    return r;
  };
  const due = new Map<number, { node: SimNode; leaseMs: number; retry: RenewalRetry }[]>();
  /** The next bucket the ticker walks: the buckets before it are done. */
  let walked = Math.floor(performance.now() / TICK_MS);
  const schedule = (entry: { node: SimNode; leaseMs: number; retry: RenewalRetry }, inMs: number) => {
    // Never into a bucket already walked (a due time within the current tick): it would never renew again, and its
    // lease would lapse (1-3 nodes of 500 did, one in run E of bench/SCALE.md).
    const slot = Math.max(walked, Math.floor((performance.now() + inMs) / TICK_MS));
    const list = due.get(slot);
    if (list) list.push(entry);
    else due.set(slot, [entry]);
  };
  const ticker = setInterval(() => {
    const now = Math.floor(performance.now() / TICK_MS);
    for (; walked <= now; walked++) {
      const list = due.get(walked);
      if (!list) continue;
      due.delete(walked);
      for (const e of list) void renew(e);
    }
  }, TICK_MS);

  async function renew(e: { node: SimNode; leaseMs: number; retry: RenewalRetry }) {
    if (stopper.signal.aborted) return;
    const { node } = e;
    try {
      e.leaseMs =
        (await node.routes.renewLease({ name: node.spec.name }, { timeoutMs: 5000, waitForReady: true })).leaseMillis ||
        e.leaseMs;
      stats.renewals++;
      e.retry.renewed(e.leaseMs);
      schedule(e, e.leaseMs / 3);
    } catch (err) {
      if (stopper.signal.aborted) return;
      if ((err as { code?: number }).code === status.NOT_FOUND) {
        try {
          e.leaseMs =
            (await node.routes.registerNode(registration(node.spec), { timeoutMs: 5000, waitForReady: true }))
              .leaseMillis || e.leaseMs;
          stats.reRegistrations++;
          e.retry.renewed(e.leaseMs);
          schedule(e, e.leaseMs / 3);
          return;
        } catch (again) {
          because('re-registration', again);
        }
      } else because('renewal', err);
      stats.renewalFailures++;
      schedule(e, e.retry.nextDelay());
    }
  }

  const registration = (s: SimNodeSpec) => ({ name: s.name, underlayAddress: s.underlayAddress, vtepMac: s.vtepMac });

  async function startNode(spec: SimNodeSpec): Promise<SimNode> {
    const pair = await issueCertificate(deps.ca, { kind: 'node', name: spec.name });
    // One credentials object for the node's three clients: grpc-js gives them one connection, as the agent's share one.
    const creds = credentials.createSsl(Buffer.from(deps.ca.cert), Buffer.from(pair.key), Buffer.from(pair.cert), {
      checkServerIdentity: (_host, cert) => checkServerIdentity(SERVER_NAME, cert),
    });
    // The channel is the routes client's, with a subchannel pool of its own: grpc-js's global pool looks a new
    // channel's connection up by comparing it with every other channel to the same address, which for thousands of
    // nodes in one process is quadratic (1000 nodes: 6 s of the simulator's CPU; 5,000: minutes). The node's other
    // clients use that channel (one connection, as before).
    const channel = { 'grpc.ssl_target_name_override': SERVER_NAME, ...deps.channel };
    const routes = createClient(RoutesServiceService, deps.target, {
      credentials: creds,
      channel: { ...channel, 'grpc.use_local_subchannel_pool': 1 },
    });
    const opts = { credentials: creds, channel: { ...channel, channelOverride: routes.raw.getChannel() } };
    const node: SimNode = {
      spec,
      routes,
      ipam: createClient(IpamServiceService, deps.target, opts),
      policy: createClient(PolicyServiceService, deps.target, opts),
      routeView: new RouteTable(nodeNames, routeEntries),
      routeRevision: 0,
      routesSynced: false,
      policyRules: null,
      policyCompleteViews: 0,
      pods: new Map(),
      blocksOf(name) {
        const e = this.routeView.get(name);
        if (!e) return 0;
        const blocks = e.slice(e.lastIndexOf('|') + 1);
        return blocks ? blocks.split(',').length : 0;
      },
    };
    const own = new AbortController();
    nodeStops.push(own);
    // Registration first, as the agent retries it until it is taken; then the lease is kept by the ticker.
    const backoff = createBackoff({ baseMs: 200, capMs: 5000 });
    const register = async (): Promise<number> => {
      for (;;) {
        try {
          return (
            (await node.routes.registerNode(registration(spec), { timeoutMs: 5000, waitForReady: true })).leaseMillis ||
            deps.leaseMsFallback ||
            20_000
          );
        } catch (err) {
          if (stopper.signal.aborted) throw err;
          await new Promise((r) => setTimeout(r, backoff.next()));
        }
      }
    };
    const leaseMs = await register();
    schedule(
      {
        node,
        leaseMs,
        retry: renewalRetry(leaseMs),
      },
      Math.random() * (leaseMs / 3),
    );

    const routeChunks = createRoutesChunkJoiner();
    followStream({
      open: (signal) => {
        routeChunks.reset();
        return node.routes.watchRoutes(
          {
            node: spec.name,
            sinceRevision: node.routesSynced ? node.routeRevision : 0,
            acceptChunks: true,
            acceptCoalesced: true,
          },
          { signal, waitForReady: true },
        );
      },
      spreadMs: () => reconnectSpreadMs(node.routeView.size),
      onMessage: (chunk) => {
        const m = routeChunks.push(chunk);
        if (!m) return;
        if (m.bookmark) {
          if (node.routesSynced) node.routeRevision = m.revision;
        } else if (m.reset || node.routesSynced) {
          if (m.reset) node.routeView.clear();
          for (const u of m.upserts)
            node.routeView.set(u.node, `${u.underlayAddress}|${u.vtepMac}|${u.blockCidrs.join(',')}`);
          for (const d of m.deletes) node.routeView.delete(d);
          node.routeRevision = m.revision;
          if (m.reset) node.routesSynced = true;
        }
        for (const l of routeListeners) l(node, m);
      },
      brokenMessage: 'route watch broke; reconnecting',
      logger: quiet,
      signal: own.signal,
    });

    const policyChunks = createPolicyChunkJoiner();
    followStream({
      open: (signal) => {
        policyChunks.reset();
        return node.policy.watchNodePolicy(
          { node: spec.name, sinceRevision: node.policyRules?.revision ?? 0, acceptDeltas: true, acceptChunks: true },
          { signal, waitForReady: true },
        );
      },
      spreadMs: () => reconnectSpreadMs(node.routeView.size),
      onMessage: (chunk) => {
        const m = policyChunks.push(chunk);
        if (!m) return;
        if (m.bookmark) {
          if (node.policyRules) node.policyRules = { ...node.policyRules, revision: m.revision };
          return;
        }
        if (!m.delta) node.policyCompleteViews++;
        node.policyRules = applyPolicyMessage(node.policyRules, m, (what, why) =>
          deps.logger.error('refused a policy entry', { node: spec.name, what, why }),
        );
        for (const l of policyListeners) l(node, m, node.policyRules);
      },
      brokenMessage: 'policy watch broke; reconnecting',
      logger: quiet,
      signal: own.signal,
    });
    return node;
  }

  // Pod reports (AttachPod, DetachPod): in order per sandbox, retried with backoff (200 ms to 5 s) until the policy
  // service takes them; an INVALID_ARGUMENT is dropped (node-dataplane/pod-reports.ts).
  const reports = {
    pending: 0,
    failures: 0,
    latencies: [] as number[],
    queues: new Map<string, (() => Promise<unknown>)[]>(),
  };
  function report(pod: SimPod, send: () => Promise<unknown>, since: number) {
    reports.pending++;
    const queue = reports.queues.get(pod.containerId);
    const item = async () => {
      const backoff = createBackoff({ baseMs: 200, capMs: 5000 });
      while (!stopper.signal.aborted) {
        try {
          await send();
          break;
        } catch (err) {
          if ((err as { code?: number }).code === status.INVALID_ARGUMENT) break;
          reports.failures++;
          await new Promise((r) => setTimeout(r, backoff.next()));
        }
      }
      reports.pending--;
      reports.latencies.push(performance.now() - since);
    };
    if (queue) return void queue.push(item);
    const q = [item];
    reports.queues.set(pod.containerId, q);
    void (async () => {
      while (q.length > 0) await q.shift()!();
      reports.queues.delete(pod.containerId);
    })();
  }

  let containerSeq = 0;
  return {
    nodes,
    async addNodes(specs, concurrency = 32) {
      const added: SimNode[] = new Array(specs.length);
      let next = 0;
      await Promise.all(
        Array.from({ length: Math.min(concurrency, specs.length) }, async () => {
          while (next < specs.length) {
            const i = next++;
            added[i] = await startNode(specs[i]!);
          }
        }),
      );
      nodes.push(...added);
      return added;
    },
    async attachPod(node, pod) {
      const containerId = `${(containerSeq++).toString(16).padStart(12, '0')}${randomUUID().replace(/-/g, '').slice(0, 20)}`;
      const handle = `${containerId}/eth0`;
      const attemptId = randomUUID();
      const t0 = performance.now();
      const res = await node.ipam
        .allocate(
          {
            handle,
            node: node.spec.name,
            pool: node.spec.pool,
            cluster: node.spec.cluster,
            podNamespace: pod.namespace,
            podName: pod.name,
            containerId,
            attemptId,
          },
          { timeoutMs: 20_000 },
        )
        .catch(async (err: { code?: number }) => {
          // An Allocate that did not answer may still commit: released naming its attempt, as the agent does.
          if (
            err.code === status.DEADLINE_EXCEEDED ||
            err.code === status.UNAVAILABLE ||
            err.code === status.CANCELLED
          ) {
            await node.ipam.release({ handle, attemptId }, { timeoutMs: 10_000 }).catch(() => {});
          }
          throw err;
        });
      const t1 = performance.now();
      const address = res.allocations[0]!.address;
      const held: SimPod = {
        ...pod,
        containerId,
        handle,
        address,
        attemptId,
        allocatedAt: performance.timeOrigin + t1,
        allocateMs: t1 - t0,
      };
      node.pods.set(handle, held);
      // The report goes out in the background, retried until taken, as the agent's pod reporter does: the ADD does not wait.
      report(
        held,
        () =>
          node.policy.attachPod(
            { namespace: pod.namespace, name: pod.name, node: node.spec.name, containerId, addresses: [address] },
            { timeoutMs: 10_000 },
          ),
        t1,
      );
      return held;
    },
    async detachPod(node, pod) {
      await node.ipam.release({ handle: pod.handle }, { timeoutMs: 10_000 });
      node.pods.delete(pod.handle);
      report(
        pod,
        () => node.policy.detachPod({ containerId: pod.containerId }, { timeoutMs: 10_000 }),
        performance.now(),
      );
    },
    reportsPending: () => reports.pending,
    reportLatencies: () => reports.latencies.splice(0),
    onRoutes: (l) => void routeListeners.push(l),
    onPolicy: (l) => void policyListeners.push(l),
    stats: () => ({
      nodes: nodes.length,
      routesSynced: nodes.filter((n) => n.routesSynced).length,
      policySynced: nodes.filter((n) => n.policyRules !== null).length,
      ...stats,
      reportFailures: reports.failures,
      reasons,
      breakTimes,
    }),
    close() {
      stopper.abort();
      for (const c of nodeStops) c.abort();
      clearInterval(ticker);
      for (const n of nodes) {
        n.routes.close();
        n.ipam.close();
        n.policy.close();
      }
    },
  };
}
