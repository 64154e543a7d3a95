import { fstatSync, readSync, writeSync } from 'node:fs';
import { createJsonLogger, type Logger } from '../lib/json-logger.js';
import {
  DEFAULT_CNI_VERSION,
  MAX_CONFIG_BYTES,
  SUPPORTED_VERSIONS,
  compareVersions,
  declaredVersion,
  parseNetworkConfig,
  type NetworkConfig,
} from './config.js';
import { CniCode, CniError } from './errors.js';

/**
 * The plugin skeleton: the one place that touches the CNI_* environment, stdin, stdout and the exit status, and
 * writes the error JSON. Verbs (main.ts) get a parsed Invocation and NetworkConfig and return a result or throw.
 * VERSION is answered here, so it loads nothing a verb needs.
 */

export type Command = 'ADD' | 'DEL' | 'CHECK' | 'STATUS' | 'GC';

/**
 * Per command: the CNI_* variables it needs (SPEC.md 1.1.0, section 2) and the oldest cniVersion that defines it
 * (CHECK came in 0.4.0, STATUS and GC in 1.1.0; the reference skeleton refuses older configs with code 1 too).
 * CNI_PATH is optional everywhere: Weft delegates to no other plugin, so it never reads it.
 */
const COMMANDS: Readonly<Record<Command, { env: readonly string[]; since: string }>> = {
  ADD: { env: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME'], since: '0.3.0' },
  DEL: { env: ['CNI_CONTAINERID', 'CNI_IFNAME'], since: '0.3.0' },
  CHECK: { env: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME'], since: '0.4.0' },
  STATUS: { env: [], since: '1.1.0' },
  GC: { env: [], since: '1.1.0' },
};
const COMMAND_LIST = 'ADD, DEL, CHECK, STATUS, GC or VERSION';

const isCommand = (c: string | undefined): c is Command => c !== undefined && Object.hasOwn(COMMANDS, c);

/** What the runtime asked for, from the CNI_* environment variables. */
export interface Invocation {
  readonly command: Command;
  /** Empty for STATUS and GC. */
  readonly containerId: string;
  /** Path of the pod's network namespace; may be empty on DEL, and is for STATUS and GC. */
  readonly netns: string;
  /** Empty for STATUS and GC. */
  readonly ifname: string;
  /** CNI_PATH split into directories. */
  readonly path: readonly string[];
  /** From CNI_ARGS K8S_POD_NAMESPACE / K8S_POD_NAME; empty outside Kubernetes. */
  readonly podNamespace: string;
  readonly podName: string;
  /** CNI_ARGS IP=, MAC= and K8S_POD_UID= as given (checked only by ADD, which uses them: see readAttachOptions). */
  readonly cniArgs: { readonly ip: string; readonly mac: string; readonly podUid: string };
}

export interface VerbContext {
  invocation: Invocation;
  config: NetworkConfig;
  /** Aborted when the runtime interrupts the plugin (SIGTERM, SIGINT). */
  signal: AbortSignal;
  logger: Logger;
  /** Notes that a phase of the call ended (for WEFT_CNI_TIMING; does nothing otherwise). */
  mark: (phase: string) => void;
}

/**
 * Phase marks of one run, in ms since the process started, printed as one JSON line on stderr when
 * WEFT_CNI_TIMING=1 (bench/cni reads it). Without it marking costs nothing and prints nothing. The clock is
 * `process.uptime()`, not `performance.now()`: the `performance` global loads `node:perf_hooks` on first use (about
 * 1 ms), which the measured run would then pay and the real one not.
 */
export function createTiming(
  enabled: boolean,
  packing: Packing = {},
): { mark: (phase: string) => void; report: () => string | undefined } {
  const marks: Record<string, number> = {};
  return {
    mark: enabled ? (phase) => void (marks[phase] = Math.round(process.uptime() * 100_000) / 100) : () => {},
    // node: the Node running the plugin; codeCache and builtWith: how it was packed (absent when not packed).
    report: () =>
      enabled ? JSON.stringify({ msg: 'weft-cni timing', marks, node: process.version, ...packing }) + '\n' : undefined,
  };
}

/** What the packer tells the packed plugin about itself (scripts/bundle.mjs, scripts/sea.mjs), for WEFT_CNI_TIMING. */
export interface Packing {
  /** 'used' or 'rejected': whether V8 took the code cache made at build time; 'sea': the executable's own cache. */
  readonly codeCache?: 'used' | 'rejected' | 'sea';
  /** The `process.version` of the Node that packed it (and made the code cache). */
  readonly builtWith?: string;
}

/** The table of verbs a plugin implements. ADD returns the result to print; the others print nothing on success. */
export interface Verbs {
  ADD(ctx: VerbContext): Promise<object>;
  DEL(ctx: VerbContext): Promise<void>;
  CHECK(ctx: VerbContext): Promise<void>;
  STATUS(ctx: VerbContext): Promise<void>;
  GC(ctx: VerbContext): Promise<void>;
}

/** What the process prints on stdout and exits with. */
export interface Outcome {
  stdout: string;
  exitCode: 0 | 1;
}

export type Environment = Readonly<Record<string, string | undefined>>;

/**
 * Runs one invocation of the plugin as the process: guards stdout, reads stdin, handles the command, prints the
 * result or error JSON and exits. Never returns.
 */
export async function runPlugin(verbs: Verbs, packing: Packing = {}): Promise<never> {
  const timing = createTiming(process.env.WEFT_CNI_TIMING === '1', packing);
  timing.mark('started');
  const printStdout = takeStdout();
  const logger = createJsonLogger({ component: 'weft-cni', pid: process.pid }, { level: 'warn' });

  let version = DEFAULT_CNI_VERSION;
  let finished = false;
  const finish = async (outcome: Outcome): Promise<never> => {
    if (!finished) {
      finished = true;
      await printStdout(outcome.stdout);
      timing.mark('written');
      const report = timing.report();
      if (report) writeSync(2, report);
    }
    process.exit(outcome.exitCode);
  };
  // A failure outside the verb's promise chain still ends in error JSON, not a bare stack trace.
  process.on('uncaughtException', (err) => void finish(failure(err, version, logger)));
  process.on('unhandledRejection', (err) => void finish(failure(err, version, logger)));

  const interrupted = new AbortController();
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.once(sig, () => interrupted.abort(new Error(`weft-cni received ${sig}`)));
  }

  let stdin: Buffer;
  try {
    stdin = await readStdin(MAX_CONFIG_BYTES + 1);
  } catch (err) {
    const cause = new CniError(
      CniCode.ioFailure,
      `reading the network config from stdin failed: ${(err as Error).message}`,
    );
    return finish(failure(cause, version, logger));
  }
  version = declaredVersion(stdin) ?? DEFAULT_CNI_VERSION;
  timing.mark('read');
  return finish(
    await handleInvocation(verbs, process.env, stdin, { signal: interrupted.signal, logger, mark: timing.mark }),
  );
}

/** Everything runPlugin does between reading stdin and writing stdout, without touching the process. */
export async function handleInvocation(
  verbs: Verbs,
  env: Environment,
  stdin: Uint8Array,
  options: { signal: AbortSignal; logger: Logger; mark?: (phase: string) => void },
): Promise<Outcome> {
  const version = declaredVersion(stdin) ?? DEFAULT_CNI_VERSION;
  let logger = options.logger;
  try {
    const command = env.CNI_COMMAND;
    if (command === 'VERSION') {
      return { stdout: JSON.stringify({ cniVersion: version, supportedVersions: SUPPORTED_VERSIONS }), exitCode: 0 };
    }
    if (!isCommand(command)) {
      throw new CniError(
        CniCode.invalidEnvironment,
        command
          ? `unknown CNI_COMMAND ${JSON.stringify(command)}; expected ${COMMAND_LIST}`
          : `CNI_COMMAND is not set; expected ${COMMAND_LIST}`,
      );
    }
    const invocation = readInvocation(command, env);
    const config = parseNetworkConfig(stdin);
    const since = COMMANDS[command].since;
    if (compareVersions(config.cniVersion, since) < 0) {
      throw new CniError(
        CniCode.incompatibleVersion,
        `${command} needs cniVersion ${since} or later; the network config declares ${config.cniVersion}`,
        `CNI spec ${since} introduced ${command}`,
      );
    }
    logger = logger.child({
      command,
      ...(invocation.containerId ? { containerId: invocation.containerId, ifname: invocation.ifname } : {}),
    });
    const mark = options.mark ?? (() => {});
    mark('parsed');
    const ctx: VerbContext = { invocation, config, signal: options.signal, logger, mark };
    if (command === 'ADD') {
      const result = await verbs.ADD(ctx);
      mark('verb');
      logger.debug('attached', { result });
      return { stdout: JSON.stringify(result), exitCode: 0 };
    }
    await verbs[command](ctx);
    mark('verb');
    logger.debug('done');
    return { stdout: '', exitCode: 0 };
  } catch (err) {
    return failure(err, version, logger);
  }
}

/** Reads and validates the CNI_* variables a command needs; a missing or invalid one is code 4. */
export function readInvocation(command: Command, env: Environment): Invocation {
  const required = COMMANDS[command].env;
  const missing = required.filter((name) => !env[name]);
  if (missing.length > 0) {
    throw badEnv(`${command} needs ${missing.join(', ')}, which ${missing.length === 1 ? 'is' : 'are'} not set`);
  }
  const perAttachment = required.includes('CNI_CONTAINERID');
  const containerId = perAttachment ? (env.CNI_CONTAINERID ?? '') : '';
  const ifname = perAttachment ? (env.CNI_IFNAME ?? '') : '';
  if (perAttachment) {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(containerId)) {
      throw badEnv(
        `CNI_CONTAINERID ${JSON.stringify(containerId)} is invalid; it must start with a letter or digit and contain only letters, digits, '_', '.' or '-'`,
      );
    }
    const ifnameProblem = interfaceNameProblem(ifname);
    if (ifnameProblem) throw badEnv(`CNI_IFNAME ${JSON.stringify(ifname)} is invalid: ${ifnameProblem}`);
  }
  const netns = perAttachment ? (env.CNI_NETNS ?? '') : '';
  // DEL takes whatever it is given: refusing it could only leave the address allocated.
  if (required.includes('CNI_NETNS') && !netns.startsWith('/')) {
    throw badEnv(
      `CNI_NETNS ${JSON.stringify(netns)} is invalid: it must be the absolute path of the pod's network namespace`,
    );
  }
  const { podNamespace, podName, ip, mac, podUid } = parseCniArgs(env.CNI_ARGS ?? '');
  return Object.freeze({
    command,
    containerId,
    netns,
    ifname,
    path: Object.freeze((env.CNI_PATH ?? '').split(':').filter((dir) => dir !== '')),
    podNamespace,
    podName,
    cniArgs: Object.freeze({ ip, mac, podUid }),
  });
}

