import { X509Certificate } from 'node:crypto';
import { canonicalSerial } from './auth/identity.js';
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

export const actorOf = (id: AuditIdentity): string =>
  id.kind === 'none' || !id.name ? id.kind : `${id.kind}:${id.name}`;

const str = (v: unknown) => (typeof v === 'string' ? v : '');
type Req = Record<string, unknown>;
const named =
  (kind: string, field = 'name') =>
  (r: Req) =>
    str(r[field]) ? `${kind}/${str(r[field])}` : '';
const pod = (r: Req) => (str(r.namespace) || str(r.name) ? `pod/${str(r.namespace)}/${str(r.name)}` : '');

/**
 * The methods whose calls are audited, with what each acts on. Read-only methods and RenewLease (every node, every
 * few seconds, changes nothing but an expiry) are not. Hard-coded here for now: the authorization table
 * (lib/auth/authorization.ts) will say which methods are mutations, and this list then keeps only the resources.
 */
export const MUTATIONS: ReadonlyMap<string, (request: Req, response?: Req) => string> = new Map<
  string,
  (request: Req, response?: Req) => string
>([
  ['/weft.ipam.v1.IpamService/CreatePool', named('pool')],
  ['/weft.ipam.v1.IpamService/UpdatePool', named('pool')],
  ['/weft.ipam.v1.IpamService/CreateReservation', (r) => `pool/${str(r.pool)}${str(r.cidr) ? ` ${str(r.cidr)}` : ''}`],
  ['/weft.ipam.v1.IpamService/DeleteReservation', named('reservation')],
  ['/weft.ipam.v1.IpamService/Allocate', named('handle', 'handle')],
  [
    '/weft.ipam.v1.IpamService/BatchAllocate',
    (r) => {
      const handles = Array.isArray(r.requests) ? (r.requests as Req[]).map((x) => str(x.handle)) : [];
      return handles.length === 1 ? `handle/${handles[0]}` : `handles/${handles.length}`;
    },
  ],
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
  [
    '/weft.policy.v1.PolicyService/ApplyPolicies',
    (r) => `policies/${Array.isArray(r.objectsJson) ? r.objectsJson.length : 0}`,
  ],
  [
    '/weft.policy.v1.PolicyService/DeletePolicy',
    (r) => {
      const p = (r.policy ?? {}) as Req;
      return ['policy', str(p.kind), str(p.namespace), str(p.name)].filter(Boolean).join('/');
    },
  ],
  ['/weft.routes.v1.RoutesService/RegisterNode', named('node')],
  ['/weft.routes.v1.RoutesService/DeregisterNode', named('node')],
  ['/weft.auth.v1.TokenService/CreateToken', named('token')],
  ['/weft.auth.v1.TokenService/RevokeToken', named('token')],
  // Certificates: `certificate/<identity>/<serial>` once known (from the answer), so that `--resource
  // certificate/node:n1/` finds every issue and revocation of node n1's.
  [
    '/weft.auth.v1.CertificateService/RecordCertificate',
    (_r, res) => certificateResource((res?.certificate ?? {}) as Req),
  ],
  [
    '/weft.auth.v1.CertificateService/RevokeCertificates',
    (r, res) => {
      const revoked = Array.isArray(res?.revoked) ? (res.revoked as Req[]) : [];
      if (revoked.length === 1) return certificateResource(revoked[0]!);
      if (str(r.identity)) return `certificate/${str(r.identity)}/`;
      return str(r.serial) ? `certificate/${str(r.serial)}` : 'certificate/';
    },
  ],
  [
    '/weft.auth.v1.BootstrapService/IssueCertificate',
    (_r, res) => {
      const serial = typeof res?.certificatePem === 'string' ? serialOfPem(res.certificatePem) : '';
      return str(res?.identity) ? `certificate/${str(res?.identity)}/${serial}` : 'certificate/';
    },
  ],
]);

const certificateResource = (c: Req) =>
  str(c.identity) ? `certificate/${str(c.identity)}/${str(c.serial)}` : `certificate/${str(c.serial)}`;
