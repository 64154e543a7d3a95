import type { PromiseClient } from '../../lib/grpc/client.js';
import type { ServiceDefinition } from '@grpc/grpc-js';
import type { TransportSecurity } from '../../lib/grpc/credentials.js';
import type { Output } from './output.js';

/**
 * What a command module declares: its path (`['ipam', 'pool', 'create']`), positional arguments, flags with their
 * descriptions, and a handler. The core parses argv against the chosen command's declaration only, and generates
 * usage and help from the same declarations.
 */
export interface FlagSpec {
  type: 'string' | 'boolean';
  short?: string;
  /** A string flag that may be given more than once (`--scope read --scope admin`). */
  multiple?: boolean;
  /** Placeholder of the value in usage and help: `--pool P`, `--out DIR`. */
  value?: string;
  description: string;
  /** The command cannot run without it: left out, it stops with the command's usage (exit 2). */
  required?: boolean;
  /** One of the flag sets every command of a kind shares (output, connection): listed apart in help. */
  shared?: boolean;
}

export type FlagSpecs = Readonly<Record<string, FlagSpec>>;

export interface ArgSpec {
  name: string;
  optional?: boolean;
}

export interface CommandSpec {
  /** The words that name the command, e.g. `['ipam', 'pool', 'create']`. */
  path: readonly string[];
  /** Other spellings of the path, kept working when a command is renamed. */
  aliases?: readonly (readonly string[])[];
  args?: readonly ArgSpec[];
  /** One line for the command list. */
  summary: string;
  /** More lines for `weft <command> --help`. */
  details?: string;
  /** Replaces the generated synopsis where flags combine in ways a list cannot say (`(--pod P | --node N)`). */
  synopsis?: string;
  flags?: FlagSpecs;
  /** Resolves to the exit status. */
  run(ctx: Context): Promise<number>;
}

export interface CommandGroup {
  /** The first word of its commands, e.g. `ipam`. Several modules may add commands to one word. */
  name: string;
  summary: string;
  commands: readonly CommandSpec[];
  /** Extra help text (a process's settings), shown by `weft <group> --help`. */
  help?: () => string;
}

/** Bad usage: exit status 2, with the message (which usually carries the command's usage). */
export class UsageError extends Error {
  override name = 'UsageError';
}

export interface Connection {
  server: string;
  security: TransportSecurity;
  token: string | undefined;
}

/** What a handler gets: its arguments and flags (already checked against its declaration), output and clients. */
export interface Context {
  readonly command: CommandSpec;
  /** Positional arguments after the command's path. */
  readonly args: readonly string[];
  str(flag: string): string | undefined;
  bool(flag: string): boolean;
  list(flag: string): string[];
  readonly out: Output;
  /** A usage error for this command: `usage: weft …` after `detail`. */
  usage(detail?: string): UsageError;
  /** The local cluster's state folder (`--state-dir`, `$WEFT_CLUSTER_DIR`, `/run/weft-cluster`). */
  readonly stateDir: string;
  /** The control plane and the credentials this invocation calls it with (resolved on first use). */
  connection(): Connection;
  /** A client of `definition` on the connection, closed when the command ends. */
  client<D extends ServiceDefinition>(definition: D): PromiseClient<D>;
  /** A line on stderr (a watch's broken stream), apart from the answer on stdout. */
  warn(text: string): void;
  /**
   * A signal aborted by SIGINT or SIGTERM, for watches: asking for it replaces Node's default (exit at once) with
   * ending the watch, and the command then returns 0. Commands that never ask keep the default.
   */
  untilInterrupted(): AbortSignal;
}

/** `-o` and `--json`: every command that prints something scripts read. */
export const OUTPUT_FLAGS: FlagSpecs = {
  output: {
    type: 'string',
    short: 'o',
    value: 'FORMAT',
    shared: true,
    description: 'json, yaml or wide (more columns); default: a table for people',
  },
  json: { type: 'boolean', shared: true, description: 'the same as -o json' },
};

/** The local cluster's state folder. */
export const STATE_DIR_FLAG: FlagSpecs = {
  'state-dir': {
    type: 'string',
    value: 'DIR',
    shared: true,
    description: 'local cluster state (default: $WEFT_CLUSTER_DIR or /run/weft-cluster)',
  },
};

/** Where the control plane is and who calls it: every command that calls the control plane. */
export const CONNECTION_FLAGS: FlagSpecs = {
  server: {
    type: 'string',
    value: 'ADDR',
    shared: true,
    description:
      "the control plane: host:port, or several replicas as ip:port,ip:port (default: $WEFT_SERVER, else the local cluster's socket, else 127.0.0.1:7400)",
  },
  'tls-dir': {
    type: 'string',
    value: 'DIR',
    shared: true,
    description:
      "client credentials: ca.crt, tls.crt, tls.key (default: $WEFT_TLS_DIR, else the local cluster's admin certificate, else <data-dir>/pki/admin.crt)",
  },
  'data-dir': {
    type: 'string',
    value: 'DIR',
    shared: true,
    description: "weft up's data folder, whose pki/admin.crt the CLI uses (default: $WEFT_DATA_DIR or .weft)",
  },
  token: {
    type: 'string',
    value: 'SECRET',
    shared: true,
    description: 'call as this API token (default: $WEFT_TOKEN): its scopes decide, whatever the certificate',
  },
  ...STATE_DIR_FLAG,
};

/** `-h`/`--help`, which every command takes. */
export const HELP_FLAG: FlagSpecs = {
  help: { type: 'boolean', short: 'h', shared: true, description: "this command's usage and flags" },
};
