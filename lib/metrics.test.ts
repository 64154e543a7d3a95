import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createMetricsRegistry, parseListenAddress, serveMetrics } from './metrics.js';
import { silentLogger } from './logger.js';

test('counters, gauges and histograms render in the Prometheus text format', () => {
  const r = createMetricsRegistry();
  const passes = r.counter('demo_passes_total', 'Reconcile passes.');
  const repairs = r.counter('demo_repairs_total', 'Repairs by kind.');
  const revision = r.gauge('demo_revision', 'Revision applied.');
  const latency = r.histogram('demo_apply_seconds', 'Apply latency.', [0.25, 1]);
  passes.add();
  passes.add(2);
  repairs.add(1, { kind: 'route' });
  repairs.add(1, { kind: 'fdb' });
  repairs.add(1, { kind: 'route' });
  revision.set(42);
  latency.record(0.25, { op: 'add' });
  latency.record(0.5, { op: 'add' });
  latency.record(3, { op: 'add' });
  assert.equal(
    r.render(),
    [
      '# HELP demo_passes_total Reconcile passes.',
      '# TYPE demo_passes_total counter',
      'demo_passes_total 3',
      '# HELP demo_repairs_total Repairs by kind.',
      '# TYPE demo_repairs_total counter',
      'demo_repairs_total{kind="route"} 2',
      'demo_repairs_total{kind="fdb"} 1',
      '# HELP demo_revision Revision applied.',
      '# TYPE demo_revision gauge',
      'demo_revision 42',
      '# HELP demo_apply_seconds Apply latency.',
      '# TYPE demo_apply_seconds histogram',
      'demo_apply_seconds_bucket{op="add",le="0.25"} 1',
      'demo_apply_seconds_bucket{op="add",le="1"} 2',
      'demo_apply_seconds_bucket{op="add",le="+Inf"} 3',
      'demo_apply_seconds_sum{op="add"} 3.75',
      'demo_apply_seconds_count{op="add"} 3',
      '',
    ].join('\n'),
  );
});

test('an unused counter shows zero; label values are escaped; bad names and decreases are refused', () => {
  const r = createMetricsRegistry();
  r.counter('demo_idle_total', 'Never incremented.');
  r.gauge('demo_info', 'Quoted "label" \\ here.').set(1, { path: 'a"b\\c\nd' });
  const text = r.render();
  assert.match(text, /^demo_idle_total 0$/m);
  assert.match(text, /^demo_info\{path="a\\"b\\\\c\\nd"\} 1$/m);
  assert.throws(() => r.counter('bad-name', 'x'), /invalid metric name/);
  assert.throws(() => r.counter('demo_idle_total', 'again'), /registered twice/);
  assert.throws(() => r.counter('demo_other_total', 'x').add(-1), /cannot decrease/);
});

test('listen addresses are host:port', () => {
  assert.deepEqual(parseListenAddress('0.0.0.0:9402'), { host: '0.0.0.0', port: 9402 });
  assert.deepEqual(parseListenAddress('[::1]:0'), { host: '::1', port: 0 });
  assert.throws(() => parseListenAddress('9402'), /host:port/);
  assert.throws(() => parseListenAddress('h:70000'), /host:port/);
});

test('the registry is served at GET /metrics; other paths are 404', async () => {
  const r = createMetricsRegistry();
  r.gauge('demo_up', 'Up.').set(1);
  const server = await serveMetrics(r, '127.0.0.1:0', silentLogger);
  try {
    const res = await fetch(`http://127.0.0.1:${server.port}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    assert.match(await res.text(), /^demo_up 1$/m);
    assert.equal((await fetch(`http://127.0.0.1:${server.port}/`)).status, 404);
  } finally {
    await server.close();
  }
});
