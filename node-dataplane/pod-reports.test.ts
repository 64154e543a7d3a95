import { test } from 'node:test';
import assert from 'node:assert/strict';
import { status } from '@grpc/grpc-js';
import { silentLogger } from '../lib/logger.js';
import { createPodReporter, reportedIdentity } from './pod-reports.js';

/** The agent's reports to the policy service: identity, order per sandbox, retries, and what is given up. */
test('identity: Kubernetes names as given; anything else is default/sandbox-<container id>', () => {
  assert.deepEqual(reportedIdentity('shop', 'web-0', 'abc'), { namespace: 'shop', name: 'web-0' });
  assert.deepEqual(reportedIdentity('', '', 'C0FFEE_1.x'), { namespace: 'default', name: 'sandbox-c0ffee-1.x' });
  assert.deepEqual(
    reportedIdentity('Podman', 'My_Box', 'abc-'),
    { namespace: 'default', name: 'sandbox-abc' },
    'not DNS names',
  );
});

test('reports go out in order per sandbox, retried until taken; a refused one is dropped', async () => {
  const calls: string[] = [];
  let failures = 2;
  const policy = {
    async attachPod(r: { name: string; containerId: string; resync: boolean }) {
      calls.push(`attach ${r.containerId} ${r.name}${r.resync ? ' resync' : ''}`);
      if (r.containerId === 'bad')
        throw Object.assign(new Error('bad'), { code: status.INVALID_ARGUMENT, details: 'namespace: bad' });
      if (failures-- > 0) throw Object.assign(new Error('down'), { code: status.UNAVAILABLE, details: 'down' });
      return { revision: 1, known: false };
    },
    async detachPod(r: { containerId: string }) {
      calls.push(`detach ${r.containerId}`);
      return { namespace: 'x', name: 'a', deleted: true, revision: 2 };
    },
  };
  const reports = createPodReporter({
    node: 'n1',
    policy: policy as never,
    logger: silentLogger,
    retryInitialMs: 5,
    retryMaxMs: 10,
  });
  reports.attached({ podNamespace: 'x', podName: 'a', containerId: 's1', addresses: ['10.244.0.5'] });
  reports.detached('s1');
  reports.attached({ podNamespace: 'x', podName: 'b', containerId: 'bad', addresses: ['10.244.0.6'] }, true);
  assert.equal(reports.pending(), 3);
  for (let i = 0; i < 100 && reports.pending() > 0; i++) await new Promise((r) => setTimeout(r, 5));
  assert.equal(reports.pending(), 0);
  assert.deepEqual(
    calls.filter((c) => c.includes('s1')),
    ['attach s1 a', 'attach s1 a', 'attach s1 a', 'detach s1'],
    'retried twice, and the detach only after the attach was taken',
  );
  assert.deepEqual(
    calls.filter((c) => c.includes('bad')),
    ['attach bad b resync'],
    'a refused report is not retried',
  );
  reports.close();
});
