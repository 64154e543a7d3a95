import { parseArgs } from 'node:util';
import {
  HELP_FLAG,
  UsageError,
  type CommandGroup,
  type CommandSpec,
  type FlagSpec,
  type FlagSpecs,
} from './command.js';

/**
 * The command line, read against the declarations: the words before, between and after flags choose the command (the
 * longest declared path they start with), then argv is parsed again, strictly, with that command's flags only. So a
 * flag another command declares is as unknown here as a misspelt one.
 */
export type FlagValues = Readonly<Record<string, string | boolean | string[] | undefined>>;

export type CommandLine =
  | { kind: 'run'; command: CommandSpec; args: string[]; values: FlagValues }
  /** Help asked for (status 0) or a command line that names no command (status 2): `text` goes to stdout. */
  | { kind: 'help'; text: string; status: 0 | 2 };

type ParseOptions = NonNullable<Parameters<typeof parseArgs>[0]>['options'];

function parseOptions(flags: FlagSpecs): ParseOptions {
  const out: NonNullable<ParseOptions> = {};
  for (const [name, f] of Object.entries(flags)) {
    out[name] = { type: f.type, ...(f.short ? { short: f.short } : {}), ...(f.multiple ? { multiple: true } : {}) };
  }
  return out;
}

/** Every flag any command declares, by name; a name declared with two different shapes is a programming error. */
export function flagUnion(groups: readonly CommandGroup[]): { flags: Record<string, FlagSpec>; conflicts: string[] } {
  const flags: Record<string, FlagSpec> = { ...HELP_FLAG };
  const conflicts: string[] = [];
  const shorts = new Map<string, string>([['h', 'help']]);
  for (const g of groups) {
    for (const c of g.commands) {
      for (const [name, f] of Object.entries(c.flags ?? {})) {
        const seen = flags[name];
        if (seen && (seen.type !== f.type || !!seen.multiple !== !!f.multiple || seen.short !== f.short)) {
          conflicts.push(`--${name} of weft ${c.path.join(' ')} differs from another command's`);
        }
        if (f.short && shorts.has(f.short) && shorts.get(f.short) !== name)
          conflicts.push(`-${f.short} of weft ${c.path.join(' ')} names two flags`);
        if (f.short) shorts.set(f.short, name);
        flags[name] ??= f;
      }
    }
  }
  return { flags, conflicts };
}

const commandsOf = (groups: readonly CommandGroup[]) => groups.flatMap((g) => g.commands);

/** The command whose path (or alias) is the longest prefix of `words`, and how many words it took. */
export function findCommand(
  groups: readonly CommandGroup[],
  words: readonly string[],
): { command: CommandSpec; length: number } | undefined {
  let best: { command: CommandSpec; length: number } | undefined;
  for (const command of commandsOf(groups)) {
    for (const path of [command.path, ...(command.aliases ?? [])]) {
      if (path.length <= words.length && path.every((w, i) => words[i] === w) && path.length > (best?.length ?? 0))
        best = { command, length: path.length };
    }
  }
  return best;
}

