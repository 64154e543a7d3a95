import type { Handlers } from '../../../lib/grpc/server.js';
import { invalidArgument } from '../../../lib/errors.js';
import { decodePageToken, encodePageToken, pageSizeOf } from '../../../lib/paging.js';
import type { AuditServiceService } from '../../../gen/weft/audit/v1/audit.js';
import type { AuditRepository } from '../store/audit.repository.js';

const DEFAULT_PAGE = 100;
const MAX_PAGE = 1000;

/** Result names as recorded: gRPC status names ("PERMISSION_DENIED") or SUPPRESSED; anything else is refused, naming it. */
function validateResults(results: string[]): string[] {
  for (const r of results) {
    if (!/^[A-Z_]{2,32}$/.test(r))
      throw invalidArgument(
        'audit.bad_result',
        `result ${JSON.stringify(r)} is not a gRPC status name (OK, PERMISSION_DENIED, ...) or SUPPRESSED`,
      );
  }
  return results;
}

/** The gRPC adapter of the audit log: read-only. */
export function createAuditHandlers(deps: { repo: AuditRepository }): Handlers<typeof AuditServiceService> {
  return {
    async listAuditEvents(req) {
      const limit = pageSizeOf('audit.bad_page_size', req.pageSize, MAX_PAGE) || DEFAULT_PAGE;
      const after = decodePageToken('audit.bad_page_token', 'audit', req.pageToken, 1);
      const rows = await deps.repo.list({
        since: req.since ?? null,
        actor: req.actor,
        resource: req.resource,
        results: validateResults(req.results),
        afterId: after ? Number(after[0]) : 0,
        limit: limit + 1,
      });
      const page = rows.slice(0, limit);
      return {
        events: page.map((e) => ({
          id: e.id,
          time: e.at,
          actor: e.actor,
          method: e.method,
          resource: e.resource,
          requestId: e.requestId,
          traceId: e.traceId,
          result: e.result,
          message: e.message,
        })),
        nextPageToken: rows.length > limit ? encodePageToken('audit', [String(page[page.length - 1]!.id)]) : '',
      };
    },
  };
}
