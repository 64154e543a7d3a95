import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  actorOf,
  createAuditRecorder,
  createRefusalAudit,
  resourceOf,
  SUPPRESSED_RESULT,
  type AuditEvent,
} from './audit.js';
import { silentLogger } from './logger.js';

const event = (i: number): AuditEvent => ({
  at: new Date(),
  actor: 'none',
  method: '/weft.ipam.v1.IpamService/Allocate',
  resource: `handle/h${i}`,
  requestId: '',
  traceId: '',
  result: 'OK',
  message: '',
});

test('events are written in batches, in order, without the caller waiting', async () => {
  const batches: AuditEvent[][] = [];
  const recorder = createAuditRecorder({ insert: async (b) => void batches.push(b) }, silentLogger, {
    batchSize: 3,
    flushMs: 10_000,
  });
  for (let i = 0; i < 7; i++) recorder.record(event(i));
  await recorder.stop();
  assert.deepEqual(
    batches.map((b) => b.length),
    [3, 3, 1],
  );
  assert.deepEqual(
    batches.flat().map((e) => e.resource),
    Array.from({ length: 7 }, (_, i) => `handle/h${i}`),
  );
  assert.deepEqual(recorder.stats(), { written: 7, dropped: 0, failed: 0 });
});

test('a stuck or failing database costs at most maxQueued events of memory; what is lost is counted', async () => {
  let release = () => {};
  const stuck = new Promise<void>((r) => (release = r));
  let calls = 0;
  const recorder = createAuditRecorder(
    {
      insert: async () => {
        calls++;
        if (calls === 1) await stuck;
        throw new Error('permission denied for table events');
      },
    },
    silentLogger,
    { batchSize: 2, maxQueued: 4, flushMs: 10_000 },
  );
  const started = Date.now();
  for (let i = 0; i < 20; i++) recorder.record(event(i)); // 4 wait (a flush is under way), 16 dropped
  assert.ok(Date.now() - started < 50, 'record never waits for the database');
  assert.equal(recorder.stats().dropped, 16);
  release();
  await recorder.stop();
  assert.deepEqual(recorder.stats(), { written: 0, dropped: 16, failed: 4 });
});

test('actor and resource names', () => {
  assert.equal(actorOf({ kind: 'none' }), 'none');
  assert.equal(actorOf({ kind: 'node', name: 'node1' }), 'node:node1');
  assert.equal(resourceOf('/weft.ipam.v1.IpamService/CreatePool', { name: 'default' }), 'pool/default');
  assert.equal(
    resourceOf('/weft.policy.v1.PolicyService/DeletePolicy', {
      policy: { kind: 'NetworkPolicy', namespace: 'ns', name: 'deny' },
    }),
    'policy/NetworkPolicy/ns/deny',
  );
  assert.equal(
    resourceOf('/weft.policy.v1.PolicyService/UpsertPod', { pod: { namespace: 'ns', name: 'web' } }),
    'pod/ns/web',
  );
  assert.equal(resourceOf('/weft.ipam.v1.IpamService/ListPools', {}), '', 'a read has no audited resource');
});

test('refusals are recorded at most perSecond a second per actor; the rest are counted in one SUPPRESSED event per second', () => {
  const recorded: AuditEvent[] = [];
  let t = 10_000;
  const refusals = createRefusalAudit({ record: (e) => void recorded.push(e) }, { perSecond: 3, now: () => t });
  const refused = (
    actor: string,
    result = 'PERMISSION_DENIED',
    method = '/weft.routes.v1.RoutesService/RegisterNode',
  ): AuditEvent => ({
    at: new Date(t),
    actor,
    method,
    resource: '',
    requestId: '',
    traceId: '',
    result,
    message: 'no',
  });
  for (let i = 0; i < 10; i++) refusals.record(refused('node:a'));
  refusals.record(refused('node:a', 'RESOURCE_EXHAUSTED'));
  for (let i = 0; i < 2; i++) refusals.record(refused('none', 'UNAUTHENTICATED'));
  assert.equal(recorded.length, 5, 'three of node:a, both of none; the rest waits for the second to end');
  refusals.flushSummaries();
  assert.equal(recorded.length, 5, 'not before the second is over');
  t += 1000;
  refusals.flushSummaries();
  const summary = recorded.filter((e) => e.result === SUPPRESSED_RESULT);
  assert.equal(summary.length, 1, 'none had nothing suppressed: no summary');
  assert.equal(summary[0]!.actor, 'node:a');
  assert.match(
    summary[0]!.message,
    /^8 more refused calls of node:a in the second from 1970-01-01T00:00:10.000Z were not recorded one by one \(at most 3 a second are\): PERMISSION_DENIED x7, RESOURCE_EXHAUSTED x1; methods: \/weft.routes.v1.RoutesService\/RegisterNode$/,
  );
  // A new second: a new budget.
  for (let i = 0; i < 4; i++) refusals.record(refused('node:a'));
  assert.equal(recorded.filter((e) => e.result === 'PERMISSION_DENIED').length, 6);
  refusals.stop();
  assert.equal(recorded.filter((e) => e.result === SUPPRESSED_RESULT).length, 2, 'stop writes what is pending');
});