/**
 * Keys in CNI_ARGS that Weft understands: what Kubernetes runtimes send, and the conventional IP= (requested
 * addresses, comma-separated) and MAC= of the reference plugins. Others are refused unless IgnoreUnknown is true.
 */
const KNOWN_ARGS = new Set([
  'IgnoreUnknown',
  'K8S_POD_NAMESPACE',
  'K8S_POD_NAME',
  'K8S_POD_INFRA_CONTAINER_ID',
  'K8S_POD_UID',
  'IP',
  'MAC',
]);

/** Parses CNI_ARGS ("K=V;K=V"), as the reference plugins do: unknown keys are an error unless IgnoreUnknown=1. */
export function parseCniArgs(raw: string): {
  podNamespace: string;
  podName: string;
  ip: string;
  mac: string;
  podUid: string;
} {
  const pairs = new Map<string, string>();
  for (const pair of raw.split(';')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    if (eq <= 0)
      throw badEnv(`CNI_ARGS has an invalid pair ${JSON.stringify(pair)}; expected KEY=VALUE pairs separated by ';'`);
    pairs.set(pair.slice(0, eq), pair.slice(eq + 1));
  }
  const ignore = pairs.get('IgnoreUnknown');
  let ignoreUnknown = false;
  if (ignore !== undefined) {
    const v = ignore.toLowerCase();
    if (v === '1' || v === 'true') ignoreUnknown = true;
    else if (v !== '0' && v !== 'false')
      throw badEnv(`CNI_ARGS IgnoreUnknown=${JSON.stringify(ignore)} is invalid; use 1, 0, true or false`);
  }
  const unknown = [...pairs.keys()].filter((k) => !KNOWN_ARGS.has(k));
  if (unknown.length > 0 && !ignoreUnknown) {
    throw badEnv(
      `CNI_ARGS has unknown key${unknown.length === 1 ? '' : 's'} ${unknown.join(', ')}; add IgnoreUnknown=1 to ignore them`,
    );
  }
  return {
    podNamespace: pairs.get('K8S_POD_NAMESPACE') ?? '',
    podName: pairs.get('K8S_POD_NAME') ?? '',
    ip: pairs.get('IP') ?? '',
    mac: pairs.get('MAC') ?? '',
    podUid: pairs.get('K8S_POD_UID') ?? '',
  };
}

