import { AuditServiceService, type AuditEvent } from '../../gen/weft/audit/v1/audit.js';
import { REFUSAL_RESULTS, SUPPRESSED_RESULT } from '../../lib/audit.js';
import { CONNECTION_FLAGS, OUTPUT_FLAGS, UsageError, type CommandGroup } from '../core/command.js';
import { everyPage, iso, sinceTime } from '../core/values.js';

/** `weft audit`: the audit log, oldest first (services/audit/DESIGN.md). */
export const auditCommands: CommandGroup = {
  name: 'audit',
  summary: 'who changed what, when, and with what result',
  commands: [
    {
      path: ['audit'],
      summary: 'the audit log, oldest first: one line per mutation (time, actor, method, resource, result, message)',
      flags: {
        since: {
          type: 'string',
          value: 'T',
          description: 'from a time (2026-11-27T03:12:00Z) or an age ago (30m, 2h, 7d)',
        },
        actor: { type: 'string', value: 'A', description: 'only this caller, kind:name (node:node1, admin:local)' },
        resource: {
          type: 'string',
          value: 'R',
          description: 'only this resource (pool/default), or a prefix ending in / (handle/)',
        },
        result: {
          type: 'string',
          multiple: true,
          value: 'RES',
          description:
            'only these results: denied (refused calls and their suppressed counts), ok, or a gRPC status name such as PERMISSION_DENIED',
        },
        ...CONNECTION_FLAGS,
        ...OUTPUT_FLAGS,
      },
      async run(ctx) {
        const since = ctx.str('since') === undefined ? undefined : sinceTime(ctx.str('since')!);
        const results = auditResults(ctx.list('result'));
        const audit = ctx.client(AuditServiceService);
        const events = await everyPage((pageToken) =>
          audit
            .listAuditEvents(
              {
                since,
                actor: ctx.str('actor') ?? '',
                resource: ctx.str('resource') ?? '',
                results,
                pageSize: 1000,
                pageToken,
              },
              { timeoutMs: 30_000 },
            )
            .then((r) => ({ items: r.events, next: r.nextPageToken })),
        );
        ctx.out.table(
          events,
          [
            { header: 'TIME', value: (e: AuditEvent) => iso(e.time) },
            { header: 'ACTOR', value: (e) => e.actor },
            { header: 'METHOD', value: (e) => e.method.replace(/^\/weft\./, '') },
            { header: 'RESOURCE', value: (e) => e.resource },
            { header: 'RESULT', value: (e) => e.result },
            { header: 'REQUEST', value: (e) => e.requestId, wide: true },
            { header: 'TRACE', value: (e) => e.traceId, wide: true },
            { header: 'MESSAGE', value: (e) => e.message },
          ],
          { empty: 'no audit events' },
        );
        return 0;
      },
    },
  ],
};

/** `--result`: denied (every refusal, and the counts of those not recorded one by one), ok, or gRPC status names. */
function auditResults(values: string[]): string[] {
  return [
    ...new Set(
      values.flatMap((v) => {
        const r = v.trim().toUpperCase().replace(/-/g, '_');
        if (r === 'DENIED' || r === 'REFUSED') return [...REFUSAL_RESULTS, SUPPRESSED_RESULT];
        if (!/^[A-Z_]{2,32}$/.test(r))
          throw new UsageError(
            `--result ${JSON.stringify(v)}: use denied, ok, or a gRPC status name such as PERMISSION_DENIED`,
          );
        return [r];
      }),
    ),
  ];
}
