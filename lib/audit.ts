import type { Logger } from './logger.js';

/**
 * The audit log's writer: every call of a mutation (MUTATIONS below) appends one event — who, what, on which
 * resource, when, request and trace ids, and the outcome — to PostgreSQL's `audit.events`, which the services' role may
 * only INSERT into and SELECT (services/audit/DESIGN.md).
 *
 * Writes are batched and bounded, and never hold a request: `record()` only queues (at most `maxQueued` events; one
 * more is dropped and counted), a flush writes up to `batchSize` queued events in one INSERT at least every
 * `flushMs`, and a failed write is logged and counted, its events dropped. A mutation never fails because its audit
 * event could not be written: the event is recorded after the mutation committed, so failing the call then would only
 * make the caller retry something already done. The cost is that an outage of the database's audit table loses
 * events (the counters and the log say how many).
 */

/** Who made a call: `kind:name` of the caller's identity (lib/auth/identity.ts), `none` without one. */
export type AuditIdentity = { kind: string; name?: string };

export interface AuditEvent {
  at: Date;
  /** `node:node1`, `admin:local`, `none`. */
  actor: string;
  /** The full gRPC method path, e.g. "/weft.ipam.v1.IpamService/Allocate". */
  method: string;
  /** What the call acted on, e.g. `pool/default`, `handle/c1/eth0`, `policy/NetworkPolicy/ns/deny-all`; may be empty. */
  resource: string;
  requestId: string;
  traceId: string;
  /** The gRPC status code name of the outcome: OK, INVALID_ARGUMENT, PERMISSION_DENIED, ... */
  result: string;
  /** The error's message for a failed call; empty for OK. */
  message: string;
}

/** Where events go: one INSERT of a batch (services/audit/store). */
export interface AuditSink {
  insert(events: AuditEvent[]): Promise<void>;
}

export interface AuditRecorder {
  /** Queues one event; never waits. */
  record(event: AuditEvent): void;
  /** Whether calls of `method` are recorded. */
  isMutation(method: string): boolean;
  /** Writes what is queued now (tests; stop). */
  flush(): Promise<void>;
  stats(): { written: number; dropped: number; failed: number };
  stop(): Promise<void>;
}

export interface AuditRecorderOptions {
  flushMs?: number;
  batchSize?: number;
  maxQueued?: number;
}

export const actorOf = (id: AuditIdentity): string => (id.kind === 'none' || !id.name ? id.kind : `${id.kind}:${id.name}`);

const str = (v: unknown) => (typeof v === 'string' ? v : '');
type Req = Record<string, unknown>;
const named = (kind: string, field = 'name') => (r: Req) => (str(r[field]) ? `${kind}/${str(r[field])}` : '');
const pod = (r: Req) => (str(r.namespace) || str(r.name) ? `pod/${str(r.namespace)}/${str(r.name)}` : '');

/**
 * The methods whose calls are audited, with what each acts on. Read-only methods and RenewLease (every node, every
 * few seconds, changes nothing but an expiry) are not. Hard-coded here for now: the authorization table
 * (lib/auth/authorization.ts) will say which methods are mutations, and this list then keeps only the resources.
 */
