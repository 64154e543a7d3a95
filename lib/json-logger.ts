/**
 * Structured JSON logs, one object per line, on stderr (stdout belongs to results, e.g. the CNI plugin's). This module
 * loads nothing, so the CNI plugin can use it; logger.ts adds the active OpenTelemetry trace ids for everyone else.
 */
export type LogFields = Record<string, unknown>;
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export interface Logger {
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  child(fields: LogFields): Logger;
}

const ranks: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface LoggerOptions {
  level?: LogLevel;
  write?: (line: string) => void;
  /** Fields of the current context (e.g. trace ids), read at each record. */
  contextFields?: () => LogFields;
}

export function createJsonLogger(base: LogFields = {}, options: LoggerOptions = {}): Logger {
  const min = ranks[options.level ?? 'info'];
  const write = options.write ?? ((line: string) => process.stderr.write(line));
  const emit = (level: LogLevel, msg: string, fields?: LogFields): void => {
    if (ranks[level] < min) return;
    const ids = options.contextFields?.() ?? {};
    const record: LogFields = { time: new Date().toISOString(), level, msg, ...base, ...ids, ...fields };
    if (record.err instanceof Error) record.err = { message: record.err.message, stack: record.err.stack };
    write(JSON.stringify(record) + '\n');
  };
  return {
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
    child: (fields) => createJsonLogger({ ...base, ...fields }, options),
  };
}
