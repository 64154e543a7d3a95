import { context, propagation, trace, type Context, type Span, SpanStatusCode } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import {
  BasicTracerProvider,
  ConsoleSpanExporter,
  SimpleSpanProcessor,
  type SpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';

/**
 * OpenTelemetry tracing. A span per RPC; trace context travels in gRPC metadata (W3C traceparent), so one pod's
 * attach is one trace from the CNI plugin through the agent to IPAM. Exporting is off unless configured.
 */
export type TraceExporter = 'none' | 'console';

let installed = false;

export function setupTelemetry(serviceName: string, exporter: TraceExporter = 'none'): void {
  if (installed) return;
  installed = true;
  const processors: SpanProcessor[] =
    exporter === 'console' ? [new SimpleSpanProcessor(new ConsoleSpanExporter())] : [];
  const provider = new BasicTracerProvider({ spanProcessors: processors });
  trace.setGlobalTracerProvider(provider);
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  void serviceName;
}

export function tracer() {
  return trace.getTracer('weft');
}

/** Writes the active trace context into a carrier (gRPC metadata entries). */
export function injectContext(carrier: Record<string, string>, ctx: Context = context.active()): void {
  propagation.inject(ctx, carrier);
}

export function extractContext(carrier: Record<string, string>): Context {
  return propagation.extract(context.active(), carrier);
}

/** Runs fn inside a new active span, ending it with the outcome. */
export async function inSpan<T>(name: string, parent: Context, fn: (span: Span) => Promise<T>): Promise<T> {
  return tracer().startActiveSpan(name, {}, parent, async (span) => {
    try {
      return await fn(span);
    } catch (err) {
      span.recordException(err as Error);
      span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
      throw err;
    } finally {
      span.end();
    }
  });
}
