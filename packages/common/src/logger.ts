/** Structured JSON logs, one object a line, on stderr: service, component, vm, epoch, err.code. */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  child(fields: Record<string, unknown>): Logger;
}

export interface LoggerOptions {
  /** The level, whatever LOG_LEVEL says. */
  level?: LogLevel;
  /** The level when LOG_LEVEL is not set (default: info). */
  defaultLevel?: LogLevel;
  write?: (line: string) => void;
}

function errFields(err: unknown): Record<string, unknown> {
  if (err instanceof Error) {
    const e = err as Error & { code?: unknown; retriable?: unknown; context?: unknown };
    return { message: e.message, code: e.code, retriable: e.retriable, ...(typeof e.context === 'object' ? e.context : {}) };
  }
  return { message: String(err) };
}

export function createLogger(base: Record<string, unknown>, options: LoggerOptions = {}): Logger {
  const min = ORDER[options.level ?? ((process.env.LOG_LEVEL as LogLevel | undefined) ?? options.defaultLevel ?? 'info')] ?? ORDER.info;
  const write = options.write ?? ((line: string) => process.stderr.write(line + '\n'));
  const log = (level: LogLevel, msg: string, fields?: Record<string, unknown>): void => {
    if (ORDER[level] < min) return;
    const rec: Record<string, unknown> = { ts: new Date().toISOString(), level, ...base, msg, ...fields };
    if (fields && 'err' in fields) rec.err = errFields(fields.err);
    write(JSON.stringify(rec));
  };
  return {
    debug: (m, f) => log('debug', m, f),
    info: (m, f) => log('info', m, f),
    warn: (m, f) => log('warn', m, f),
    error: (m, f) => log('error', m, f),
    child: (fields) => createLogger({ ...base, ...fields }, options),
  };
}

/** A logger that drops everything (quiet CLIs, tests). */
export const silentLogger: Logger = {
  debug: () => {}, info: () => {}, warn: () => {}, error: () => {}, child: () => silentLogger,
};
