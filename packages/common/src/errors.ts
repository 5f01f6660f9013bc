/**
 * One base error for the whole product. Every error has a stable `code`
 * (`CKPT_ERR_<AREA>_<WHAT>`) that users and tests match on, `retriable`
 * defaulting to false (unknown failures are not retried forever), an ES
 * `cause`, and typed context.
 */
export interface ErrorContext {
  vm?: string;
  epoch?: number;
  generation?: number;
  offset?: string | number;
  syscall?: string;
  errno?: number;
  [key: string]: unknown;
}

export interface CkptErrorOptions {
  cause?: unknown;
  retriable?: boolean;
  context?: ErrorContext;
}

export class CkptError extends Error {
  readonly code: string;
  readonly retriable: boolean;
  readonly context: ErrorContext;

  constructor(code: string, message: string, options: CkptErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'CkptError';
    this.code = code;
    this.retriable = options.retriable ?? false;
    this.context = options.context ?? {};
  }

  /** A plain object for structured logs. */
  toJSON(): Record<string, unknown> {
    return { name: this.name, code: this.code, message: this.message, retriable: this.retriable, ...this.context };
  }
}

/** Invalid configuration: every problem is listed in `problems`. */
export class ConfigError extends CkptError {
  readonly problems: readonly string[];
  constructor(problems: readonly string[], options: CkptErrorOptions = {}) {
    super('CKPT_ERR_CONFIG_INVALID', `invalid configuration:\n  - ${problems.join('\n  - ')}`, options);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

/** Errors that come from the kernel through the native helper. */
export class KvmError extends CkptError {
  constructor(code: string, message: string, options: CkptErrorOptions = {}) {
    super(code, message, options);
    this.name = 'KvmError';
  }
}

/** Message text of any thrown value. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * The last line a command prints with `--json` when it fails: one JSON object, `failed: true`, the
 * error's code (`fallbackCode` for an error that is not a CkptError), message and whether a retry may help, plus
 * `extra` (the keys of the command's success line that a reader checks, such as `standbyMatches: false`).
 */
export function jsonFailureLine(err: unknown, fallbackCode: string, extra: Record<string, unknown> = {}): string {
  const ckpt = err instanceof CkptError ? err : null;
  return JSON.stringify({ failed: true, code: ckpt?.code ?? fallbackCode, message: errorMessage(err), retriable: ckpt?.retriable ?? false, ...extra }) + '\n';
}