/** Reads argv. Throws UsageError (exit 2) for an unknown command or flag, a flag without its value, or wrong arguments. */
export function parseCommandLine(
  argv: readonly string[],
  groups: readonly CommandGroup[],
  extraHelp = '',
): CommandLine {
  // First pass: every declared flag, so that a flag's value is not taken for a command word.
  const union = flagUnion(groups).flags;
  const loose = parseArgs({ args: [...argv], options: parseOptions(union), strict: false, allowPositionals: true });
  const words = loose.positionals;
  const asksHelp = loose.values.help === true;
  if (words[0] === 'help') return { kind: 'help', text: helpFor(groups, words.slice(1), extraHelp), status: 0 };
  if (words.length === 0) return { kind: 'help', text: topHelp(groups, extraHelp), status: asksHelp ? 0 : 2 };
  const found = findCommand(groups, words);
  if (!found) {
    const group = groups.filter((g) => g.name === words[0]);
    if (group.length > 0 && (asksHelp || words.length === 1))
      return { kind: 'help', text: groupHelp(groups, words[0]!), status: asksHelp ? 0 : 2 };
    const hint = group.length > 0 ? `weft ${words[0]} --help` : 'weft help';
    throw new UsageError(`unknown command: weft ${words.join(' ')}; ${hint} lists the commands`);
  }
  const { command } = found;
  const flags: FlagSpecs = { ...HELP_FLAG, ...command.flags };
  let parsed: { values: FlagValues; positionals: string[] };
  try {
    parsed = parseArgs({ args: [...argv], options: parseOptions(flags), strict: true, allowPositionals: true }) as {
      values: FlagValues;
      positionals: string[];
    };
  } catch (err) {
    throw flagError(err, command);
  }
  if (parsed.values.help === true) return { kind: 'help', text: commandHelp(command, groups), status: 0 };
  const args = parsed.positionals.slice(found.length);
  const declared = command.args ?? [];
  const needed = declared.filter((a) => !a.optional).length;
  if (args.length < needed || args.length > declared.length) {
    const what =
      args.length < needed
        ? `missing ${declared
            .slice(args.length)
            .filter((a) => !a.optional)
            .map((a) => a.name)
            .join(' ')}`
        : `unexpected ${args
            .slice(declared.length)
            .map((a) => JSON.stringify(a))
            .join(' ')}`;
    throw new UsageError(`weft ${command.path.join(' ')}: ${what}\n${commandUsage(command)}`);
  }
  for (const [name, f] of Object.entries(flags)) {
    if (f.required && parsed.values[name] === undefined)
      throw new UsageError(
        `weft ${command.path.join(' ')} needs --${name}${f.value ? ` ${f.value}` : ''}\n${commandUsage(command)}`,
      );
  }
  return { kind: 'run', command, args, values: parsed.values };
}

/** node:util's parse errors, said in the command's terms: which flag, and the command's usage. */
function flagError(err: unknown, command: CommandSpec): unknown {
  const code = (err as { code?: string }).code;
  const message = (err as Error).message ?? '';
  const flag = /Option '(-[^ ']+)/.exec(message)?.[1] ?? /'(-[^']+)'/.exec(message)?.[1] ?? '?';
  const name = `weft ${command.path.join(' ')}`;
  if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION')
    return new UsageError(
      `unknown flag ${flag} for ${name}\n${commandUsage(command)}\n(${name} --help lists its flags)`,
    );
  if (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
    const spec = Object.entries(command.flags ?? {}).find(([n, f]) => `--${n}` === flag || `-${f.short}` === flag)?.[1];
    const detail = /does not take an argument/.test(message)
      ? `${flag} takes no value`
      : /ambiguous/.test(message)
        ? `${flag}'s value starts with a dash: write it as ${flag}=VALUE`
        : `${flag} needs a value${spec?.value ? ` (${flag} ${spec.value})` : ''}`;
    return new UsageError(`${name}: ${detail}\n${commandUsage(command)}`);
  }
  return err;
}

const flagWords = (name: string, f: FlagSpec) => `--${name}${f.type === 'string' ? ` ${f.value ?? 'VALUE'}` : ''}`;

/** `usage: weft ipam pool create NAME CIDR --block-prefix-length N [--cooldown S] [-o FORMAT]`. */
export function commandUsage(command: CommandSpec): string {
  return `usage: weft ${command.path.join(' ')}${command.synopsis !== undefined ? (command.synopsis ? ` ${command.synopsis}` : '') : generatedSynopsis(command)}`;
}

function generatedSynopsis(command: CommandSpec): string {
  const parts = (command.args ?? []).map((a) => (a.optional ? `[${a.name}]` : a.name));
  const flags = Object.entries(command.flags ?? {});
  for (const [name, f] of flags) if (f.required) parts.push(flagWords(name, f));
  for (const [name, f] of flags)
    if (!f.required && !f.shared) parts.push(`[${flagWords(name, f)}${f.multiple ? '...' : ''}]`);
  if (command.flags?.output) parts.push('[-o json|yaml|wide]');
  return parts.length ? ` ${parts.join(' ')}` : '';
}

/** Help lines fit this many columns: a description wraps under itself. */
const HELP_WIDTH = 120;

