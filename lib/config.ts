/**
 * Settings: each has a description, a parser (its schema), a default and an environment variable.
 * A process describes its settings once, parses them once into a frozen object, and stops with a clear
 * message when any is invalid. Nothing else reads process.env.
 */
export interface Setting<T> {
  env: string;
  description: string;
  default: T;
  parse: (raw: string) => T;
}

export type SettingsSpec = Record<string, Setting<unknown>>;
export type Settings<S extends SettingsSpec> = { readonly [K in keyof S]: S[K] extends Setting<infer T> ? T : never };

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  ${problems.join('\n  ')}`);
    this.name = 'ConfigError';
  }
}

/** Parses settings from the environment, with explicit overrides (for example from command-line flags) on top. */
export function loadSettings<S extends SettingsSpec>(
  spec: S,
  env: Record<string, string | undefined> = process.env,
  overrides: Partial<Record<keyof S, string>> = {},
): Settings<S> {
  const out: Record<string, unknown> = {};
  const problems: string[] = [];
  for (const [key, setting] of Object.entries(spec)) {
    const raw = overrides[key as keyof S] ?? env[setting.env];
    if (raw === undefined || raw === '') {
      out[key] = setting.default;
      continue;
    }
    try {
      out[key] = setting.parse(raw);
    } catch (err) {
      problems.push(`${setting.env}=${JSON.stringify(raw)}: ${(err as Error).message} (${setting.description})`);
    }
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze(out) as Settings<S>;
}

export const parsers = {
  string: (raw: string): string => raw,
  port: (raw: string): number => {
    const n = Number(raw);
    if (!Number.isInteger(n) || n < 0 || n > 65535) throw new Error('expected a TCP port 0-65535');
    return n;
  },
  int:
    (min: number, max: number) =>
    (raw: string): number => {
      const n = Number(raw);
      if (!Number.isInteger(n) || n < min || n > max) throw new Error(`expected an integer ${min}-${max}`);
      return n;
    },
  oneOf:
    <T extends string>(...values: T[]) =>
    (raw: string): T => {
      if (!(values as string[]).includes(raw)) throw new Error(`expected one of ${values.join(', ')}`);
      return raw as T;
    },
  /** Comma-separated values, blanks dropped. */
  list: (raw: string): string[] =>
    raw
      .split(',')
      .map((v) => v.trim())
      .filter((v) => v !== ''),
  bool: (raw: string): boolean => {
    if (['1', 'true', 'yes'].includes(raw)) return true;
    if (['0', 'false', 'no'].includes(raw)) return false;
    throw new Error('expected true or false');
  },
};

/** Text describing every setting, for --help output. */
export function describeSettings(spec: SettingsSpec): string {
  return Object.values(spec)
    .map((s) => `  ${s.env.padEnd(28)} ${s.description} (default: ${JSON.stringify(s.default)})`)
    .join('\n');
}
