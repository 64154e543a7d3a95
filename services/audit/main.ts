import type { Server } from '@grpc/grpc-js';
import type { DatabaseHandle } from '../../lib/db/database.js';
import { addService, observeCalls, type CallObserver } from '../../lib/grpc/server.js';
import type { Logger } from '../../lib/logger.js';
import {
  actorOf,
  createAuditRecorder,
  createRefusalAudit,
  resourceOf,
  type AuditIdentity,
  type AuditRecorderOptions,
} from '../../lib/audit.js';
import { statusName } from '../../lib/grpc/status.js';
import { REFUSAL_RESULTS } from '../../lib/audit.js';

const REFUSALS: ReadonlySet<string> = new Set(REFUSAL_RESULTS);
import { AuditServiceService } from '../../gen/weft/audit/v1/audit.js';
import { createAuditHandlers } from './rpc/audit.rpc.js';
import { createAuditRepository } from './store/audit.repository.js';

/** The caller's identity, once CallContext carries one (lib/auth/identity.ts); `none` until then. */
const identityOf = (ctx: object): AuditIdentity => (ctx as { identity?: AuditIdentity }).identity ?? { kind: 'none' };
/** The call's request id: CallContext's once it has one, else the caller's x-request-id. */
const requestIdOf = (ctx: { metadata: { get(k: string): unknown[] } }): string => {
  const own = (ctx as { requestId?: unknown }).requestId;
  if (typeof own === 'string') return own;
  const sent = ctx.metadata.get('x-request-id')[0];
  return typeof sent === 'string' ? sent : '';
};

/**
 * The audit log on a server: records every later-added service's mutation calls and every refused call (call before
 * mounting the other services: the observer must be set before their `addService`) and serves
 * AuditService.ListAuditEvents. `observe` is the same observer, for another server (the bootstrap listener).
 */
export function mountAuditService(
  server: Server,
  deps: { database: DatabaseHandle; logger: Logger; options?: AuditRecorderOptions & { refusalsPerSecond?: number } },
) {
  const logger = deps.logger.child({ service: 'audit' });
  const repo = createAuditRepository(deps.database.db);
  const recorder = createAuditRecorder(repo, logger, deps.options);
  const refusals = createRefusalAudit(recorder, { perSecond: deps.options?.refusalsPerSecond });
  const observe: CallObserver = ({ path, request, ctx, code, details, traceId, refused, peer, response }) => {
    const event = {
      at: new Date(),
      actor: actorOf(identityOf(ctx)),
      method: path,
      resource: resourceOf(path, request, response),
      requestId: requestIdOf(ctx),
      traceId,
      result: statusName(code),
      message: details,
    };
    // A refusal of any method, bounded per actor; the caller's address says where an unidentified one came from.
    if (refused)
      return void (
        REFUSALS.has(event.result) &&
        refusals.record({ ...event, message: `${peer ? `from ${peer}: ` : ''}${details}` })
      );
    if (recorder.isMutation(path)) recorder.record(event);
  };
  observeCalls(server, observe);
  addService(server, AuditServiceService, createAuditHandlers({ repo }), logger);
  return {
    recorder,
    observe,
    async stop() {
      refusals.stop();
      await recorder.stop();
    },
  };
}