/** `left` then `text`, the text wrapped at word boundaries into the column after `indent`. */
function hanging(left: string, indent: number, text: string): string {
  const room = Math.max(30, HELP_WIDTH - indent);
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(' ')) {
    if (line && line.length + 1 + word.length > room) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  lines.push(line);
  const first =
    left.length > indent - 2
      ? [left, ...lines.map((l) => ' '.repeat(indent) + l)]
      : [left.padEnd(indent) + lines[0], ...lines.slice(1).map((l) => ' '.repeat(indent) + l)];
  return first.join('\n');
}

function flagTable(flags: [string, FlagSpec][]): string[] {
  const left = flags.map(
    ([name, f]) => `  ${f.short ? `-${f.short}, ` : '    '}${flagWords(name, f)}${f.multiple ? ' (repeatable)' : ''}`,
  );
  const width = Math.min(40, Math.max(...left.map((l) => l.length))) + 2;
  return flags.map(([, f], i) => hanging(left[i]!, width, `${f.description}${f.required ? ' (required)' : ''}`));
}

/** `weft <command> --help`: usage, summary, and every flag the command takes with its description. */
export function commandHelp(command: CommandSpec, groups: readonly CommandGroup[] = []): string {
  const extra = groups
    .filter((g) => g.commands.includes(command))
    .map((g) => g.help?.())
    .filter((x): x is string => !!x);
  const all = Object.entries({ ...command.flags, ...HELP_FLAG });
  const own = all.filter(([, f]) => !f.shared);
  const shared = all.filter(([, f]) => f.shared);
  return (
    [
      commandUsage(command),
      '',
      command.summary,
      ...(command.details ? [command.details] : []),
      ...(command.aliases?.length ? ['', `also: ${command.aliases.map((a) => `weft ${a.join(' ')}`).join(', ')}`] : []),
      ...(own.length ? ['', 'flags:', ...flagTable(own)] : []),
      '',
      'common flags:',
      ...flagTable(shared),
      ...extra.map((x) => `\n${x}`),
    ].join('\n') + '\n'
  );
}

function commandLines(commands: readonly CommandSpec[]): string[] {
  const left = commands.map(
    (c) => `  weft ${c.path.join(' ')}${(c.args ?? []).map((a) => ` ${a.optional ? `[${a.name}]` : a.name}`).join('')}`,
  );
  const width = Math.min(46, Math.max(...left.map((l) => l.length))) + 2;
  return commands.map((c, i) => hanging(left[i]!, width, c.summary));
}

/** `weft <group> --help`: the group's commands (every module that adds to the word) and its extra text. */
export function groupHelp(groups: readonly CommandGroup[], name: string): string {
  const mine = groups.filter((g) => g.name === name);
  const extra = mine.map((g) => g.help?.()).filter(Boolean);
  return (
    [
      `weft ${name}: ${mine[0]?.summary ?? ''}`,
      '',
      'commands:',
      ...commandLines(mine.flatMap((g) => g.commands)),
      '',
      `weft ${name} <command> --help shows a command's flags.`,
      ...extra.map((x) => `\n${x}`),
    ].join('\n') + '\n'
  );
}

/** `weft help` and `weft --help`: every command, by group, from the declarations. */
export function topHelp(groups: readonly CommandGroup[], extra = ''): string {
  const names = [...new Set(groups.map((g) => g.name))];
  const sections = names.map((name) => {
    const mine = groups.filter((g) => g.name === name);
    return [`${name}: ${mine[0]!.summary}`, ...commandLines(mine.flatMap((g) => g.commands))].join('\n');
  });
  return (
    [
      'usage: weft <command> [arguments] [flags]',
      '',
      ...sections.flatMap((s) => [s, '']),
      "weft <command> --help (or weft help <command>) shows a command's flags; weft <group> --help, a group's commands.",
      "Exit status: 0 ok, 1 failed (the server's message), 2 bad usage or configuration; some commands say more.",
      ...(extra ? ['', extra] : []),
    ].join('\n') + '\n'
  );
}

/** `weft help [WORDS…]`: the help of the command or group the words name. */
export function helpFor(groups: readonly CommandGroup[], words: readonly string[], extra = ''): string {
  if (words.length === 0) return topHelp(groups, extra);
  const found = findCommand(groups, words);
  if (found && found.length === words.length) return commandHelp(found.command, groups);
  if (groups.some((g) => g.name === words[0])) return groupHelp(groups, words[0]!);
  throw new UsageError(`unknown command: weft ${words.join(' ')}; weft help lists the commands`);
}
