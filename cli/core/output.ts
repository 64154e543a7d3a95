import { stringify as toYaml } from 'yaml';
import { UsageError } from './command.js';

/**
 * How a command's answer is printed, chosen once by `-o` (or `--json`): a table for people (`wide`: more columns),
 * or the same value as JSON or YAML for scripts. Handlers hand over the value and, for people, columns or text;
 * they never write to stdout themselves.
 */
export type Format = 'table' | 'wide' | 'json' | 'yaml';

export const FORMATS: readonly Format[] = ['table', 'wide', 'json', 'yaml'];

export function parseFormat(output: string | undefined, json: boolean): Format {
  if (json && output !== undefined && output !== 'json')
    throw new UsageError(`--json and -o ${output} contradict each other`);
  if (json) return 'json';
  if (output === undefined) return 'table';
  if (!(FORMATS as readonly string[]).includes(output))
    throw new UsageError(`-o ${JSON.stringify(output)}: one of json, yaml, wide`);
  return output as Format;
}

export interface Column<R> {
  header: string;
  value: (row: R) => string | number | boolean | null | undefined;
  /** Only with `-o wide`. */
  wide?: boolean;
  /** What an empty cell shows (default `-`). */
  blank?: string;
}

const cell = <R>(c: Column<R>, row: R): string => {
  const v = c.value(row);
  return v === undefined || v === null || v === '' ? (c.blank ?? '-') : String(v);
};

/** Dates as ISO strings, undefined fields left out: what JSON.stringify gives, for YAML as well. */
const plain = (v: unknown): unknown => (v === undefined ? null : (JSON.parse(JSON.stringify(v)) as unknown));

/** Rows as aligned columns under upper-case headers (kubectl's look); the last column is not padded. */
export function formatTable<R>(rows: readonly R[], columns: readonly Column<R>[]): string {
  const cells = [columns.map((c) => c.header), ...rows.map((r) => columns.map((c) => cell(c, r)))];
  const widths = columns.map((_, i) => Math.max(...cells.map((row) => row[i]!.length)));
  return cells
    .map((row) =>
      row
        .map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!)))
        .join('   ')
        .trimEnd(),
    )
    .join('\n');
}

export class Output {
  constructor(
    readonly format: Format,
    private readonly write: (text: string) => void = (t) => process.stdout.write(t),
  ) {}

  get structured(): boolean {
    return this.format === 'json' || this.format === 'yaml';
  }

  private serialise(value: unknown): string {
    return this.format === 'yaml' ? toYaml(plain(value)) : JSON.stringify(value, null, 2) + '\n';
  }

  /** One answer: `value` for scripts, `text()` for people. */
  value(value: unknown, text: (wide: boolean) => string): void {
    this.write(this.structured ? this.serialise(value) : text(this.format === 'wide') + '\n');
  }

  /** A list: `value` (default: the rows) for scripts, a table for people (`empty` when there are no rows; `footer` after). */
  table<R>(
    rows: readonly R[],
    columns: readonly Column<R>[],
    options: { value?: unknown; empty: string; footer?: string },
  ): void {
    if (this.structured) {
      this.write(this.serialise(options.value ?? rows));
      return;
    }
    const shown = columns.filter((c) => !c.wide || this.format === 'wide');
    this.write(
      (rows.length ? formatTable(rows, shown) : options.empty) + '\n' + (options.footer ? `${options.footer}\n` : ''),
    );
  }

  /**
   * One change of a watch: JSON one object per line, YAML one document each, a table row for people (the header
   * once, before the first). Column widths are those of the header row: rows of a stream cannot be aligned later.
   */
  event<R>(
    row: R,
    columns: readonly Column<R>[],
    value: unknown,
    state: { headerShown: boolean; widths?: number[] },
  ): void {
    if (this.format === 'json') return this.write(JSON.stringify(value) + '\n');
    if (this.format === 'yaml') return this.write(`---\n${toYaml(plain(value))}`);
    const shown = columns.filter((c) => !c.wide || this.format === 'wide');
    const cells = shown.map((c) => cell(c, row));
    if (!state.headerShown) {
      state.widths = shown.map((c, i) => Math.max(c.header.length, cells[i]!.length, 12));
      this.write(
        shown.map((c, i) => (i === shown.length - 1 ? c.header : c.header.padEnd(state.widths![i]!))).join('   ') +
          '\n',
      );
      state.headerShown = true;
    }
    this.write(
      cells
        .map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(state.widths![i]!)))
        .join('   ')
        .trimEnd() + '\n',
    );
  }
}