/** The error JSON for any thrown value; an unexpected error is code 999 and its stack goes to the log. */
export function failure(err: unknown, cniVersion: string, logger: Logger): Outcome {
  let cniErr: CniError;
  if (err instanceof CniError) {
    cniErr = err;
    logger.debug('failed', { code: err.code, msg: err.message, details: err.details });
  } else {
    const message = err instanceof Error ? err.message : String(err);
    cniErr = new CniError(CniCode.internal, `weft-cni failed unexpectedly: ${message}`, 'see the plugin log on stderr');
    logger.error('unexpected failure', { err });
  }
  const body = { cniVersion, code: cniErr.code, msg: cniErr.message, details: cniErr.details };
  return { stdout: JSON.stringify(body), exitCode: 1 };
}

/** SPEC.md: not empty, not "." or "..", under 16 bytes, no '/', ':' or whitespace. */
function interfaceNameProblem(name: string): string | undefined {
  if (name === '.' || name === '..') return 'it must not be "." or ".."';
  if (Buffer.byteLength(name) > 15) return 'it must be at most 15 bytes';
  if (/[/:\s]/.test(name)) return "it must not contain '/', ':' or whitespace";
  return undefined;
}

function badEnv(msg: string): CniError {
  return new CniError(CniCode.invalidEnvironment, msg);
}