export const MUTATIONS: ReadonlyMap<string, (request: Req) => string> = new Map<string, (request: Req) => string>([
  ['/weft.ipam.v1.IpamService/CreatePool', named('pool')],
  ['/weft.ipam.v1.IpamService/UpdatePool', named('pool')],
  ['/weft.ipam.v1.IpamService/CreateReservation', (r) => `pool/${str(r.pool)}${str(r.cidr) ? ` ${str(r.cidr)}` : ''}`],
  ['/weft.ipam.v1.IpamService/DeleteReservation', named('reservation')],
  ['/weft.ipam.v1.IpamService/Allocate', named('handle', 'handle')],
  ['/weft.ipam.v1.IpamService/BatchAllocate', (r) => {
    const handles = Array.isArray(r.requests) ? (r.requests as Req[]).map((x) => str(x.handle)) : [];
    return handles.length === 1 ? `handle/${handles[0]}` : `handles/${handles.length}`;
  }],
  ['/weft.ipam.v1.IpamService/Release', named('handle', 'handle')],
  ['/weft.ipam.v1.IpamService/GarbageCollect', named('node', 'node')],
  ['/weft.ipam.v1.IpamService/SetNodeLabels', named('node', 'node')],
  ['/weft.ipam.v1.IpamService/SetNamespaceLabels', named('namespace', 'namespace')],
  ['/weft.ipam.v1.IpamService/CreateRoutingDomain', named('routing-domain')],
  ['/weft.ipam.v1.IpamService/RegisterCluster', named('cluster')],
  ['/weft.ipam.v1.IpamService/CreateAggregate', named('aggregate')],
  ['/weft.ipam.v1.IpamService/AllocatePrefix', named('cluster', 'cluster')],
  ['/weft.ipam.v1.IpamService/ReleasePrefix', named('prefix')],
  ['/weft.policy.v1.PolicyService/UpsertNamespace', named('namespace')],
  ['/weft.policy.v1.PolicyService/DeleteNamespace', named('namespace')],
  ['/weft.policy.v1.PolicyService/UpsertPod', (r) => pod((r.pod ?? {}) as Req)],
  ['/weft.policy.v1.PolicyService/DeletePod', pod],
  ['/weft.policy.v1.PolicyService/AttachPod', pod],
  ['/weft.policy.v1.PolicyService/DetachPod', named('container', 'containerId')],
  ['/weft.policy.v1.PolicyService/ApplyPolicies', (r) => `policies/${Array.isArray(r.objectsJson) ? r.objectsJson.length : 0}`],
  ['/weft.policy.v1.PolicyService/DeletePolicy', (r) => {
    const p = (r.policy ?? {}) as Req;
    return ['policy', str(p.kind), str(p.namespace), str(p.name)].filter(Boolean).join('/');
  }],
  ['/weft.routes.v1.RoutesService/RegisterNode', named('node')],
  ['/weft.routes.v1.RoutesService/DeregisterNode', named('node')],
  ['/weft.auth.v1.TokenService/CreateToken', named('token')],
  ['/weft.auth.v1.TokenService/RevokeToken', named('token')],
]);

/** The resource of a call of `method` with `request` (empty when unknown or when it cannot be read). */
export function resourceOf(method: string, request: unknown): string {
  try {
    return MUTATIONS.get(method)?.((request ?? {}) as Req) ?? '';
  } catch {
    return '';
  }
}

export function createAuditRecorder(sink: AuditSink, logger: Logger, opts: AuditRecorderOptions = {}): AuditRecorder {
  const flushMs = opts.flushMs ?? 200;
  const batchSize = opts.batchSize ?? 500;
  const maxQueued = opts.maxQueued ?? 10_000;
  let queue: AuditEvent[] = [];
  let written = 0;
  let dropped = 0;
  let failed = 0;
  let running: Promise<void> | null = null;
  let stopped = false;
  let lastDropLog = 0;

  async function writeQueued(): Promise<void> {
    while (queue.length > 0) {
      const batch = queue.slice(0, batchSize);
      queue = queue.slice(batch.length);
      try {
        await sink.insert(batch);
        written += batch.length;
      } catch (err) {
        failed += batch.length;
        logger.error('audit events could not be written; they are lost', { events: batch.length, failedTotal: failed, err: (err as Error).message });
      }
    }
  }
  const flush = (): Promise<void> => {
    // One writer at a time; a flush asked for while one runs waits for it and then writes what came meanwhile.
    const next: Promise<void> = (running ?? Promise.resolve()).then(writeQueued).finally(() => {
      if (running === next) running = null;
    });
    running = next;
    return next;
  };
  const timer = setInterval(() => {
    if (queue.length > 0 && !running) void flush();
  }, flushMs);
  timer.unref();

  return {
    record(event) {
      if (stopped || queue.length >= maxQueued) {
        dropped++;
        if (Date.now() - lastDropLog > 10_000) {
          lastDropLog = Date.now();
          logger.error('audit queue full; events dropped', { droppedTotal: dropped, maxQueued });
        }
        return;
      }
      queue.push(event);
      if (queue.length >= batchSize && !running) void flush();
    },
    isMutation: (method) => MUTATIONS.has(method),
    flush,
    stats: () => ({ written, dropped, failed }),
    async stop() {
      clearInterval(timer);
      await flush();
      stopped = true;
    },
  };
}
