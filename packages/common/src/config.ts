import { ConfigError, jsonFailureLine } from './errors.ts';
import type { Logger } from './logger.ts';

/** One configuration field. Units belong in the key (`intervalMs`, `memMib`, `maxBytes`). */
export type FieldSpec =
  | { type: 'int' | 'number'; default?: number; min?: number; max?: number; powerOfTwo?: boolean; help: string }
  | { type: 'string'; default?: string; help: string }
  | { type: 'bool'; default?: boolean; help: string }
  | { type: 'enum'; values: readonly string[]; default?: string; help: string };

export type Schema = Record<string, FieldSpec>;

type ValueOf<S extends FieldSpec> = S extends { type: 'int' | 'number' } ? number
  : S extends { type: 'bool' } ? boolean
  : S extends { type: 'enum'; values: readonly (infer V)[] } ? V
  : string;

export type ConfigOf<T extends Schema> = { readonly [K in keyof T]: ValueOf<T[K]> };

export interface ParseSources {
  /** Command-line arguments (without node and the script). */
  argv?: readonly string[];
  env?: Readonly<Record<string, string | undefined>>;
  /** Environment variable prefix, e.g. "HARVESTER_" gives HARVESTER_MEM_MIB for memMib. */
  envPrefix?: string;
}

export const toFlag = (key: string): string => '--' + key.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
export const toEnv = (prefix: string, key: string): string => prefix + key.replace(/[A-Z]/g, (c) => '_' + c).toUpperCase();
/** How a service's error names a setting: its variable and its flag, `HARVESTER_PAGES_TOPIC (--pages-topic)`. */
export const settingName = (prefix: string, key: string): string => `${toEnv(prefix, key)} (${toFlag(key)})`;

/**
 * Environment variables that carry `prefix` but name no setting of `schema`: a misspelt setting
 * (HARVESTER_MEMMIB) silently left its default in force. Kubernetes' service links (a Service named
 * like the prefix gives <PREFIX>SERVICE_HOST, <PREFIX>PORT_...) are not settings and are left out.
 * Callers warn: an unknown flag is an error, but the environment also holds what others put there.
 */
export function unknownEnv(schema: Schema, env: Readonly<Record<string, string | undefined>>, prefix: string): string[] {
  const known = new Set(Object.keys(schema).map((k) => toEnv(prefix, k)));
  const serviceLink = new RegExp(`^${prefix}(SERVICE_HOST|SERVICE_PORT(_.*)?|PORT(_.*)?)$`);
  return Object.keys(env).filter((name) => name.startsWith(prefix) && !known.has(name) && !serviceLink.test(name)).sort();
}

/** Logs unknownEnv()'s variables, if any, as ignored. */
export function warnUnknownEnv(log: Logger, schema: Schema, prefix: string, env: Readonly<Record<string, string | undefined>> = process.env): void {
  const strays = unknownEnv(schema, env, prefix);
  if (strays.length) log.warn('ignoring environment variables that name no setting (misspelt? --help lists them)', { variables: strays });
}

/** True when argv asks for help. */
export const wantsHelp = (argv: readonly string[]): boolean => argv.includes('--help') || argv.includes('-h');

/**
 * Parses configuration from defaults, then environment variables, then flags (flags win). Every bad
 * value is collected and reported in one ConfigError, with what is allowed. The result is frozen.
 */