/**
 * Makes `process.stdout` mean stderr for everyone else (console.log, libraries) and returns the only function that
 * still writes to the real stdout. The runtime parses stdout as one JSON document; a stray line breaks it.
 * The result is written with blocking writes on fd 1, so Node never builds its stdout stream (for a pipe, a socket and
 * the modules behind it: a few ms of every run). A non-blocking descriptor that is full (EAGAIN) hands the rest to
 * that stream after all; an error (EPIPE: the runtime stopped reading) leaves nothing useful to do.
 */
function takeStdout(): (text: string) => Promise<void> {
  const real = Object.getOwnPropertyDescriptor(process, 'stdout');
  Object.defineProperty(process, 'stdout', { configurable: true, enumerable: true, get: () => process.stderr });
  return (text) =>
    new Promise((resolve) => {
      if (text === '') return resolve();
      const data = Buffer.from(`${text}\n`);
      let written = 0;
      try {
        while (written < data.length) written += writeSync(1, data, written);
        resolve();
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EAGAIN' || !real?.get) return resolve();
        const stdout = real.get.call(process) as NodeJS.WriteStream;
        stdout.on('error', () => resolve());
        stdout.write(data.subarray(written), () => resolve());
      }
    });
}

/**
 * Reads stdin to its end, keeping at most `keep` bytes (the rest is drained so the writer never sees EPIPE).
 * Runtimes write the config into a pipe and close it, so it is read with blocking reads on fd 0: creating
 * `process.stdin` (a stream, and the modules behind it) cost the plugin about 7 ms. A non-blocking descriptor
 * (EAGAIN) goes on through `process.stdin`.
 */
async function readStdin(keep: number): Promise<Buffer> {
  // A terminal (someone running the plugin by hand) gives no config; so does /dev/null. A character device is
  // asked as neither: `isatty` of `node:tty` would load `node:net` and the stream modules (2-4 ms) on every run.
  if (fstatSync(0).isCharacterDevice()) return Buffer.alloc(0);
  const chunks: Buffer[] = [];
  let kept = 0;
  const take = (chunk: Buffer) => {
    if (kept >= keep) return;
    const part = Buffer.from(chunk.subarray(0, keep - kept));
    chunks.push(part);
    kept += part.length;
  };
  const buf = Buffer.allocUnsafe(64 * 1024);
  for (;;) {
    let n: number;
    try {
      n = readSync(0, buf, 0, buf.length, null);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EOF') break;
      if (code === 'EAGAIN') {
        for await (const chunk of process.stdin as AsyncIterable<Buffer>) take(chunk);
        break;
      }
      throw err;
    }
    if (n === 0) break;
    take(buf.subarray(0, n));
  }
  return Buffer.concat(chunks);
}
