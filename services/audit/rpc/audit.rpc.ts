import type { Handlers } from '../../../lib/grpc/server.js';
import { decodePageToken, encodePageToken, pageSizeOf } from '../../../lib/paging.js';
import type { AuditServiceService } from '../../../gen/weft/audit/v1/audit.js';
import type { AuditRepository } from '../store/audit.repository.js';

const DEFAULT_PAGE = 100;
const MAX_PAGE = 1000;

/** The gRPC adapter of the audit log: read-only. */
export function createAuditHandlers(deps: { repo: AuditRepository }): Handlers<typeof AuditServiceService> {
  return {
    async listAuditEvents(req) {
      const limit = pageSizeOf('audit.bad_page_size', req.pageSize, MAX_PAGE) || DEFAULT_PAGE;
      const after = decodePageToken('audit.bad_page_token', 'audit', req.pageToken, 1);
      const rows = await deps.repo.list({ since: req.since ?? null, actor: req.actor, resource: req.resource, afterId: after ? Number(after[0]) : 0, limit: limit + 1 });
      const page = rows.slice(0, limit);
      return {
        events: page.map((e) => ({ id: e.id, time: e.at, actor: e.actor, method: e.method, resource: e.resource, requestId: e.requestId, traceId: e.traceId, result: e.result, message: e.message })),
        nextPageToken: rows.length > limit ? encodePageToken('audit', [String(page[page.length - 1]!.id)]) : '',
      };
    },
  };
}
