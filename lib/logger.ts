import { context, trace } from '@opentelemetry/api';
import { createJsonLogger, type LogFields, type LoggerOptions, type Logger } from './json-logger.js';

export type { LogFields, LogLevel, Logger, LoggerOptions } from './json-logger.js';

/** The ids of the active OpenTelemetry span, so that every log line can be found from its trace. */
function activeTraceIds(): LogFields {
  const span = trace.getSpan(context.active());
  return span ? { trace_id: span.spanContext().traceId, span_id: span.spanContext().spanId } : {};
}

/** Structured JSON logs on stderr, carrying the active trace and span ids (see json-logger.ts). */
export function createLogger(base: LogFields = {}, options: LoggerOptions = {}): Logger {
  return createJsonLogger(base, { contextFields: activeTraceIds, ...options });
}

/** A logger that drops everything (for unit tests of code that takes a logger). */
export const silentLogger: Logger = createLogger({}, { write: () => {} });