const serialOfPem = (pem: string) => {
  try {
    return canonicalSerial(new X509Certificate(pem).serialNumber);
  } catch {
    return '';
  }
};

/** The resource of a call of `method` with `request` (and its answer, when OK; empty when unknown or when it cannot be read). */
export function resourceOf(method: string, request: unknown, response?: unknown): string {
  try {
    return MUTATIONS.get(method)?.((request ?? {}) as Req, (response ?? undefined) as Req | undefined) ?? '';
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
        logger.error('audit events could not be written; they are lost', {
          events: batch.length,
          failedTotal: failed,
          err: (err as Error).message,
        });
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

/** The gRPC status names of refusals: what `weft audit --result denied` asks for, with the summary of those not recorded. */
export const REFUSAL_RESULTS = ['UNAUTHENTICATED', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED'] as const;
/** The result of the event that counts one actor's refusals not recorded one by one in a second. */
export const SUPPRESSED_RESULT = 'SUPPRESSED';

export interface RefusalAudit {
  /** Records a refused call, unless its actor has had `perSecond` recorded in this second (then it is counted). */
  record(event: AuditEvent): void;
  /** Writes the summaries of the seconds that are over (a timer does it every second; tests). */
  flushSummaries(all?: boolean): void;
  stop(): void;
}

/**
 * Refused calls in the audit log, bounded per actor: at most `perSecond` events of one actor (`none`, the callers
 * without an identity, is one actor) in a second of the clock; the others of that second are counted and written as
 * one `SUPPRESSED` event once it is over (how many, of which results and methods). A flood of refusals thus writes at
 * most perSecond + 1 rows a second per identity, and the recorder's queue bound (maxQueued) caps the rest.
 */
export function createRefusalAudit(
  recorder: Pick<AuditRecorder, 'record'>,
  opts: { perSecond?: number; now?: () => number } = {},
): RefusalAudit {
  const perSecond = opts.perSecond ?? 5;
  const now = opts.now ?? Date.now;
  const windows = new Map<
    string,
    { second: number; recorded: number; suppressed: number; results: Map<string, number>; methods: Set<string> }
  >();
  const summarize = (
    actor: string,
    w: { second: number; suppressed: number; results: Map<string, number>; methods: Set<string> },
  ) => {
    if (w.suppressed === 0) return;
    const results = [...w.results].map(([r, n]) => `${r} x${n}`).join(', ');
    const methods = [...w.methods].slice(0, 5).join(', ') + (w.methods.size > 5 ? ', ...' : '');
    recorder.record({
      at: new Date((w.second + 1) * 1000),
      actor,
      method: '',
      resource: '',
      requestId: '',
      traceId: '',
      result: SUPPRESSED_RESULT,
      message: `${w.suppressed} more refused calls of ${actor} in the second from ${new Date(w.second * 1000).toISOString()} were not recorded one by one (at most ${perSecond} a second are): ${results}; methods: ${methods}`,
    });
  };
  const flushSummaries = (all = false) => {
    const second = Math.floor(now() / 1000);
    for (const [actor, w] of windows) {
      if (!all && w.second >= second) continue;
      summarize(actor, w);
      windows.delete(actor);
    }
  };
  const timer = setInterval(() => flushSummaries(), 1000);
  timer.unref();
  return {
    record(event) {
      // The event's own second, so that the rows of any second of the log are at most perSecond.
      const second = Math.floor(event.at.getTime() / 1000);
      let w = windows.get(event.actor);
      if (w && w.second < second) {
        summarize(event.actor, w);
        w = undefined;
      }
      if (!w)
        windows.set(event.actor, (w = { second, recorded: 0, suppressed: 0, results: new Map(), methods: new Set() }));
      if (w.recorded < perSecond) {
        w.recorded++;
        recorder.record(event);
        return;
      }
      w.suppressed++;
      w.results.set(event.result, (w.results.get(event.result) ?? 0) + 1);
      if (w.methods.size <= 5) w.methods.add(event.method);
    },
    flushSummaries,
    stop() {
      clearInterval(timer);
      flushSummaries(true);
    },
  };
}