export function parseConfig<T extends Schema>(schema: T, sources: ParseSources = {}): ConfigOf<T> {
  const problems: string[] = [];
  const raw = new Map<string, { text: string; from: string }>();
  const prefix = sources.envPrefix ?? '';
  const env = sources.env ?? {};
  const byFlag = new Map(Object.keys(schema).map((k) => [toFlag(k), k]));

  if (sources.envPrefix !== undefined) {
    for (const key of Object.keys(schema)) {
      const name = toEnv(prefix, key);
      const v = env[name];
      if (v !== undefined && v !== '') raw.set(key, { text: v, from: name });
    }
  }
  const argv = sources.argv ?? [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('--')) {
      problems.push(`unexpected argument "${arg}" (options start with --; see --help)`);
      continue;
    }
    const eq = arg.indexOf('=');
    const flag = eq >= 0 ? arg.slice(0, eq) : arg;
    let key = byFlag.get(flag);
    let negated = false;
    if (!key && flag.startsWith('--no-')) {
      key = byFlag.get('--' + flag.slice(5));
      negated = key !== undefined && schema[key]!.type === 'bool';
      if (!negated) key = undefined;
    }
    if (!key) {
      problems.push(`unknown option ${flag} (see --help)`);
      continue;
    }
    const spec = schema[key]!;
    if (spec.type === 'bool') {
      raw.set(key, { text: eq >= 0 ? arg.slice(eq + 1) : negated ? 'false' : 'true', from: flag });
      continue;
    }
    let text: string | undefined;
    if (eq >= 0) text = arg.slice(eq + 1);
    else if (i + 1 < argv.length && !argv[i + 1]!.startsWith('--')) text = argv[++i];
    if (text === undefined) {
      problems.push(`${flag} needs a value`);
      continue;
    }
    raw.set(key, { text, from: flag });
  }

  const out: Record<string, unknown> = {};
  for (const [key, spec] of Object.entries(schema)) {
    const r = raw.get(key);
    if (!r) {
      if (spec.default === undefined) problems.push(`${toFlag(key)}${prefix ? ` / ${toEnv(prefix, key)}` : ''} is required: ${spec.help}`);
      else out[key] = spec.default;
      continue;
    }
    const where = r.from;
    switch (spec.type) {
      case 'int':
      case 'number': {
        const n = Number(r.text);
        if (r.text.trim() === '' || !Number.isFinite(n)) {
          problems.push(`${where}: "${r.text}" is not a number`);
          break;
        }
        if (spec.type === 'int' && !Number.isInteger(n)) {
          problems.push(`${where}: "${r.text}" must be a whole number`);
          break;
        }
        if (spec.min !== undefined && n < spec.min) problems.push(`${where}: ${n} is below the minimum ${spec.min}`);
        else if (spec.max !== undefined && n > spec.max) problems.push(`${where}: ${n} is above the maximum ${spec.max}`);
        else if (spec.powerOfTwo && n !== 0 && (n & (n - 1)) !== 0) problems.push(`${where}: ${n} must be a power of two (e.g. ${2 ** Math.round(Math.log2(Math.max(1, n)))})`);
        else out[key] = n;
        break;
      }
      case 'bool': {
        const t = r.text.toLowerCase();
        if (['1', 'true', 'yes', 'on'].includes(t)) out[key] = true;
        else if (['0', 'false', 'no', 'off'].includes(t)) out[key] = false;
        else problems.push(`${where}: "${r.text}" is not a boolean (use true or false)`);
        break;
      }
      case 'enum':
        if (spec.values.includes(r.text)) out[key] = r.text;
        else problems.push(`${where}: "${r.text}" is not one of ${spec.values.join(', ')}`);
        break;
      case 'string':
        out[key] = r.text;
        break;
    }
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze(out) as ConfigOf<T>;
}

/** Help text generated from the schema, so --help cannot drift from what is parsed. */
export function helpText(schema: Schema, usage: string, envPrefix?: string): string {
  const lines = [usage, '', 'Options:'];
  for (const [key, spec] of Object.entries(schema)) {
    const value = spec.type === 'bool' ? '' : spec.type === 'enum' ? ` <${spec.values.join('|')}>` : ` <${spec.type === 'string' ? 'text' : 'n'}>`;
    // A switch that is on by default is turned off with --no-<flag>.
    const flag = spec.type === 'bool' && spec.default === true ? `${toFlag(key)}, --no-${toFlag(key).slice(2)}` : toFlag(key) + value;
    const notes: string[] = [];
    if (spec.default === undefined) notes.push('required');
    else if (spec.default !== '' && !(spec.type === 'bool' && spec.default === false)) notes.push(`default: ${String(spec.default)}`);
    if ((spec.type === 'int' || spec.type === 'number') && (spec.min !== undefined || spec.max !== undefined)) {
      notes.push(spec.max === undefined ? `at least ${spec.min}` : spec.min === undefined ? `at most ${spec.max}` : `${spec.min}..${spec.max}`);
    }
    lines.push(`  ${flag.padEnd(38)} ${spec.help}${notes.length ? ` (${notes.join('; ')})` : ''}`);
    if (envPrefix !== undefined) lines.push(`  ${''.padEnd(38)} env: ${toEnv(envPrefix, key)}`);
  }
  lines.push(`  ${'--help'.padEnd(38)} show this help`);
  return lines.join('\n');
}

/**
 * A command's options from its arguments: prints the help and returns exit code 0 on --help; prints
 * every problem (parse errors, then `validate`'s) and a pointer to --help, and returns 2 on bad options;
 * otherwise returns the config. With `env`, `<prefix><KEY>` environment variables are read too (flags win).
 */
export function commandConfig<T extends Schema>(
  name: string, schema: T, usage: string, argv: readonly string[], validate?: (cfg: ConfigOf<T>) => string[],
  env?: { prefix: string; vars: Readonly<Record<string, string | undefined>> },
): ConfigOf<T> | number {
  if (wantsHelp(argv)) {
    process.stdout.write(helpText(schema, usage, env?.prefix) + '\n');
    return 0;
  }
  try {
    const cfg = parseConfig(schema, env ? { argv: [...argv], env: env.vars, envPrefix: env.prefix } : { argv: [...argv] });
    const problems = validate?.(cfg) ?? [];
    if (problems.length) throw new ConfigError(problems);
    return cfg;
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`${name}: ${err.message}\n(${name} --help lists the options)\n`);
    // --json promises a JSON last line, a failure's too: also when the options around it are bad.
    if ('json' in schema && (argv.includes('--json') || argv.includes('--json=true') || (env && /^(1|true|yes)$/i.test(env.vars[`${env.prefix}JSON`] ?? '')))) {
      process.stdout.write(jsonFailureLine(err, 'CKPT_ERR_CONFIG_INVALID'));
    }
    return 2;
  }
}
