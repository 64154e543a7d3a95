import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from './logger.js';

/**
 * Metrics in the Prometheus text exposition format (version 0.0.4), served over HTTP at /metrics.
 *
 * A small hand-written registry for now: the OpenTelemetry metrics SDK and its Prometheus exporter are not yet
 * dependencies (see lib/DESIGN.md). The instrument names follow OpenTelemetry's (counter.add, gauge.set,
 * histogram.record), so swapping the SDK in changes the registry's construction, not its callers.
 */
export type Labels = Readonly<Record<string, string>>;

export interface Counter {
  /** Adds a non-negative amount (default 1). */
  add(value?: number, labels?: Labels): void;
}
export interface Gauge {
  set(value: number, labels?: Labels): void;
}
export interface Histogram {
  record(value: number, labels?: Labels): void;
}

export interface MetricsRegistry {
  counter(name: string, help: string): Counter;
  gauge(name: string, help: string): Gauge;
  /** `buckets` are the upper bounds, ascending; +Inf is implied. */
  histogram(name: string, help: string, buckets: readonly number[]): Histogram;
  /** The whole registry in the text exposition format. */
  render(): string;
}

/** Default latency buckets in seconds, from 1 ms to 10 s. */
export const LATENCY_BUCKETS_SECONDS = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
] as const;

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

interface HistogramSeries {
  counts: number[];
  sum: number;
  count: number;
}
interface Family {
  name: string;
  help: string;
  type: 'counter' | 'gauge' | 'histogram';
  buckets?: readonly number[];
  /** Keyed by the rendered label set, e.g. `{kind="route"}` ('' for none). */
  series: Map<string, { labels: Labels; value: number | HistogramSeries }>;
}

const escapeLabel = (v: string) => v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
const escapeHelp = (v: string) => v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');

function labelKey(labels: Labels | undefined, extra?: [string, string]): string {
  const entries = Object.entries(labels ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  if (extra) entries.push(extra);
  if (entries.length === 0) return '';
  for (const [k] of entries) if (!LABEL.test(k)) throw new Error(`invalid metric label name ${JSON.stringify(k)}`);
  return `{${entries.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(',')}}`;
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

export function createMetricsRegistry(): MetricsRegistry {
  const families = new Map<string, Family>();

  function family(name: string, help: string, type: Family['type'], buckets?: readonly number[]): Family {
    if (!NAME.test(name)) throw new Error(`invalid metric name ${JSON.stringify(name)}`);
    if (families.has(name)) throw new Error(`metric ${name} is registered twice`);
    const f: Family = { name, help, type, buckets, series: new Map() };
    families.set(name, f);
    return f;
  }

  return {
    counter(name, help) {
      const f = family(name, help, 'counter');
      // An unlabelled zero until the first increment, so that the counter is visible from the start.
      f.series.set('', { labels: {}, value: 0 });
      return {
        add(value = 1, labels = {}) {
          if (!(value >= 0)) throw new Error(`counter ${name} cannot decrease (add ${value})`);
          const k = labelKey(labels);
          const cur = f.series.get(k);
          f.series.set(k, { labels: { ...labels }, value: ((cur?.value as number | undefined) ?? 0) + value });
          if (k !== '' && f.series.get('')?.value === 0) f.series.delete('');
        },
      };
    },
    gauge(name, help) {
      const f = family(name, help, 'gauge');
      return {
        set(value, labels = {}) {
          f.series.set(labelKey(labels), { labels: { ...labels }, value });
        },
      };
    },
    histogram(name, help, buckets) {
      if (buckets.some((b, i) => i > 0 && b <= buckets[i - 1]!))
        throw new Error(`histogram ${name}: buckets must ascend`);
      const f = family(name, help, 'histogram', buckets);
      return {
        record(value, labels = {}) {
          const k = labelKey(labels);
          let s = f.series.get(k)?.value as HistogramSeries | undefined;
          if (!s)
            f.series.set(k, { labels: { ...labels }, value: (s = { counts: buckets.map(() => 0), sum: 0, count: 0 }) });
          for (let i = 0; i < buckets.length; i++) if (value <= buckets[i]!) s.counts[i]!++;
          s.sum += value;
          s.count++;
        },
      };
    },
    render() {
      const lines: string[] = [];
      for (const f of families.values()) {
        lines.push(`# HELP ${f.name} ${escapeHelp(f.help)}`, `# TYPE ${f.name} ${f.type}`);
        for (const [k, { labels, value: v }] of f.series) {
          if (typeof v === 'number') {
            lines.push(`${f.name}${k} ${formatValue(v)}`);
            continue;
          }
          f.buckets!.forEach((b, i) =>
            lines.push(`${f.name}_bucket${labelKey(labels, ['le', formatValue(b)])} ${v.counts[i]}`),
          );
          lines.push(`${f.name}_bucket${labelKey(labels, ['le', '+Inf'])} ${v.count}`);
          lines.push(`${f.name}_sum${k} ${formatValue(v.sum)}`, `${f.name}_count${k} ${v.count}`);
        }
      }
      return lines.join('\n') + '\n';
    },
  };
}

/** Parses `host:port` or `[v6]:port`; port 0 picks a free port. */
export function parseListenAddress(listen: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(listen);
  const port = Number(m?.[3]);
  if (!m || port > 65535) throw new Error(`expected host:port (e.g. 0.0.0.0:9402), got ${JSON.stringify(listen)}`);
  return { host: (m[1] ?? m[2])!, port };
}

export interface MetricsServer {
  port: number;
  close(): Promise<void>;
}

/** Serves `registry` at GET /metrics on `listen` (host:port). */
export function serveMetrics(registry: MetricsRegistry, listen: string, logger: Logger): Promise<MetricsServer> {
  const { host, port } = parseListenAddress(listen);
  const server: Server = createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    if (url !== '/metrics' || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res
        .writeHead(404, { 'content-type': 'text/plain; charset=utf-8' })
        .end('not found: metrics are at GET /metrics\n');
      return;
    }
    let body: string;
    try {
      body = registry.render();
    } catch (err) {
      logger.error('cannot render metrics', { err });
      res.writeHead(500).end();
      return;
    }
    res
      .writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' })
      .end(req.method === 'HEAD' ? undefined : body);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      server.on('error', (err) => logger.error('metrics server error', { err }));
      server.unref();
      resolve({
        port: (server.address() as AddressInfo).port,
        close: () =>
          new Promise<void>((r) => {
            server.close(() => r());
            server.closeAllConnections();
          }),
      });
    });
  });
}
